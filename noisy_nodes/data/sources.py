"""Random-access sources of structures: datasets read from disk on demand.

A ``Source`` is a ``collections.abc.Sequence`` of ``Structure``:
``len(source)`` and ``source[i]``, which reads (and parses) sample ``i`` only
when asked, so a dataset's size costs an index, not its structures. Every
reader (legacy OC20 ``data.lmdb``, ``*.aselmdb``, ASE ``.db``, crystal
folders, QM9 xyz files and archives) returns one; tasks' ``load_splits``
return ``{split: Source}``; in-memory lists stay possible through
``ListSource``.

The contract (docs/design.md, data section):

* ``source[i]`` raises ``IndexError`` outside ``[-len, len)`` and
  ``DataError`` naming the file and the record for a record it cannot decode.
* ``source.name(i)`` is sample ``i``'s id, cheaply where the format allows.
* ``source.targets(i)`` / ``source.num_atoms(i)`` are fast paths for
  statistics (target mean/std, node budgets): formats that store them apart
  from the coordinates override them; the default reads the structure.
* A source is picklable: it holds paths and index arrays only. Handles
  (LMDB environments, open archives, database connections) are opened lazily
  by ``LazyHandle`` in each process that reads and re-opened after a fork or
  a spawn (the owning pid is checked on each access); pickling drops them.
"""
from __future__ import annotations

import bisect
import collections.abc
import json
import operator
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from noisy_nodes.data.structures import Structure

__all__ = ["Source", "ListSource", "Subset", "Concat", "Mapped", "LazyHandle",
           "NpzSource", "validated", "as_source"]


class Source(collections.abc.Sequence):
  """Base class: subclasses implement ``__len__`` and ``_read(i)``.

  ``i`` passed to ``_read`` / ``_name`` / ``_targets`` / ``_num_atoms`` is
  already normalised to ``0 <= i < len(self)``.
  """

  def __len__(self) -> int:
    raise NotImplementedError

  def _read(self, i: int) -> Structure:
    raise NotImplementedError

  def _name(self, i: int) -> str:
    return self._read(i).id

  def _targets(self, i: int) -> Dict[str, np.ndarray]:
    return self._read(i).targets

  def _num_atoms(self, i: int) -> int:
    return self._read(i).num_atoms

  # -- public ------------------------------------------------------------------
  def _index(self, i) -> int:
    n = len(self)
    try:
      j = operator.index(i)
    except TypeError:
      j = None
    if j is None or isinstance(i, (bool, np.bool_)):
      raise TypeError(f"{type(self).__name__} indices must be integers or "
                      f"slices, not {type(i).__name__}")
    if not -n <= j < n:
      raise IndexError(f"{type(self).__name__} index {i} out of range for "
                       f"{n} samples")
    return j + n if j < 0 else j

  def __getitem__(self, i):
    if isinstance(i, slice):
      return Subset(self, range(*i.indices(len(self))))
    return self._read(self._index(i))

  def __iter__(self) -> Iterator[Structure]:
    for i in range(len(self)):
      yield self._read(i)

  def name(self, i: int) -> str:
    """Sample ``i``'s id (without parsing its coordinates where possible)."""
    return self._name(self._index(i))

  def targets(self, i: int) -> Dict[str, np.ndarray]:
    """Sample ``i``'s graph-level targets (fast path where stored apart)."""
    return self._targets(self._index(i))

  def num_atoms(self, i: int) -> int:
    """Sample ``i``'s atom count (fast path where stored apart)."""
    return self._num_atoms(self._index(i))

  def release(self) -> None:
    """Closes this process's file handles (each reopens on its next read).

    For after a pass that touched much of a file (the task's statistics):
    the pages an LMDB mapped stay in the process's resident memory while
    the environment is open. Reaches the sources this one wraps.
    """
    for value in vars(self).values():
      items = (value,)
      if isinstance(value, (list, tuple)) and value and isinstance(
          value[0], (LazyHandle, Source)):  # not an index or sample list
        items = value
      for item in items:
        if isinstance(item, LazyHandle):
          item.close()
        elif isinstance(item, Source):
          item.release()

  def names(self) -> List[str]:
    return [self._name(i) for i in range(len(self))]

  def __repr__(self) -> str:
    return f"{type(self).__name__}({len(self)} samples)"


class ListSource(Source):
  """Structures held in memory (small generated sets, tests)."""

  def __init__(self, structures: Sequence[Structure]):
    self.structures = list(structures)

  def __len__(self) -> int:
    return len(self.structures)

  def _read(self, i: int) -> Structure:
    return self.structures[i]


