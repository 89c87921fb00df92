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
      isotropically strained ±2 %
    (generators in ``synthetic.py``). ``max_atoms`` (default 100) bounds the
    size of GENERATED crystals only, as a choice of their distribution; a
    user's file of any size is kept (the pre-training loss handles any size,
    ``heads.pair_slots``).
Labels (``targets['space_group']`` 1..230, ``targets['crystal_system']``
0..6) are always detected with spglib on the final structure
(``symmetry.add_symmetry_labels``, symprec 0.01, angle 5°): 1–2 % of pyxtal crystals come
out more symmetric than requested (``info['requested_space_group']`` keeps the
request for statistics only).

Item i is generated from ``np.random.default_rng([seed, i])``, so the corpus is
deterministic by seed regardless of worker count or chunking. Items run in
worker processes (OMP/OPENBLAS threads pinned to 1) with a per-item timeout;
failures are recorded in the manifest, never fatal. Output is chunked:
``files-<hash>.npz`` for the user's files (content-addressed, so a changed
folder converts only the chunks it touches) and ``<stem>-00000.npz``... for
generated items (``noisy_nodes.data.structures.save_structures``), plus a
JSON manifest ``<out>`` listing chunks, counts, failures and structures/s;
existing generated chunks are kept with ``--resume``. ``CorpusSource(out)``
reads it back on demand (memory-mapped), ``load_corpus(out)`` whole.

CLI: python -m crystal.crysgnn.corpus --out=corpus.json --n=1000 --seed=0 \
       --workers=2 [--inputs=DIR_OR_FILE ...] [--max_atoms=100]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from noisy_nodes.data import atomic
from noisy_nodes.data.structures import DataError, Structure, save_structures
from crystal.crysgnn.chunks import CorpusSource
from crystal.crysgnn import synthetic
from crystal.crysgnn import symmetry

SOURCES = ("pyxtal", "prototype", "bulk", "known")
DEFAULT_MIX = (0.7, 0.15, 0.05, 0.1)
MAX_ATOMS = 100  # size bound of generated crystals (not of user files)
ITEM_TIMEOUT_S = 20
CHUNK_SIZE = 10000


# -- user files --------------------------------------------------------------------
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
  timeout, no generated crystal within max_atoms, no symmetry) it is None and the failure is a dict
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
        s = synthetic.GENERATORS[source](rng, max_atoms)
        s.id = f"gen-{seed}-{int(key):07d}"
        if np.linalg.det(s.cell) < 0:
          # pyxtal may return a left-handed basis; -a, -b, -c spans the same
          # lattice with positive volume (Structure.validate requires it).
          s.cell = -s.cell
      else:  # A user's file: any size (no cap biases the corpus).
        s = _read_any(key)
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


def _file_key(path: str) -> Tuple[str, int, int]:
  st = os.stat(path)
  return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def _plan(files: Sequence[str], n: int, chunk_size: int, out: str
          ) -> List[Tuple[List[Tuple[str, Any]], str, bool]]:
  """The corpus's chunks: [(tasks, npz path, reusable)].

  Files are cut into chunks at content-defined boundaries (after a file
  whose name's hash is 0 mod ``chunk_size``, or after 4 x ``chunk_size``
  files) and each chunk is named by a hash of its files' (path, size,
  mtime) and the labelling tolerances: adding, removing or rewriting one
  file of an 800K folder converts one or two chunks again, every other chunk
  is reused from the cache folder. Generated items: fixed chunks
  ``<stem>-NNNNN.npz`` (reused with ``resume``).
  """
  root = os.path.dirname(os.path.abspath(out))
  stem = os.path.splitext(out)[0]
  groups, cur = [], []
  for p in files:
    cur.append(p)
    # The file name decides (not the folder's place: a moved folder keeps
    # its boundaries).
    h = int(hashlib.sha256(os.path.basename(p).encode()).hexdigest()[:12],
            16)
    if h % max(1, chunk_size) == 0 or len(cur) >= 4 * chunk_size:
      groups.append(cur)
      cur = []
  if cur:
    groups.append(cur)
  plan = []
  for g in groups:
    key = hashlib.sha256(json.dumps(
        [symmetry.SYMPREC, symmetry.ANGLE_TOLERANCE,
         [_file_key(p) for p in g]]).encode()).hexdigest()[:16]
    plan.append(([("file", p) for p in g],
                 os.path.join(root, f"files-{key}.npz"), True))
  for k, c0 in enumerate(range(0, n, chunk_size)):
    plan.append(([("gen", i) for i in range(c0, min(n, c0 + chunk_size))],
                 f"{stem}-{k:05d}.npz", False))
  return plan


