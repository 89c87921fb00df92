"""Reader for the raw QM9 files (``dsgdb9nsd_*.xyz``, Ramakrishnan et al. 2014).

One file per molecule::

  line 1        n (atom count)
  line 2        "gdb <i>" then 15 values (tab separated):
                A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv
  n lines       "El  x  y  z  mulliken_charge"   (Å, e)
  line n+3      harmonic frequencies (cm^-1), 3n-6 (3n-5 if linear)
  line n+4      SMILES from GDB-17, SMILES of the relaxed geometry
  line n+5      InChI of both

Numbers may use Mathematica's "*^" exponent (``1.2*^-6``), so ase.io cannot
read these files.

Units of the returned ``Structure.targets`` (the unit system of this
library; energies are in eV as in Noisy Nodes §5.2, "we perform training in eV
units for energetic targets"):

  =======  =====================================  ==============  ==========
  target   quantity                               file unit       our unit
  =======  =====================================  ==============  ==========
  A, B, C  rotational constants                   GHz             GHz
  mu       dipole moment                          Debye           Debye
  alpha    isotropic polarisability               bohr^3          bohr^3
  homo     HOMO energy                            Ha              eV
  lumo     LUMO energy                            Ha              eV
  gap      LUMO - HOMO                            Ha              eV
  r2       electronic spatial extent <R^2>        bohr^2          bohr^2
  zpve     zero-point vibrational energy          Ha              eV
  U0       internal energy at 0 K                 Ha              eV
  U        internal energy at 298.15 K            Ha              eV
  H        enthalpy at 298.15 K                   Ha              eV
  G        free energy at 298.15 K                Ha              eV
  Cv       heat capacity at 298.15 K              cal/(mol K)     cal/(mol K)
  =======  =====================================  ==============  ==========

Per-atom Mulliken charges go to ``node_arrays['charges']``; SMILES and InChI
to ``info``. ``id`` is the file stem ``dsgdb9nsd_%06d`` and
``info['index']`` the integer QM9 index.

Files written by ``noisy_nodes.gns.qm9.xtb`` may contain "nan" for properties
that xTB cannot give; read them with ``allow_nan=True``: such targets are
left out of ``targets`` (and listed in ``info['unavailable']``), so the
structure still validates and the npz cache marks them missing.
"""
from __future__ import annotations

import bz2
import concurrent.futures
import gzip
import hashlib
import json
import lzma
import math
import multiprocessing
import os
import re
import zipfile
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from noisy_nodes.data.sources import LazyHandle, NpzSource, Source
from noisy_nodes.data.structures import (DataError, Structure, load_structures,
                                    save_structures)

HARTREE_TO_EV = 27.211386246

PROPERTY_NAMES = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2",
                  "zpve", "U0", "U", "H", "G", "Cv")
# Properties stored in Hartree in the files, converted to eV.
ENERGY_TARGETS = ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G")
TARGET_UNITS = {
    "A": "GHz", "B": "GHz", "C": "GHz", "mu": "D", "alpha": "bohr^3",
    "homo": "eV", "lumo": "eV", "gap": "eV", "r2": "bohr^2", "zpve": "eV",
    "U0": "eV", "U": "eV", "H": "eV", "G": "eV", "Cv": "cal/(mol K)",
}
# The 12 targets of the QM9 benchmark (Noisy Nodes Table 5).
BENCHMARK_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0",
                     "U", "H", "G", "Cv")

ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

# Number of molecules flagged in the official uncharacterized.txt.
NUM_UNCHARACTERIZED = 3054

_CACHE_VERSION = 1
_ZERO_BLOCK = bytes(512)
_STEM = re.compile(r"(\d+)")


def _number(tok: str) -> float:
  """Parses a float, accepting Mathematica's ``*^`` exponent."""
  return float(tok.replace("*^", "e"))


