"""Reading crystal structures and labelled dataset folders.

One structure file -> ``Structure`` (``read_structure``) for CIF,
POSCAR/CONTCAR/``*.vasp``, extxyz/xyz and ASE json/db files. MatDeepLearn
releases sometimes hold CIF text in files named ``.json``; the content is
sniffed, never trusted from the extension alone.

Three dataset-folder layouts are read by ``read_dataset_folder``:

  * MatDeepLearn (DeeperGATGNN reference): ``targets.csv`` with no header,
    rows ``id,target[,more targets]``; structures ``<id>.json`` (ASE json) or
    ``<id>.<ext>`` in any format ``ase.io`` reads.
  * CGCNN: ``id_prop.csv`` (``id,target[,...]``) and ``<id>.cif``;
    ``atom_init.json`` is ignored (features are recomputed, see
    ``crystal.features``).
  * ALIGNN / JARVIS: ``id_prop.csv`` whose first column is the structure file
    name (usually a POSCAR, e.g. ``POSCAR-JVASP-1002.vasp``), with or without
    a header row.
  * ``db`` (MatDeepLearn ``data_format: db``): one ASE database ``data.db``
    and ``targets.csv``; the k-th row of ``targets.csv`` labels the k-th
    database row (by order, as the reference pairs them), the csv's ids name
    the samples.

Every fault raises ``DataError(sample, fault)`` naming the file; with
``skip_invalid=True`` bad samples are dropped and listed in the report.
"""
from __future__ import annotations

import csv
import dataclasses
import io as _io
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from noisy_nodes.data.sources import Source
from noisy_nodes.data.structures import FLOAT32_MAX, DataError, Structure

FORMATS = ("matdeeplearn", "cgcnn", "alignn", "db")

# Atoms closer than this (Å) are "two atoms at the same position".
DEFAULT_MIN_DISTANCE = 0.1
# Longest lattice vector accepted (Å). Slabs have ~30-40 Å of vacuum and MOF
# cells reach ~60 Å; anything far beyond is almost always a unit error.
DEFAULT_MAX_CELL_LENGTH = 500.0

_STRUCTURE_EXTS = (".json", ".cif", ".vasp", ".poscar", ".xyz", ".extxyz",
                   ".traj", ".db", ".pdb", ".xsf", ".in", "")


@dataclasses.dataclass
class FolderReport:
  """What ``read_dataset_folder`` did.

  Attributes:
    format: the folder layout that was read.
    targets_file: path of the csv holding the targets.
    skipped: "file: fault" for each sample dropped (``skip_invalid``).
    unlisted: structure files present in the folder but not in the csv
      (never read; not an error).
  """
  format: str
  targets_file: str
  skipped: List[str] = dataclasses.field(default_factory=list)
  unlisted: List[str] = dataclasses.field(default_factory=list)

  def lines(self) -> List[str]:
    return self.skipped + [f"{f}: not listed in {self.targets_file} (ignored)"
                           for f in self.unlisted]


# -- one structure ------------------------------------------------------------
def _sniff(path: str, text: Optional[str]) -> Optional[str]:
  """The ase.io format of ``path`` when the extension is not enough."""
  name = os.path.basename(path).lower()
  ext = os.path.splitext(name)[1]
  if ext == ".json":
    stripped = (text or "").lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
      return "json"
    if "data_" in stripped or "_cell_length_a" in stripped:
      return "cif"
    return "json"  # let ASE produce its parse error
  if ext == ".cif":
    return "cif"
  if ext in (".vasp", ".poscar") or name.startswith(("poscar", "contcar")):
    return "vasp"
  if ext == ".xyz":
    return "extxyz"  # extxyz also reads plain xyz
  return None  # ase.io guesses from the name / content


