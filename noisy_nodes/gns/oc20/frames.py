"""Relaxation-trajectory frames by system id, read one frame at a time.

The paper's best IS2RE recipe (Noisy Nodes §5.1, "Source of Noise") draws a
frame of each system's DFT relaxation as the noisy input. OC20 ships those
frames apart from the IS2RE records, in one of two layouts:

* raw relaxations (fairchem's ``*.traj`` downloads): one ASE trajectory
  ``<sid>.traj`` per system (``random<sid>.traj`` matches the integer sid
  of IS2RE records too), frames initial ... relaxed;
* S2EF LMDBs (``s2ef/all/train/*.lmdb``): torch_geometric ``Data`` records
  carrying ``sid`` (the system) and ``fid`` (the frame's index in its
  relaxation), ``pos``, ``atomic_numbers``...; a system's frames are spread
  over the files.

``FramesSource(path)`` indexes either layout by sid (file names; or one pass
over the S2EF records' ``sid``/``fid``, cached as an ``.npz`` in
``cache_dir`` and keyed by the files' sizes and mtimes) and reads a frame's
positions only when ``frame(sid, f)`` asks for it. It is picklable (paths and
index arrays) and opens its LMDB environments lazily in each process.
``SystemFrames`` is the lazy ``[F, n, 3]`` view that
``noise.relaxation_sample`` draws from, so the drawn frame is the only one
read.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from noisy_nodes.data import atomic
from noisy_nodes.data.sources import LazyHandle
from noisy_nodes.data.structures import DataError
from noisy_nodes.gns.oc20 import legacy_lmdb

INDEX_VERSION = 1


class SystemFrames:
  """The frames of one system: ``len()`` and ``[f] -> positions [n, 3]``."""

  def __init__(self, source: "FramesSource", sid: str):
    self.source, self.sid = source, str(sid)

  def __len__(self) -> int:
    return self.source.num_frames(self.sid)

  def __getitem__(self, f: int) -> np.ndarray:
    return self.source.frame(self.sid, int(f))


class FramesSource:
  """Frames by sid from ``<sid>.traj`` files or S2EF LMDBs (module doc)."""

  def __init__(self, path: str, cache_dir: Optional[str] = None):
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
      raise DataError(path, "no such file or folder (data.frames_path)")
    self.path = path
    trajs = (sorted(f for f in os.listdir(path) if f.endswith(".traj"))
             if os.path.isdir(path) else [])
    if trajs:
      self.kind = "traj"
      self.files = [os.path.join(path, f) for f in trajs]
      self._traj = {}
      for i, f in enumerate(trajs):
        stem = os.path.splitext(f)[0]
        self._traj[stem] = i
        # fairchem names raw relaxations random<sid>.traj; IS2RE records
        # carry the integer sid.
        if stem.startswith("random") and stem[6:].isdigit():
          self._traj.setdefault(stem[6:], i)
      return
    self.kind = "s2ef"
    if os.path.isdir(path):
      self.files = sorted(os.path.join(path, f) for f in os.listdir(path)
                          if f.endswith(".lmdb"))
    else:
      self.files = [path]
    if not self.files:
      raise DataError(path, "data.frames_path holds no <sid>.traj files and "
                      "no S2EF .lmdb files")
    self._load_index(cache_dir)
    self._envs = [LazyHandle(legacy_lmdb.open_lmdb, f,
                             closer=legacy_lmdb.release_lmdb)
                  for f in self.files]

  # -- the S2EF index ------------------------------------------------------------
  def _load_index(self, cache_dir: Optional[str]) -> None:
    key = self._index_key()
    cache = (os.path.join(cache_dir, f"s2ef_frames_{key}.npz") if cache_dir
             else None)
    if cache and os.path.exists(cache):
      data = np.load(cache, allow_pickle=False)
      sids = json.loads(bytes(data["sids_json"]).decode())
      self._set_index(sids, data["start"], data["file_index"], data["key"])
      return
    sid_of, fid, file_of, key_of = [], [], [], []
    for k, f in enumerate(self.files):
      env = legacy_lmdb.open_lmdb(f)
      try:
        for x in legacy_lmdb.lmdb_keys(env, f):
          if not x.isdigit():
            continue
          sample = f"{f}[{x.decode()}]"
          blob = legacy_lmdb.lmdb_get(env, x, sample)
          # Scalars first (no tensor decoded); tensors only if sid/fid are.
          fields = legacy_lmdb.unpickle_data(blob, sample, tensors=False)
          if any(legacy_lmdb.is_skipped(fields.get(k)) for k in ("sid", "fid")):
            fields = legacy_lmdb.unpickle_data(blob, sample)
          if fields.get("sid") is None or fields.get("fid") is None:
            raise DataError(sample, "S2EF record without 'sid' and 'fid'")
          sid_of.append(str(np.asarray(fields["sid"]).reshape(-1)[0].item()))
          fid.append(int(np.asarray(fields["fid"]).reshape(-1)[0]))
          file_of.append(k)
          key_of.append(int(x))
      finally:
        legacy_lmdb.release_lmdb(f)
    if not sid_of:
      raise DataError(self.path, "S2EF LMDBs hold no records")
    names = sorted(set(sid_of))
    code = {s: i for i, s in enumerate(names)}
    sys_idx = np.array([code[s] for s in sid_of], np.int64)
    order = np.lexsort((np.array(fid), sys_idx))
    fids = np.array(fid)[order]
    sys_sorted = sys_idx[order]
    dup = (sys_sorted[1:] == sys_sorted[:-1]) & (fids[1:] == fids[:-1])
    if dup.any():
      j = int(np.flatnonzero(dup)[0])
      raise DataError(self.path, f"system {names[sys_sorted[j]]} has frame "
                      f"fid={fids[j]} twice")
    start = np.searchsorted(sys_sorted, np.arange(len(names) + 1))
    files = np.array(file_of, np.int32)[order]
    keys = np.array(key_of, np.int64)[order]
    if cache:
      os.makedirs(cache_dir, exist_ok=True)
      atomic.savez(cache, start=start, file_index=files, key=keys,
                   sids_json=np.frombuffer(json.dumps(names).encode(),
                                           np.uint8))
    self._set_index(names, start, files, keys)

  def _set_index(self, sids: List[str], start, files, keys) -> None:
    self._sid = {s: i for i, s in enumerate(sids)}
    self._start = np.asarray(start, np.int64)
    self._file = np.asarray(files, np.int32)
    self._key = np.asarray(keys, np.int64)

  def _index_key(self) -> str:
    h = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    for f in self.files:
      st = os.stat(f)
      h.update(f"{os.path.abspath(f)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]

  # -- access --------------------------------------------------------------------
  def sids(self) -> List[str]:
    return list(self._traj if self.kind == "traj" else self._sid)

  def __contains__(self, sid) -> bool:
    return str(sid) in (self._traj if self.kind == "traj" else self._sid)

  def __len__(self) -> int:
    """The number of systems with frames."""
    return len(self._traj if self.kind == "traj" else self._sid)

  def num_frames(self, sid) -> int:
    sid = str(sid)
    if self.kind == "traj":
      with self._open_traj(sid) as traj:
        return len(traj)
    k = self._system(sid)
    return int(self._start[k + 1] - self._start[k])

  def frame(self, sid, f: int) -> np.ndarray:
    """Positions [n, 3] (Å) of frame ``f`` of system ``sid``."""
    sid = str(sid)
    if self.kind == "traj":
      with self._open_traj(sid) as traj:
        if not 0 <= f < len(traj):
          raise IndexError(f"frame {f} of {len(traj)} ({sid})")
        try:
          return np.asarray(traj[f].positions, np.float64)
        except Exception as e:  # pylint: disable=broad-except
          raise DataError(f"{self.files[self._traj[sid]]}[{f}]", f"unreadable"
                          f" frame ({type(e).__name__}: {e})") from None
    k = self._system(sid)
    lo, hi = int(self._start[k]), int(self._start[k + 1])
    if not 0 <= f < hi - lo:
      raise IndexError(f"frame {f} of {hi - lo} ({sid})")
    i = lo + f
    fname, key = self.files[int(self._file[i])], int(self._key[i])
    sample = f"{fname}[{key}]"
    env = self._envs[int(self._file[i])].get()
    fields = legacy_lmdb.unpickle_data(
        legacy_lmdb.lmdb_get(env, str(key).encode("ascii"), sample), sample)
    pos = fields.get("pos")
    if pos is None:
      raise DataError(sample, "S2EF record without 'pos'")
    return np.asarray(pos, np.float64).reshape(-1, 3)

  def system(self, sid) -> SystemFrames:
    return SystemFrames(self, sid)

  def _system(self, sid: str) -> int:
    if sid not in self._sid:
      raise KeyError(f"no frames for system {sid}")
    return self._sid[sid]

  def _open_traj(self, sid: str):
    from ase.io.trajectory import Trajectory  # pylint: disable=g-import-not-at-top
    if sid not in self._traj:
      raise KeyError(f"no trajectory for system {sid}")
    path = self.files[self._traj[sid]]
    try:
      return Trajectory(path, "r")
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(path, f"unreadable or truncated trajectory "
                      f"({type(e).__name__}: {e})") from None


def missing_systems(sids: Sequence[str], frames: FramesSource) -> List[str]:
  """The sids with no frames (reported, never silently trained without)."""
  return [s for s in sids if s not in frames]


__all__ = ["FramesSource", "SystemFrames", "missing_systems"]
