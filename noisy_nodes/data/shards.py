"""Preprocessed shards: random-access records and per-sample metadata.

``python -m noisy_nodes.preprocess`` (noisy_nodes/preprocess.py) writes a
folder that training reads with ``data.path=DIR``:

  DIR/manifest.json          config, task state (after ``setup`` on the
                             training split), splits and their shards
  DIR/<split>-00000.lmdb     one LMDB file per shard (``subdir=False``):
                             key = 8-byte big-endian index in the shard,
                             value = plain arrays (``pack_arrays``: a JSON
                             header and raw bytes; no pickle)
  DIR/<split>-00000.meta.npz per-sample metadata of the shard, written last
                             (its presence marks the shard finished)

A record holds the structure (``s/...``: atomic numbers, positions, cell,
pbc, targets ``t/``, node arrays ``n/``, id and info as UTF-8 JSON) and, for a
task whose training features are deterministic, its static graph (``g/...``,
``task.featurize(s, None, False)`` after ``setup``): training then reads
graphs, never featurises. Randomised tasks (noise, frame sampling) store
structures only and featurise per step.

The metadata (``n_atoms``, ``n_node``, ``n_edge`` of the deterministic graph,
``d_min``/``d_max`` of its edge distances, the elements present, the scalar
targets ``t/<name>`` [n, k] with NaN where missing, and the ids) gives batch
budgets, target statistics, distance ranges and names without reading a
record.

LMDB rather than npz shards: a record is one B-tree lookup in a memory-mapped
file (``benchmarks/data_bench.py`` measures the random-read rate), while a
member of an ``.npz`` (a zip) is read whole, so one random sample would cost
reading its shard's arrays. Records are not ``.npz`` either: its zip and
header parsing cost far more per record than ``pack_arrays``
(docs/benchmarks.md).
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Any, Dict, List, Optional

import jraph
import numpy as np

from noisy_nodes.data import atomic
from noisy_nodes.data.sources import LazyHandle, Source
from noisy_nodes.data.structures import DataError, Structure

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Config entries that do not change what a shard holds (training may differ).
_FREE_KEYS = ("train", "optim", "batch", "model")
_FREE_DATA_KEYS = ("path", "format", "workers", "gen_workers", "limit",
                   "cache_dir", "skip_invalid", "whole", "cache_limit",
                   "stats_sample", "worker_chunk")


def is_shard_dir(path: str) -> bool:
  return bool(path) and os.path.isfile(os.path.join(os.path.expanduser(
      str(path)), MANIFEST))


def fingerprint(config) -> Dict[str, Any]:
  """The part of a config that determines the shards' content."""
  d = json.loads(config.to_json_best_effort())
  for k in _FREE_KEYS:
    d.pop(k, None)
  for k in _FREE_DATA_KEYS:
    d.get("data", {}).pop(k, None)
  return d


# -- records -------------------------------------------------------------------
def _text(value) -> np.ndarray:
  return np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)


def _untext(arr) -> Any:
  return json.loads(bytes(np.asarray(arr, np.uint8)).decode("utf-8"))


def encode(s: Structure, graph: Optional[jraph.GraphsTuple] = None) -> bytes:
  """A structure (and its static graph) as ``.npz`` bytes."""
  arrays = {"s/atomic_numbers": s.atomic_numbers, "s/positions": s.positions,
            "s/cell": s.cell, "s/pbc": s.pbc, "s/id": _text(s.id),
            "s/info": _text(s.info)}
  for k, v in s.targets.items():
    arrays[f"s/t/{k}"] = np.asarray(v)
  for k, v in s.node_arrays.items():
    arrays[f"s/n/{k}"] = np.asarray(v)
  if graph is not None:
    for part in ("nodes", "edges", "globals"):
      for k, v in getattr(graph, part).items():
        arrays[f"g/{part}/{k}"] = np.asarray(v)
    for part in ("senders", "receivers", "n_node", "n_edge"):
      arrays[f"g/{part}"] = np.asarray(getattr(graph, part))
  return pack_arrays(arrays)


_MAGIC = b"NNR1"


def pack_arrays(arrays: Dict[str, np.ndarray]) -> bytes:
  """Plain arrays as one record: magic, a JSON header of (name, dtype,
  shape, offset), then the raw bytes. Decoding is a slice per array (an
  ``.npz`` in memory pays for its zip and header parsing)."""
  header, chunks, offset = [], [], 0
  for name, value in arrays.items():
    a = np.ascontiguousarray(value)
    if a.dtype.hasobject:
      raise TypeError(f"{name}: object arrays are not stored (no pickle)")
    header.append([name, a.dtype.str, list(a.shape), offset])
    raw = a.tobytes()
    chunks.append(raw + b"\0" * (-len(raw) % 8))
    offset += len(chunks[-1])
  head = json.dumps(header).encode("utf-8")
  head += b" " * (-len(head) % 8)
  return b"".join([_MAGIC, len(head).to_bytes(4, "little"), head] + chunks)