def _read_atoms(path: str):
  import ase.io  # pylint: disable=g-import-not-at-top
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise DataError(path, f"cannot open structure file ({e.strerror})") from e
  if size == 0:
    raise DataError(path, "empty file")
  text = None
  ext = os.path.splitext(path)[1].lower()
  if ext in (".json", ".cif", ".vasp", ".xyz", ".extxyz") or not ext:
    with open(path, "rb") as f:
      raw = f.read()
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
      raise DataError(path, "empty file (only whitespace)")
  fmt = _sniff(path, text)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      if fmt == "cif" and ext == ".json":
        atoms = ase.io.read(_io.StringIO(text), format="cif")
      else:
        atoms = ase.io.read(path, format=fmt)
  except KeyError as e:
    # ase raises KeyError('Xx') for an element symbol it does not know.
    raise DataError(path, f"unknown element symbol {e.args[0]!r}") from e
  except Exception as e:  # pylint: disable=broad-except
    kind = {"cif": "malformed CIF", "vasp": "malformed POSCAR",
            "json": "malformed ASE json"}.get(fmt, "unreadable structure")
    why = ("no structure could be read" if isinstance(e, StopIteration)
           else f"{type(e).__name__}: {e}")
    raise DataError(path, f"{kind} ({why})") from e
  if isinstance(atoms, list):  # a reader that yields a list of frames
    if not atoms:
      raise DataError(path, "no structure in file")
    atoms = atoms[-1]
  _check_occupancy(path, atoms.info.get("occupancy"))
  return atoms


def _check_occupancy(path: str, occupancy) -> None:
  """A partially occupied (disordered) site is an error, not one atom.

  ase's CIF reader keeps one species per site and records the site's
  ``_atom_site_occupancy`` in ``atoms.info['occupancy']`` ({site: {symbol:
  occupancy}}); a graph of atoms cannot represent a mixed site.
  """
  for site, species in sorted((occupancy or {}).items()):
    total = sum(float(v) for v in species.values())
    if len(species) > 1 or abs(total - 1.0) > 1e-3:
      mix = " / ".join(f"{k} {float(v):g}" for k, v in species.items())
      raise DataError(path, f"partially occupied site {site} ({mix}): "
                      "disordered structures are not supported; give an "
                      "ordered cell")


def check_structure(structure: Structure, allow_overlap: bool = False,
                    min_distance: float = DEFAULT_MIN_DISTANCE,
                    max_cell_length: float = DEFAULT_MAX_CELL_LENGTH
                    ) -> Structure:
  """``Structure.validate`` plus crystal-specific sanity checks.

  Raises ``DataError`` for: no atoms, unknown element, NaN/inf coordinates,
  singular or negative-volume cell (periodic structures), a lattice vector
  longer than ``max_cell_length`` Å, and (unless ``allow_overlap``) two atoms,
  or an atom and a periodic image, closer than ``min_distance`` Å.
  """
  structure.validate()
  sid = structure.id
  if structure.periodic:
    lengths = np.linalg.norm(structure.cell, axis=1)
    if lengths.max() > max_cell_length:
      raise DataError(sid, f"huge cell: lattice vector of {lengths.max():.4g} "
                      f"Å > limit {max_cell_length:g} Å")
  if not allow_overlap:
    dmin, pair = _closest_pair(structure, min_distance)
    if pair is not None:
      raise DataError(sid, f"atoms {pair[0]} and {pair[1]} are "
                      f"{dmin:.3g} Å apart (< {min_distance:g} Å): two atoms "
                      "at the same position")
  return structure


def _closest_pair(structure: Structure, cutoff: float):
  """(distance, (i, j)) of the closest pair within ``cutoff``, or (inf, None).

  Uses ASE's binned neighbour list, which includes periodic images (so an
  atom overlapping its own image through a tiny lattice vector is caught).
  """
  from ase.neighborlist import primitive_neighbor_list  # pylint: disable=g-import-not-at-top
  pos = structure.positions
  if structure.periodic:
    i, j, d = primitive_neighbor_list(
        "ijd", structure.pbc, structure.cell, pos, cutoff,
        self_interaction=False)
  else:
    # Non-periodic: ASE still needs a cell enclosing the atoms.
    span = np.ptp(pos, axis=0) + 2 * cutoff + 1.0
    i, j, d = primitive_neighbor_list(
        "ijd", np.zeros(3, bool), np.diag(span), pos - pos.min(0) + cutoff,
        cutoff, self_interaction=False)
  if len(d) == 0:
    return math.inf, None
  k = int(np.argmin(d))
  return float(d[k]), (int(min(i[k], j[k])), int(max(i[k], j[k])))


