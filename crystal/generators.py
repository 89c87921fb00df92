"""Physics-labelled crystal/cluster datasets generated offline with ASE's EMT.

The DeeperGATGNN benchmarks include Pt clusters and alloy surfaces (Fung et
al. 2021, DFT labels). Here the same kinds of systems are labelled with ASE's
effective-medium theory (EMT: Al, Cu, Ag, Au, Ni, Pd, Pt and H, C, N, O), so
datasets of any size can be made without network access:

* ``pt_cluster_sample``: Pt clusters of 5-40 atoms grown at random into
  compact shapes; "relaxed" (BFGS to fmax 0.05 eV/Å) or "perturbed" (the
  relaxed cluster with Gaussian displacements, so labels vary away from
  minima). Target: EMT energy per atom (eV/atom). ASE's EMT is referenced to
  the bulk metal (E(fcc Pt) = -1e-4 eV/atom), so this is the cluster's energy
  per atom relative to bulk Pt, i.e. a formation-energy-like label.
* ``pt10_clusters``: 10-atom Pt clusters for benchmarks: 10 atoms within 8 Å
  give 10 x (9 neighbours + 1 self loop) = 100 edges with the reference graph
  (12 NN, 8 Å); single-point EMT energies per atom unless ``relax``.
* ``surface_sample``: a 3x3x4 fcc(111) slab (7.5 Å vacuum each side) of a
  random binary alloy of two of Al/Cu/Ag/Au/Ni/Pd/Pt (lattice constant by
  Vegard's law from ASE's reference states), bottom two layers fixed, with one
  H, C, N or O atom added on a random top/bridge/fcc/hcp site; clean slab and
  slab+adsorbate both relaxed (BFGS, fmax 0.05). Target: adsorption energy
  E_ads = E(slab+X) - E(slab) - E_ref(X) with gas references from EMT-relaxed
  molecules as in OC20: E_H = E(H2)/2, E_O = E(H2O) - E(H2),
  E_N = E(N2)/2, E_C = E(CO) - E(H2O) + E(H2).

Sample i uses ``np.random.default_rng([seed, i])`` only, so output does not
depend on the number of workers. Workers are spawned with OMP_NUM_THREADS=1
and OPENBLAS_NUM_THREADS=1 (``crystal.datasets.worker_pool``): unpinned BLAS
threads make EMT relaxations several times slower (docs/benchmarks.md).

CLI: ``python -m crystal.generators --kind=pt_clusters|surfaces --n=N
--out=DIR [--seed=0] [--workers=2]`` writes a MatDeepLearn folder
(``targets.csv`` + ``<id>.json`` in ASE json).
"""
from __future__ import annotations

import argparse
import functools
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from noisy_nodes.data.structures import DataError, Structure

FMAX = 0.05                 # eV/Å, BFGS convergence.
MAX_STEPS = 2000
PT_NN = 3.92 / np.sqrt(2)   # Pt fcc nearest-neighbour distance (Å).
METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
ADSORBATES = ("H", "C", "N", "O")
SITES = ("ontop", "bridge", "fcc", "hcp")
# Initial adsorbate heights above the surface plane (Å).
_HEIGHTS = {"ontop": 1.8, "bridge": 1.5, "fcc": 1.2, "hcp": 1.2}


def _emt():
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  return EMT()


def relax(atoms, fmax: float = FMAX, steps: int = MAX_STEPS) -> bool:
  """BFGS in place; True when max |force| < fmax."""
  from ase.optimize import BFGS  # pylint: disable=g-import-not-at-top
  opt = BFGS(atoms, logfile=None)
  return bool(opt.run(fmax=fmax, steps=steps))


def max_force(atoms) -> float:
  f = atoms.get_forces(apply_constraint=True)
  return float(np.linalg.norm(f, axis=1).max())


# -- Pt clusters --------------------------------------------------------------------------
def random_compact_cluster(n: int, rng: np.random.Generator,
                           d_nn: float = PT_NN, candidates: int = 24
                           ) -> np.ndarray:
  """[n, 3] positions grown atom by atom into a compact shape.

  Each new atom is placed at d_nn (+-5 %) from a random existing atom in a
  random direction, at least 0.85 d_nn from all others; of ``candidates``
  such trials the one with the most neighbours within 1.2 d_nn (then nearest
  the centroid) is kept, which favours compact, not chain-like, clusters.
  """
  pos = np.zeros((1, 3))
  while len(pos) < n:
    anchor = pos[rng.integers(len(pos), size=candidates)]
    v = rng.normal(size=(candidates, 3))
    v *= (d_nn * rng.uniform(0.95, 1.05, size=(candidates, 1)) /
          np.linalg.norm(v, axis=1, keepdims=True))
    trial = anchor + v
    dist = np.linalg.norm(trial[:, None] - pos[None], axis=-1)
    ok = dist.min(1) >= 0.85 * d_nn
    if not ok.any():
      continue
    score = (dist < 1.2 * d_nn).sum(1) - 1e-3 * np.linalg.norm(
        trial - pos.mean(0), axis=1)
    score[~ok] = -np.inf
    pos = np.vstack([pos, trial[np.argmax(score)]])
  return pos - pos.mean(0)


