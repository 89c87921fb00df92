"""Readers for OC20 data in its real formats, returning ``Structure`` lists.

* ``read_trajectory``: an ASE ``.traj`` of one relaxation (raw OC20 data).
* ``read_ase_db``: an ASE database (``.db`` sqlite or ``.json``).
* ``read_aselmdb`` / ``write_aselmdb``: fairchem's ``*.aselmdb`` - an LMDB
  file (``subdir=False``) whose keys ``b"1".."N"`` hold
  ``zlib.compress(orjson.dumps(row_dict, OPT_SERIALIZE_NUMPY))`` of an ASE
  ``AtomsRow`` dict (``numbers``, ``positions``, ``cell``, ``pbc``, ``tags``,
  ``constraints`` as ``[{"name": "FixAtoms", "kwargs": {"indices": ..}}]``,
  ``energy``, ``key_value_pairs``, ``data``, ``ctime``...) and the reserved
  keys ``nextid``, ``metadata``, ``deleted_ids`` (fairchem-core
  ``datasets/lmdb_database.py``). numpy arrays are plain JSON lists there;
  ASE's ``{"__ndarray__": [shape, dtype, flat]}`` encoding is accepted too.
* ``read_legacy_lmdb`` lives in ``legacy_lmdb.py``.

Every structure gets ``node_arrays`` ``tags`` (0 sub-surface, 1 surface, 2
adsorbate), ``fixed`` (int32, 1 = fixed) and ``positions_relaxed`` when
known; ``targets`` ``energy_relaxed`` (OC20 ``y_relaxed``) and
``energy_initial`` (``y_init``) when known; ``info`` ``sid``, ``source`` and
``energy_kind`` - 'adsorption' (OC20 labels, or referenced here) or 'total'
(raw calculator energies, which a model of adsorption energies must not mix).

Tag inference (files without tags, e.g. raw trajectories). OC20 adsorbates
are made of H, C, N and O only, so: adsorbate (2) = H/C/N/O atoms that are
not below the slab's top layer (z above the topmost slab atom minus 1.5 Å;
this keeps N or O inside a nitride/oxide slab in the slab); slab = all other
atoms. Surface (1) = free slab atoms when the file fixes some atoms (OC20 fixes
everything below the surface layers), else the slab atoms within 1.0 Å (in z)
of the topmost slab atom; sub-surface (0) = the remaining slab atoms. The slab
normal is taken as Cartesian z, as in OC20.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from noisy_nodes.data.sources import LazyHandle, Source
from noisy_nodes.gns.oc20.legacy_lmdb import LegacyLmdbSource  # noqa: F401
from noisy_nodes.gns.oc20.legacy_lmdb import (lmdb_get, lmdb_keys, open_lmdb,
                                              release_lmdb)
from noisy_nodes.gns.oc20.legacy_lmdb import read_legacy_lmdb  # noqa: F401
from noisy_nodes.data.structures import DataError, Structure

ADSORBATE_ELEMENTS = (1, 6, 7, 8)  # H, C, N, O
_TOP_LAYER_TOL = 1.0  # Å
_ADSORBATE_DEPTH = 1.5  # Å
_RESERVED_KEYS = (b"nextid", b"metadata", b"deleted_ids")


# -- tags and fixed flags -------------------------------------------------------
def infer_tags(numbers: np.ndarray, positions: np.ndarray,
               fixed: Optional[np.ndarray] = None) -> np.ndarray:
  """OC20 tags from geometry (rule in the module docstring). -> int32 [n]."""
  numbers = np.asarray(numbers)
  z = np.asarray(positions, np.float64)[:, 2]
  light = np.isin(numbers, ADSORBATE_ELEMENTS)
  tags = np.zeros(len(numbers), np.int32)
  if not (~light).any():  # no metal at all: everything is "adsorbate"
    tags[:] = 2
    return tags
  top = z[~light].max()
  ads = light & (z > top - _ADSORBATE_DEPTH)
  tags[ads] = 2
  slab = ~ads
  if fixed is not None and np.any(fixed):
    tags[slab & (np.asarray(fixed) == 0)] = 1
  else:
    tags[slab & (z > z[slab].max() - _TOP_LAYER_TOL)] = 1
  return tags


def fixed_from_constraints(constraints: Sequence[Any], n: int,
                           sample: str) -> np.ndarray:
  """FixAtoms (objects or ``todict()`` dicts) -> int32 [n], 1 = fixed."""
  fixed = np.zeros(n, np.int32)
  for c in constraints or ():
    if isinstance(c, dict):
      name, kwargs = c.get("name"), c.get("kwargs", {})
      if name != "FixAtoms":
        continue
      idx = np.asarray(_decode(kwargs.get("indices", kwargs.get("mask", []))))
    elif type(c).__name__ == "FixAtoms":
      idx = np.asarray(c.get_indices())
    else:
      continue
    if idx.dtype == bool:
      if idx.shape != (n,):
        raise DataError(sample, f"FixAtoms mask of length {idx.size} for "
                        f"{n} atoms")
      idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
      raise DataError(sample, f"FixAtoms index {int(idx.max())} out of range "
                      f"for {n} atoms")
    fixed[idx] = 1
  return fixed


def adsorption_energy(total: np.ndarray, numbers: np.ndarray,
                      tags: np.ndarray, gas_refs: Mapping[str, float],
                      slab_energy: float, sample: str) -> np.ndarray:
  """E_ads = E(slab+ads) - E(clean slab) - sum_adsorbate-atoms gas_ref[el]."""
  from ase.data import chemical_symbols  # pylint: disable=g-import-not-at-top
  ref = 0.0
  for zi in np.asarray(numbers)[np.asarray(tags) == 2]:
    sym = chemical_symbols[int(zi)]
    if sym not in gas_refs:
      raise DataError(sample, f"no gas reference energy for element {sym}")
    ref += float(gas_refs[sym])
  return np.asarray(total, np.float64) - float(slab_energy) - ref


# -- ASE trajectory -------------------------------------------------------------
def read_trajectory(path: str, gas_refs: Optional[Mapping[str, float]] = None,
                    slab_energy: Optional[float] = None) -> List[Structure]:
  """One relaxation trajectory -> [Structure] (initial frame as positions).

  Args:
    path: ASE ``.traj`` file, frames initial ... relaxed.
    gas_refs: per-element reference energies (eV/atom) of the adsorbate
      atoms; with ``slab_energy`` (clean relaxed slab, eV) the energies become
      adsorption energies. Without them energies stay total (``energy_kind``
      'total').
  Returns:
    A one-element list. ``frames_positions`` [F, n, 3]; targets
    ``energy_initial``, ``energy_relaxed`` and ``frames_energy`` [F] when every
    frame has an energy.
  """
  from ase.io.trajectory import Trajectory  # pylint: disable=g-import-not-at-top
  if (gas_refs is None) != (slab_energy is None):
    raise ValueError("give both gas_refs and slab_energy, or neither")
  _check_file(path)
  try:
    with Trajectory(path, "r") as traj:
      frames = [traj[i] for i in range(len(traj))]
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(path, f"unreadable or truncated trajectory "
                    f"({type(e).__name__}: {e})") from None
  if not frames:
    raise DataError(path, "trajectory has no frames")
  first, last = frames[0], frames[-1]
  n = len(first)
  for i, f in enumerate(frames):
    if len(f) != n or not np.array_equal(f.numbers, first.numbers):
      raise DataError(f"{path}[{i}]", "frame has different atoms than frame 0")
  fixed = fixed_from_constraints(first.constraints, n, path)
  tags = first.get_tags().astype(np.int32)
  tags_source = "file"
  # All-zero tags mean "no tags"; values outside {0, 1, 2} are not OC20 tags
  # (ase.build numbers slab layers 1..L and tags adsorbates 0): infer both.
  if not tags.any() or tags.min() < 0 or tags.max() > 2:
    tags_source = "inferred" if not tags.any() else "inferred (non-OC20 tags)"
    tags = infer_tags(first.numbers, first.positions, fixed)
  energies = []
  for f in frames:
    calc = f.calc
    e = None
    if calc is not None and "energy" in getattr(calc, "results", {}):
      e = float(calc.results["energy"])
    energies.append(e)
  targets = {}
  kind = "total"
  if all(e is not None for e in energies):
    energies = np.array(energies)
    if not np.all(np.isfinite(energies)):
      raise DataError(path, "non-finite energy in trajectory")
    if gas_refs is not None:
      energies = adsorption_energy(energies, first.numbers, tags, gas_refs,
                                   slab_energy, path)
      kind = "adsorption"
    targets = {"energy_initial": energies[0], "energy_relaxed": energies[-1],
               "frames_energy": energies}
  elif gas_refs is not None:
    raise DataError(path, "frames without energies cannot be referenced")
  sid = os.path.splitext(os.path.basename(path))[0]
  frames_pos = np.stack([f.positions for f in frames])
  s = Structure(
      id=sid, atomic_numbers=first.numbers, positions=first.positions,
      cell=np.asarray(first.cell), pbc=first.pbc, targets=targets,
      node_arrays={"tags": tags, "fixed": fixed,
                   "positions_relaxed": last.positions,
                   "frames_positions": frames_pos},
      info={"sid": sid, "source": path, "energy_kind": kind,
            "tags_source": tags_source, "num_frames": len(frames),
            "format": "ase_traj"})
  return [_validated(s, path)]


class TrajectorySource(Source):
  """One system per ASE ``.traj`` file (fairchem's raw relaxations), each
  read by ``read_trajectory`` when accessed; ``name(i)`` is the file stem
  (the OC20 sid) without opening the file."""

  def __init__(self, files: Sequence[str]):
    self.files = [str(f) for f in files]

  def __len__(self) -> int:
    return len(self.files)

  def _read(self, i: int) -> Structure:
    return read_trajectory(self.files[i])[0]

  def _name(self, i: int) -> str:
    return os.path.splitext(os.path.basename(self.files[i]))[0]


# -- ASE database (sqlite / json) ----------------------------------------------
class AseDbSource(Source):
  """Rows of an ASE database (``.db`` sqlite or ``.json``) read on demand.

  Construction selects the row ids only; ``source[i]`` fetches one row (see
  ``row_dict_to_structure``). Each process opens its own connection.
  """

  def __init__(self, path: str, selection: Optional[str] = None):
    _check_file(path)
    self.path = path
    try:
      db = _connect_db(path)
      rows = db.select(selection, include_data=False)
      self.ids = np.asarray([row.id for row in rows], np.int64)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(path, f"unreadable ASE database "
                      f"({type(e).__name__}: {e})") from None
    if not len(self.ids):
      raise DataError(path, "database has no rows")
    self._db = LazyHandle(_connect_db, path)

  def __len__(self) -> int:
    return int(self.ids.shape[0])

  def _read(self, i: int) -> Structure:
    rid = int(self.ids[i])
    sample = f"{self.path}[id={rid}]"
    try:
      row = self._db.get().get(id=rid)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(sample, f"unreadable row ({type(e).__name__}: {e})"
                      ) from None
    dct = {"numbers": row.numbers, "positions": row.positions,
           "cell": np.asarray(row.cell), "pbc": row.pbc,
           "tags": row.get("tags"),
           "constraints": [c.todict() for c in row.constraints],
           "energy": row.get("energy"),
           "key_value_pairs": dict(row.key_value_pairs),
           "data": dict(row.data or {})}
    return row_dict_to_structure(dct, sample, self.path, rid)


def _connect_db(path: str):
  import ase.db  # pylint: disable=g-import-not-at-top
  return ase.db.connect(path)


def read_ase_db(path: str, selection: Optional[str] = None
                ) -> List[Structure]:
  """Rows of an ASE database -> [Structure] (see ``row_dict_to_structure``)."""
  return list(AseDbSource(path, selection))


def row_dict_to_structure(dct: Mapping[str, Any], sample: str, source: str,
                          row_id: Any = None) -> Structure:
  """An ASE AtomsRow dict -> Structure.

  OC20 labels are looked up in ``key_value_pairs`` then ``data``: ``sid``,
  ``y_relaxed`` (-> ``energy_relaxed``, adsorption), ``y_init``
  (-> ``energy_initial``), ``pos_relaxed`` [n, 3]. Without ``y_relaxed`` the
  row's calculator ``energy`` is used as a 'total' energy (unless
  ``energy_kind`` in ``key_value_pairs`` says otherwise).
  """
  try:
    numbers = np.asarray(_decode(dct["numbers"]))
    positions = np.asarray(_decode(dct["positions"]), np.float64)
  except KeyError as e:
    raise DataError(sample, f"row has no {e.args[0]!r}") from None
  except (TypeError, ValueError) as e:
    raise DataError(sample, f"bad numbers/positions ({e})") from None
  n = len(numbers)
  if numbers.ndim != 1 or n == 0:
    raise DataError(sample, "row has no atoms")
  if numbers.dtype.kind not in "iu":
    raise DataError(sample, f"atomic numbers of dtype {numbers.dtype}")
  if positions.shape != (n, 3):
    raise DataError(sample, f"positions shape {positions.shape} for {n} atoms")
  cell = np.asarray(_decode(dct.get("cell", np.zeros((3, 3)))), np.float64)
  if cell.size != 9:
    raise DataError(sample, f"cell has {cell.size} values")
  pbc = np.asarray(_decode(dct.get("pbc", [False] * 3)), bool).reshape(-1)
  kvp = dict(dct.get("key_value_pairs") or {})
  data = {k: _decode(v) for k, v in (dct.get("data") or {}).items()}

  def label(name):
    return kvp[name] if name in kvp else data.get(name)

  fixed = fixed_from_constraints(dct.get("constraints") or [], n, sample)
  tags = dct.get("tags")
  if tags is None or not np.any(_decode(tags)):
    tags, tags_source = infer_tags(numbers, positions, fixed), "inferred"
  else:
    tags, tags_source = np.asarray(_decode(tags), np.int32), "file"
  if tags.shape != (n,) or tags.min() < 0 or tags.max() > 2:
    raise DataError(sample, "tags must be n values in {0, 1, 2}")
  node_arrays = {"tags": tags, "fixed": fixed}
  if label("pos_relaxed") is not None:
    pr = np.asarray(label("pos_relaxed"), np.float64)
    if pr.shape != (n, 3):
      raise DataError(sample, f"pos_relaxed shape {pr.shape} for {n} atoms")
    node_arrays["positions_relaxed"] = pr
  if data.get("frames_positions") is not None:
    node_arrays["frames_positions"] = np.asarray(data["frames_positions"],
                                                 np.float64)
  targets = {}
  kind = kvp.get("energy_kind")
  try:
    if label("y_relaxed") is not None:
      targets["energy_relaxed"] = float(label("y_relaxed"))
      kind = kind or "adsorption"
    elif dct.get("energy") is not None:
      targets["energy_relaxed"] = float(dct["energy"])
      kind = kind or "total"
    if label("y_init") is not None:
      targets["energy_initial"] = float(label("y_init"))
    if data.get("frames_energy") is not None:
      targets["frames_energy"] = np.asarray(data["frames_energy"], np.float64)
  except (TypeError, ValueError) as e:
    raise DataError(sample, f"bad energy label ({e})") from None
  sid = label("sid")
  sid = row_id if sid is None else sid
  info = {"sid": sid if isinstance(sid, (int, str)) else str(sid),
          "source": source, "energy_kind": kind or "unknown",
          "tags_source": tags_source, "row_id": row_id}
  s = Structure(id=str(sid), atomic_numbers=numbers, positions=positions,
                cell=cell.reshape(3, 3), pbc=pbc, targets=targets,
                node_arrays=node_arrays, info=info)
  return _validated(s, sample)


# -- fairchem ASE-LMDB ------------------------------------------------------------
def _aselmdb_value(path: str, key, raw: bytes):
  import orjson  # pylint: disable=g-import-not-at-top
  try:
    return orjson.loads(zlib.decompress(raw))
  except (zlib.error, orjson.JSONDecodeError) as e:
    raise DataError(f"{path}[{key}]", f"corrupt value, not zlib-compressed"
                    f" JSON ({e})") from None


class AseLmdbSource(Source):
  """A fairchem ``*.aselmdb`` read on demand, rows in id order.

  Construction reads the keys and the reserved ``nextid`` / ``deleted_ids``
  only; ``source[i]`` decompresses and decodes one row. A row that does not
  decode raises ``DataError("FILE[id]", fault)``.
  """

  def __init__(self, path: str):
    _check_file(path)
    self.path = path
    env = open_lmdb(path, subdir=False)  # a truncated file would be SIGBUS
    try:
      keys = set(lmdb_keys(env, path))
      values = {k: lmdb_get(env, k, path) for k in _RESERVED_KEYS
                if k in keys}
    finally:
      release_lmdb(path, subdir=False)
    deleted = set()
    if b"deleted_ids" in values:
      deleted = set(_aselmdb_value(path, "deleted_ids",
                                   values[b"deleted_ids"]) or [])
    ids = sorted(int(k) for k in keys if k.isdigit())
    ids = [i for i in ids if i not in deleted]
    if not ids:
      raise DataError(path, "no rows (keys '1'..'N') in the ASE-LMDB")
    if b"nextid" in values:
      nextid = _aselmdb_value(path, "nextid", values[b"nextid"])
      if not isinstance(nextid, int) or nextid <= ids[-1]:
        raise DataError(path, f"nextid {nextid!r} is not above the last "
                        f"row id {ids[-1]}")
    self.ids = np.asarray(ids, np.int64)
    self._env = LazyHandle(open_lmdb, path, False, closer=release_lmdb)

  def __len__(self) -> int:
    return int(self.ids.shape[0])

  def _row(self, i: int):
    rid = int(self.ids[i])
    sample = f"{self.path}[{rid}]"
    dct = _aselmdb_value(self.path, rid, lmdb_get(
        self._env.get(), str(rid).encode("ascii"), sample))
    if not isinstance(dct, dict):
      raise DataError(sample, "row is not a JSON object")
    return dct, sample, rid

  def _read(self, i: int) -> Structure:
    dct, sample, rid = self._row(i)
    return row_dict_to_structure(dct, sample, self.path, rid)


def read_aselmdb(path: str) -> List[Structure]:
  """A fairchem ``*.aselmdb`` file -> [Structure], in id order."""
  return list(AseLmdbSource(path))


def structure_to_row_dict(s: Structure) -> Dict[str, Any]:
  """The AtomsRow dict fairchem's ``LMDBDatabase._write`` stores."""
  import time  # pylint: disable=g-import-not-at-top
  # ASE's db time unit: years since 2000 (ase.db.core.now()).
  t = (time.time() - 946684800.0) / 31557600.0
  dct: Dict[str, Any] = {
      "numbers": s.atomic_numbers.astype(np.int64),
      "positions": s.positions, "cell": s.cell, "pbc": s.pbc,
      "ctime": t, "mtime": t, "user": os.getenv("USER", "noisy_nodes"),
      # Stable across processes (python's hash() is salted per process).
      "unique_id": hashlib.md5(f"{s.id}/{s.num_atoms}".encode()).hexdigest(),
  }
  if "tags" in s.node_arrays:
    dct["tags"] = s.node_arrays["tags"].astype(np.int64)
  fixed = s.node_arrays.get("fixed")
  if fixed is not None and np.any(fixed):
    dct["constraints"] = [{"name": "FixAtoms", "kwargs": {
        "indices": np.flatnonzero(fixed).astype(np.int64)}}]
  kvp: Dict[str, Any] = {"sid": s.info.get("sid", s.id)}
  if s.info.get("energy_kind"):
    kvp["energy_kind"] = s.info["energy_kind"]
  if "energy_relaxed" in s.targets:
    kvp["y_relaxed"] = float(s.targets["energy_relaxed"])
  if "energy_initial" in s.targets:
    kvp["y_init"] = float(s.targets["energy_initial"])
  dct["key_value_pairs"] = kvp
  data = {}
  if "positions_relaxed" in s.node_arrays:
    data["pos_relaxed"] = s.node_arrays["positions_relaxed"]
  for k in ("frames_positions",):
    if k in s.node_arrays:
      data[k] = s.node_arrays[k]
  if "frames_energy" in s.targets:
    data["frames_energy"] = s.targets["frames_energy"]
  if data:
    dct["data"] = data
  return dct