def read_structure(path: str, id: Optional[str] = None,  # pylint: disable=redefined-builtin
                   allow_overlap: bool = False,
                   min_distance: float = DEFAULT_MIN_DISTANCE,
                   max_cell_length: float = DEFAULT_MAX_CELL_LENGTH
                   ) -> Structure:
  """Reads one structure file (CIF, POSCAR, extxyz/xyz, ASE json/db...).

  Args:
    path: the file. ``.json`` holding CIF text is read as CIF.
    id: sample id; default: file name without extension.
    allow_overlap, min_distance, max_cell_length: see ``check_structure``.

  Returns:
    A validated ``Structure`` with ``info['source'] = path``. Files with
    several frames give the last frame (``ase.io.read``'s default).

  Raises:
    DataError: naming ``path`` and the fault.
  """
  atoms = _read_atoms(path)
  if len(atoms) == 0:
    raise DataError(path, "structure has no atoms")
  sid = id if id is not None else os.path.splitext(os.path.basename(path))[0]
  s = Structure(id=sid, atomic_numbers=atoms.numbers, positions=atoms.positions,
                cell=np.asarray(atoms.cell), pbc=atoms.pbc,
                info={"source": os.path.abspath(path)})
  if s.periodic and np.all(s.cell == 0):
    raise DataError(path, "periodic structure without a cell")
  try:
    check_structure(s, allow_overlap, min_distance, max_cell_length)
  except DataError as e:
    raise DataError(path, e.fault) from e
  return s


# -- targets csv --------------------------------------------------------------
def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _table_width(rows) -> int:
  """The expected row width of a table: the most common one (ties: widest).

  Not the longest row: a few rows with an extra column must be blamed
  themselves, not make every good row look short.
  """
  counts: Dict[int, int] = {}
  for _, r in rows:
    counts[len(r)] = counts.get(len(r), 0) + 1
  return max(counts, key=lambda w: (counts[w], w))


def read_targets_csv(path: str, allow_header: bool = True,
                     is_sample=lambda sid: False
                     ) -> Tuple[List[Tuple[str, object]], bool]:
  """Parses ``id,target[,more]`` rows.

  A first row whose values are all non-numeric, and whose id names no sample
  (``is_sample``), is a header. Rows whose targets are missing, non-numeric or
  not finite are returned as (id, "fault") so the caller can raise or skip.

  Returns:
    ([(id, float64[T] or fault string)], had_header).
  """
  if not os.path.exists(path):
    raise DataError(path, "targets file not found")
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = [(n + 1, [c.strip() for c in r]) for n, r in enumerate(csv.reader(f))
            if any(c.strip() for c in r)]
  if not rows:
    raise DataError(path, "empty dataset (no rows in targets file)")
  header = False
  first = rows[0][1]
  if (allow_header and len(first) > 1 and
      not any(_is_number(c) for c in first[1:]) and not is_sample(first[0])):
    header, rows = True, rows[1:]
    if not rows:
      raise DataError(path, "empty dataset (header only)")
  width = _table_width(rows)
  out = []
  for line, r in rows:
    sid = r[0]
    if not sid:
      raise DataError(f"{path}:{line}", "empty id")
    vals = r[1:]
    if len(r) > width:
      out.append((sid, f"line {line}: {len(vals)} target columns, expected "
                  f"{width - 1} (as most rows)"))
      continue
    if not vals or any(v == "" for v in vals) or len(r) < width:
      out.append((sid, f"line {line}: missing target"))
      continue
    bad = [v for v in vals if not _is_number(v)]
    if bad:
      out.append((sid, f"line {line}: non-numeric target {bad[0]!r}"))
      continue
    t = np.array([float(v) for v in vals], np.float64)
    if not np.all(np.isfinite(t)):
      out.append((sid, f"line {line}: target is not finite ({','.join(vals)})"))
      continue
    if np.any(np.abs(t) > FLOAT32_MAX):
      out.append((sid, f"line {line}: target {','.join(vals)} overflows "
                  "float32 (|x| > 3.4e38)"))
      continue
    out.append((sid, t))
  return out, header