def parse_qm9_text(text: str, name: str, allow_nan: bool = False,
                   keep_frequencies: bool = False) -> Structure:
  """Parses the text of one raw QM9 file (see module docstring).

  Args:
    text: the file content.
    name: file name, used as the ``DataError`` sample and ``info['source']``.
    allow_nan: accept "nan" property values (xTB files); they are dropped from
      ``targets`` and named in ``info['unavailable']``.
    keep_frequencies: also store the harmonic frequencies (cm^-1) as a list in
      ``info['frequencies']`` (off by default: 134k lists bloat the cache).

  Returns:
    A validated ``Structure`` with the 15 targets in the units of
    ``TARGET_UNITS``.
  """
  lines = text.strip("\n").split("\n")
  lines = [ln.rstrip("\r") for ln in lines]
  if not text.strip():
    raise DataError(name, "empty file")
  try:
    n = int(lines[0].strip())
  except ValueError:
    raise DataError(name, f"line 1: atom count {lines[0].strip()!r} is not "
                    "an integer") from None
  if n <= 0:
    raise DataError(name, f"line 1: atom count {n} must be positive")
  if len(lines) != n + 5:
    # Find where the atom block really ends to report a precise fault.
    n_atom_lines = 0
    for ln in lines[2:]:
      toks = ln.split()
      if len(toks) == 5 and toks[0].isalpha() and len(toks[0]) <= 2:
        n_atom_lines += 1
      else:
        break
    if n_atom_lines != n:
      raise DataError(name, f"wrong atom count: line 1 says {n} atoms but "
                      f"{n_atom_lines} atom lines follow")
    raise DataError(name, f"expected {n + 5} lines for {n} atoms (header, "
                    f"atoms, frequencies, SMILES, InChI), found {len(lines)}")

  head = lines[1].split()
  if len(head) < 2 or head[0] != "gdb":
    raise DataError(name, f"line 2 must start with 'gdb <index>', got "
                    f"{lines[1][:40]!r}")
  try:
    index = int(head[1])
  except ValueError:
    raise DataError(name, f"line 2: bad molecule index {head[1]!r}") from None
  vals = head[2:]
  if len(vals) != len(PROPERTY_NAMES):
    raise DataError(name, f"line 2: expected {len(PROPERTY_NAMES)} property "
                    f"values ({' '.join(PROPERTY_NAMES)}), found {len(vals)}")
  targets, unavailable = {}, []
  for key, tok in zip(PROPERTY_NAMES, vals):
    try:
      v = _number(tok)
    except ValueError:
      raise DataError(name, f"line 2: property {key} = {tok!r} is not a "
                      "number") from None
    if not math.isfinite(v):
      if allow_nan and math.isnan(v):
        unavailable.append(key)
        continue
      raise DataError(name, f"line 2: property {key} is missing ({tok!r}); "
                      "pass allow_nan=True for xTB files with unavailable "
                      "properties")
    targets[key] = v * HARTREE_TO_EV if key in ENERGY_TARGETS else v

  z, xyzq = [], []
  for i in range(n):
    toks = lines[2 + i].split()
    if len(toks) != 5:
      raise DataError(name, f"line {3 + i}: atom line must have 5 fields "
                      f"(El x y z charge), found {len(toks)}")
    el = ELEMENTS.get(toks[0])
    if el is None:
      raise DataError(name, f"line {3 + i}: unknown element {toks[0]!r} (QM9 "
                      "has H, C, N, O, F)")
    z.append(el)
    try:
      xyzq.append([float(t) for t in toks[1:]])
    except ValueError:
      try:  # slow path: Mathematica exponents
        xyzq.append([_number(t) for t in toks[1:]])
      except ValueError:
        raise DataError(name, f"line {3 + i}: bad number in "
                        f"{lines[2 + i].strip()!r}") from None
  xyzq = np.array(xyzq, np.float64)
  z = np.array(z, np.int32)
  pos, charges = xyzq[:, :3], xyzq[:, 3]
  if not np.isfinite(pos).all():
    raise DataError(name, "non-finite atom coordinates")
  node_arrays = {}
  if np.isfinite(charges).all():
    node_arrays["charges"] = charges
  elif not allow_nan:
    raise DataError(name, "non-finite Mulliken charges")
  else:
    unavailable.append("charges")

  smiles = lines[n + 3].split()
  inchi = lines[n + 4].split()
  info = {"index": index, "source": name,
          "smiles": smiles[0] if smiles else "",
          "smiles_relaxed": smiles[1] if len(smiles) > 1 else "",
          "inchi": inchi[0] if inchi else "",
          "inchi_relaxed": inchi[1] if len(inchi) > 1 else ""}
  if unavailable:
    info["unavailable"] = unavailable
  if keep_frequencies:
    try:
      info["frequencies"] = [_number(t) for t in lines[n + 2].split()]
    except ValueError:
      raise DataError(name, f"line {n + 3}: bad harmonic frequency") from None
  stem = os.path.splitext(os.path.basename(name))[0]
  s = Structure(id=stem, atomic_numbers=z, positions=pos,
                targets={k: np.float64(v) for k, v in targets.items()},
                node_arrays=node_arrays, info=info)
  # Everything Structure.validate() checks was checked above (it costs as
  # much as the parsing itself on 134k files).
  return s


