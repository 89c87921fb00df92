"""The untagged crystal corpus for CrysGNN pre-training (paper §2.1, §3).

The paper pre-trains on 800K untagged crystals (Materials Project + OQMD).
Without network access this module builds a corpus from
(a) any user structure collection (files or folders of CIF/POSCAR/ASE-readable
    files, read with ``crystal.io.read_structure``), and
(b) structures generated here, chosen per item by a seeded draw:
    * ``pyxtal``: random symmetric crystals over all 230 space groups (uniform)
      with 1–3 species from 78 elements and Wyckoff-compatible counts;
    * ``prototype``: pymatgen's 288 AFLOW prototypes with random elements
      substituted per site species, rescaled so that the shortest bond is
      0.95–1.2 × the sum of covalent radii;
    * ``bulk``: ``ase.build.bulk`` ground-state structures of the 72 elements
      ASE knows (primitive or conventional), randomly strained ±2 %;
    * ``known``: pymatgen's test structures and pyxtal's shipped CIFs,
      isotropically strained ±2 %.
Labels (``targets['space_group']`` 1..230, ``targets['crystal_system']``
0..6) are always detected with spglib on the final structure
(``symmetry.add_symmetry_labels``, symprec 0.01, angle 5°): 1–2 % of pyxtal crystals come
out more symmetric than requested (``info['requested_space_group']`` keeps the
request for statistics only).

Item i is generated from ``np.random.default_rng([seed, i])``, so the corpus is
deterministic by seed regardless of worker count or chunking. Items run in
worker processes (OMP/OPENBLAS threads pinned to 1) with a per-item timeout;
failures are recorded in the manifest, never fatal. Output is chunked:
``<stem>-00000.npz``... (``noisy_nodes.data.structures.save_structures``) plus a
JSON manifest ``<out>`` listing chunks, counts, failures and structures/s;
existing chunks are kept with ``--resume``. ``load_corpus(out)`` reads it back.

CLI: python -m crystal.crysgnn.corpus --out=corpus.json --n=1000 --seed=0 \
       --workers=2 [--inputs=DIR_OR_FILE ...] [--max_atoms=48]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from noisy_nodes.data.structures import (DataError, Structure, load_structures,
                                    save_structures)
from crystal.crysgnn import symmetry

SOURCES = ("pyxtal", "prototype", "bulk", "known")
DEFAULT_MIX = (0.7, 0.15, 0.05, 0.1)
MAX_ATOMS = 48
ITEM_TIMEOUT_S = 20
CHUNK_SIZE = 10000
# Elements drawn for generated crystals: H..Bi without noble gases, Tc, Pm.
ELEMENTS = tuple(z for z in range(1, 84) if z not in (2, 10, 18, 36, 54, 43,
                                                      61))


# -- generators (each: rng -> Structure without labels) -------------------------
def _pyxtal(rng: np.random.Generator, max_atoms: int) -> Structure:
  from pyxtal import pyxtal  # pylint: disable=g-import-not-at-top
  from pyxtal.symmetry import Group  # pylint: disable=g-import-not-at-top
  from ase.data import chemical_symbols  # pylint: disable=g-import-not-at-top
  group = int(rng.integers(1, 231))
  mults = sorted({w.multiplicity for w in Group(group).Wyckoff_positions})
  last = None
  for _ in range(4):  # A few compositions; pyxtal rejects incompatible ones.
    n_species = int(rng.integers(1, 4))
    zs = rng.choice(ELEMENTS, n_species, replace=False)
    # Each species occupies 1-2 Wyckoff sites, smallest orbits most likely.
    p = 1.0 / np.arange(1, len(mults) + 1) ** 2
    counts = [int(sum(rng.choice(mults, int(rng.integers(1, 3)), p=p / p.sum())))
              for _ in zs]
    if sum(counts) > max_atoms:
      last = f"{sum(counts)} atoms > max_atoms for group {group}"
      continue
    c = pyxtal()
    try:
      c.from_random(3, group, [chemical_symbols[z] for z in zs], counts,
                    random_state=int(rng.integers(2**31)))
    except Exception as e:  # pylint: disable=broad-except  (pyxtal errors)
      last = f"pyxtal: {type(e).__name__}: {e}"
      continue
    if not c.valid:
      last = f"pyxtal produced no valid crystal for group {group}"
      continue
    s = Structure.from_ase(c.to_ase(), id="")
    s.info["requested_space_group"] = group
    return s
  raise RuntimeError(last)


_PROTOTYPES = None
_KNOWN = None


def _prototypes():
  global _PROTOTYPES
  if _PROTOTYPES is None:
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY  # pylint: disable=g-import-not-at-top
    _PROTOTYPES = [(e["tags"].get("mineral") or e["tags"].get("aflow") or
                    str(i), e["snl"].structure)
                   for i, e in enumerate(AFLOW_PROTOTYPE_LIBRARY)]
  return _PROTOTYPES


def _covalent(z):
  from ase.data import covalent_radii  # pylint: disable=g-import-not-at-top
  return covalent_radii[np.asarray(z)]


def _rescale_to_bonds(s: Structure, rng) -> Structure:
  """Scales the cell so the shortest bond is 0.95-1.2 × Σ covalent radii."""
  from noisy_nodes.data.neighbors import neighbor_list  # pylint: disable=g-import-not-at-top
  nl = neighbor_list(s.positions, s.cell, s.pbc, 12.0, max_neighbors=1)
  if len(nl.distances) == 0:
    raise RuntimeError("no neighbours within 12 Å")
  z = s.atomic_numbers
  ratio = nl.distances / (_covalent(z[nl.senders]) + _covalent(z[nl.receivers]))
  factor = rng.uniform(0.95, 1.2) / ratio.min()
  return Structure(id="", atomic_numbers=z, positions=s.positions * factor,
                   cell=s.cell * factor, pbc=True, info=s.info)


def _prototype(rng, max_atoms: int) -> Structure:
  protos = _prototypes()
  for _ in range(4):
    name, ps = protos[int(rng.integers(len(protos)))]
    if len(ps) <= max_atoms:
      break
  else:
    raise RuntimeError("no prototype small enough")
  species = sorted({site.specie.Z for site in ps})
  new = dict(zip(species, rng.choice(ELEMENTS, len(species), replace=False)))
  z = np.array([new[site.specie.Z] for site in ps])
  s = Structure(id="", atomic_numbers=z, positions=ps.cart_coords,
                cell=ps.lattice.matrix, pbc=True,
                info={"prototype": str(name)})
  return _rescale_to_bonds(s, rng)


def _strain(s: Structure, rng, amount=0.02, isotropic=False) -> Structure:
  if isotropic:
    m = np.eye(3) * (1 + rng.uniform(-amount, amount))
  else:
    e = rng.uniform(-amount, amount, (3, 3))
    m = np.eye(3) + 0.5 * (e + e.T)
  return Structure(id="", atomic_numbers=s.atomic_numbers,
                   positions=s.positions @ m, cell=s.cell @ m, pbc=True,
                   info=s.info)


def bulk_elements() -> List[str]:
  """Element symbols ``ase.build.bulk`` can build without extra arguments."""
  from ase.data import chemical_symbols, reference_states  # pylint: disable=g-import-not-at-top
  ok = ("fcc", "bcc", "hcp", "diamond", "sc", "rhombohedral", "bct",
        "orthorhombic")
  return [chemical_symbols[z] for z, st in enumerate(reference_states)
          if st and st.get("symmetry") in ok]


def _bulk(rng, max_atoms: int) -> Structure:
  del max_atoms
  from ase.build import bulk  # pylint: disable=g-import-not-at-top
  symbols = bulk_elements()
  sym = symbols[int(rng.integers(len(symbols)))]
  cubic = bool(rng.random() < 0.3)
  try:
    atoms = bulk(sym, cubic=cubic)
  except Exception:  # pylint: disable=broad-except  (no cubic cell)
    atoms, cubic = bulk(sym), False
  s = Structure.from_ase(atoms, id="", info={"element": sym, "cubic": cubic})
  return _strain(s, rng)


def _known_files() -> List[str]:
  global _KNOWN
  if _KNOWN is None:
    import pymatgen.core  # pylint: disable=g-import-not-at-top
    import pyxtal  # pylint: disable=g-import-not-at-top
    pmg = os.path.join(os.path.dirname(os.path.dirname(pymatgen.core.__file__)),
                       "util", "structures")
    pyx = os.path.join(os.path.dirname(pyxtal.__file__), "database", "cifs")
    files = []
    for d, ext in ((pmg, ".json"), (pyx, ".cif")):
      if os.path.isdir(d):
        files += sorted(os.path.join(d, f) for f in os.listdir(d)
                        if f.endswith(ext))
    _KNOWN = files
  return _KNOWN


def _read_pymatgen(path: str) -> Structure:
  """Shipped files (pymatgen JSON, pyxtal CIFs with unusual space-group
  spellings that ASE rejects) are read with pymatgen."""
  from pymatgen.core import Structure as PmgStructure  # pylint: disable=g-import-not-at-top
  ps = PmgStructure.from_file(path)
  return Structure(id=os.path.basename(path), atomic_numbers=ps.atomic_numbers,
                   positions=ps.cart_coords, cell=ps.lattice.matrix,
                   pbc=True, info={"source": path})


def _read_any(path: str) -> Structure:
  """A user file: ``crystal.io.read_structure`` (ase.io if absent)."""
  try:
    from crystal.io import read_structure  # pylint: disable=g-import-not-at-top
  except ImportError:
    read_structure = None
  if read_structure is not None:
    return read_structure(path)
  import ase.io  # pylint: disable=g-import-not-at-top
  try:
    atoms = ase.io.read(path)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(path, f"unreadable structure ({e})") from e
  return Structure.from_ase(atoms, id=os.path.basename(path),
                            info={"source": path})


def _known(rng, max_atoms: int) -> Structure:
  files = _known_files()
  last = "no known structure small enough"
  for _ in range(4):
    path = files[int(rng.integers(len(files)))]
    try:  # Some shipped files are disordered (partial occupancies).
      s = _read_pymatgen(path)
    except Exception as e:  # pylint: disable=broad-except
      last = f"{os.path.basename(path)}: {type(e).__name__}: {e}"
      continue
    if s.num_atoms <= max_atoms and s.pbc.all():
      s.info = {"source": os.path.basename(path)}
      return _strain(s, rng, isotropic=True)
  raise RuntimeError(last)


_GENERATORS = {"pyxtal": _pyxtal, "prototype": _prototype, "bulk": _bulk,
               "known": _known}


# -- items -----------------------------------------------------------------------
class _Timeout(Exception):
  pass


def _alarm(signum, frame):
  raise _Timeout()


def make_item(task: Tuple[str, Any], seed: int, mix: Sequence[float],
              max_atoms: int, timeout_s: float
              ) -> Tuple[Optional[Structure], Optional[Dict[str, Any]]]:
  """One corpus item: ("gen", index) or ("file", path) -> (structure, failure).

  The structure carries detected symmetry labels; on failure (exception,
  timeout, too many atoms, no symmetry) it is None and the failure is a dict
  {item, source, error}.
  """
  kind, key = task
  source = "file"
  use_alarm = timeout_s and hasattr(signal, "SIGALRM")
  if use_alarm:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      if kind == "gen":
        rng = np.random.default_rng([seed, int(key)])
        source = SOURCES[int(rng.choice(len(SOURCES), p=np.asarray(mix)))]
        s = _GENERATORS[source](rng, max_atoms)
        s.id = f"gen-{seed}-{int(key):07d}"
        if np.linalg.det(s.cell) < 0:
          # pyxtal may return a left-handed basis; -a, -b, -c spans the same
          # lattice with positive volume (Structure.validate requires it).
          s.cell = -s.cell
      else:
        s = _read_any(key)
        if s.num_atoms > max_atoms:
          raise DataError(key, f"{s.num_atoms} atoms > max_atoms={max_atoms}")
      s.info["source_kind"] = source
      s.validate()
      symmetry.add_symmetry_labels(s)
    return s, None
  except _Timeout:
    return None, {"item": str(key), "source": source,
                  "error": f"timeout after {timeout_s} s"}
  except Exception as e:  # pylint: disable=broad-except  (recorded, not fatal)
    return None, {"item": str(key), "source": source,
                  "error": f"{type(e).__name__}: {e}"}
  finally:
    if use_alarm:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, old)


def preload(mix: Sequence[float]):
  """Imports and loads shipped libraries once, before workers fork, so that
  no item pays (or times out on) a multi-second library load."""
  import pyxtal  # pylint: disable=g-import-not-at-top,unused-import
  from pyxtal.symmetry import Group  # pylint: disable=g-import-not-at-top
  Group(225)
  if mix[SOURCES.index("prototype")] > 0:
    _prototypes()
  if mix[SOURCES.index("known")] > 0:
    _known_files()
    import pymatgen.core  # pylint: disable=g-import-not-at-top,unused-import


def _worker_init():
  for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"


def _run_chunk(args):
  tasks, seed, mix, max_atoms, timeout_s = args
  return [make_item(t, seed, mix, max_atoms, timeout_s) for t in tasks]


def collect_inputs(paths: Sequence[str]) -> List[str]:
  """Files under the given files/folders (sorted; hidden files skipped)."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      for root, _, files in sorted(os.walk(p)):
        out += [os.path.join(root, f) for f in sorted(files)
                if not f.startswith(".") and not f.endswith(".csv")]
    elif os.path.exists(p):
      out.append(p)
    else:
      raise DataError(p, "input path does not exist")
  return out


