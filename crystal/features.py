"""Crystal graph featurisation (DeeperGATGNN / MatDeepLearn and CGCNN inputs).

``CrystalFeaturizer(config)(structure)`` returns a single-graph
``jraph.GraphsTuple`` of numpy arrays following docs/design.md:

  nodes:   atomic_numbers int32[n], positions float32[n,3], features
           float32[n,F] (one-hot Z (100) or CGCNN-92, + one-hot degree (14)).
  edges:   vectors float32[e,3], distances float32[e] (Å), features
           float32[e,G] (Gaussian expansion of the, optionally min-max scaled,
           distance).
  globals: cell float32[1,3,3], pbc bool[1,3], composition float32[1,108],
           target float32[1,T] when the structure has ``targets['target']``.

Graphs come from ``noisy_nodes.data.graphs.structure_to_graph`` (edge j -> i, sender
j, receiver i): every periodic image within ``cutoff`` by default, or one edge
per atom pair (``minimum_image``, the reference graph), the ``max_neighbors``
nearest per receiver, and optional zero-length self loops which do not count
towards ``max_neighbors`` (as the reference: 12 neighbours + 1 self loop).

CGCNN-92 element features
-------------------------
CGCNN (Xie & Grossman, PRL 2018, Table S2) one-hot encodes nine element
properties. Table S2 adds up to 93 columns but the released ``atom_init.json``
has 92: group has 19 slots (slot 0 for lanthanides/actinides) and period has 7
(txie-93/cgcnn issue #2). We recompute the table from pymatgen/ASE data with
that 92-column layout; bins of continuous properties are equal-width, values
outside the range go to the end bins:

  ====================  ======  ===========================================
  property              slots   bins (edges)
  ====================  ======  ===========================================
  group                 19      0: f-block (La-Yb, Ac-No; pymatgen block
                                'f'), 1..18: IUPAC group
  period                7       1..7
  electronegativity     10      Pauling, [0.5, 4.0], width 0.35:
                                0.5, 0.85, 1.2, ..., 3.65, 4.0
  covalent radius       10      pm (ASE ``covalent_radii``, Cordero 2008),
                                [25, 250], width 22.5
  valence electrons     12      1..12: s-block = group, d-block = group,
                                p-block = group - 10 (He 2), f-block = 3
  first ionisation E    10      ln(E / eV), [1.3, 3.3], width 0.2
  electron affinity     10      eV, [-3.0, 3.7], width 0.67
  block                 4       s, p, d, f (pymatgen; He is 'p')
  atomic volume         10      ln(molar volume / cm^3 mol^-1), [1.5, 4.3],
                                width 0.28
  ====================  ======  ===========================================

Table S2's units for the two logarithmic properties are written as
log(kJ/mol) and log(cm^3/mol); the ranges only fit natural logarithms of eV
and cm^3/mol, which is what we use.

Unknown convention: when pymatgen has no value (Pauling electronegativity of
He, Ne, Ar; molar volume of At, Fr, Fm) all slots of that property are zero.
The table covers Z = 1..100 (row 0 is all zeros and unused).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

import jraph

from noisy_nodes.data.graphs import structure_to_graph
from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.data.structures import DataError, Structure

from crystal.edge_pairs import pair_reverse_edges

NUM_ELEMENTS = 100         # one-hot Z width (reference "dictionary_default").
NUM_COMPOSITION = 108      # element-fraction vector width (reference).
CGCNN_DIM = 92

# (name, number of slots), in column order.
CGCNN_LAYOUT: Tuple[Tuple[str, int], ...] = (
    ("group", 19), ("period", 7), ("electronegativity", 10),
    ("covalent_radius", 10), ("valence_electrons", 12),
    ("first_ionization_energy", 10), ("electron_affinity", 10),
    ("block", 4), ("atomic_volume", 10))
# (low, high) of the equal-width bins of the continuous properties.
CGCNN_RANGES = {
    "electronegativity": (0.5, 4.0),
    "covalent_radius": (25.0, 250.0),
    "first_ionization_energy": (1.3, 3.3),
    "electron_affinity": (-3.0, 3.7),
    "atomic_volume": (1.5, 4.3),
}
_BLOCKS = ("s", "p", "d", "f")


def cgcnn_slices() -> Dict[str, slice]:
  """Column slice of each property in the 92-d vector."""
  out, start = {}, 0
  for name, width in CGCNN_LAYOUT:
    out[name] = slice(start, start + width)
    start += width
  return out


def bin_index(value: Optional[float], low: float, high: float,
              num: int = 10) -> Optional[int]:
  """Equal-width bin of ``value`` in [low, high]; outside -> end bins.

  Returns None for a missing value (None or NaN).
  """
  if value is None or not math.isfinite(value):
    return None
  k = int(math.floor((value - low) / (high - low) * num))
  return min(max(k, 0), num - 1)


def element_properties(z: int) -> Dict[str, Any]:
  """The nine raw CGCNN properties of element ``z`` (None when unknown)."""
  from ase.data import covalent_radii  # pylint: disable=g-import-not-at-top
  from pymatgen.core.periodic_table import Element  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pymatgen warns on missing Pauling X.
    el = Element.from_Z(int(z))
    block = el.block
    group = 0 if block == "f" else int(el.group)
    if block == "s":
      valence = group
    elif block == "p":
      valence = 2 if el.symbol == "He" else group - 10
    elif block == "d":
      valence = group
    else:
      valence = 3
    x = float(el.X)
    ie = el.ionization_energies[0] if el.ionization_energies else None
    ea = el.electron_affinity
    mv = el.data.get("Molar volume")
  if isinstance(mv, str):  # older pymatgen: "7.09 cm<sup>3</sup>"
    try:
      mv = float(mv.split()[0])
    except ValueError:
      mv = None
  return {
      "group": group, "period": int(el.row), "block": block,
      "electronegativity": x if math.isfinite(x) else None,
      "covalent_radius": float(covalent_radii[int(z)]) * 100.0,
      "valence_electrons": valence,
      "first_ionization_energy": math.log(ie) if ie else None,
      "electron_affinity": None if ea is None else float(ea),
      "atomic_volume": math.log(mv) if mv else None,
  }


@functools.lru_cache(maxsize=1)
def cgcnn92_table() -> np.ndarray:
  """float32 [101, 92]: CGCNN-style binned one-hots for Z = 1..100.

  Computed once per process from pymatgen/ASE (~0.1 s); row 0 is zeros.
  """
  sl = cgcnn_slices()
  table = np.zeros((NUM_ELEMENTS + 1, CGCNN_DIM), np.float32)
  for z in range(1, NUM_ELEMENTS + 1):
    p = element_properties(z)
    row = table[z]
    row[sl["group"]][p["group"]] = 1.0
    row[sl["period"]][p["period"] - 1] = 1.0
    row[sl["valence_electrons"]][p["valence_electrons"] - 1] = 1.0
    row[sl["block"]][_BLOCKS.index(p["block"])] = 1.0
    for name, (low, high) in CGCNN_RANGES.items():
      k = bin_index(p[name], low, high, sl[name].stop - sl[name].start)
      if k is not None:
        row[sl[name]][k] = 1.0
  table.setflags(write=False)
  return table


# -- node, edge and global features -------------------------------------------------
def _check_z(z: np.ndarray, limit: int, what: str, sample: str):
  if z.size and (z.min() < 1 or z.max() > limit):
    bad = int(z[(z < 1) | (z > limit)][0])
    raise DataError(sample, f"atomic number {bad} outside 1..{limit} "
                    f"supported by {what}")


def onehot_atomic_number(z: np.ndarray, num: int = NUM_ELEMENTS,
                         sample: str = "<structure>") -> np.ndarray:
  """float32 [n, num], column Z-1."""
  z = np.asarray(z, np.int64)
  _check_z(z, num, f"one-hot Z ({num})", sample)
  return np.eye(num, dtype=np.float32)[z - 1]


def cgcnn92(z: np.ndarray, sample: str = "<structure>") -> np.ndarray:
  """float32 [n, 92] CGCNN-style element features (see module docstring)."""
  z = np.asarray(z, np.int64)
  _check_z(z, NUM_ELEMENTS, "CGCNN-92 features", sample)
  return cgcnn92_table()[z]


def onehot_degree(receivers: np.ndarray, num_nodes: int,
                  num_classes: int = 14) -> np.ndarray:
  """float32 [n, num_classes]: one-hot of the number of incoming edges.

  The reference counts the edges of each atom including its self loop (12
  neighbours + 1 -> 14 classes, 0..13); larger degrees go to the last class.
  """
  deg = np.bincount(np.asarray(receivers, np.int64), minlength=num_nodes)
  return np.eye(num_classes, dtype=np.float32)[np.minimum(deg,
                                                          num_classes - 1)]


def gaussian_expansion(d: np.ndarray, start: float = 0.0, stop: float = 1.0,
                       num: int = 50, width: float = 0.2,
                       form: str = "matdeeplearn") -> np.ndarray:
  """Gaussians of ``d`` at ``num`` centres linspace(start, stop, num).

  form="matdeeplearn" (DeeperGATGNN reference GaussianSmearing):
    exp(-0.5 (d - mu_k)^2 / sigma^2), sigma = (stop - start) * width.
  form="cgcnn" (CGCNN / CrysGNN GaussianDistance, ``width`` = var):
    exp(-(d - mu_k)^2 / width^2).

  Args:
    d: distances, any shape [...].
  Returns:
    float32 [..., num].
  """
  mu = np.linspace(start, stop, num)
  diff = np.asarray(d, np.float64)[..., None] - mu
  if form == "matdeeplearn":
    sigma = (stop - start) * width
    out = np.exp(-0.5 * (diff / sigma) ** 2)
  elif form == "cgcnn":
    out = np.exp(-(diff / width) ** 2)
  else:
    raise ValueError(f"unknown gaussian form {form!r}")
  return out.astype(np.float32)


def composition_vector(z: np.ndarray, num: int = NUM_COMPOSITION,
                       sample: str = "<structure>") -> np.ndarray:
  """float32 [num]: fraction of atoms of each element, index Z-1."""
  z = np.asarray(z, np.int64)
  _check_z(z, num, f"the composition vector ({num})", sample)
  counts = np.bincount(z - 1, minlength=num)[:num]
  return (counts / max(len(z), 1)).astype(np.float32)


# -- featurizer ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FeaturizerConfig:
  """Settings of ``CrystalFeaturizer``; defaults = DeeperGATGNN reference.

  Attributes:
    cutoff: neighbour radius (Å).
    max_neighbors: nearest senders kept per receiver (None: all).
    minimum_image: one edge per atom pair (reference) instead of every
      periodic image within the cutoff.
    self_loops: add a zero-length i -> i edge per atom (reference).
    node_features: "onehot" (Z, 100 columns) or "cgcnn92".
    degree: append the one-hot degree (``num_degree`` classes).
    num_gaussians, gaussian_start, gaussian_stop, gaussian_width,
      gaussian_form: see ``gaussian_expansion`` (applied to the scaled
      distance).
    distance_scaling: "minmax": d' = (d - distance_min) / (distance_max -
      distance_min) with the dataset-wide range set by
      ``CrystalFeaturizer.fit``; before ``fit`` the range is [0, cutoff].
      "none": raw Å.
    composition: add globals['composition'].
    pair_edges: order the edges in reverse pairs with masked phantom
      partners where a reverse is missing (``noisy_nodes.data.graphs.
      pair_reverse_edges``): GATGNN then evaluates its edge function once
      per edge instead of twice (same model, half the edge work).
  """
  cutoff: float = 8.0
  max_neighbors: Optional[int] = 12
  minimum_image: bool = False
  self_loops: bool = True
  node_features: str = "onehot"
  degree: bool = True
  num_degree: int = 14
  num_gaussians: int = 50
  gaussian_start: float = 0.0
  gaussian_stop: float = 1.0
  gaussian_width: float = 0.2
  gaussian_form: str = "matdeeplearn"
  distance_scaling: str = "minmax"
  distance_min: Optional[float] = None
  distance_max: Optional[float] = None
  composition: bool = True
  pair_edges: bool = False

  def __post_init__(self):
    if self.node_features not in ("onehot", "cgcnn92"):
      raise ValueError(f"node_features {self.node_features!r}")
    if self.distance_scaling not in ("minmax", "none"):
      raise ValueError(f"distance_scaling {self.distance_scaling!r}")
    if self.gaussian_form not in ("matdeeplearn", "cgcnn"):
      raise ValueError(f"gaussian_form {self.gaussian_form!r}")


def reference_config(**overrides) -> FeaturizerConfig:
  """DeeperGATGNN reference graph: minimum image, 12 NN + self loop, 8 Å."""
  return FeaturizerConfig(**{"minimum_image": True, **overrides})


def cgcnn_config(**overrides) -> FeaturizerConfig:
  """CGCNN / CrysGNN inputs: 92-d atoms, 12 NN in 8 Å, 41 Gaussians 0-8 Å."""
  base = dict(node_features="cgcnn92", degree=False, self_loops=False,
              num_gaussians=41, gaussian_start=0.0, gaussian_stop=8.0,
              gaussian_width=0.2, gaussian_form="cgcnn",
              distance_scaling="none")
  base.update(overrides)
  return FeaturizerConfig(**base)


class CrystalFeaturizer:
  """``Structure`` -> single-graph ``jraph.GraphsTuple`` (module docstring)."""

  def __init__(self, config: Any = None):
    if config is None:
      config = FeaturizerConfig()
    elif not isinstance(config, FeaturizerConfig):
      # dict or ml_collections.ConfigDict
      items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
      config = FeaturizerConfig(**items)
    self.config = config

  def settings(self) -> Dict[str, Any]:
    """JSON-able settings (part of the graph-cache key)."""
    return dataclasses.asdict(self.config)

  @property
  def node_dim(self) -> int:
    c = self.config
    base = NUM_ELEMENTS if c.node_features == "onehot" else CGCNN_DIM
    return base + (c.num_degree if c.degree else 0)

  @property
  def edge_dim(self) -> int:
    return self.config.num_gaussians

  def neighbors(self, structure: Structure):
    c = self.config
    return neighbor_list(structure.positions, structure.cell, structure.pbc,
                         c.cutoff, max_neighbors=c.max_neighbors,
                         self_loops=c.self_loops,
                         minimum_image=c.minimum_image, sample=structure.id)

  def fit(self, structures: Sequence[Structure]) -> "CrystalFeaturizer":
    """A featurizer whose min-max range is that of all edges of the dataset.

    As the reference (MatDeepLearn ``NormalizeEdge``), self loops count, so
    the minimum is 0 when ``self_loops``.
    """
    lo, hi = math.inf, -math.inf
    for s in structures:
      d = self.neighbors(s).distances
      if d.size:
        lo, hi = min(lo, float(d.min())), max(hi, float(d.max()))
    if not math.isfinite(lo) or hi <= lo:
      raise DataError("<dataset>", "cannot fit the distance range: fewer "
                      "than two distinct edge lengths in the dataset")
    return CrystalFeaturizer(dataclasses.replace(
        self.config, distance_min=lo, distance_max=hi))

  def distance_range(self) -> Tuple[float, float]:
    c = self.config
    lo = 0.0 if c.distance_min is None else c.distance_min
    hi = c.cutoff if c.distance_max is None else c.distance_max
    return lo, hi

  def check(self, structure: Structure, sample: str) -> None:
    """Raises ``DataError(sample, ...)`` if the node features cannot hold
    every element of ``structure`` (before any graph is built, so that a
    dataset reader can name the file and ``data.skip_invalid`` skip it)."""
    what = ("one-hot Z" if self.config.node_features == "onehot"
            else "CGCNN-92 features")
    _check_z(np.asarray(structure.atomic_numbers, np.int64), NUM_ELEMENTS,
             f"{what} ({NUM_ELEMENTS} elements)", sample)

  def __call__(self, structure: Structure) -> jraph.GraphsTuple:
    c = self.config
    sid = structure.id
    structure.validate()
    z = structure.atomic_numbers
    extra_globals = {}
    if c.composition:
      extra_globals["composition"] = composition_vector(z, sample=sid)[None]
    if "target" in structure.targets:
      extra_globals["target"] = np.atleast_1d(
          structure.targets["target"]).astype(np.float32)[None]
    g = structure_to_graph(structure, c.cutoff, c.max_neighbors,
                           self_loops=c.self_loops,
                           minimum_image=c.minimum_image,
                           extra_globals=extra_globals)
    if c.node_features == "onehot":
      x = onehot_atomic_number(z, sample=sid)
    else:
      x = cgcnn92(z, sample=sid)
    if c.degree:
      x = np.concatenate(
          [x, onehot_degree(g.receivers, structure.num_atoms, c.num_degree)],
          axis=1)
    if c.pair_edges:
      g = pair_reverse_edges(g)
    return g._replace(nodes={**g.nodes, "features": x.astype(np.float32)},
                      edges={**g.edges, "features": self._edge_features(g)})

  def _edge_features(self, g: jraph.GraphsTuple) -> np.ndarray:
    """[E, G] Gaussians of the (scaled) edge distances."""
    c = self.config
    d = g.edges["distances"].astype(np.float64)
    if c.distance_scaling == "minmax":
      lo, hi = self.distance_range()
      d = (d - lo) / (hi - lo)
    return gaussian_expansion(d, c.gaussian_start, c.gaussian_stop,
                              c.num_gaussians, c.gaussian_width,
                              c.gaussian_form)

  def compact(self, g: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """``g`` without what ``expand`` recomputes exactly: the edge Gaussians
    (from the stored distances) and, without degree features (the degree of
    the graph before ``pair_edges``), the node features (from the atomic
    numbers). For preprocessed shards: a CGCNN-input crystal graph stores
    ~70 % fewer bytes."""
    nodes = g.nodes if self.config.degree else {
        k: v for k, v in g.nodes.items() if k != "features"}
    edges = {k: v for k, v in g.edges.items() if k != "features"}
    return g._replace(nodes=nodes, edges=edges)

  def expand(self, g: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """The inverse of ``compact`` (a full graph is returned as it is)."""
    nodes, edges = g.nodes, g.edges
    if "features" not in nodes:
      z = np.asarray(nodes["atomic_numbers"])
      x = (onehot_atomic_number(z) if self.config.node_features == "onehot"
           else cgcnn92(z))
      nodes = {**nodes, "features": x.astype(np.float32)}
    if "features" not in edges:
      edges = {**edges, "features": self._edge_features(g)}
    return g._replace(nodes=nodes, edges=edges)
