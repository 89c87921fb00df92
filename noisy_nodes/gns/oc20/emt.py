"""OC20-like relaxations with real (if simple) physics: ASE's EMT potential.

Each sample is an adsorbate on a 3x3, 4-layer fcc(111) or fcc(100) slab of
Al, Cu, Ag, Au, Ni, Pd or Pt, or a random binary alloy of two of them (Vegard
lattice constant), with the bottom two layers fixed as in OC20. The adsorbate
(H, O, N, C, OH, CO, NH, CH, NO, CH2) is put at a random site (ontop, bridge,
hollow; random cell and jitter) and the system is relaxed with BFGS to fmax
0.05 eV/Å (at most ``MAX_STEPS`` steps; non-converged samples are dropped
and replaced by the next index). The clean slab is relaxed the same way.

Labels as in OC20 (Chanussot et al. 2021, §3):
  E_ads = E(slab+adsorbate) - E(relaxed clean slab) - sum_atoms E_ref(el)
with EMT gas references from relaxed molecules:
  E_ref(H) = E(H2)/2, E_ref(O) = E(O2)/2, E_ref(N) = E(N2)/2,
  E_ref(C) = E(CO) - E(O2)/2.
``energy_relaxed`` (y_relaxed) uses the last frame, ``energy_initial``
(y_init) the first; ``frames_positions`` / ``frames_energy`` keep the whole
trajectory; tags are 0 sub-surface (fixed), 1 surface (free slab), 2
adsorbate.

Determinism: sample ``i`` uses ``np.random.default_rng([seed, i])`` only, so
results do not depend on the number of workers. Workers are spawned with
OMP_NUM_THREADS=1 / OPENBLAS_NUM_THREADS=1 set before numpy loads (unpinned
BLAS threads make EMT several times slower: docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from noisy_nodes.data.structures import Structure
from noisy_nodes.data.workers import single_threaded_children

VERSION = 1
METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
FACETS = ("111", "100")
FMAX = 0.05
MAX_STEPS = 300
# Adsorbates: (symbols, positions relative to the binding atom, Å; +z up).
ADSORBATES = {
    "H": (("H",), ((0, 0, 0),)),
    "O": (("O",), ((0, 0, 0),)),
    "N": (("N",), ((0, 0, 0),)),
    "C": (("C",), ((0, 0, 0),)),
    "OH": (("O", "H"), ((0, 0, 0), (0, 0, 0.97))),
    "CO": (("C", "O"), ((0, 0, 0), (0, 0, 1.15))),
    "NH": (("N", "H"), ((0, 0, 0), (0, 0, 1.03))),
    "CH": (("C", "H"), ((0, 0, 0), (0, 0, 1.09))),
    "NO": (("N", "O"), ((0, 0, 0), (0, 0, 1.17))),
    "CH2": (("C", "H", "H"), ((0, 0, 0), (0.89, 0, 0.63), (-0.89, 0, 0.63))),
}
SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=None)
def gas_references() -> Dict[str, float]:
  """EMT per-element references (eV) from relaxed H2, O2, N2, CO."""
  from ase import Atoms  # pylint: disable=g-import-not-at-top
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  from ase.optimize import BFGS  # pylint: disable=g-import-not-at-top

  def relaxed(symbols, d):
    mol = Atoms(symbols, positions=[(0, 0, 0), (0, 0, d)])
    mol.calc = EMT()
    BFGS(mol, logfile=None).run(fmax=1e-3, steps=200)
    return float(mol.get_potential_energy())

  h2, o2, n2, co = (relaxed("H2", 0.74), relaxed("O2", 1.21),
                    relaxed("N2", 1.10), relaxed("CO", 1.13))
  return {"H": h2 / 2, "O": o2 / 2, "N": n2 / 2, "C": co - o2 / 2}


def _lattice_constant(symbol: str) -> float:
  from ase.data import atomic_numbers, reference_states  # pylint: disable=g-import-not-at-top
  return float(reference_states[atomic_numbers[symbol]]["a"])


def _build_slab(rng: np.random.Generator):
  """Random 3x3x4 slab; bottom two layers fixed. -> (atoms, description)."""
  from ase.build import fcc100, fcc111  # pylint: disable=g-import-not-at-top
  from ase.constraints import FixAtoms  # pylint: disable=g-import-not-at-top
  facet = FACETS[rng.integers(len(FACETS))]
  alloy = bool(rng.random() < 0.5)
  if alloy:
    pair = rng.choice(len(METALS), 2, replace=False)
    m1, m2 = METALS[pair[0]], METALS[pair[1]]
    x = float(rng.uniform(0.25, 0.75))
    a = (1 - x) * _lattice_constant(m1) + x * _lattice_constant(m2)
  else:
    m1 = m2 = METALS[rng.integers(len(METALS))]
    x, a = 0.0, _lattice_constant(m1)
  build = fcc111 if facet == "111" else fcc100
  slab = build(m1, size=(3, 3, 4), a=a, vacuum=7.0)
  if alloy:
    swap = rng.random(len(slab)) < x
    symbols = np.array(slab.get_chemical_symbols(), dtype=object)
    symbols[swap] = m2
    slab.set_chemical_symbols(list(symbols))
  layer = slab.get_tags()  # ase.build: 1 = top ... 4 = bottom
  slab.constraints = [FixAtoms(mask=layer >= 3)]
  desc = {"facet": facet, "bulk": m1 if not alloy else f"{m1}{m2}",
          "alloy_fraction": x, "lattice_constant": a}
  return slab, desc


def _relax(atoms, max_steps: int):
  """BFGS to FMAX; returns (frames_positions [F,n,3], energies [F], ok)."""
  from ase.optimize import BFGS  # pylint: disable=g-import-not-at-top
  frames, energies = [], []

  def record():
    frames.append(atoms.positions.copy())
    energies.append(float(atoms.get_potential_energy()))

  opt = BFGS(atoms, logfile=None)
  opt.attach(record, interval=1)
  converged = bool(opt.run(fmax=FMAX, steps=max_steps))
  return np.array(frames), np.array(energies), converged


_PURE_SLAB_ENERGY: Dict[tuple, Optional[float]] = {}


def _clean_slab_energy(slab, desc, max_steps) -> Optional[float]:
  """Relaxed clean-slab energy (cached for pure metals: same slab)."""
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  key = (desc["bulk"], desc["facet"], max_steps)
  if desc["alloy_fraction"] == 0.0 and key in _PURE_SLAB_ENERGY:
    return _PURE_SLAB_ENERGY[key]
  clean = slab.copy()
  clean.calc = EMT()
  _, energies, ok = _relax(clean, max_steps)
  e = float(energies[-1]) if ok else None
  if desc["alloy_fraction"] == 0.0:
    _PURE_SLAB_ENERGY[key] = e
  return e


def generate_sample(index: int, seed: int, max_steps: int = MAX_STEPS
                    ) -> Optional[Structure]:
  """One relaxation; None when it did not converge in ``max_steps``."""
  from ase.build import add_adsorbate  # pylint: disable=g-import-not-at-top
  from ase import Atoms  # pylint: disable=g-import-not-at-top
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, index])
  slab, desc = _build_slab(rng)
  n_slab = len(slab)
  ads_name = sorted(ADSORBATES)[rng.integers(len(ADSORBATES))]
  sites = sorted(slab.info["adsorbate_info"]["sites"])
  site = sites[rng.integers(len(sites))]
  offset = tuple(int(o) for o in rng.integers(0, 3, 2))
  height = float(rng.uniform(0.9, 1.3) if ads_name == "H"
                 else rng.uniform(1.2, 2.0))

  e_slab = _clean_slab_energy(slab, desc, max_steps)
  if e_slab is None:
    return None

  symbols, rel = ADSORBATES[ads_name]
  mol = Atoms(symbols, positions=rel)
  # Random orientation about z and a small in-plane jitter of the site.
  phi = rng.uniform(0, 2 * np.pi)
  rot = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0],
                  [0, 0, 1]])
  mol.positions = mol.positions @ rot.T
  atoms = slab.copy()
  add_adsorbate(atoms, mol, height, position=site, offset=offset)
  atoms.positions[n_slab:, :2] += rng.normal(0, 0.1, 2)
  atoms.calc = EMT()
  frames, energies, ok = _relax(atoms, max_steps)
  if not ok:
    return None

  refs = gas_references()
  ref = sum(refs[s] for s in symbols)
  e_ads = energies - e_slab - ref
  fixed = np.zeros(len(atoms), np.int32)
  fixed[:n_slab][slab.get_tags() >= 3] = 1
  tags = np.full(len(atoms), 2, np.int32)
  tags[:n_slab] = np.where(fixed[:n_slab] == 1, 0, 1)
  # OC20-style anomaly flag: the adsorbate left the surface (desorbed).
  d = atoms.get_distances(n_slab, list(range(n_slab)), mic=True)
  sid = f"emt-{seed}-{index}"
  s = Structure(
      id=sid, atomic_numbers=atoms.numbers, positions=frames[0],
      cell=np.asarray(atoms.cell), pbc=atoms.pbc,
      targets={"energy_relaxed": e_ads[-1], "energy_initial": e_ads[0],
               "frames_energy": e_ads},
      node_arrays={"tags": tags, "fixed": fixed,
                   "positions_relaxed": frames[-1],
                   "frames_positions": frames},
      info=dict(desc, sid=sid, index=int(index), seed=int(seed),
                adsorbate=ads_name, site=site, energy_kind="adsorption",
                source="emt", converged=True, num_frames=len(frames),
                slab_energy=e_slab, desorbed=bool(d.min() > 3.0),
                gas_reference_energy=float(ref),
                total_energy_relaxed=float(energies[-1])))
  return s.validate()


def write_traj(path: str, s: Structure,
               total_energies: Optional[np.ndarray] = None) -> None:
  """Writes ``frames_positions`` as an ASE trajectory (raw OC20 format)."""
  from ase.calculators.singlepoint import SinglePointCalculator  # pylint: disable=g-import-not-at-top
  from ase.constraints import FixAtoms  # pylint: disable=g-import-not-at-top
  from ase.io.trajectory import Trajectory  # pylint: disable=g-import-not-at-top
  if total_energies is None:  # raw files carry total energies
    total_energies = (s.targets["frames_energy"] + s.info["slab_energy"] +
                      s.info["gas_reference_energy"])
  energies = total_energies
  with Trajectory(path, "w") as traj:
    for pos, e in zip(s.node_arrays["frames_positions"], energies):
      atoms = s.to_ase()
      atoms.positions = pos
      atoms.constraints = [FixAtoms(mask=s.node_arrays["fixed"] == 1)]
      atoms.calc = SinglePointCalculator(atoms, energy=float(e))
      traj.write(atoms)


def _work(args):
  index, seed, max_steps = args
  return generate_sample(index, seed, max_steps)


def _limit_blas_threads():
  try:
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  return threadpool_limits(1)


_LOG_SECONDS = 30.0  # progress line interval while generating


def generate_structures(n: int, seed: int, workers: int = 2,
                        max_steps: int = MAX_STEPS) -> List[Structure]:
  """The first ``n`` converged samples of indices 0, 1, 2, ... (ordered).

  ``workers`` >= 1 spawns that many pinned worker processes; 0 runs in this
  process (BLAS threads limited with threadpoolctl when it is installed).
  """
  # Here, not at the top: spawned workers import this module and need no jax.
  from noisy_nodes.engine.logger import format_seconds  # pylint: disable=g-import-not-at-top
  out: List[Structure] = []
  next_index = done = 0
  pool = None
  t0 = last_log = time.time()
  try:
    if workers >= 1:
      with single_threaded_children():  # inherited by the spawned interpreters
        pool = multiprocessing.get_context("spawn").Pool(workers)
    while len(out) < n:
      # Over-ask a little so a few non-converged samples need no extra round.
      chunk = list(range(next_index, next_index + (n - len(out)) +
                         (n - len(out)) // 50))
      next_index = chunk[-1] + 1
      jobs = [(i, seed, max_steps) for i in chunk]
      if pool is not None:  # imap keeps the index order
        results = pool.imap(_work, jobs,
                            chunksize=max(1, len(jobs) // (20 * workers)))
        context = contextlib.nullcontext()
      else:
        context = _limit_blas_threads()
        results = map(_work, jobs)
      with context:
        for r in results:
          done += 1
          if r is not None:
            out.append(r)
          now = time.time()
          if now - last_log >= _LOG_SECONDS:
            last_log = now
            rate = len(out) / max(now - t0, 1e-9)
            eta = (n - len(out)) / rate if rate > 0 else float("inf")
            logging.info("EMT relaxations: %d/%d converged (%d run), "
                         "%.1f/s, ETA %s", len(out), n, done, rate,
                         format_seconds(eta))
      if next_index > 2 * n + 20:
        raise RuntimeError(f"too many EMT relaxations failed to converge "
                           f"({len(out)} of {n} after {next_index})")
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  logging.info("EMT relaxations: %d converged of %d run in %s", n, done,
               format_seconds(time.time() - t0))
  return out[:n]


def generate(n: int, seed: int, workers: int = 2,
             out_dir: Optional[str] = None,
             split_sizes: Optional[Dict[str, int]] = None,
             write_trajectories: bool = False,
             max_steps: int = MAX_STEPS) -> Dict[str, List[Structure]]:
  """Generates ``n`` samples split into train/val/test (80/10/10 default).

  With ``out_dir`` writes ``<out_dir>/<split>.aselmdb`` (fairchem format),
  ``settings.json`` and, with ``write_trajectories``, ``traj/<sid>.traj``.
  Returns {split: [Structure]} (sample order = index order).
  """
  from noisy_nodes.gns.oc20 import readers  # pylint: disable=g-import-not-at-top
  if split_sizes is None:
    n_eval = n // 10
    split_sizes = {"train": n - 2 * n_eval, "val": n_eval, "test": n_eval}
  if sum(split_sizes.values()) != n:
    raise ValueError(f"split sizes {split_sizes} do not add up to n={n}")
  traj_dir = None
  if out_dir is not None:
    os.makedirs(out_dir, exist_ok=True)
    if write_trajectories:
      traj_dir = os.path.join(out_dir, "traj")
      os.makedirs(traj_dir, exist_ok=True)
  t0 = time.time()
  samples = generate_structures(n, seed, workers, max_steps)
  seconds = time.time() - t0
  if traj_dir is not None:
    for s in samples:
      write_traj(os.path.join(traj_dir, f"{s.id}.traj"), s)
  splits, start = {}, 0
  for name, size in split_sizes.items():
    splits[name] = samples[start:start + size]
    for s in splits[name]:
      s.info["split"] = name
    start += size
  if out_dir is not None:
    for name, items in splits.items():
      readers.write_aselmdb(os.path.join(out_dir, f"{name}.aselmdb"), items,
                            metadata={"generator": "noisy_nodes.gns.oc20.emt",
                                      "seed": seed, "split": name})
    with open(os.path.join(out_dir, "settings.json"), "w") as f:
      json.dump({"version": VERSION, "seed": seed, "split_sizes": split_sizes,
                 "fmax": FMAX, "max_steps": max_steps,
                 "gas_references": gas_references(),
                 "seconds": seconds, "workers": workers}, f, indent=1)
  return splits


def ensure_dataset(cache_dir: str, n_train: int, n_val: int, n_test: int,
                   seed: int = 0, workers: int = 2) -> Dict[str, str]:
  """Generates once into ``cache_dir`` and returns {split: .aselmdb path}.

  The dataset lives in a folder named by its settings, with a marker
  ``dataset.json``; it is generated in a temporary folder and renamed into
  place, so a crash never leaves a half-written dataset that looks complete.
  """
  sizes = {"train": n_train, "val": n_val, "test": n_test}
  marker = {"version": VERSION, "seed": seed, "split_sizes": sizes,
            "fmax": FMAX, "max_steps": MAX_STEPS}
  name = f"emt_v{VERSION}_s{seed}_{n_train}_{n_val}_{n_test}"
  final = os.path.join(cache_dir, name)
  paths = {k: os.path.join(final, f"{k}.aselmdb") for k in sizes}
  marker_path = os.path.join(final, "dataset.json")
  if os.path.exists(marker_path):
    with open(marker_path) as f:
      if json.load(f) == marker and all(map(os.path.exists, paths.values())):
        return paths
    shutil.rmtree(final)  # stale or different settings: regenerate
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=cache_dir)
  n = n_train + n_val + n_test
  logging.info("generating the EMT data set %s once into %s: %d BFGS "
               "relaxations on %d workers, about %.0f minutes (0.3 s each per "
               "worker)", name, final, n, workers,
               max(1.0, 0.3 * n / max(workers, 1) / 60))
  try:
    generate(n_train + n_val + n_test, seed, workers, out_dir=tmp,
             split_sizes=sizes)
    with open(os.path.join(tmp, "dataset.json"), "w") as f:
      json.dump(marker, f)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.exists(marker_path):  # not a concurrent winner
        raise
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return paths


def main(argv: Optional[Sequence[str]] = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--n", type=int, required=True, help="number of samples")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--n_val", type=int, default=None)
  p.add_argument("--n_test", type=int, default=None)
  p.add_argument("--traj", action="store_true", help="also write .traj files")
  args = p.parse_args(argv)
  sizes = None
  if args.n_val is not None or args.n_test is not None:
    n_val, n_test = args.n_val or 0, args.n_test or 0
    sizes = {"train": args.n - n_val - n_test, "val": n_val, "test": n_test}
  t0 = time.time()
  splits = generate(args.n, args.seed, args.workers, args.out, sizes,
                    args.traj)
  dt = time.time() - t0
  print(json.dumps({k: len(v) for k, v in splits.items()}),
        f"{dt:.1f} s, {1e3 * dt / max(args.n, 1):.0f} ms/sample")


if __name__ == "__main__":
  main()