class Subset(Source):
  """``source`` restricted to ``indices`` (in that order)."""

  def __init__(self, source: Sequence[Structure], indices):
    self.source = as_source(source)
    idx = np.asarray(list(indices) if isinstance(indices, range) else indices,
                     np.int64).reshape(-1)
    n = len(self.source)
    if idx.size and (idx.min() < -n or idx.max() >= n):
      bad = int(idx[(idx < -n) | (idx >= n)][0])
      raise IndexError(f"Subset index {bad} out of range for {n} samples")
    self.indices = np.where(idx < 0, idx + n, idx)

  def __len__(self) -> int:
    return int(self.indices.shape[0])

  def _read(self, i: int) -> Structure:
    return self.source._read(int(self.indices[i]))  # pylint: disable=protected-access

  def _name(self, i: int) -> str:
    return self.source._name(int(self.indices[i]))  # pylint: disable=protected-access

  def _targets(self, i: int):
    return self.source._targets(int(self.indices[i]))  # pylint: disable=protected-access

  def _num_atoms(self, i: int) -> int:
    return self.source._num_atoms(int(self.indices[i]))  # pylint: disable=protected-access


class Concat(Source):
  """Sources one after the other (e.g. several LMDB files of one split)."""

  def __init__(self, sources: Sequence[Sequence[Structure]]):
    self.sources = [as_source(s) for s in sources]
    self.offsets = np.cumsum([0] + [len(s) for s in self.sources]).tolist()

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def _locate(self, i: int):
    k = bisect.bisect_right(self.offsets, i) - 1
    return self.sources[k], i - self.offsets[k]

  def _read(self, i: int) -> Structure:
    s, j = self._locate(i)
    return s._read(j)  # pylint: disable=protected-access

  def _name(self, i: int) -> str:
    s, j = self._locate(i)
    return s._name(j)  # pylint: disable=protected-access

  def _targets(self, i: int):
    s, j = self._locate(i)
    return s._targets(j)  # pylint: disable=protected-access

  def _num_atoms(self, i: int) -> int:
    s, j = self._locate(i)
    return s._num_atoms(j)  # pylint: disable=protected-access


class Mapped(Source):
  """``fn(source[i], i)`` on access (a per-sample transform or check).

  ``fn`` must be picklable (a module-level function or callable object).
  ``keeps_targets``: ``fn`` leaves targets unchanged, so ``targets(i)``
  takes the source's fast path.
  """

  def __init__(self, source: Sequence[Structure],
               fn: Callable[[Structure, int], Structure],
               keeps_targets: bool = True):
    self.source = as_source(source)
    self.fn = fn
    self.keeps_targets = keeps_targets

  def __len__(self) -> int:
    return len(self.source)

  def _read(self, i: int) -> Structure:
    return self.fn(self.source._read(i), i)  # pylint: disable=protected-access

  def _name(self, i: int) -> str:
    return self.source._name(i)  # pylint: disable=protected-access

  def _targets(self, i: int):
    if self.keeps_targets:
      return self.source._targets(i)  # pylint: disable=protected-access
    return self._read(i).targets

  def _num_atoms(self, i: int) -> int:
    return self.source._num_atoms(i)  # pylint: disable=protected-access


class LazyHandle:
  """A handle opened on first use in each process, dropped by pickling.

  ``LazyHandle(opener, *args, closer=None)`` calls ``opener(*args)`` the
  first time ``get()`` is called in a process (the pid is compared on every
  call, so a forked child opens its own rather than share its parent's LMDB
  environment or file offset); ``closer(*args)``, if given, is called when
  the handle is garbage-collected in the process that opened it. ``opener``,
  ``closer`` and ``args`` must be picklable (module-level functions, paths).
  """

  def __init__(self, opener: Callable[..., Any], *args,
               closer: Optional[Callable[..., Any]] = None):
    self.opener, self.args, self.closer = opener, args, closer
    self._handle, self._pid = None, None

  def get(self):
    pid = os.getpid()
    if self._handle is None or self._pid != pid:
      # A handle inherited through fork is the parent's: dropped, not closed.
      self._handle, self._pid = self.opener(*self.args), pid
    return self._handle

  def close(self) -> None:
    if self._handle is not None and self._pid == os.getpid():
      self._handle = None
      if self.closer is not None:
        self.closer(*self.args)
    self._handle = None

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass  # interpreter shutdown

  def __getstate__(self):
    return {"opener": self.opener, "args": self.args, "closer": self.closer}

  def __setstate__(self, state):
    self.opener, self.args = state["opener"], state["args"]
    self.closer = state.get("closer")
    self._handle, self._pid = None, None