def pt_cluster_sample(i: int, seed: int = 0, mode: str = "both",
                      sizes=(5, 40), displacement: float = 0.05,
                      relaxed: Optional[bool] = None) -> Structure:
  """Pt cluster ``i`` of a seeded dataset (module docstring).

  Args:
    i: sample index; the random stream is default_rng([seed, i]).
    mode: "relaxed", "perturbed" or "both" (even i relaxed, odd perturbed).
    sizes: inclusive range of atom counts.
    displacement: std (Å) of the Gaussian displacement of perturbed samples.
    relaxed: overrides ``mode`` when given.
  """
  import ase  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, i])
  if relaxed is None:
    if mode not in ("relaxed", "perturbed", "both"):
      raise ValueError(f"mode {mode!r}")
    relaxed = mode == "relaxed" or (mode == "both" and i % 2 == 0)
  n = int(rng.integers(sizes[0], sizes[1] + 1))
  atoms = ase.Atoms(f"Pt{n}", positions=random_compact_cluster(n, rng))
  atoms.calc = _emt()
  converged = relax(atoms)
  if not relaxed:
    atoms.positions = atoms.positions + rng.normal(
        scale=displacement, size=(n, 3))
  energy = float(atoms.get_potential_energy())
  return Structure(
      id=f"pt{n}_{seed}_{i:06d}", atomic_numbers=atoms.numbers,
      positions=atoms.positions, targets={"target": [energy / n]},
      info={"kind": "pt_cluster", "relaxed": bool(relaxed),
            "converged": converged, "energy": energy,
            "fmax": max_force(atoms), "label": "EMT energy per atom (eV)"})


def pt10_clusters(n: int, seed: int = 0, relax_clusters: bool = False,
                  displacement: float = 0.1) -> List[Structure]:
  """``n`` 10-atom Pt clusters (~100 edges each with 12 NN / 8 Å + loops).

  Random compact geometries with Gaussian displacements and single-point EMT
  energies per atom (fast: ~2 ms each), or BFGS-relaxed with
  ``relax_clusters`` (~0.1 s each).
  """
  import ase  # pylint: disable=g-import-not-at-top
  out = []
  for i in range(n):
    rng = np.random.default_rng([seed, 10, i])
    atoms = ase.Atoms("Pt10", positions=random_compact_cluster(10, rng))
    atoms.calc = _emt()
    if relax_clusters:
      relax(atoms)
    else:
      atoms.positions = atoms.positions + rng.normal(scale=displacement,
                                                     size=(10, 3))
    e = float(atoms.get_potential_energy())
    out.append(Structure(id=f"pt10_{seed}_{i:06d}",
                         atomic_numbers=atoms.numbers,
                         positions=atoms.positions,
                         targets={"target": [e / 10]},
                         info={"kind": "pt10", "relaxed": relax_clusters}))
  return out


# -- alloy surfaces -----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def gas_references() -> Dict[str, float]:
  """EMT reference energies (eV) of H, C, N, O from relaxed molecules."""
  from ase.build import molecule  # pylint: disable=g-import-not-at-top
  e = {}
  for name in ("H2", "H2O", "N2", "CO"):
    m = molecule(name)
    m.center(vacuum=6.0)
    m.calc = _emt()
    relax(m, fmax=0.01)
    e[name] = float(m.get_potential_energy())
  return {"H": e["H2"] / 2, "O": e["H2O"] - e["H2"], "N": e["N2"] / 2,
          "C": e["CO"] - e["H2O"] + e["H2"]}


def _lattice_constant(symbol: str) -> float:
  from ase.data import atomic_numbers, reference_states  # pylint: disable=g-import-not-at-top
  return float(reference_states[atomic_numbers[symbol]]["a"])


