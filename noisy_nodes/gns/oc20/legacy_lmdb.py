"""Legacy OC20 ``data.lmdb`` files without torch: a restricted unpickler.

The IS2RE/IS2RS LMDBs of fairchem (``is2re/all/train/data.lmdb``...) hold, at
keys ``b"0" .. b"N-1"`` (plus an optional ``b"length"``), ``pickle.dumps(d,
protocol=-1)`` of torch_geometric ``Data`` objects with ``sid``,
``atomic_numbers``, ``pos``, ``pos_relaxed``, ``cell`` [1, 3, 3], ``natoms``,
``tags``, ``fixed``, ``y_init`` and ``y_relaxed`` (fairchem's LMDB datasets).

What such a pickle references, and how we rebuild it with numpy only:

* ``torch_geometric.data.data.Data`` (PyG >= 2: state ``{'_store':
  GlobalStorage(state {'_mapping': {...}, '_parent': Data}), '_edge_attr_cls':
  DataEdgeAttr, ...}``; PyG 1.x: the attributes directly in ``__dict__``) ->
  a plain attribute holder, ``_Record``.
* ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` ->
  a numpy array viewed with those strides (copied).
* ``torch.storage._load_from_bytes(b)``: ``b`` is ``torch.save(storage)`` in
  the LEGACY (non-zip) format, which ``Storage.__reduce__`` uses: five
  concatenated pieces - pickle(magic 0x1950a86a20f9469cfc6c), pickle(protocol
  1001), pickle(sys_info dict), the object pickle whose storages are
  persistent ids ``('storage', torch.FloatStorage, key, 'cpu', numel,
  view_metadata)``, pickle([keys]) - then per key an int64 element count and
  the raw little-endian buffer. The zip format (``data.pkl`` + ``data/<key>``)
  of newer ``torch.save`` is accepted as well.

Every other global is refused with ``DataError(..., "refusing to unpickle
<module.name>")``: unpickling untrusted data can otherwise run any code.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from noisy_nodes.data.sources import LazyHandle, Source
from noisy_nodes.data.structures import DataError, Structure

_TORCH_MAGIC = 0x1950a86a20f9469cfc6c
# Structure.targets name <- Data field.
_TARGET_FIELDS = (("energy_relaxed", "y_relaxed"), ("energy_initial", "y_init"))
_TORCH_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32,
    "HalfStorage": np.float16, "LongStorage": np.int64,
    "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Record:
  """Stands in for PyG ``Data`` / ``GlobalStorage``: attributes only."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    if isinstance(state, tuple):  # (dict_state, slots_state)
      state = state[0] or {}
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(f"unexpected Data state {type(state)}")
    self.__dict__.update(state)

  def fields(self) -> Dict[str, Any]:
    """The data attributes (PyG 2: ``_store._mapping``; PyG 1: __dict__)."""
    store = self.__dict__.get("_store")
    if isinstance(store, _Record):
      return dict(store.__dict__.get("_mapping", {}))
    return {k: v for k, v in self.__dict__.items()
            if not k.startswith("_") and v is not None}


class _Marker:
  """Stands in for classes referenced only by name (``DataEdgeAttr``...)."""

  def __init__(self, *args, **kwargs):
    del args, kwargs