def _sidecar(path: str) -> str:
  return path[:-len(".npz")] + ".json"


def build_corpus(out: str, n: int, seed: int = 0, workers: int = 2,
                 inputs: Sequence[str] = (), mix: Sequence[float] = DEFAULT_MIX,
                 max_atoms: int = MAX_ATOMS, timeout_s: float = ITEM_TIMEOUT_S,
                 chunk_size: int = CHUNK_SIZE, resume: bool = False,
                 log=print) -> Dict[str, Any]:
  """Builds the corpus and writes the manifest ``out`` (JSON); returns it.

  Each chunk ``X.npz`` gets a sidecar ``X.json`` (its count and failures),
  written after it: a chunk with both is complete and is reused (file
  chunks always, generated ones with ``resume``; ``_plan``).
  """
  mix = np.asarray(mix, float)
  if mix.shape != (len(SOURCES),) or mix.min() < 0 or mix.sum() <= 0:
    raise ValueError(f"mix must be {len(SOURCES)} weights for {SOURCES}")
  mix = tuple(mix / mix.sum())
  files = collect_inputs(inputs)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  manifest = {"seed": seed, "n_requested": n, "n_inputs": len(files),
              "mix": dict(zip(SOURCES, mix)), "max_atoms": max_atoms,
              "symprec": symmetry.SYMPREC,
              "angle_tolerance": symmetry.ANGLE_TOLERANCE, "chunks": [],
              "failures": []}
  # Small sub-batches per worker call keep all workers busy and bound memory.
  sub = max(1, min(64, chunk_size // max(1, 4 * workers)))
  plan = _plan(files, n, chunk_size, out)
  todo = [(t, p) for t, p, reusable in plan
          if not ((reusable or resume) and os.path.exists(p) and
                  os.path.exists(_sidecar(p)))]
  if todo:
    synthetic.preload({s for s, w in zip(SOURCES, mix) if w > 0})
  pool = mp.get_context("fork").Pool(workers, _worker_init) \
      if workers > 1 and todo else None
  t0, produced = time.time(), 0
  todo_paths = {p for _, p in todo}
  try:
    for chunk_tasks, path, _ in plan:
      if path not in todo_paths:
        with open(_sidecar(path)) as f:
          side = json.load(f)
        manifest["failures"] += side["failures"]
        manifest["chunks"].append({"path": os.path.basename(path),
                                   "count": side["count"], "reused": True})
        continue
      jobs = [(chunk_tasks[i:i + sub], seed, mix, max_atoms, timeout_s)
              for i in range(0, len(chunk_tasks), sub)]
      results = (pool.imap(_run_chunk, jobs) if pool
                 else map(_run_chunk, jobs))
      structures, failures = [], []
      for part in results:
        for s, fail in part:
          if s is None:
            failures.append(fail)
          else:
            structures.append(s)
      save_structures(path, structures)
      atomic.write_text(_sidecar(path), json.dumps(
          {"count": len(structures), "failures": failures}))
      produced += len(structures)
      manifest["failures"] += failures
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
  atomic.write_text(out, json.dumps(manifest, indent=1))
  return manifest


def load_corpus(manifest_path: str) -> List[Structure]:
  """All structures of a corpus, in item order (in memory: small corpora;
  ``CorpusSource`` reads them on demand)."""
  return list(CorpusSource(manifest_path))


# -- the cached corpus of a pre-training config ----------------------------------------
class CorpusRequest:
  """The corpus a CrysGNN pre-training config asks for (``config.data``).

  ``data.path``: a corpus manifest (JSON of ``build_corpus``) used as is, or
  structure files/folders (comma-separated) converted once, plus
  ``data.corpus.extra`` generated crystals; empty: ``data.corpus.n``
  generated crystals. Conversions are cached under ``data.cache_dir`` in a
  manifest whose file name hashes the request (counts, seed, mix, size bound,
  input paths and ``fingerprint`` of their files, symmetry tolerances), so a
  different request or a changed folder never reads a stale corpus (and a
  changed folder converts only the chunks its changes touch, ``_plan``). With
  ``data.corpus.workers`` >= 2 (the configs' default) the conversion runs in
  a separate process (the corpus CLI): the training process parses no
  structure up front, it reads the chunks on demand (``CorpusSource``).
  """

  def __init__(self, data_cfg):
    d = data_cfg
    c = d.get("corpus", {})
    self.cache_dir = os.path.expanduser(str(d.get("cache_dir", ".")))
    self.max_atoms = int(c.get("max_atoms", MAX_ATOMS))
    self.workers = int(c.get("workers", 1))
    self.timeout_s = float(c.get("timeout_s", ITEM_TIMEOUT_S))
    path = str(d.get("path", "") or "")
    self.inputs = [p.strip() for p in path.split(",") if p.strip()]
    self.given_manifest = (self.inputs[0] if len(self.inputs) == 1 and
                           self.inputs[0].endswith(".json") else None)
    self.n = int(c.get("extra", 0) if self.inputs else c.get("n", 0))
    self.seed = int(c.get("seed", 0))
    self.mix = [float(x) for x in c.get("mix", DEFAULT_MIX)]
    self._fingerprint = None

  def settings(self, n: Optional[int] = None) -> Dict[str, Any]:
    if self._fingerprint is None:
      self._fingerprint = fingerprint(self.inputs)
    return {"n": self.n if n is None else n, "seed": self.seed,
            "mix": self.mix, "max_atoms": self.max_atoms,
            "inputs": [os.path.abspath(p) for p in self.inputs],
            # A file added, removed or rewritten changes the key.
            "files": self._fingerprint,
            # Labels depend on the tolerances: a corpus labelled with other
            # ones is never reused.
            "symprec": symmetry.SYMPREC,
            "angle_tolerance": symmetry.ANGLE_TOLERANCE}

  def cache_path(self, n: Optional[int] = None) -> str:
    settings = self.settings(n)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                         ).hexdigest()[:12]
    return os.path.join(self.cache_dir,
                        f"corpus_n{settings['n']}_{key}.json")

  def manifest(self, shapes_only: bool = False) -> str:
    """The manifest path, built on first use. ``shapes_only`` (restoring a
    run as a teacher) never builds a large corpus: 4 generated crystals
    stand in when the cached one is gone (or its folder changed)."""
    if self.given_manifest:
      return self.given_manifest
    if shapes_only:
      try:
        path = self.cache_path()
      except DataError:  # The run's folder is gone.
        path = ""
      if not os.path.exists(path):
        # 4 generated crystals stand in (the same feature shapes).
        self.inputs, self._fingerprint = [], None
        path = self.cache_path(4)
        if not os.path.exists(path):
          self._build(path, 4)
      return path
    path = self.cache_path()
    if not os.path.exists(path):
      self._build(path, self.n)
    return path

  def _build(self, path: str, n: int):
    logging.info("building the CrysGNN corpus %s (%d generated + %d input "
                 "paths; once)", path, n, len(self.inputs))
    inputs = self.settings()["inputs"]
    if self.workers <= 1:
      build_corpus(path, n, self.seed, 1, inputs, self.mix, self.max_atoms,
                   self.timeout_s, log=logging.info)
      return
    # Worker pools fork; forking a (multithreaded JAX) training process is
    # unsafe, so the CLI runs in a fresh interpreter.
    cmd = [sys.executable, "-m", "crystal.crysgnn.corpus", f"--out={path}",
           f"--n={n}", f"--seed={self.seed}", f"--workers={self.workers}",
           f"--max_atoms={self.max_atoms}", f"--timeout={self.timeout_s}",
           "--mix", *map(str, self.mix)]
    if inputs:
      cmd += ["--inputs", *inputs]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         check=False)
    if res.returncode:
      raise DataError(path, f"corpus build failed:\n{res.stderr[-2000:]}")


