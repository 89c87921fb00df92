"""Featurised-graph cache and deterministic splits for crystal datasets.

``load_or_build(structures, featurizer, cache_dir)`` featurises a list of
``Structure`` once (in worker processes for big sets) and stores every graph
in ONE ``.npz``: per feature name the arrays of all graphs concatenated along
the first axis, plus ``n_node`` / ``n_edge`` offsets (no pickle). The file
name is a hash of the sample list (ids, source files with size and mtime, a
digest of the arrays and targets) and of the featurizer settings, so changing
either builds a new cache instead of reading a stale one.

Splits follow the reference (MatDeepLearn): a seeded permutation, then
``int(fraction * n)`` samples for train and validation and the rest for test;
k-fold cross-validation uses k nearly equal folds of one permutation.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

import jraph

from noisy_nodes.data import atomic
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.data.workers import single_threaded_children

CACHE_VERSION = 1
_SECTIONS = ("nodes", "edges", "globals")


# -- keys -----------------------------------------------------------------------------
def _structure_digest(h, s: Structure, targets: bool = True) -> None:
  h.update(s.id.encode())
  for a in (s.atomic_numbers, s.positions, s.cell, s.pbc):
    h.update(np.ascontiguousarray(a).tobytes())
  for k in sorted(s.targets) if targets else ():
    h.update(k.encode())
    h.update(np.ascontiguousarray(s.targets[k]).tobytes())


def structure_fingerprint(s: Structure) -> str:
  """sha1 of what features depend on (id, atoms, positions, cell, pbc)."""
  h = hashlib.sha1()
  _structure_digest(h, s, targets=False)
  return h.hexdigest()


def cache_key(structures: Sequence[Structure], featurizer,
              fingerprints: Optional[List[str]] = None) -> str:
  """sha256 of (sample files + mtimes + content + featurizer settings).

  ``fingerprints``: a list to which each structure's
  ``structure_fingerprint`` is appended (the same pass, for sources that
  parse a structure per read).
  """
  h = hashlib.sha256()
  files = []
  for s in structures:
    if fingerprints is not None:
      fingerprints.append(structure_fingerprint(s))
    src = s.info.get("source")
    if src and os.path.exists(src):
      st = os.stat(src)
      files.append([s.id, src, st.st_size, st.st_mtime_ns])
    else:
      files.append([s.id, src])
    _structure_digest(h, s)
  meta = {"version": CACHE_VERSION, "files": files,
          "featurizer": type(featurizer).__name__,
          "settings": featurizer.settings()}
  h.update(json.dumps(meta, sort_keys=True, default=str).encode())
  return h.hexdigest()


# -- one npz for many graphs ------------------------------------------------------------
def save_graphs(path: str, graphs: Sequence[jraph.GraphsTuple],
                ids: Sequence[str], meta: Optional[dict] = None) -> None:
  """Writes single-graph GraphsTuples (dict features) to one ``.npz``.

  Node and edge arrays are concatenated over graphs, globals ([1, ...] each)
  stacked; ``senders``/``receivers`` stay local to each graph. Atomic write.
  """
  if not graphs:
    raise DataError(path, "no graphs to save")
  arrays = {
      "n_node": np.concatenate([g.n_node for g in graphs]).astype(np.int64),
      "n_edge": np.concatenate([g.n_edge for g in graphs]).astype(np.int64),
      "senders": np.concatenate([g.senders for g in graphs]),
      "receivers": np.concatenate([g.receivers for g in graphs]),
  }
  for sec in _SECTIONS:
    keys = sorted(getattr(graphs[0], sec))
    for i, g in enumerate(graphs):
      if sorted(getattr(g, sec)) != keys:
        raise DataError(ids[i], f"graph {sec} keys {sorted(getattr(g, sec))} "
                        f"differ from the first graph's {keys}")
    for k in keys:
      arrays[f"{sec}/{k}"] = np.concatenate(
          [np.asarray(getattr(g, sec)[k]) for g in graphs])
  index = {"ids": list(ids), "meta": meta or {}}
  arrays["index_json"] = np.frombuffer(json.dumps(index).encode(), np.uint8)
  atomic.savez(path, **arrays)


def load_graphs(path: str) -> Tuple[List[jraph.GraphsTuple], List[str], dict]:
  """Inverse of ``save_graphs``: (graphs, ids, meta)."""
  try:
    data = np.load(path, allow_pickle=False)
    index = json.loads(bytes(data["index_json"]).decode())
    n_node, n_edge = data["n_node"], data["n_edge"]
    arrays = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(path, f"unreadable graph cache ({e})") from e
  node_off = np.concatenate([[0], np.cumsum(n_node)])
  edge_off = np.concatenate([[0], np.cumsum(n_edge)])
  graphs = []
  for i in range(len(n_node)):
    ns = slice(node_off[i], node_off[i + 1])
    es = slice(edge_off[i], edge_off[i + 1])
    sec = {s: {} for s in _SECTIONS}
    for key, v in arrays.items():
      head, _, name = key.partition("/")
      if head in sec:
        sec[head][name] = v[{"nodes": ns, "edges": es,
                             "globals": slice(i, i + 1)}[head]]
    graphs.append(jraph.GraphsTuple(
        nodes=sec["nodes"], edges=sec["edges"], globals=sec["globals"],
        senders=arrays["senders"][es], receivers=arrays["receivers"][es],
        n_node=n_node[i:i + 1].astype(np.int32),
        n_edge=n_edge[i:i + 1].astype(np.int32)))
  return graphs, index["ids"], index["meta"]


# -- building -----------------------------------------------------------------------------
def worker_pool(num_workers: int):
  """A spawn-context ``multiprocessing.Pool`` of single-threaded workers.

  Spawn (not fork): the parent has JAX (threads) loaded. All workers start
  inside the constructor, while the thread variables are set.
  """
  with single_threaded_children():
    return multiprocessing.get_context("spawn").Pool(num_workers)


class _Featurize:
  """Picklable callable for the worker pool."""

  def __init__(self, featurizer):
    self.featurizer = featurizer

  def __call__(self, structure):
    return self.featurizer(structure)


def featurize_all(structures: Sequence[Structure], featurizer,
                  num_workers: Optional[int] = None
                  ) -> List[jraph.GraphsTuple]:
  """Featurises every structure, in order.

  ``num_workers=None``: in-process below 2000 structures (spawning costs
  ~1-2 s), else one worker per CPU.
  """
  if num_workers is None:
    num_workers = 0 if len(structures) < 2000 else (os.cpu_count() or 1)
  if num_workers <= 1:
    return [featurizer(s) for s in structures]
  with worker_pool(num_workers) as pool:
    chunk = max(1, len(structures) // (8 * num_workers))
    return list(pool.imap(_Featurize(featurizer), structures, chunk))


def load_or_build(structures: Sequence[Structure], featurizer,
                  cache_dir: Optional[str],
                  num_workers: Optional[int] = None,
                  fingerprints: Optional[List[str]] = None
                  ) -> List[jraph.GraphsTuple]:
  """Featurised graphs of ``structures``, read from or written to a cache.

  Args:
    structures: the samples (their order is the graphs' order).
    featurizer: callable ``Structure -> GraphsTuple`` with ``settings()``
      (e.g. ``crystal.features.CrystalFeaturizer``; for min-max scaling pass
      the ``fit`` one so its range is part of the key).
    cache_dir: folder of ``graphs_<key>.npz`` files; None disables caching.
    num_workers: see ``featurize_all``.
    fingerprints: see ``cache_key`` (filled when ``cache_dir`` is set).
  """
  if not structures:
    raise DataError(str(cache_dir), "empty dataset: nothing to featurise")
  if cache_dir is None:
    return featurize_all(structures, featurizer, num_workers)
  key = cache_key(structures, featurizer, fingerprints)
  path = os.path.join(cache_dir, f"graphs_{key[:24]}.npz")
  if os.path.exists(path):
    graphs, ids, meta = load_graphs(path)
    if meta.get("key") == key and ids == _ids(structures):
      return graphs
  graphs = featurize_all(structures, featurizer, num_workers)
  os.makedirs(cache_dir, exist_ok=True)
  save_graphs(path, graphs, _ids(structures),
              meta={"key": key, "settings": featurizer.settings()})
  return graphs


def _ids(structures: Sequence[Structure]) -> List[str]:
  """Sample ids (``Source.name``: without parsing where the format allows)."""
  names = getattr(structures, "name", None)
  if names is not None:
    return [names(i) for i in range(len(structures))]
  return [s.id for s in structures]


# -- splits ---------------------------------------------------------------------------------
def holdout_split(n: int, seed: int = 0,
                  fractions: Tuple[float, float, float] = (0.8, 0.05, 0.15),
                  sizes: Optional[Sequence[int]] = None
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train, val, test) index arrays of a seeded permutation of range(n).

  train = int(f_train n), val = int(f_val n); test takes the rest when the
  fractions sum to 1 (reference), else int(f_test n) (the remainder unused).
  ``sizes`` = (n_train, n_val, n_test) absolute counts instead of fractions
  (CGCNN's ``--train-size/--val-size/--test-size``, e.g. MP-2018's 60000 /
  5000 / 4239); they must fit in n, the rest is unused.
  """
  perm = np.random.default_rng(seed).permutation(n)
  if sizes is not None and len(sizes):
    k = np.asarray(sizes, np.int64)
    if k.shape != (3,) or np.any(k < 0):
      raise ValueError(f"split sizes must be 3 counts >= 0, got {sizes}")
    if k.sum() > n:
      raise ValueError(f"split sizes {tuple(int(x) for x in k)} need "
                       f"{int(k.sum())} samples, the data set has {n}")
    n_train, n_val, n_test = (int(x) for x in k)
  else:
    f = np.asarray(fractions, np.float64)
    if f.shape != (3,) or np.any(f < 0) or f.sum() > 1 + 1e-9:
      raise ValueError(f"fractions must be 3 numbers >= 0 summing to <= 1, "
                       f"got {fractions}")
    n_train, n_val = int(f[0] * n), int(f[1] * n)
    n_test = (n - n_train - n_val if abs(f.sum() - 1) < 1e-9
              else int(f[2] * n))
  return (perm[:n_train], perm[n_train:n_train + n_val],
          perm[n_train + n_val:n_train + n_val + n_test])


def kfold_splits(n: int, k: int = 5, seed: int = 0
                 ) -> List[Tuple[np.ndarray, np.ndarray]]:
  """k (train, test) index pairs; the test folds partition range(n)."""
  if not 2 <= k <= n:
    raise ValueError(f"need 2 <= k <= n, got k={k}, n={n}")
  folds = np.array_split(np.random.default_rng(seed).permutation(n), k)
  return [(np.sort(np.concatenate(folds[:i] + folds[i + 1:])),
           np.sort(folds[i])) for i in range(k)]


def subset(items: Sequence, indices: np.ndarray) -> list:
  return [items[int(i)] for i in indices]


__all__ = ["cache_key", "save_graphs", "load_graphs", "featurize_all",
           "load_or_build", "holdout_split", "kfold_splits", "subset",
           "worker_pool", "single_threaded_children"]