class NpzSource(Source):
  """A ``structures.save_structures`` file: concatenated arrays held
  compactly (no ``Structure`` objects), one structure built per access;
  ``targets(i)`` / ``num_atoms(i)`` / ``name(i)`` without building it."""

  def __init__(self, path: str):
    from noisy_nodes.data.structures import DataError, IndexRows  # pylint: disable=g-import-not-at-top
    self.path = path
    try:
      with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
      self.rows = IndexRows(arrays, path)
      for k in ("index_json", "index_rows", "index_rows_at"):
        arrays.pop(k, None)
      n_atoms = arrays.pop("n_atoms")
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(path, f"unreadable structure cache ({e})") from e
    self.offsets = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    self.arrays = arrays
    self.tkeys = [k[2:] for k in arrays if k.startswith("t/")]
    self.nkeys = [k[2:] for k in arrays if k.startswith("n/")]
    self.noff = {k: np.concatenate([[0], np.cumsum(arrays[f"nl/{k}"])])
                 for k in self.nkeys}

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def _name(self, i: int) -> str:
    return str(self.rows.id(i))

  def _num_atoms(self, i: int) -> int:
    return int(self.offsets[i + 1] - self.offsets[i])

  def _targets(self, i: int) -> Dict[str, np.ndarray]:
    a = self.arrays
    return {k: a[f"t/{k}"][i] for k in self.tkeys if a[f"th/{k}"][i]}

  def _read(self, i: int) -> Structure:
    a = self.arrays
    sl = slice(int(self.offsets[i]), int(self.offsets[i + 1]))
    na = {}
    for k in self.nkeys:
      o, count = self.noff[k], a[f"nc/{k}"][i]
      if o[i + 1] == o[i] and count == 0:
        continue
      v = a[f"n/{k}"][o[i]:o[i + 1]]
      if k.startswith("frames"):
        v = v.reshape((count, -1) + v.shape[1:])
      na[k] = v
    ident, info = self.rows.row(i)
    return Structure(id=ident, atomic_numbers=a["atomic_numbers"][sl],
                     positions=a["positions"][sl], cell=a["cell"][i],
                     pbc=a["pbc"][i], targets=self._targets(i),
                     node_arrays=na, info=info)


def validated(source: Sequence[Structure], skip_invalid: bool = False,
              report: Optional[List[str]] = None, check=None,
              upfront: bool = False) -> Source:
  """``structures.validate_all`` for a source, without holding structures.

  With ``skip_invalid`` every sample is read once, up front (time O(N),
  memory O(1)): the result is the ``Subset`` of the valid ones and each
  fault a "sample: fault" line of ``report`` (data_report.json). Without it
  nothing is read now: each sample is checked when it is read, and the
  first bad one raises ``DataError`` naming it (file, or id), so a fault is
  never silent; where the task's ``setup`` reads every sample (statistics,
  cached graphs) that is before training starts. ``upfront=True`` reads and
  checks every sample now even without ``skip_invalid`` (small splits that
  are read in full anyway: validation sets), raising at the first fault.
  """
  from noisy_nodes.data.structures import DataError, validate_one  # pylint: disable=g-import-not-at-top
  source = as_source(source)
  if not skip_invalid and not upfront:
    return Mapped(source, _Check(check))
  keep = []
  for i in range(len(source)):
    try:
      validate_one(source._read(i), check)  # pylint: disable=protected-access
      keep.append(i)
    except DataError as err:
      if not skip_invalid:
        raise
      if report is not None:
        report.append(str(err))
  return source if len(keep) == len(source) else Subset(source, keep)


class _Check:
  """Picklable ``Mapped`` function: ``validate_one`` on access."""

  def __init__(self, check):
    self.check = check

  def __call__(self, s: Structure, i: int) -> Structure:
    del i
    from noisy_nodes.data.structures import validate_one  # pylint: disable=g-import-not-at-top
    return validate_one(s, self.check)


def as_source(data: Sequence[Structure]) -> Source:
  """``data`` itself if a ``Source``, else a ``ListSource`` of it."""
  return data if isinstance(data, Source) else ListSource(data)


class Releaser:
  """``tick()`` per read; every ``every`` reads ``source.release()``.

  A long pass of random reads from a memory-mapped LMDB leaves ~64 KB of
  the file mapped per read (the kernel maps the pages around each fault),
  so a training stream's resident memory would grow towards the files'
  size: 2,000 steps of 8 systems on a 500,000-system folder added ~0.6 GB.
  Reopening an environment costs well under a millisecond.
  """

  def __init__(self, source, every: int = 2000):
    self.source, self.every, self.count = source, every, 0

  def tick(self) -> None:
    self.count += 1
    if self.count % self.every == 0 and isinstance(self.source, Source):
      self.source.release()


def sample_indices(n: int, cap: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of a seeded uniform sample of ``min(n, cap)`` of range(n).

  ``cap`` <= 0 or >= n: all of them. Sorted so that a sample of an LMDB or a
  chunked file is read in storage order.
  """
  if cap <= 0 or cap >= n:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size=cap, replace=False))