def write_aselmdb(path: str, rows: Sequence[Structure],
                  metadata: Optional[Dict[str, Any]] = None) -> None:
  """Writes structures as a fairchem ``*.aselmdb`` (atomically)."""
  import lmdb  # pylint: disable=g-import-not-at-top
  import orjson  # pylint: disable=g-import-not-at-top

  def enc(obj):
    return zlib.compress(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY))

  tmp = f"{path}.tmp{os.getpid()}"
  size = 1 << 20
  payload = [enc(structure_to_row_dict(s)) for s in rows]
  size += 2 * sum(len(p) for p in payload) + 4096 * (len(payload) + 4)
  env = lmdb.open(tmp, subdir=False, map_size=size, meminit=False, lock=False)
  try:
    with env.begin(write=True) as txn:
      for i, p in enumerate(payload, start=1):
        txn.put(str(i).encode("ascii"), p)
      txn.put(b"nextid", enc(len(payload) + 1))
      if metadata is not None:
        txn.put(b"metadata", enc(metadata))
    env.sync()
  finally:
    env.close()
  os.replace(tmp, path)


# -- helpers --------------------------------------------------------------------
def _decode(x):
  """ASE's JSON array encoding {"__ndarray__": [shape, dtype, flat]}."""
  if isinstance(x, dict) and "__ndarray__" in x:
    shape, dtype, flat = x["__ndarray__"]
    return np.asarray(flat, dtype=dtype).reshape(shape)
  return x


def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise DataError(path, "file not found")
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise DataError(path, "empty file")


def _validated(s: Structure, sample: str) -> Structure:
  try:
    return s.validate()
  except DataError as e:
    raise DataError(sample, e.fault) from None