def unpack_arrays(data: bytes) -> Dict[str, np.ndarray]:
  if data[:4] != _MAGIC:
    raise ValueError("not a shard record (bad magic)")
  n = int.from_bytes(data[4:8], "little")
  base = 8 + n
  out = {}
  for name, dtype, shape, offset in json.loads(data[8:base]):
    dt = np.dtype(dtype)
    count = int(np.prod(shape)) if shape else 1
    out[name] = np.frombuffer(data, dt, count, base + offset).reshape(
        shape).copy()
  return out


def decode(data: bytes, where: str):
  """(Structure, graph or None) of ``encode``'s bytes."""
  try:
    arrays = unpack_arrays(data)
    s = Structure(
        id=_untext(arrays["s/id"]), atomic_numbers=arrays["s/atomic_numbers"],
        positions=arrays["s/positions"], cell=arrays["s/cell"],
        pbc=arrays["s/pbc"],
        targets={k[4:]: v for k, v in arrays.items() if k.startswith("s/t/")},
        node_arrays={k[4:]: v for k, v in arrays.items()
                     if k.startswith("s/n/")},
        info=_untext(arrays["s/info"]))
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(where, f"unreadable shard record ({type(e).__name__}: "
                    f"{e})") from None
  graph = None
  if "g/senders" in arrays:
    part = lambda p: {k[len(p) + 3:]: v for k, v in arrays.items()
                      if k.startswith(f"g/{p}/")}
    graph = jraph.GraphsTuple(
        nodes=part("nodes"), edges=part("edges"), globals=part("globals"),
        senders=arrays["g/senders"], receivers=arrays["g/receivers"],
        n_node=arrays["g/n_node"], n_edge=arrays["g/n_edge"])
  return s, graph


def _key(i: int) -> bytes:
  return int(i).to_bytes(8, "big")


def _open_read(path: str):
  import lmdb  # pylint: disable=g-import-not-at-top
  return lmdb.open(path, subdir=False, readonly=True, lock=False,
                   readahead=False, meminit=False, max_readers=512)


# -- writing one shard -----------------------------------------------------------
def write_shard(path: str, structures, graphs, keep_graphs: bool) -> None:
  """Writes ``path`` (.lmdb) and its ``.meta.npz`` (last: marks it done).

  ``graphs``: the deterministic graph of each structure (for the metadata;
  stored in the records when ``keep_graphs``).
  """
  import lmdb  # pylint: disable=g-import-not-at-top
  tmp = f"{path}.tmp{os.getpid()}"  # one writer per process (atomic.py)
  for p in (tmp, tmp + "-lock"):
    if os.path.exists(p):
      os.remove(p)
  env = lmdb.open(tmp, subdir=False, map_size=1 << 40, lock=False,
                  meminit=False, sync=False)
  meta = {"n_atoms": [], "n_node": [], "n_edge": [], "d_min": [], "d_max": [],
          "ids": []}
  targets: Dict[str, List[np.ndarray]] = {}
  elements = set()
  try:
    with env.begin(write=True) as txn:
      for i, (s, g) in enumerate(zip(structures, graphs)):
        txn.put(_key(i), encode(s, g if keep_graphs else None))
        meta["n_atoms"].append(s.num_atoms)
        meta["n_node"].append(int(g.n_node[0]))
        meta["n_edge"].append(int(g.n_edge[0]))
        d = np.asarray(g.edges.get("distances", np.zeros(0))).reshape(-1)
        meta["d_min"].append(float(d.min()) if d.size else np.nan)
        meta["d_max"].append(float(d.max()) if d.size else np.nan)
        meta["ids"].append(str(s.id))
        elements.update(int(z) for z in np.unique(s.atomic_numbers))
        for k, v in s.targets.items():
          v = np.asarray(v, np.float64).reshape(-1)
          if v.size <= 16:
            targets.setdefault(k, [None] * i)
            targets[k].append(v)
        for k, lst in targets.items():
          if len(lst) < i + 1:
            lst.append(None)
    env.sync()
  finally:
    env.close()
  os.replace(tmp, path)
  n = len(meta["ids"])
  out = {"n_atoms": np.array(meta["n_atoms"], np.int32),
         "n_node": np.array(meta["n_node"], np.int32),
         "n_edge": np.array(meta["n_edge"], np.int32),
         "d_min": np.array(meta["d_min"], np.float32),
         "d_max": np.array(meta["d_max"], np.float32),
         "ids": np.array(meta["ids"], dtype=str).reshape(n),
         "elements": np.array(sorted(elements), np.int32)}
  for k, lst in targets.items():
    width = max(v.size for v in lst if v is not None)
    arr = np.full((n, width), np.nan)
    for i, v in enumerate(lst):
      if v is not None:
        arr[i, :v.size] = v
    out[f"t/{k}"] = arr
  atomic.savez(meta_path(path), **out)


