"""A small real-physics task used only by the engine tests.

Argon clusters (4-9 atoms, random compact geometries) labelled with their
Lennard-Jones energy from ASE; a 2-step interaction network with a masked
BatchNorm (to exercise Haiku state through the engine). Small enough that a
training step takes milliseconds on CPU.

Data options used by the fault tests (tests/test_faults.py):
  * ``data.path``: read the structures from a ``save_structures`` .npz file
    (first ``num_train`` train, the rest val) instead of generating them, so a
    run depends on a data file that a test can corrupt. Invalid structures
    raise ``DataError`` or, with ``data.skip_invalid``, are skipped and listed
    in ``task.skipped`` (the engine writes DIR/data_report.json).
  * ``data.nan_target_ids``: comma-separated ids whose featurised target is
    NaN: the step that first sees one has a non-finite loss and gradients.
"""
import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np

import noisy_nodes  # noqa: F401
from noisy_nodes import nn
from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.data.structures import DataError
from noisy_nodes.data.structures import Structure
from noisy_nodes.data.structures import load_structures
from noisy_nodes.data.sources import ListSource
from noisy_nodes.tasks.base import Task


def make_clusters(n, seed):
  from ase import Atoms  # pylint: disable=g-import-not-at-top
  from ase.calculators.lj import LennardJones  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = int(rng.integers(4, 10))
    pos = rng.uniform(0, 1.6 * k ** (1 / 3), (k, 3))
    # Keep atoms apart so LJ energies stay moderate.
    for _ in range(50):
      d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(k)
      if d.min() > 0.95:
        break
      pos = pos * 1.05
    atoms = Atoms("Ar" * k, positions=pos)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=3.0)
    out.append(Structure(id=f"ar{i}", atomic_numbers=atoms.numbers,
                         positions=pos,
                         targets={"energy": [atoms.get_potential_energy()]}))
  return out


class ToyTask(Task):
  selection_metric = "energy_mae"

  def load_splits(self):
    d = self.config.data
    if d.get("path", ""):
      structures = [s for s in load_structures(d.path) if self._valid(s)]
    else:
      structures = make_clusters(d.num_train + d.num_val, d.seed)
    return {"train": structures[:d.num_train],
            "val": structures[d.num_train:]}

  def _valid(self, s):
    """DataError naming file and sample, or False (skipped and listed)."""
    try:
      s.validate()
      if "energy" not in s.targets:
        raise DataError(s.id, "no 'energy' target")
    except DataError as e:
      err = DataError(f"{self.config.data.path}[{e.sample}]", e.fault)
      if not self.config.data.get("skip_invalid", False):
        raise err from None
      self.skipped.append(str(err))
      return False
    return True

  def setup(self, train):
    e = np.array([s.targets["energy"][0] for s in train])
    self.mean, self.std = float(e.mean()), float(e.std() + 1e-6)

  def state_dict(self):
    return {"mean": self.mean, "std": self.std}

  def load_state_dict(self, state):
    self.mean, self.std = state["mean"], state["std"]

  def featurize(self, s, rng, training):
    pos = s.positions
    if rng is not None and self.config.data.get("noise", 0.0):
      pos = pos + rng.normal(0, self.config.data.noise, pos.shape)
    nl = neighbor_list(pos, s.cell, s.pbc, 3.0)
    e = len(nl.senders)
    target = (s.targets["energy"][0] - self.mean) / self.std
    if s.id in self.config.data.get("nan_target_ids", "").split(","):
      target = float("nan")
    return jraph.GraphsTuple(
        nodes={"atomic_numbers": s.atomic_numbers,
               "positions": pos.astype(np.float32)},
        edges={"distances": nl.distances.astype(np.float32)[:, None]},
        senders=nl.senders, receivers=nl.receivers,
        n_node=np.array([s.num_atoms], np.int32),
        n_edge=np.array([e], np.int32),
        globals={"target": np.array([[target]], np.float32)})

  @property
  def randomized_features(self):
    return bool(self.config.data.get("noise", 0.0))

  def model(self, graph, is_training):
    w = self.config.model.width
    mask_n = graph.nodes["mask"]
    h = hk.Embed(20, w)(graph.nodes["atomic_numbers"])
    e = nn.MLP([w, w], "shifted_softplus")(graph.edges["distances"])
    for i in range(2):
      msg = nn.MLP([w, w], "shifted_softplus", name=f"msg{i}")(
          jnp.concatenate([h[graph.senders], e], -1))
      msg = msg * graph.edges["mask"][:, None]
      agg = jax.ops.segment_sum(msg, graph.receivers, h.shape[0])
      h = h + nn.MLP([w, w], "shifted_softplus", name=f"upd{i}")(
          jnp.concatenate([h, agg], -1))
      h = nn.MaskedBatchNorm(name=f"bn{i}")(h, mask_n, is_training)
    per_node = hk.Linear(1)(h) * mask_n[:, None]
    gi = nn.node_graph_index(graph.n_node, h.shape[0])
    return {"graph": jax.ops.segment_sum(per_node, gi, graph.n_node.shape[0])}

  def loss(self, outputs, graph):
    m = graph.globals["mask"].astype(jnp.float32)
    err = jnp.sum(jnp.square(outputs["graph"] - graph.globals["target"]), -1)
    mae = jnp.sum(jnp.abs(outputs["graph"] - graph.globals["target"]), -1)
    return jnp.sum(err * m), jnp.sum(m), {"mae_norm": jnp.sum(mae * m)}

  def predict(self, outputs, graph):
    return {"energy": outputs["graph"][:, 0] * self.std + self.mean}

  def metrics(self, structures, predictions):
    true = np.array([s.targets["energy"][0] for s in structures])
    pred = np.array(predictions["energy"])
    return {"energy_mae": float(np.mean(np.abs(pred - true))),
            "baseline_mae": float(np.mean(np.abs(true - self.mean)))}


class FaultySource(ListSource):
  """Structures in memory whose records ``bad`` fail to decode (DataError
  naming the file and key, as an LMDB source does): picklable, for the data
  worker tests."""

  def __init__(self, structures, bad=()):
    super().__init__(structures)
    self.bad = set(int(i) for i in bad)

  def _read(self, i):
    if i in self.bad:
      raise DataError(f"toy.lmdb[key {i}]", "corrupt record (truncated "
                      "pickle)")
    return super()._read(i)