def build_corpus(out: str, n: int, seed: int = 0, workers: int = 2,
                 inputs: Sequence[str] = (), mix: Sequence[float] = DEFAULT_MIX,
                 max_atoms: int = MAX_ATOMS, timeout_s: float = ITEM_TIMEOUT_S,
                 chunk_size: int = CHUNK_SIZE, resume: bool = False,
                 log=print) -> Dict[str, Any]:
  """Builds the corpus and writes the manifest ``out`` (JSON); returns it."""
  mix = np.asarray(mix, float)
  if mix.shape != (len(SOURCES),) or mix.min() < 0 or mix.sum() <= 0:
    raise ValueError(f"mix must be {len(SOURCES)} weights for {SOURCES}")
  mix = tuple(mix / mix.sum())
  tasks = [("file", p) for p in collect_inputs(inputs)]
  tasks += [("gen", i) for i in range(n)]
  stem = os.path.splitext(out)[0]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  manifest = {"seed": seed, "n_requested": n, "n_inputs": len(tasks) - n,
              "mix": dict(zip(SOURCES, mix)), "max_atoms": max_atoms,
              "symprec": symmetry.SYMPREC,
              "angle_tolerance": symmetry.ANGLE_TOLERANCE, "chunks": [], "failures": []}
  # Small sub-batches per worker call keep all workers busy and bound memory.
  sub = max(1, min(64, chunk_size // max(1, 4 * workers)))
  preload(mix)
  pool = mp.get_context("fork").Pool(workers, _worker_init) \
      if workers > 1 else None
  t0, produced = time.time(), 0
  try:
    for c0 in range(0, len(tasks), chunk_size):
      chunk_tasks = tasks[c0:c0 + chunk_size]
      path = f"{stem}-{c0 // chunk_size:05d}.npz"
      if resume and os.path.exists(path):
        count = len(load_structures(path))
        manifest["chunks"].append({"path": os.path.basename(path),
                                   "count": count, "resumed": True})
        continue
      jobs = [(chunk_tasks[i:i + sub], seed, mix, max_atoms, timeout_s)
              for i in range(0, len(chunk_tasks), sub)]
      results = (pool.imap(_run_chunk, jobs) if pool
                 else map(_run_chunk, jobs))
      structures = []
      for part in results:
        for s, fail in part:
          if s is None:
            manifest["failures"].append(fail)
          else:
            structures.append(s)
      save_structures(path, structures)
      produced += len(structures)
      manifest["chunks"].append({"path": os.path.basename(path),
                                 "count": len(structures)})
      rate = produced / max(time.time() - t0, 1e-9)
      log(f"chunk {path}: {len(structures)} structures, "
          f"{rate:.1f} structures/s")
  finally:
    if pool:
      pool.close()
      pool.join()
  elapsed = time.time() - t0
  manifest.update(
      n_structures=sum(c["count"] for c in manifest["chunks"]),
      n_failures=len(manifest["failures"]), seconds=elapsed,
      structures_per_s=produced / max(elapsed, 1e-9), workers=workers)
  tmp = out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, out)
  return manifest


def load_corpus(manifest_path: str) -> List[Structure]:
  """All structures of a corpus, in item order."""
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(manifest_path, f"unreadable corpus manifest ({e})") from e
  root = os.path.dirname(os.path.abspath(manifest_path))
  out = []
  for c in manifest["chunks"]:
    out += load_structures(os.path.join(root, c["path"]))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="manifest JSON path")
  p.add_argument("--n", type=int, default=1000, help="generated items")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--inputs", nargs="*", default=[],
                 help="structure files or folders to include")
  p.add_argument("--mix", type=float, nargs=4, default=list(DEFAULT_MIX),
                 metavar=("PYXTAL", "PROTOTYPE", "BULK", "KNOWN"))
  p.add_argument("--max_atoms", type=int, default=MAX_ATOMS)
  p.add_argument("--timeout", type=float, default=ITEM_TIMEOUT_S)
  p.add_argument("--chunk_size", type=int, default=CHUNK_SIZE)
  p.add_argument("--resume", action="store_true")
  a = p.parse_args(argv)
  m = build_corpus(a.out, a.n, a.seed, a.workers, a.inputs, a.mix,
                   a.max_atoms, a.timeout, a.chunk_size, a.resume)
  print(json.dumps({k: m[k] for k in ("n_structures", "n_failures", "seconds",
                                      "structures_per_s")}))
  return 0


if __name__ == "__main__":
  for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
  sys.exit(main())