# -- folders -------------------------------------------------------------------
def infer_format(path: str) -> str:
  """Folder layout from its files (see module docstring)."""
  if not os.path.isdir(path):
    raise DataError(path, "dataset folder not found")
  names = set(os.listdir(path))
  if "targets.csv" in names and "data.db" in names and not any(
      n.endswith((".json", ".cif", ".vasp")) for n in names):
    return "db"
  if "targets.csv" in names:
    return "matdeeplearn"
  if "id_prop.csv" in names:
    rows = _peek_ids(os.path.join(path, "id_prop.csv"))
    # ALIGNN names the structure file itself; CGCNN names <id>.cif.
    if any(r in names and not r.endswith(".cif") for r in rows):
      return "alignn"
    if any(r + ".cif" in names for r in rows) or any(
        n.endswith(".cif") for n in names):
      return "cgcnn"
    return "alignn"
  raise DataError(path, "unknown dataset layout: no targets.csv "
                  "(MatDeepLearn) or id_prop.csv (CGCNN/ALIGNN)")


def _peek_ids(csv_path: str) -> List[str]:
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    return [r[0].strip() for r in csv.reader(f) if r and r[0].strip()]


def _structure_index(folder: str, fmt: str) -> Dict[str, str]:
  """Maps sample id -> file name for the files of ``folder``."""
  index = {}
  for name in sorted(os.listdir(folder)):
    if name in ("targets.csv", "id_prop.csv", "atom_init.json") or (
        name.startswith(".") or os.path.isdir(os.path.join(folder, name))):
      continue
    if fmt == "alignn":
      index[name] = name
      continue
    stem, ext = os.path.splitext(name)
    if fmt == "cgcnn" and ext.lower() != ".cif":
      continue
    if ext.lower() not in _STRUCTURE_EXTS:
      continue
    # MatDeepLearn: prefer <id>.json when several formats share a stem.
    if stem not in index or ext.lower() == ".json":
      index[stem] = name
  return index


class FolderSource(Source):
  """A labelled folder (MatDeepLearn / CGCNN / ALIGNN layout) as a source.

  Construction indexes the folder: the file list and the targets csv, whose
  faults (duplicate id, id without a file, missing or non-numeric target)
  are known without parsing a structure; ``rows`` keeps them in csv order,
  each row ``(sample, fault)`` or ``(sid, file name, target)``. A structure
  file is parsed (``read_structure``: ``DataError`` naming it) only when
  accessed; ``targets(i)`` comes from the csv.

  Args: as ``read_dataset_folder``; with ``skip_invalid`` the csv faults go
  to ``report.skipped``, else the first one raises.
  """

  def __init__(self, path: str, format: Optional[str] = None,  # pylint: disable=redefined-builtin
               skip_invalid: bool = False, allow_overlap: bool = False,
               max_cell_length: float = DEFAULT_MAX_CELL_LENGTH,
               strict_rows: bool = True):
    fmt = format or infer_format(path)
    if fmt not in FORMATS or fmt == "db":
      raise DataError(path, f"unknown dataset format {fmt!r}; use one of "
                      f"{FORMATS}")
    if not os.path.isdir(path):
      raise DataError(path, "dataset folder not found")
    self.path, self.fmt = path, fmt
    self.opts = (allow_overlap, max_cell_length)
    csv_name = "targets.csv" if fmt == "matdeeplearn" else "id_prop.csv"
    csv_path = os.path.join(path, csv_name)
    index = _structure_index(path, fmt)
    table, _ = read_targets_csv(csv_path, allow_header=True,
                                is_sample=lambda sid: sid in index)
    self.report = FolderReport(format=fmt, targets_file=csv_path)
    self.rows: List[tuple] = []
    seen, used = {}, set()
    for sid, target in table:
      if sid in seen:
        self.rows.append((csv_path, f"duplicate id {sid!r} ({seen[sid]} "
                          "rows)"))
        seen[sid] += 1
        continue
      seen[sid] = 1
      fname = index.get(sid)
      if fname is None:
        self.rows.append((os.path.join(path, sid), f"id {sid!r} is listed in "
                          f"{csv_name} but has no structure file"))
        continue
      used.add(fname)
      if isinstance(target, str):
        self.rows.append((os.path.join(path, fname), f"{csv_name} {target}"))
        continue
      self.rows.append((os.path.splitext(sid)[0] if fmt == "alignn" else sid,
                        fname, target))
    if fmt != "alignn":  # ALIGNN folders often hold other files
      self.report.unlisted = sorted(set(index.values()) - used)
    for row in self.rows:
      if len(row) == 2 and strict_rows:
        if not skip_invalid:
          raise DataError(*row)
        self.report.skipped.append(f"{row[0]}: {row[1]}")
    self.entries = [r for r in self.rows if len(r) == 3]
    if not self.entries and strict_rows:
      raise DataError(path, "empty dataset (no readable labelled structures)"
                      + (f"; skipped: {self.report.skipped[:3]}"
                         if self.report.skipped else ""))

  def __len__(self) -> int:
    return len(self.entries)

  def _name(self, i: int) -> str:
    return self.entries[i][0]

  def _targets(self, i: int) -> Dict[str, np.ndarray]:
    return {"target": self.entries[i][2]}

  def read_row(self, row) -> Structure:
    sid, fname, target = row
    s = read_structure(os.path.join(self.path, fname), id=sid,
                       allow_overlap=self.opts[0],
                       max_cell_length=self.opts[1])
    s.targets["target"] = target
    s.info["format"] = self.fmt
    return s

  def _read(self, i: int) -> Structure:
    return self.read_row(self.entries[i])