def read_qm9_xyz(path: str, allow_nan: bool = False,
                 keep_frequencies: bool = False) -> Structure:
  """Reads one ``dsgdb9nsd_*.xyz`` file (see ``parse_qm9_text``)."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise DataError(path, f"cannot read file ({e})") from e
  return parse_qm9_text(_decode(raw, path), path, allow_nan, keep_frequencies)


def _decode(raw: bytes, name: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    raise DataError(name, "file is not UTF-8 text") from None


# -- uncharacterized.txt ---------------------------------------------------
def read_uncharacterized(path: str) -> Set[int]:
  """QM9 indices flagged in the official ``uncharacterized.txt``.

  That file (figshare item 3195404) has a few free-text header lines, a
  column header line starting with "Index", then one row per molecule whose
  first column is the QM9 index (further columns: SMILES of GDB-17 and of the
  relaxed geometry, energy differences), and a closing rule line. We take
  every line after the "Index" header whose first field is an integer (every
  such line if there is no header), so extra header/footer lines do no harm.
  The official file lists ``NUM_UNCHARACTERIZED`` = 3054 molecules.
  """
  try:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise DataError(path, f"cannot read file ({e})") from e
  start = 0
  for i, ln in enumerate(lines):
    toks = ln.split()
    if toks and toks[0].lower().startswith("index"):
      start = i + 1
      break
  out: Set[int] = set()
  for i, ln in enumerate(lines[start:], start + 1):
    toks = ln.strip(" #").split()
    if len(toks) < 2 or not toks[0].isdigit():
      continue
    idx = int(toks[0])
    if idx < 1:
      raise DataError(path, f"line {i}: QM9 index must be >= 1, got {idx}")
    if idx in out:
      raise DataError(path, f"line {i}: index {idx} listed twice")
    out.add(idx)
  if not out:
    raise DataError(path, "no molecule indices found (expected rows "
                    "'<index> <SMILES> ...' after an 'Index' header)")
  return out


# -- folders and archives ---------------------------------------------------
def _is_qm9_name(name: str) -> bool:
  base = os.path.basename(name)
  return base.endswith(".xyz") and not base.startswith(".")


def _sort_key(name: str):
  digits = _STEM.findall(os.path.basename(name))
  return (int(digits[-1]) if digits else -1, name)


def _iter_archive(path: str) -> Iterator[Tuple[str, bytes]]:
  """Streams (member name, bytes) of the .xyz members of an archive."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as zf:
      for info in zf.infolist():
        if not info.is_dir() and _is_qm9_name(info.filename):
          yield info.filename, zf.read(info)
    return
  with open(path, "rb") as f:
    magic = f.read(6)
  opener = (bz2.open if magic[:3] == b"BZh" else
            gzip.open if magic[:2] == b"\x1f\x8b" else
            lzma.open if magic == b"\xfd7zXZ\x00" else open)
  with opener(path, "rb") as f:
    for name, data in _iter_tar(f, path):
      if _is_qm9_name(name):
        yield name, data


def _iter_tar(f, path: str) -> Iterator[Tuple[str, bytes]]:
  """Minimal streaming tar reader: (name, bytes) of regular files.

  ``tarfile`` spends most of its time in per-member Python bookkeeping; for
  QM9's 134k tiny members this loop over 512-byte headers (ustar, GNU long
  names, pax ``path``) is several times faster.
  """
  for name, _, _, data in _tar_entries(f, path, with_data=True):
    yield name, data


def _tar_members(f, path: str) -> Iterator[Tuple[str, int, int]]:
  """(name, data offset, size) of the regular files of a plain tar (seeks
  over the data: one pass over the headers)."""
  for name, offset, size, _ in _tar_entries(f, path, with_data=False):
    yield name, offset, size


