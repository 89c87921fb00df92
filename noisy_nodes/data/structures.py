"""Atomic structures on the host: the one record type every reader returns.

A ``Structure`` is plain numpy (no JAX): atomic numbers, Cartesian positions,
the cell and periodic flags, graph-level targets, per-atom arrays (OC20 tags,
fixed flags, relaxed positions, trajectory frames...) and JSON metadata.
Readers (OC20, QM9, crystal folders) and generators (EMT, pyxtal, xTB) all
produce lists of ``Structure``; tasks turn them into graphs.

Lists of structures are cached with ``save_structures`` / ``load_structures``
as a single ``.npz`` of concatenated arrays plus a JSON index — no pickle.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from noisy_nodes.data import atomic

MAX_ATOMIC_NUMBER = 118
# Models train in float32: a target beyond this is inf there (numpy: a warning).
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(ValueError):
  """Bad input: the message names the sample (file or id) and the fault."""

  def __init__(self, sample: str, fault: str):
    self.sample = str(sample)
    self.fault = str(fault)
    super().__init__(f"{self.sample}: {self.fault}")


@dataclasses.dataclass
class Structure:
  """One atomic system.

  Attributes:
    id: unique sample id (file name, OC20 sid, QM9 index...).
    atomic_numbers: int32 [n].
    positions: float64 [n, 3], Cartesian, Å.
    cell: float64 [3, 3], rows are the lattice vectors a, b, c (Å); zeros for
      a molecule.
    pbc: bool [3], periodic flags per lattice direction.
    targets: graph-level labels, name -> float64 array (scalar or vector).
    node_arrays: per-atom arrays whose leading axis is n (``tags``,
      ``fixed``, ``positions_relaxed``...), or [F, n, ...] for arrays whose
      name starts with ``frames`` (trajectory frames).
    info: JSON-serialisable metadata (source file, space group, ...).
  """
  id: str
  atomic_numbers: np.ndarray
  positions: np.ndarray
  cell: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros((3, 3)))
  pbc: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros(3, bool))
  targets: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  node_arrays: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.id = str(self.id)
    self.atomic_numbers = np.asarray(self.atomic_numbers).astype(np.int32)
    self.positions = np.asarray(self.positions, np.float64).reshape(-1, 3)
    self.cell = np.asarray(self.cell, np.float64).reshape(3, 3)
    self.pbc = np.broadcast_to(np.asarray(self.pbc, bool), (3,)).copy()
    self.targets = {k: np.asarray(v, np.float64)
                    for k, v in self.targets.items()}
    self.node_arrays = {k: np.asarray(v) for k, v in self.node_arrays.items()}

  @property
  def num_atoms(self) -> int:
    return int(self.atomic_numbers.shape[0])

  @property
  def periodic(self) -> bool:
    return bool(self.pbc.any())

  def validate(self) -> "Structure":
    """Raises ``DataError`` naming this sample if it is unusable."""
    n = self.num_atoms
    if n == 0:
      raise DataError(self.id, "structure has no atoms")
    if self.positions.shape != (n, 3):
      raise DataError(self.id, f"positions shape {self.positions.shape} does "
                      f"not match {n} atoms")
    z = self.atomic_numbers
    if z.min() < 1 or z.max() > MAX_ATOMIC_NUMBER:
      bad = int(z[(z < 1) | (z > MAX_ATOMIC_NUMBER)][0])
      raise DataError(self.id, f"unknown element with atomic number {bad}")
    if not np.all(np.isfinite(self.positions)):
      raise DataError(self.id, "non-finite (NaN or inf) coordinates")
    if not np.all(np.isfinite(self.cell)):
      raise DataError(self.id, "non-finite cell")
    if self.periodic:
      vol = float(np.linalg.det(self.cell))
      if not vol > 1e-6:
        raise DataError(self.id, f"singular or negative-volume cell "
                        f"(volume {vol:.3g} Å^3)")
    for k, v in self.targets.items():
      if not np.all(np.isfinite(v)):
        raise DataError(self.id, f"target {k!r} is missing or not finite")
      if np.any(np.abs(np.asarray(v, np.float64)) > FLOAT32_MAX):
        raise DataError(self.id, f"target {k!r} overflows float32 (|x| > "
                        "3.4e38), the precision models train in")
    for k, v in self.node_arrays.items():
      axis = 1 if k.startswith("frames") else 0
      if v.ndim <= axis or v.shape[axis] != n:
        raise DataError(self.id, f"per-atom array {k!r} has shape {v.shape}, "
                        f"expected {n} atoms on axis {axis}")
    return self

  # -- conversions -----------------------------------------------------------
  @classmethod
  def from_ase(cls, atoms, id: str, targets=None, info=None,
               **node_arrays) -> "Structure":
    """From ``ase.Atoms`` (FixAtoms constraints become ``fixed``)."""
    arrays = dict(node_arrays)
    if atoms.constraints and "fixed" not in arrays:
      fixed = np.zeros(len(atoms), np.int32)
      for c in atoms.constraints:
        if type(c).__name__ == "FixAtoms":
          fixed[c.get_indices()] = 1
      arrays["fixed"] = fixed
    if "tags" not in arrays and np.any(atoms.get_tags()):
      arrays["tags"] = atoms.get_tags().astype(np.int32)
    return cls(id=id, atomic_numbers=atoms.numbers, positions=atoms.positions,
               cell=np.asarray(atoms.cell), pbc=atoms.pbc,
               targets=dict(targets or {}), node_arrays=arrays,
               info=dict(info or {}))

  def to_ase(self):
    import ase  # pylint: disable=g-import-not-at-top
    atoms = ase.Atoms(numbers=self.atomic_numbers, positions=self.positions,
                      cell=self.cell, pbc=self.pbc)
    if "tags" in self.node_arrays:
      atoms.set_tags(self.node_arrays["tags"])
    return atoms


# -- npz cache -----------------------------------------------------------------
def save_structures(path: str, structures: Sequence[Structure]) -> None:
  """Writes structures to one ``.npz`` (atomically: temp file + rename)."""
  n_atoms = np.array([s.num_atoms for s in structures], np.int64)
  arrays = {
      "n_atoms": n_atoms,
      "atomic_numbers": _cat([s.atomic_numbers for s in structures], np.int32),
      "positions": _cat([s.positions for s in structures], np.float64, (0, 3)),
      "cell": np.array([s.cell for s in structures]).reshape(-1, 3, 3),
      "pbc": np.array([s.pbc for s in structures], bool).reshape(-1, 3),
  }
  # (id, info) of each structure as its own JSON row: a reader parses the
  # rows it reads, not the whole file's index (IndexRows).
  rows = [json.dumps([s.id, s.info]).encode("utf-8") for s in structures]
  arrays["index_rows"] = np.frombuffer(b"".join(rows), np.uint8).copy()
  arrays["index_rows_at"] = np.cumsum([0] + [len(r) for r in rows],
                                      dtype=np.int64)
  index = {"rows": True, "targets": {}, "nodes": {}}
  for key in sorted({k for s in structures for k in s.targets}):
    vals = [s.targets.get(key) for s in structures]
    shape = next(np.shape(v) for v in vals if v is not None)
    has = np.array([v is not None for v in vals])
    arrays[f"t/{key}"] = np.array(
        [v if v is not None else np.full(shape, np.nan) for v in vals])
    arrays[f"th/{key}"] = has
  for key in sorted({k for s in structures for k in s.node_arrays}):
    vals = [s.node_arrays.get(key) for s in structures]
    present = [v for v in vals if v is not None]
    frames = key.startswith("frames")
    lens = np.array([0 if v is None else (v.shape[1] if frames else len(v))
                     * (v.shape[0] if frames else 1) for v in vals])
    counts = np.array([0 if v is None else v.shape[0] for v in vals])
    flat = [v.reshape((-1,) + v.shape[2:]) if frames else v for v in present]
    arrays[f"n/{key}"] = np.concatenate(flat) if flat else np.zeros(0)
    arrays[f"nl/{key}"] = lens
    arrays[f"nc/{key}"] = counts
  arrays["index_json"] = np.frombuffer(
      json.dumps(index).encode("utf-8"), np.uint8)
  atomic.savez(path, **arrays)


class IndexRows:
  """The (id, info) of each structure of a ``save_structures`` file, parsed
  one row at a time.

  A reader of a memory-mapped corpus chunk asks for a few structures of its
  10,000; parsing the whole index when it opens the chunk (~30 ms) made a
  200,000-crystal stream 4x slower than a 20,000 one (its workers reopened
  chunks). ``arrays``: the file's members (arrays or memmaps). Files written
  before the rows existed hold one JSON index, parsed whole.
  """

  def __init__(self, arrays, path: str = ""):
    self._ids = self._info = None
    if "index_rows" in arrays:
      self._bytes = arrays["index_rows"]
      self._at = np.asarray(arrays["index_rows_at"], np.int64)
    else:
      index = json.loads(bytes(arrays["index_json"]).decode("utf-8"))
      self._ids, self._info = index["ids"], index["info"]
    self.path = path

  def __len__(self) -> int:
    return len(self._ids) if self._ids is not None else len(self._at) - 1

  def row(self, j: int):
    """(id, info) of structure ``j``."""
    if self._ids is not None:
      return self._ids[j], self._info[j]
    a, b = int(self._at[j]), int(self._at[j + 1])
    try:
      ident, info = json.loads(bytes(self._bytes[a:b]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
      raise DataError(f"{self.path}[{j}]", f"unreadable index row ({e})"
                      ) from None
    return ident, info

  def id(self, j: int):
    return self._ids[j] if self._ids is not None else self.row(j)[0]


def load_structures(path: str) -> List[Structure]:
  """Inverse of ``save_structures`` (``sources.NpzSource`` reads it lazily)."""
  from noisy_nodes.data.sources import NpzSource  # pylint: disable=g-import-not-at-top
  return list(NpzSource(path))


def _cat(arrs: Iterable[np.ndarray], dtype, empty_shape=(0,)) -> np.ndarray:
  arrs = list(arrs)
  if not arrs:
    return np.zeros(empty_shape, dtype)
  return np.concatenate(arrs).astype(dtype)


def validate_all(structures: Sequence[Structure], skip_invalid: bool = False,
                 report: Optional[List[str]] = None,
                 check=None) -> List[Structure]:
  """Validates every structure; raises on the first bad one, or skips it.

  Args:
    structures: the dataset.
    skip_invalid: append the faults to ``report`` (a list of "sample: fault"
      lines) instead of raising.
    report: where skipped samples are listed.
    check: optional ``check(structure, sample)`` raising ``DataError`` for
      what a task or model cannot use (e.g. an element outside its feature
      range). Faults name the source file (``info['source']``) when the
      structure has one, else its id.
  """
  out = []
  for s in structures:
    try:
      out.append(validate_one(s, check))
    except DataError as err:
      if not skip_invalid:
        raise err from None
      if report is not None:
        report.append(str(err))
  return out


def validate_one(s: Structure, check=None) -> Structure:
  """``s.validate()`` and ``check(s, sample)``; the ``DataError`` names the
  source file (``info['source']``) when the structure has one, else its id."""
  sample = s.info.get("source", s.id) if s.info else s.id
  try:
    s.validate()
    if check is not None:
      check(s, sample)
  except DataError as e:
    raise (e if e.sample == sample else DataError(sample, e.fault)) from None
  return s