def read_dataset_folder(path: str, format: Optional[str] = None,  # pylint: disable=redefined-builtin
                        skip_invalid: bool = False,
                        allow_overlap: bool = False,
                        max_cell_length: float = DEFAULT_MAX_CELL_LENGTH
                        ) -> Tuple[List[Structure], FolderReport]:
  """Reads a labelled folder (MatDeepLearn, CGCNN or ALIGNN layout).

  Args:
    path: the folder.
    format: one of ``FORMATS``; inferred from the files when None.
    skip_invalid: drop bad samples (listed in ``report.skipped``) instead of
      raising.
    allow_overlap, max_cell_length: passed to ``read_structure``.

  Returns:
    (structures in csv order, report). Each structure has
    ``targets['target']`` float64[T] (T = number of target columns).
    ``FolderSource`` is the same folder read on demand.

  Raises:
    DataError: missing or non-numeric target, duplicate id, an id without a
      structure file, an unreadable structure (unless ``skip_invalid``), or an
      empty dataset (always).
  """
  fmt = format or infer_format(path)
  if fmt not in FORMATS:
    raise DataError(path, f"unknown dataset format {fmt!r}; use one of "
                    f"{FORMATS}")
  if not os.path.isdir(path):
    raise DataError(path, "dataset folder not found")
  if fmt == "db":
    return _read_db_folder(path, skip_invalid, allow_overlap,
                           max_cell_length)
  # Every fault in csv order, as one pass reports them.
  source = FolderSource(path, fmt, skip_invalid, allow_overlap,
                        max_cell_length, strict_rows=False)
  report = source.report

  def fail(sample, fault):
    if not skip_invalid:
      raise DataError(sample, fault)
    report.skipped.append(f"{sample}: {fault}")

  structures = []
  for row in source.rows:
    if len(row) == 2:
      fail(*row)
      continue
    try:
      structures.append(source.read_row(row))
    except DataError as e:
      fail(e.sample, e.fault)
  if not structures:
    raise DataError(path, "empty dataset (no readable labelled structures)"
                    + (f"; skipped: {report.skipped[:3]}" if report.skipped
                       else ""))
  return structures, report