def _tar_entries(f, path: str, with_data: bool):
  """(name, data offset, size, bytes or None) of a tar's regular files."""
  long_name = None
  while True:
    head = f.read(512)
    if len(head) < 512 or head == _ZERO_BLOCK:
      if 0 < len(head) < 512:
        raise DataError(path, "not a tar/zip archive, or a truncated one")
      return
    try:
      size = int(head[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
      raise DataError(path, "not a tar/zip archive (bad tar header)") from None
    kind = head[156:157]
    offset = f.tell() if not with_data else -1
    if with_data or kind in (b"L", b"x"):
      data = f.read(size)
      if len(data) < size:
        raise DataError(path, "truncated tar archive")
      f.read(-size % 512)
    else:
      data = None
      f.seek(size + (-size % 512), os.SEEK_CUR)
    if kind in (b"L", b"x"):
      if kind == b"L":
        long_name = data.rstrip(b"\0").decode("utf-8", "replace")
      else:
        for rec in data.decode("utf-8", "replace").split("\n"):
          if " path=" in rec:
            long_name = rec.split(" path=", 1)[1]
      continue
    name = long_name
    long_name = None
    if name is None:
      name = head[0:100].rstrip(b"\0").decode("utf-8", "replace")
      prefix = head[345:500].rstrip(b"\0")
      if head[257:262] == b"ustar" and prefix:
        name = prefix.decode("utf-8", "replace") + "/" + name
    if kind in (b"0", b"\0", b"7"):
      yield name, offset, size, data


def _parse_chunk(args):
  items, allow_nan, keep_frequencies = args
  return [parse_qm9_text(_decode(raw, name), name, allow_nan,
                         keep_frequencies) for name, raw in items]


def _read_files_chunk(args):
  paths, allow_nan, keep_frequencies = args
  return [read_qm9_xyz(p, allow_nan, keep_frequencies) for p in paths]


def _chunks(it: Iterable, size: int) -> Iterator[list]:
  buf = []
  for x in it:
    buf.append(x)
    if len(buf) == size:
      yield buf
      buf = []
  if buf:
    yield buf


def _cache_key(path: str, names: Optional[Sequence[str]], exclude, allow_nan,
               keep_frequencies) -> str:
  h = hashlib.sha1()
  meta = {"v": _CACHE_VERSION, "allow_nan": bool(allow_nan),
          "freq": bool(keep_frequencies),
          "exclude": sorted(int(i) for i in exclude)}
  h.update(json.dumps(meta, sort_keys=True).encode())
  if names is None:  # archive: key on the archive file itself
    st = os.stat(path)
    h.update(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
  else:
    for nm in names:
      st = os.stat(os.path.join(path, nm))
      h.update(f"{nm}:{st.st_size}:{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def read_qm9_dir(path: str, exclude_ids: Optional[Iterable[int]] = None,
                 workers: Optional[int] = None, allow_nan: bool = False,
                 keep_frequencies: bool = False,
                 cache_dir: Optional[str] = None,
                 chunk_size: int = 512) -> List[Structure]:
  """Reads every raw QM9 file of a folder or a .tar(.bz2/.gz)/.zip archive.

  Archives are streamed (nothing is extracted to disk). Parsing runs in
  ``workers`` processes (default: half the cores, at most 4; 1 for fewer
  than 2,000 files); a second call hits the npz cache.

  Args:
    path: folder of ``*.xyz`` files, or an archive of them.
    exclude_ids: QM9 indices to drop, e.g. ``read_uncharacterized(...)``.
    workers: worker processes for parsing.
    allow_nan: see ``parse_qm9_text``.
    keep_frequencies: see ``parse_qm9_text``.
    cache_dir: if given, the result is cached there as
      ``qm9_<key>.npz`` (``save_structures``), keyed by the file list (names,
      sizes, mtimes) or the archive's size and mtime, and the options.
    chunk_size: files per worker task.

  Returns:
    Structures sorted by QM9 index.
  """
  exclude = set(int(i) for i in (exclude_ids or ()))
  is_dir = os.path.isdir(path)
  if not is_dir and not os.path.isfile(path):
    raise DataError(path, "no such folder or archive")
  names = None
  if is_dir:
    names = sorted((nm for nm in os.listdir(path) if _is_qm9_name(nm)),
                   key=_sort_key)
    if not names:
      raise DataError(path, "folder holds no .xyz files")
  cache_path = None
  if cache_dir:
    key = _cache_key(path, names, exclude, allow_nan, keep_frequencies)
    cache_path = os.path.join(cache_dir, f"qm9_{key}.npz")
    if os.path.exists(cache_path):
      return load_structures(cache_path)

  n_hint = len(names) if names is not None else 10**6
  if workers is None:
    # Results travel back pickled, so extra processes only pay off with
    # spare cores (on 2 shared cores one process was faster).
    spare = max(1, min(4, (os.cpu_count() or 1) // 2))
    workers = 1 if n_hint < 2000 else spare
  opts = (allow_nan, keep_frequencies)
  if is_dir:
    tasks = ((chunk,) + opts for chunk in
             _chunks((os.path.join(path, nm) for nm in names), chunk_size))
    fn = _read_files_chunk
  else:
    tasks = ((chunk,) + opts for chunk in
             _chunks(_iter_archive(path), chunk_size))
    fn = _parse_chunk
  out: List[Structure] = []
  if workers <= 1:
    for t in tasks:
      out.extend(fn(t))
  else:
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
      for res in ex.map(fn, tasks):
        out.extend(res)
  if not out:
    raise DataError(path, "archive holds no .xyz files")
  out = [s for s in out if s.info["index"] not in exclude]
  out.sort(key=lambda s: s.info["index"])
  for a, b in zip(out[:-1], out[1:]):
    if a.info["index"] == b.info["index"]:
      raise DataError(b.info["source"], f"QM9 index {b.info['index']} also "
                      f"in {a.info['source']}")
  if cache_path:
    os.makedirs(cache_dir, exist_ok=True)
    save_structures(cache_path, out)
  return out


class QM9FilesSource(Source):
  """Raw QM9 files of a folder, each parsed when accessed (sorted by the
  index in the file name, ``dsgdb9nsd_%06d.xyz``)."""

  def __init__(self, path: str, exclude_ids: Optional[Iterable[int]] = None,
               allow_nan: bool = False, keep_frequencies: bool = False):
    if not os.path.isdir(path):
      raise DataError(path, "no such folder")
    exclude = set(int(i) for i in (exclude_ids or ()))
    names = sorted((nm for nm in os.listdir(path) if _is_qm9_name(nm)),
                   key=_sort_key)
    if not names:
      raise DataError(path, "folder holds no .xyz files")
    self.path = path
    self.names = [nm for nm in names if _sort_key(nm)[0] not in exclude]
    self.opts = (allow_nan, keep_frequencies)

  def __len__(self) -> int:
    return len(self.names)

  def _name(self, i: int) -> str:
    return os.path.splitext(self.names[i])[0]

  def _read(self, i: int) -> Structure:
    return read_qm9_xyz(os.path.join(self.path, self.names[i]), *self.opts)


class QM9ArchiveSource(Source):
  """The ``.xyz`` members of a zip or an uncompressed tar, indexed once (zip:
  member names; tar: data offsets and sizes from one pass over the headers)
  and parsed when accessed. Compressed tars have no random access: read
  them with ``read_qm9_dir`` into its npz cache (``open_qm9``)."""

  def __init__(self, path: str, exclude_ids: Optional[Iterable[int]] = None,
               allow_nan: bool = False, keep_frequencies: bool = False):
    if not os.path.isfile(path):
      raise DataError(path, "no such archive")
    exclude = set(int(i) for i in (exclude_ids or ()))
    self.path, self.opts = path, (allow_nan, keep_frequencies)
    self.is_zip = zipfile.is_zipfile(path)
    if self.is_zip:
      with zipfile.ZipFile(path) as zf:
        members = [(i.filename, 0, 0) for i in zf.infolist()
                   if not i.is_dir() and _is_qm9_name(i.filename)]
    else:
      with open(path, "rb") as f:
        magic = f.read(6)
        if magic[:3] == b"BZh" or magic[:2] == b"\x1f\x8b" or (
            magic == b"\xfd7zXZ\x00"):
          raise DataError(path, "compressed tar: no random access (read it "
                          "once into the npz cache: data.cache_dir)")
        f.seek(0)
        members = [(nm, off, size) for nm, off, size in _tar_members(f, path)
                   if _is_qm9_name(nm)]
    members = sorted((m for m in members
                      if _sort_key(m[0])[0] not in exclude),
                     key=lambda m: _sort_key(m[0]))
    if not members:
      raise DataError(path, "archive holds no .xyz files")
    self.members = [m[0] for m in members]
    self.offsets = np.array([m[1:] for m in members], np.int64)
    if not self.is_zip and (self.offsets.sum(1) > os.path.getsize(path)
                            ).any():
      raise DataError(path, "truncated tar archive")
    self._fh = LazyHandle(_open_archive, path, self.is_zip)

  def __len__(self) -> int:
    return len(self.members)

  def _name(self, i: int) -> str:
    return os.path.splitext(os.path.basename(self.members[i]))[0]

  def _read(self, i: int) -> Structure:
    name = self.members[i]
    fh = self._fh.get()
    if self.is_zip:
      raw = fh.read(name)
    else:
      off, size = (int(x) for x in self.offsets[i])
      fh.seek(off)
      raw = fh.read(size)
    return parse_qm9_text(_decode(raw, name), name, *self.opts)


def _open_archive(path: str, is_zip: bool):
  return zipfile.ZipFile(path) if is_zip else open(path, "rb")


def open_qm9(path: str, exclude_ids: Optional[Iterable[int]] = None,
             allow_nan: bool = False, keep_frequencies: bool = False,
             cache_dir: Optional[str] = None) -> Source:
  """QM9 as a source. With ``cache_dir``: the npz cache of ``read_qm9_dir``
  (built once, in workers), held as compact arrays (``NpzSource``, fast
  ``targets``/``num_atoms``); without: the folder's files or the archive's
  members parsed on access (a compressed tar needs ``cache_dir``)."""
  exclude = set(int(i) for i in (exclude_ids or ()))
  if cache_dir:
    names = None
    if os.path.isdir(path):
      names = sorted((nm for nm in os.listdir(path) if _is_qm9_name(nm)),
                     key=_sort_key)
    if not os.path.exists(path):
      raise DataError(path, "no such folder or archive")
    key = _cache_key(path, names, exclude, allow_nan, keep_frequencies)
    cache_path = os.path.join(cache_dir, f"qm9_{key}.npz")
    if not os.path.exists(cache_path):
      read_qm9_dir(path, exclude, allow_nan=allow_nan,
                   keep_frequencies=keep_frequencies, cache_dir=cache_dir)
    return NpzSource(cache_path)
  cls = QM9FilesSource if os.path.isdir(path) else QM9ArchiveSource
  return cls(path, exclude, allow_nan, keep_frequencies)


# -- atom references and the split ------------------------------------------
# Official per-atom U0 references of QM9 (atomref.txt, B3LYP/6-31G(2df,p), Ha).
QM9_ATOM_REFS_U0_HA = {1: -0.500273, 6: -37.846772, 7: -54.583861,
                       8: -75.064579, 9: -99.718730}
QM9_ATOM_REFS_U0_EV = {z: v * HARTREE_TO_EV
                       for z, v in QM9_ATOM_REFS_U0_HA.items()}
REFERENCE_ELEMENTS = (1, 6, 7, 8, 9)

# Noisy Nodes §5.2: "114k molecules for training, 10k for validation and 10k
# for test" out of the 133,885 of QM9 (so the train set is the remaining
# 113,885; the paper does not mention dropping the uncharacterized ones).
QM9_SIZE = 133885
PAPER_N_VAL = 10000
PAPER_N_TEST = 10000


def element_counts(structures: Sequence[Structure],
                   elements: Sequence[int] = REFERENCE_ELEMENTS) -> np.ndarray:
  """Counts [num_structures, num_elements] of each element per structure."""
  elements = list(elements)
  out = np.zeros((len(structures), len(elements)), np.float64)
  col = {z: j for j, z in enumerate(elements)}
  for i, s in enumerate(structures):
    for z, c in zip(*np.unique(s.atomic_numbers, return_counts=True)):
      if int(z) not in col:
        raise DataError(s.id, f"element Z={int(z)} has no atom reference "
                        f"(references for Z in {elements})")
      out[i, col[int(z)]] = c
  return out


def fit_atom_references(structures: Sequence[Structure], target: str,
                        train_indices: Optional[Sequence[int]] = None,
                        elements: Sequence[int] = REFERENCE_ELEMENTS
                        ) -> Dict[int, float]:
  """Per-element references by least squares on element counts.

  Solves min_r sum_i (t_i - sum_Z n_iZ r_Z)^2 over the training structures
  only (Noisy Nodes §5.2: "we subtract a fixed per atom energy ... computed
  from linear regression"). Elements absent from the training set get
  reference 0 (they cannot be fitted).

  Args:
    structures: all structures.
    target: target name (e.g. "U0"), in whatever units the targets hold.
    train_indices: indices into ``structures`` of the training split; all
      structures if None.
    elements: atomic numbers that get a reference.

  Returns:
    {atomic number: reference} in the target's units.
  """
  if train_indices is not None:
    structures = [structures[int(i)] for i in train_indices]
  if not structures:
    raise ValueError("no training structures to fit atom references on")
  missing = [s.id for s in structures if target not in s.targets]
  if missing:
    raise DataError(missing[0], f"target {target!r} is missing "
                    f"({len(missing)} training structures lack it)")
  counts = element_counts(structures, elements)
  y = np.array([float(s.targets[target]) for s in structures])
  present = counts.sum(0) > 0
  refs = np.zeros(len(elements))
  refs[present] = np.linalg.lstsq(counts[:, present], y, rcond=None)[0]
  return {int(z): float(r) for z, r in zip(elements, refs)}


def atom_reference_sum(structure: Structure, refs: Dict[int, float]) -> float:
  """sum over atoms of refs[Z]."""
  try:
    return float(sum(refs[int(z)] for z in structure.atomic_numbers))
  except KeyError as e:
    raise DataError(structure.id, f"no atom reference for element Z={e}"
                    ) from None


def subtract_atom_references(structures: Sequence[Structure],
                             refs: Dict[int, float],
                             targets: Sequence[str] = ("U0",)
                             ) -> List[Structure]:
  """New structures whose ``targets`` have the atom references subtracted.

  The input structures are left untouched (targets dicts are copied; arrays
  are shared). ``info['atom_ref_subtracted']`` lists the changed targets.
  """
  out = []
  for s in structures:
    ref = atom_reference_sum(s, refs)
    t = dict(s.targets)
    for k in targets:
      if k in t:
        t[k] = np.float64(t[k] - ref)
    info = dict(s.info)
    info["atom_ref_subtracted"] = sorted(
        set(info.get("atom_ref_subtracted", [])) | {k for k in targets
                                                     if k in t})
    out.append(Structure(id=s.id, atomic_numbers=s.atomic_numbers,
                         positions=s.positions, cell=s.cell, pbc=s.pbc,
                         targets=t, node_arrays=s.node_arrays, info=info))
  return out


def split_indices(n: int, seed: int = 0, n_val: Optional[int] = None,
                  n_test: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Random train/val/test split, the rest being train.

  Defaults follow the paper: 10,000 validation and 10,000 test molecules
  out of QM9's 133,885 (113,885 train). For a smaller set the defaults scale
  proportionally (round(n * 10000 / 133885), at least 1 each when n >= 3).

  Returns:
    {'train', 'val', 'test'}: sorted int64 index arrays, disjoint, covering
    range(n); the same for the same (n, seed, n_val, n_test).
  """
  if n <= 0:
    raise ValueError(f"cannot split {n} samples")
  frac = PAPER_N_VAL / QM9_SIZE
  if n_val is None:
    n_val = max(1, int(round(n * frac))) if n >= 3 else 0
  if n_test is None:
    n_test = max(1, int(round(n * PAPER_N_TEST / QM9_SIZE))) if n >= 3 else 0
  if n_val < 0 or n_test < 0 or n_val + n_test >= n:
    raise ValueError(f"split sizes val={n_val}, test={n_test} leave no "
                     f"training data out of {n}")
  perm = np.random.default_rng(seed).permutation(n)
  return {"test": np.sort(perm[:n_test]),
          "val": np.sort(perm[n_test:n_test + n_val]),
          "train": np.sort(perm[n_test + n_val:])}