def surface_sample(i: int, seed: int = 0, size=(3, 3, 4),
                   vacuum: float = 7.5) -> Structure:
  """Adsorbate on a random binary-alloy fcc(111) slab (module docstring).

  node_arrays: ``tags`` (0 fixed sub-surface, 1 free slab, 2 adsorbate, the
  OC20 convention) and ``fixed`` (1 = fixed, bottom two layers).
  """
  from ase.build import add_adsorbate, fcc111  # pylint: disable=g-import-not-at-top
  from ase.constraints import FixAtoms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, i])
  a_el, b_el = (METALS[k] for k in rng.choice(len(METALS), 2, replace=False))
  x_b = float(rng.uniform(0.1, 0.9))
  n_slab = int(np.prod(size))
  is_b = rng.random(n_slab) < x_b
  frac_b = float(is_b.mean())
  a = (1 - frac_b) * _lattice_constant(a_el) + frac_b * _lattice_constant(b_el)
  slab = fcc111(a_el, size=size, a=a, vacuum=vacuum)
  slab.symbols[is_b] = b_el
  layer = slab.get_tags()  # fcc111: 1 = top layer ... size[2] = bottom
  fixed = layer > size[2] - 2
  slab.set_constraint(FixAtoms(mask=fixed))
  slab.calc = _emt()
  relax(slab)
  e_slab = float(slab.get_potential_energy())

  ads = ADSORBATES[int(rng.integers(len(ADSORBATES)))]
  site = SITES[int(rng.integers(len(SITES)))]
  system = slab.copy()
  offset = tuple(int(k) for k in rng.integers(0, min(size[:2]), size=2))
  add_adsorbate(system, ads, _HEIGHTS[site], position=site, offset=offset)
  system.set_constraint(FixAtoms(mask=np.append(fixed, False)))
  system.calc = _emt()
  converged = relax(system)
  e_sys = float(system.get_potential_energy())
  e_ads = e_sys - e_slab - gas_references()[ads]
  tags = np.append(np.where(fixed, 0, 1), 2).astype(np.int32)
  top = system.positions[:-1][layer == 1, 2].max()
  return Structure(
      id=f"{a_el}{b_el}_{ads}_{seed}_{i:06d}", atomic_numbers=system.numbers,
      positions=system.positions, cell=np.asarray(system.cell),
      pbc=system.pbc, targets={"target": [e_ads]},
      node_arrays={"tags": tags,
                   "fixed": np.append(fixed, False).astype(np.int32)},
      info={"kind": "alloy_surface", "alloy": [a_el, b_el],
            "fraction_b": frac_b, "adsorbate": ads, "site": site,
            "converged": converged, "fmax": max_force(system),
            "energy": e_sys, "slab_energy": e_slab,
            "adsorbate_height": float(system.positions[-1, 2] - top),
            "label": "EMT adsorption energy (eV)"})


# -- datasets -------------------------------------------------------------------------------
_KINDS = {"pt_clusters": pt_cluster_sample, "surfaces": surface_sample}


def _make(kind: str, seed: int, kwargs: dict, i: int) -> Structure:
  return _KINDS[kind](i, seed=seed, **kwargs)


def generate(kind: str, n: int, seed: int = 0, num_workers: int = 0,
             **kwargs) -> List[Structure]:
  """``n`` samples of ``kind`` ("pt_clusters" | "surfaces"), in index order.

  ``num_workers >= 1`` runs samples in that many spawned single-threaded
  workers; the result is the same as in-process (per-sample random streams).
  In-process (0) is only fast when this process was started with
  OMP_NUM_THREADS=1 / OPENBLAS_NUM_THREADS=1 (much slower otherwise: ASE's
  BFGS does many tiny BLAS calls), which is why even one worker helps.
  """
  if kind not in _KINDS:
    raise ValueError(f"unknown kind {kind!r}; use one of {sorted(_KINDS)}")
  fn = functools.partial(_make, kind, seed, kwargs)
  if num_workers <= 0:
    return [fn(i) for i in range(n)]
  from crystal.datasets import worker_pool  # pylint: disable=g-import-not-at-top
  with worker_pool(num_workers) as pool:
    return list(pool.imap(fn, range(n), chunksize=max(1, n // (16 *
                                                               num_workers))))


def write_dataset(out: str, structures: Sequence[Structure]) -> None:
  """MatDeepLearn folder: ``targets.csv`` + ``<id>.json`` (ASE json)."""
  from crystal.io import write_matdeeplearn_folder  # pylint: disable=g-import-not-at-top
  if not structures:
    raise DataError(out, "no structures to write")
  write_matdeeplearn_folder(out, structures, file_format="json")


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--kind", choices=sorted(_KINDS), required=True)
  p.add_argument("--n", type=int, required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
  p.add_argument("--mode", default="both",
                 help="pt_clusters: relaxed | perturbed | both")
  p.add_argument("--min_atoms", type=int, default=5, help="pt_clusters")
  p.add_argument("--max_atoms", type=int, default=40, help="pt_clusters")
  args = p.parse_args(argv)
  kwargs = ({"mode": args.mode, "sizes": (args.min_atoms, args.max_atoms)}
            if args.kind == "pt_clusters" else {})
  structures = generate(args.kind, args.n, args.seed, args.workers, **kwargs)
  write_dataset(args.out, structures)
  t = np.array([s.targets["target"][0] for s in structures])
  print(f"wrote {len(structures)} {args.kind} samples to {args.out}; "
        f"target mean {t.mean():.4f} std {t.std():.4f} eV")


if __name__ == "__main__":
  main()