def _read_db_folder(path, skip_invalid, allow_overlap, max_cell_length):
  """``data.db`` + ``targets.csv`` paired by row order (module docstring)."""
  import ase.db  # pylint: disable=g-import-not-at-top
  db_path = os.path.join(path, "data.db")
  csv_path = os.path.join(path, "targets.csv")
  if not os.path.exists(db_path):
    raise DataError(db_path, "data.format 'db' needs a data.db in the folder")
  try:
    with ase.db.connect(db_path) as db:
      rows = [r.toatoms() for r in db.select()]
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(db_path, f"unreadable ASE database ({e})") from e
  targets, _ = read_targets_csv(csv_path, allow_header=True)
  if len(targets) != len(rows):
    raise DataError(csv_path, f"{len(targets)} rows but {db_path} holds "
                    f"{len(rows)} structures (they pair by row)")
  report = FolderReport(format="db", targets_file=csv_path)
  structures, seen = [], set()
  for k, ((sid, target), atoms) in enumerate(zip(targets, rows)):
    sample = f"{db_path}[row {k + 1}, id {sid}]"
    try:
      if sid in seen:
        raise DataError(csv_path, f"duplicate id {sid!r}")
      seen.add(sid)
      if isinstance(target, str):
        raise DataError(csv_path, f"targets.csv {target}")
      if len(atoms) == 0:
        raise DataError(sample, "structure has no atoms")
      st = Structure(id=sid, atomic_numbers=atoms.numbers,
                     positions=atoms.positions, cell=np.asarray(atoms.cell),
                     pbc=atoms.pbc, info={"source": sample, "format": "db"})
      if st.periodic and np.all(st.cell == 0):
        raise DataError(sample, "periodic structure without a cell")
      try:
        check_structure(st, allow_overlap, DEFAULT_MIN_DISTANCE,
                        max_cell_length)
      except DataError as e:
        raise DataError(sample, e.fault) from e
    except DataError as e:
      if not skip_invalid:
        raise
      report.skipped.append(f"{e.sample}: {e.fault}")
      continue
    st.targets["target"] = target
    structures.append(st)
  if not structures:
    raise DataError(path, "empty dataset (no readable labelled structures)")
  return structures, report


def write_db_folder(path: str, structures: Sequence[Structure],
                    target: str = "target") -> None:
  """Writes ``data.db`` (ASE) + ``targets.csv``, row k labelling row k."""
  import ase  # pylint: disable=g-import-not-at-top
  import ase.db  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  db_path = os.path.join(path, "data.db")
  if os.path.exists(db_path):
    os.remove(db_path)
  with ase.db.connect(db_path) as db:
    for st in structures:
      db.write(ase.Atoms(numbers=st.atomic_numbers, positions=st.positions,
                         cell=st.cell, pbc=st.pbc))
  with open(os.path.join(path, "targets.csv"), "w", newline="") as f:
    w = csv.writer(f)
    for st in structures:
      w.writerow([st.id] + [repr(float(v)) for v in
                            np.atleast_1d(st.targets[target])])


# -- writing --------------------------------------------------------------------
def write_matdeeplearn_folder(path: str, structures: Sequence[Structure],
                              target: str = "target",
                              file_format: str = "json") -> None:
  """Writes ``targets.csv`` (no header) + ``<id>.<ext>`` via ``ase.io``.

  ``file_format`` is ``json`` (ASE json, the MatDeepLearn default), ``cif``
  or ``vasp``. FixAtoms constraints (``node_arrays['fixed']``) and tags are
  kept in ASE json.
  """
  import ase.io  # pylint: disable=g-import-not-at-top
  from ase.constraints import FixAtoms  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  ext = {"json": "json", "cif": "cif", "vasp": "vasp"}[file_format]
  lines = []
  for s in structures:
    if target not in s.targets:
      raise DataError(s.id, f"no target {target!r} to write")
    atoms = s.to_ase()
    if "fixed" in s.node_arrays and s.node_arrays["fixed"].any():
      atoms.set_constraint(FixAtoms(mask=s.node_arrays["fixed"].astype(bool)))
    ase.io.write(os.path.join(path, f"{s.id}.{ext}"), atoms,
                 format=file_format)
    vals = np.atleast_1d(s.targets[target])
    lines.append(",".join([s.id] + [repr(float(v)) for v in vals]))
  tmp = os.path.join(path, "targets.csv.tmp")
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, os.path.join(path, "targets.csv"))