class _StorageType:

  def __init__(self, name: str):
    self.name = name
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
  """A flat typed buffer; filled after the pickle that declares it."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = np.dtype(dtype)
    self.numel = int(numel)
    self.data: Optional[np.ndarray] = None


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _Storage) or storage.data is None:
    raise pickle.UnpicklingError("tensor without a loaded storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  flat = storage.data
  if size and (offset + sum((n - 1) * s for n, s in zip(size, stride))
               >= flat.size) and 0 not in size:
    raise pickle.UnpicklingError("tensor view exceeds its storage")
  if 0 in size:
    return np.zeros(size, flat.dtype)
  return np.lib.stride_tricks.as_strided(
      flat[offset:], size, [s * flat.itemsize for s in stride]).copy()


def _rebuild_tensor(storage, offset, size, stride):
  return _rebuild_tensor_v2(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals that OC20 Data pickles use."""

  def __init__(self, file, storages: Optional[Dict[str, _Storage]] = None,
               zip_reader=None):
    super().__init__(file)
    self._storages = storages
    self._zip_reader = zip_reader

  def find_class(self, module, name):
    full = f"{module}.{name}"
    if module.startswith("torch_geometric.data"):
      if name in ("Data", "GlobalStorage", "BaseStorage", "NodeStorage",
                  "EdgeStorage"):
        return _Record
      if name in ("DataEdgeAttr", "DataTensorAttr", "EdgeAttr", "TensorAttr"):
        return _Marker
    if full == "torch._utils._rebuild_tensor_v2":
      return _rebuild_tensor_v2
    if full == "torch._utils._rebuild_tensor":
      return _rebuild_tensor
    if full == "torch.storage._load_from_bytes":
      return _load_from_bytes
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if full in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
      return _StorageType("ByteStorage")  # raw bytes
    if full == "collections.OrderedDict":
      return collections.OrderedDict
    if full == "torch.Size":
      return tuple
    raise pickle.UnpicklingError(f"refusing to unpickle {full}")

  def persistent_load(self, pid):
    if self._storages is None:
      raise pickle.UnpicklingError("unexpected persistent id in a Data pickle")
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
    _, stype, key, _, numel = pid[:5]
    key = str(key)
    if key not in self._storages:
      storage = _Storage(stype.dtype, numel)
      if self._zip_reader is not None:
        storage.data = self._zip_reader(key, storage)
      self._storages[key] = storage
    return self._storages[key]


def _load_from_bytes(b: bytes) -> _Storage:
  """Inverse of ``torch.save(storage)`` (legacy or zip), numpy only."""
  if b[:4] == b"PK\x03\x04":
    return _load_zip(b)
  f = io.BytesIO(b)
  if _Unpickler(f).load() != _TORCH_MAGIC:
    raise pickle.UnpicklingError("not a torch-serialised storage (magic)")
  if _Unpickler(f).load() != _TORCH_PROTOCOL:
    raise pickle.UnpicklingError("unsupported torch serialisation protocol")
  sys_info = _Unpickler(f).load()
  if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
    raise pickle.UnpicklingError("big-endian torch storage")
  storages: Dict[str, _Storage] = {}
  result = _Unpickler(f, storages).load()
  keys = _Unpickler(f).load()
  for key in keys:
    storage = storages[str(key)]
    (count,) = struct.unpack("<q", _read_exact(f, 8))
    nbytes = count * storage.dtype.itemsize
    storage.data = np.frombuffer(_read_exact(f, nbytes), storage.dtype).copy()
  if not isinstance(result, _Storage) or result.data is None:
    raise pickle.UnpicklingError("storage bytes did not hold a storage")
  return result


def _load_zip(b: bytes) -> Any:
  with zipfile.ZipFile(io.BytesIO(b)) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise pickle.UnpicklingError("torch zip archive without data.pkl")
    prefix = pkl[0][:-len("data.pkl")]

    def read(key, storage):
      raw = z.read(f"{prefix}data/{key}")
      return np.frombuffer(raw, storage.dtype)[:storage.numel].copy()

    return _Unpickler(io.BytesIO(z.read(pkl[0])), {}, read).load()


def _read_exact(f, n):
  out = f.read(n)
  if len(out) != n:
    raise pickle.UnpicklingError("truncated storage buffer")
  return out


class _Skipped:
  """A tensor left undecoded by ``unpickle_data(..., tensors=False)``."""


_SKIPPED = _Skipped()


def is_skipped(value) -> bool:
  """True for a tensor field left undecoded (``tensors=False``)."""
  return value is _SKIPPED


def _skip_tensor(*args, **kwargs):
  del args, kwargs
  return _SKIPPED


class _ScalarUnpickler(_Unpickler):
  """Resolves tensors to ``_SKIPPED`` without decoding their storages: the
  scalars of a record (OC20's ``sid``, ``natoms``, ``y_relaxed``, ``y_init``
  are python numbers) at a fraction of the cost."""

  _resolved: Dict[tuple, Any] = {}  # the globals are few and immutable

  def find_class(self, module, name):
    hit = self._resolved.get((module, name))
    if hit is None:
      if f"{module}.{name}" in _TENSOR_GLOBALS:
        hit = _skip_tensor
      else:
        hit = super().find_class(module, name)
      self._resolved[(module, name)] = hit
    return hit


_TENSOR_GLOBALS = ("torch._utils._rebuild_tensor_v2",
                   "torch._utils._rebuild_tensor",
                   "torch.storage._load_from_bytes")