def meta_path(shard_path: str) -> str:
  return shard_path[:-len(".lmdb")] + ".meta.npz"


# -- reading ---------------------------------------------------------------------
class ShardSource(Source):
  """One split of a preprocessed folder: ``source[i]`` reads record i.

  ``graph(i)`` is the stored static graph (non-randomised tasks);
  ``meta`` holds the per-sample metadata arrays of the whole split.
  """

  def __init__(self, folder: str, split: str, shards: List[Dict[str, Any]],
               has_graphs: bool = False):
    self.folder, self.split = folder, split
    self.has_graphs = bool(has_graphs)
    self.files = [os.path.join(folder, sh["file"]) for sh in shards]
    self.starts = np.cumsum([0] + [int(sh["num"]) for sh in shards]).tolist()
    self._envs = [LazyHandle(_open_read, f) for f in self.files]
    parts = []
    for f in self.files:
      try:
        with np.load(meta_path(f), allow_pickle=False) as z:
          parts.append({k: z[k] for k in z.files})
      except Exception as e:  # pylint: disable=broad-except
        raise DataError(meta_path(f), f"unreadable shard metadata ({e}); "
                        f"rerun noisy_nodes.preprocess") from None
    keys = set.intersection(*(set(p) for p in parts)) if parts else set()
    self.meta = {k: np.concatenate([p[k] for p in parts]) for k in keys
                 if k != "elements"}
    self.elements = sorted({int(z) for p in parts for z in p["elements"]})
    if parts and len(self.meta["ids"]) != self.starts[-1]:
      raise DataError(folder, f"split {split}: the metadata lists "
                      f"{len(self.meta['ids'])} samples, the manifest "
                      f"{self.starts[-1]}; rerun noisy_nodes.preprocess")

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _record(self, i: int):
    k = bisect.bisect_right(self.starts, i) - 1
    j = i - self.starts[k]
    where = f"{self.files[k]}[key {j}]"
    try:
      with self._envs[k].get().begin() as txn:
        data = txn.get(_key(j))
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(self.files[k], f"cannot open the shard ({e})") from None
    if data is None:
      raise DataError(where, "missing record; rerun noisy_nodes.preprocess")
    return decode(data, where)

  def _read(self, i: int) -> Structure:
    return self._record(i)[0]

  def graph(self, i: int) -> jraph.GraphsTuple:
    g = self._record(self._index(i))[1]
    if g is None:
      raise DataError(self.folder, "the shards hold structures, no graphs "
                      "(a randomised task's)")
    return g

  def _name(self, i: int) -> str:
    return str(self.meta["ids"][i])

  def _num_atoms(self, i: int) -> int:
    return int(self.meta["n_atoms"][i])

  def __getstate__(self):
    return self.__dict__  # handles drop themselves (LazyHandle)


def read_manifest(folder: str) -> Dict[str, Any]:
  path = os.path.join(folder, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(path, f"unreadable manifest ({e})") from None
  if manifest.get("version") != FORMAT_VERSION:
    raise DataError(path, f"shard format version {manifest.get('version')}, "
                    f"this library reads {FORMAT_VERSION}")
  if not manifest.get("complete"):
    raise DataError(folder, "preprocessing has not finished; rerun "
                    "noisy_nodes.preprocess with the same --out to complete "
                    "it")
  return manifest


def open_splits(folder: str, config=None):
  """({split: ShardSource}, manifest) of a finished preprocessed folder.

  With ``config``, checks that it featurises as the shards were written
  (``fingerprint``): a different cutoff or target would silently train on
  stale graphs.
  """
  folder = os.path.expanduser(str(folder))
  manifest = read_manifest(folder)
  if config is not None:
    want, have = fingerprint(config), manifest["fingerprint"]
    if want != have:
      diff = _diff(have, want)
      raise DataError(folder, f"preprocessed with other settings ({diff}); "
                      f"rerun noisy_nodes.preprocess with this config")
  graphs = manifest.get("stores") == "structures+graphs"
  splits = {name: ShardSource(folder, name, sp["shards"], graphs)
            for name, sp in manifest["splits"].items()}
  return splits, manifest


def _diff(a, b, prefix="") -> str:
  keys = sorted(set(a) | set(b)) if isinstance(a, dict) and isinstance(
      b, dict) else None
  if keys is None:
    return f"{prefix or 'config'}: {a!r} in the shards, {b!r} here"
  for k in keys:
    if a.get(k) != b.get(k):
      return _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
  return ""