def fingerprint(paths: Sequence[str]) -> str:
  """A hash of the input files' paths, sizes and modification times.

  One ``stat`` per file (no file is read): about a second per 100K files.
  """
  h = hashlib.sha256()
  for p in collect_inputs(paths):
    st = os.stat(p)
    h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n"
             .encode())
  return h.hexdigest()[:16]


def check_input_failures(manifest_path: str, skip_invalid: bool
                         ) -> List[str]:
  """The user's structure files that the corpus build could not use.

  Generated items that fail (a pyxtal request with no solution, a timeout)
  are retried by design and only recorded in the manifest. A file the user
  gave is different: unreadable or invalid, it is a ``DataError`` naming it,
  unless ``skip_invalid``, which skips it. Returns "file: error" lines for
  the run's data_report.json.
  """
  with open(manifest_path) as f:
    failures = [x for x in json.load(f).get("failures", [])
                if x.get("source") == "file"]
  bad = failures
  if bad and not skip_invalid:
    x = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    error = x["error"].split(": ", 1)[-1] if x["error"].startswith(
        "DataError") else x["error"]
    if error.startswith(x["item"] + ": "):
      error = error[len(x["item"]) + 2:]
    raise DataError(x["item"], f"{error}{more}; "
                    "--config.data.skip_invalid=True skips such files")
  return [f"{x['item']}: {x['error']}" for x in bad]


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
  p.add_argument("--max_atoms", type=int, default=MAX_ATOMS,
                 help="size bound of generated crystals (files: any size)")
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