def unpickle_data(blob: bytes, sample: str = "<bytes>",
                  tensors: bool = True) -> Dict[str, Any]:
  """Unpickles one Data blob to {field: numpy array or python scalar}.

  ``tensors=False``: tensor fields are left undecoded (``_SKIPPED``).
  """
  try:
    obj = (_Unpickler if tensors else _ScalarUnpickler)(io.BytesIO(blob)).load()
  except DataError:
    raise
  except pickle.UnpicklingError as e:
    raise DataError(sample, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(sample, f"corrupt pickle ({type(e).__name__}: {e})") from e
  if isinstance(obj, _Record):
    return obj.fields()
  if isinstance(obj, dict):
    return dict(obj)
  raise DataError(sample, f"expected a Data object, got {type(obj).__name__}")


def data_to_structure(fields: Dict[str, Any], sample: str,
                      source: str) -> Structure:
  """OC20 Data fields -> ``Structure`` (IS2RE/IS2RS layout)."""
  def get(name, required=True):
    if name not in fields or fields[name] is None:
      if required:
        raise DataError(sample, f"missing field {name!r}")
      return None
    return fields[name]

  # Older files store atomic numbers as floats: round, and check.
  z_raw = np.asarray(get("atomic_numbers"), np.float64).reshape(-1)
  z = np.rint(z_raw)
  if np.any(np.abs(z - z_raw) > 1e-6):
    raise DataError(sample, "non-integer atomic numbers")
  n = len(z)
  pos = np.asarray(get("pos"), np.float64)
  if pos.shape != (n, 3):
    raise DataError(sample, f"pos has shape {pos.shape}, expected ({n}, 3)")
  cell = np.asarray(get("cell"), np.float64).reshape(-1)
  if cell.size != 9:
    raise DataError(sample, f"cell has {cell.size} values, expected 9")
  natoms = get("natoms", required=False)
  if natoms is not None and int(np.asarray(natoms).reshape(-1)[0]) != n:
    raise DataError(sample, f"natoms={int(np.asarray(natoms).reshape(-1)[0])}"
                    f" but {n} atomic numbers")
  node_arrays = {}
  for name, key, dtype in (("tags", "tags", np.int32),
                           ("fixed", "fixed", np.int32),
                           ("positions_relaxed", "pos_relaxed", np.float64)):
    v = get(key, required=False)
    if v is not None:
      v = np.asarray(v).astype(dtype)
      if v.shape[0] != n:
        raise DataError(sample, f"{key} has {v.shape[0]} rows, expected {n}")
      node_arrays[name] = v
  targets = {}
  for name, key in _TARGET_FIELDS:
    v = get(key, required=False)
    if v is not None:
      targets[name] = float(np.asarray(v).reshape(-1)[0])
  sid = get("sid", required=False)
  sid = None if sid is None else np.asarray(sid).reshape(-1)[0].item()
  info = {"source": source, "sid": sid, "energy_kind": "adsorption",
          "format": "legacy_lmdb"}
  s = Structure(id=str(sid) if sid is not None else sample,
                atomic_numbers=z.astype(np.int32), positions=pos,
                cell=cell.reshape(3, 3), pbc=np.ones(3, bool),
                targets=targets, node_arrays=node_arrays, info=info)
  try:
    return s.validate()
  except DataError as e:
    raise DataError(sample, e.fault) from None


def check_lmdb_complete(env, path: str, data_file: str) -> None:
  """Raises ``DataError`` if an LMDB file is shorter than its header says.

  LMDB memory-maps the file: reading a page past the end of a truncated file
  kills the process with SIGBUS instead of raising. The meta pages (the first
  two, which ``lmdb.open`` has validated) record the last page in use, so the
  size is checked before any data page is touched.
  """
  need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
  size = os.path.getsize(data_file)
  if size < need:
    env.close()
    raise DataError(path, f"truncated LMDB: {size} bytes, but its header "
                    f"records {need} bytes of pages")


# py-lmdb refuses a second open of one environment in a process: readers of
# one file (sources and their pickled copies) share it, counted, and the
# last release closes it (so the file can be opened again, e.g. to write).
# Keyed by pid: a forked child opens its own.
_ENVS: Dict[tuple, list] = {}


def _env_key(path: str, subdir: Optional[bool]):
  if not os.path.exists(path):
    raise DataError(path, "file not found")
  if subdir is None:
    subdir = os.path.isdir(path)
  return (os.path.realpath(path), bool(subdir), os.getpid()), bool(subdir)


def open_lmdb(path: str, subdir: Optional[bool] = None):
  """A read-only LMDB environment, checked complete (``DataError`` if not).

  ``subdir``: None decides from ``path`` (a folder holding ``data.mdb``).
  One environment per file and process, shared by its readers: pair each
  call with ``release_lmdb(path, subdir)``.
  """
  key, subdir = _env_key(path, subdir)
  entry = _ENVS.get(key)
  if entry is None:
    if not subdir and os.path.getsize(path) == 0:
      raise DataError(path, "empty file")
    entry = _ENVS[key] = [_open_lmdb(path, subdir), 0]
  entry[1] += 1
  return entry[0]


def release_lmdb(path: str, subdir: Optional[bool] = None) -> None:
  """Undoes one ``open_lmdb``; the last one closes the environment."""
  try:
    key, _ = _env_key(path, subdir)
  except DataError:
    key = None
  entry = _ENVS.get(key) if key else None
  if entry is None:
    return
  entry[1] -= 1
  if entry[1] <= 0:
    del _ENVS[key]
    entry[0].close()


def _open_lmdb(path: str, subdir: bool):
  import lmdb  # pylint: disable=g-import-not-at-top
  try:
    env = lmdb.open(path, subdir=subdir, readonly=True, lock=False,
                    readahead=False, meminit=False, max_readers=512)
  except lmdb.Error as e:
    raise DataError(path, f"not a readable LMDB ({e})") from None
  check_lmdb_complete(env, path, os.path.join(path, "data.mdb") if subdir
                      else path)
  return env


def lmdb_keys(env, path: str) -> List[bytes]:
  """Every key of an environment (keys only: values are not touched)."""
  import lmdb  # pylint: disable=g-import-not-at-top
  try:
    with env.begin() as txn:
      return [bytes(k) for k in txn.cursor().iternext(keys=True,
                                                       values=False)]
  except lmdb.Error as e:
    raise DataError(path, f"corrupt LMDB ({e})") from None


def _entries(env, path: str) -> int:
  import lmdb  # pylint: disable=g-import-not-at-top
  try:
    return int(env.stat()["entries"])
  except lmdb.Error as e:
    raise DataError(path, f"corrupt LMDB ({e})") from None


def _get_or_none(env, key: bytes, path: str) -> Optional[bytes]:
  import lmdb  # pylint: disable=g-import-not-at-top
  try:
    with env.begin() as txn:
      value = txn.get(key)
      return None if value is None else bytes(value)
  except lmdb.Error as e:
    raise DataError(path, f"corrupt LMDB ({e})") from None


def lmdb_get(env, key: bytes, sample: str) -> bytes:
  """The value at ``key``; ``DataError(sample)`` if missing or unreadable."""
  import lmdb  # pylint: disable=g-import-not-at-top
  try:
    with env.begin() as txn:
      blob = txn.get(key)
  except lmdb.Error as e:
    raise DataError(sample, f"corrupt LMDB ({e})") from None
  if blob is None:
    raise DataError(sample, f"key {key.decode('ascii', 'replace')!r} missing")
  return bytes(blob)


class LegacyLmdbSource(Source):
  """A fairchem ``data.lmdb`` read on demand: ``source[i]`` is key ``b"i"``.

  Construction opens the file once to check it (complete, keys ``0..N-1``
  contiguous, ``length`` consistent) and keeps only ``N``; each process that
  reads opens its own environment (``LazyHandle``). A record that does not
  unpickle or decode raises ``DataError("FILE[i]", fault)``.
  ``targets(i)`` unpickles without building or validating the structure.
  """

  def __init__(self, path: str):
    self.path = path
    # The size from the environment's entry count (and ``length``), the
    # ends checked by key: listing every key would map every page of the
    # file into this process (2 GB of RSS for 500,000 systems). A gap
    # inside 0..N-1 is a DataError naming FILE[key] when that key is read.
    env = open_lmdb(path)
    try:
      entries = _entries(env, path)
      length = _get_or_none(env, b"length", path)
      want = None
      if length is not None:
        want = pickle.loads(length) if length[:1] == b"\x80" else None
      n = want if isinstance(want, int) else entries - (length is not None)
      if isinstance(want, int) and want > entries - 1:
        raise DataError(path, f"'length' says {want} samples, found "
                        f"{entries - 1} records")
      if n <= 0 or _get_or_none(env, b"0", path) is None:
        raise DataError(path, "no samples (keys '0'..'N-1') in the LMDB")
      if _get_or_none(env, str(n - 1).encode("ascii"), path) is None:
        raise DataError(path, f"sample keys are not 0..N-1 (N = {n}: no "
                        f"key '{n - 1}')")
    finally:
      release_lmdb(path)
    self.n = int(n)
    self._env = LazyHandle(open_lmdb, path, closer=release_lmdb)

  def __len__(self) -> int:
    return self.n

  def _fields(self, i: int, tensors: bool = True):
    sample = f"{self.path}[{i}]"
    blob = lmdb_get(self._env.get(), str(i).encode("ascii"), sample)
    return unpickle_data(blob, sample, tensors), sample

  def _scalars(self, i: int, keys: Sequence[str]):
    """The fields ``keys`` of record i, decoding tensors only if one of
    them is a tensor (OC20 stores them as python numbers)."""
    fields, sample = self._fields(i, tensors=False)
    if any(is_skipped(fields.get(k)) for k in keys):
      fields, sample = self._fields(i)
    return fields, sample

  def _read(self, i: int) -> Structure:
    fields, sample = self._fields(i)
    # info['source'] = "FILE[i]": a fault found later names the record.
    return data_to_structure(fields, sample, sample)

  def _name(self, i: int) -> str:
    fields, sample = self._scalars(i, ("sid",))
    sid = fields.get("sid")
    return sample if sid is None else str(np.asarray(sid).reshape(-1)[0].item())

  def _targets(self, i: int) -> Dict[str, np.ndarray]:
    fields, sample = self._scalars(i, [k for _, k in _TARGET_FIELDS])
    out = {}
    for name, key in _TARGET_FIELDS:
      if fields.get(key) is not None:
        v = np.asarray(fields[key], np.float64).reshape(-1)
        if v.size != 1:
          raise DataError(sample, f"{key} has {v.size} values, expected 1")
        out[name] = np.float64(v[0])
    return out

  def _num_atoms(self, i: int) -> int:
    fields, _ = self._scalars(i, ("natoms",))
    if fields.get("natoms") is not None:
      return int(np.asarray(fields["natoms"]).reshape(-1)[0])
    fields, _ = self._fields(i)
    return int(np.asarray(fields["atomic_numbers"]).reshape(-1).shape[0])


def read_legacy_lmdb(path: str, limit: Optional[int] = None
                     ) -> List[Structure]:
  """Reads a fairchem ``data.lmdb`` (file, or a directory holding one)."""
  source = LegacyLmdbSource(path)
  return list(source if limit is None else source[:limit])


# -- writer (tests, and converting our data for fairchem tools) -----------------
class _Global:

  def __init__(self, module, name):
    self.module, self.name = module, name


class _Call:
  """REDUCE (``new=False``) or NEWOBJ (``new=True``) then optional BUILD."""

  def __init__(self, func, args=(), state=None, new=False, memo=None):
    self.func, self.args, self.state, self.new = func, args, state, new
    self.memo = memo


class _Ref:

  def __init__(self, memo):
    self.memo = memo


class _PersId:

  def __init__(self, pid):
    self.pid = pid


def _emit(obj, out: bytearray) -> None:
  """Writes protocol-2 opcodes (readable by any unpickler)."""
  if obj is None:
    out += b"N"
  elif obj is True or obj is False:
    out += b"\x88" if obj else b"\x89"
  elif isinstance(obj, int):
    if 0 <= obj < 256:
      out += b"K" + bytes([obj])
    elif -2**31 <= obj < 2**31:
      out += b"J" + struct.pack("<i", obj)
    else:
      raw = obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
      out += b"\x8a" + bytes([len(raw)]) + raw
  elif isinstance(obj, float):
    out += b"G" + struct.pack(">d", obj)
  elif isinstance(obj, str):
    raw = obj.encode("utf-8")
    out += b"X" + struct.pack("<I", len(raw)) + raw
  elif isinstance(obj, bytes):
    # SHORT_BINBYTES/BINBYTES are protocol 3; torch's outer pickle is 4+.
    out += b"B" + struct.pack("<I", len(obj)) + obj
  elif isinstance(obj, tuple):
    out += b"("
    for x in obj:
      _emit(x, out)
    out += b"t"
  elif isinstance(obj, list):
    out += b"]("
    for x in obj:
      _emit(x, out)
    out += b"e"
  elif isinstance(obj, dict):
    out += b"}("
    for k, v in obj.items():
      _emit(k, out)
      _emit(v, out)
    out += b"u"
  elif isinstance(obj, _Global):
    out += f"c{obj.module}\n{obj.name}\n".encode("ascii")
  elif isinstance(obj, _Call):
    _emit(obj.func, out)
    _emit(tuple(obj.args), out)
    out += b"\x81" if obj.new else b"R"
    if obj.memo is not None:
      out += b"q" + bytes([obj.memo])
    if obj.state is not None:
      _emit(obj.state, out)
      out += b"b"
  elif isinstance(obj, _Ref):
    out += b"h" + bytes([obj.memo])
  elif isinstance(obj, _PersId):
    _emit(obj.pid, out)
    out += b"Q"
  else:
    raise TypeError(f"cannot emit {type(obj).__name__}")


def _dumps(obj, protocol: int) -> bytes:
  out = bytearray(b"\x80" + bytes([protocol]))
  _emit(obj, out)
  out += b"."
  return bytes(out)


def _storage_bytes(flat: np.ndarray) -> bytes:
  """``torch.save(storage, _use_new_zipfile_serialization=False)``."""
  name = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items()}[flat.dtype]
  key = "0"
  sys_info = {"protocol_version": _TORCH_PROTOCOL, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  pid = _PersId(("storage", _Global("torch", name), key, "cpu", flat.size,
                 None))
  parts = [_dumps(_TORCH_MAGIC, 2), _dumps(_TORCH_PROTOCOL, 2),
           _dumps(sys_info, 2), _dumps(pid, 2), _dumps([key], 2),
           struct.pack("<q", flat.size),
           np.ascontiguousarray(flat).astype(flat.dtype.newbyteorder("<"))
           .tobytes()]
  return b"".join(parts)


def _tensor(x: np.ndarray) -> _Call:
  """How ``pickle.dumps(torch_tensor)`` writes a contiguous tensor."""
  x = np.ascontiguousarray(x)
  stride = tuple(int(s // x.itemsize) for s in x.strides) if x.ndim else ()
  storage = _Call(_Global("torch.storage", "_load_from_bytes"),
                  (_storage_bytes(x.reshape(-1)),))
  return _Call(_Global("torch._utils", "_rebuild_tensor_v2"),
               (storage, 0, tuple(x.shape), stride, False,
                _Call(_Global("collections", "OrderedDict"), ())))


def data_pickle(fields: Dict[str, Any], pyg2: bool = True) -> bytes:
  """``pickle.dumps(Data(**fields), protocol=-1)`` as torch+PyG write it.

  numpy arrays become torch tensors (float64 arrays are written as float32
  like OC20's files, integers as int64), python scalars stay scalars.
  """
  conv = {}
  for k, v in fields.items():
    if isinstance(v, np.ndarray):
      if v.dtype.kind == "f":
        v = v.astype(np.float32)
      elif v.dtype.kind in "iu" and v.dtype != np.uint8:
        v = v.astype(np.int64)
      conv[k] = _tensor(v)
    else:
      conv[k] = v
  data_cls = _Global("torch_geometric.data.data", "Data")
  if pyg2:
    store = _Call(_Global("torch_geometric.data.storage", "GlobalStorage"),
                  (), {"_mapping": conv, "_parent": _Ref(0)}, new=True)
    state = {"_edge_attr_cls": _Global("torch_geometric.data.data",
                                       "DataEdgeAttr"),
             "_tensor_attr_cls": _Global("torch_geometric.data.data",
                                         "DataTensorAttr"),
             "_store": store}
  else:
    state = dict(conv)
  return _dumps(_Call(data_cls, (), state, new=True, memo=0), 4)


def write_legacy_lmdb_for_tests(path: str, samples: Sequence[Dict[str, Any]],
                                pyg2: bool = True,
                                write_length: bool = True) -> None:
  """Writes ``samples`` (dicts of OC20 Data fields) as a legacy data.lmdb."""
  import lmdb  # pylint: disable=g-import-not-at-top
  env = lmdb.open(path, subdir=False, map_size=1 << 30, meminit=False,
                  lock=False)
  with env.begin(write=True) as txn:
    for i, fields in enumerate(samples):
      txn.put(str(i).encode("ascii"), data_pickle(fields, pyg2))
    if write_length:
      txn.put(b"length", pickle.dumps(len(samples), protocol=-1))
  env.sync()
  env.close()
