"""Space-group and crystal-system labels from symmetry analysis (spglib).

CrysGNN's graph-level heads predict the space group (230 classes) and use the
crystal system (7 classes) to define positive pairs of the contrastive loss
(paper §2.1.1, "Graph-level decoding"). Labels are always detected from the
FINAL coordinates with spglib, never taken from what a generator was asked for:
pyxtal returns a more symmetric crystal than requested for 1–2 % of groups,
and perturbed or strained structures may lose symmetry.

Tolerances: pymatgen's ``SpacegroupAnalyzer`` defaults, which the reference
implementation calls (``SpacegroupAnalyzer(structure)``): ``SYMPREC = 0.01`` Å
and ``ANGLE_TOLERANCE = 5`` degrees, passed to spglib as pymatgen passes them,
so a slightly strained crystal gets the reference's (lower-symmetry) label.
A structure for which spglib finds no symmetry dataset raises ``DataError``.
"""
from __future__ import annotations

import warnings
from typing import Dict

import numpy as np
import spglib

from noisy_nodes.data.structures import DataError, Structure

SYMPREC = 0.01          # Å, pymatgen SpacegroupAnalyzer's default.
ANGLE_TOLERANCE = 5.0   # degrees, likewise.

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal",
                   "trigonal", "hexagonal", "cubic")
NUM_SPACE_GROUPS = 230
NUM_CRYSTAL_SYSTEMS = len(CRYSTAL_SYSTEMS)
# Last space-group number of each crystal system (International Tables).
_SYSTEM_LAST_GROUP = np.array([2, 15, 74, 142, 167, 194, 230])


def crystal_system_index(space_group: int) -> int:
  """Index 0..6 into ``CRYSTAL_SYSTEMS`` of a space group number 1..230."""
  sg = int(space_group)
  if not 1 <= sg <= NUM_SPACE_GROUPS:
    raise ValueError(f"space group number {sg} is not in 1..230")
  return int(np.searchsorted(_SYSTEM_LAST_GROUP, sg))


def crystal_system_name(space_group: int) -> str:
  return CRYSTAL_SYSTEMS[crystal_system_index(space_group)]


def symmetry_dataset(structure: Structure, symprec: float = SYMPREC,
                     angle_tolerance: float = ANGLE_TOLERANCE):
  """spglib's symmetry dataset of a periodic structure (raises DataError)."""
  if not structure.pbc.all():
    raise DataError(structure.id, "symmetry labels need a 3-D periodic "
                    f"crystal, got pbc={structure.pbc.tolist()}")
  cell = structure.cell
  if not abs(np.linalg.det(cell)) > 1e-6:
    raise DataError(structure.id, "singular cell: no space group")
  frac = np.linalg.solve(cell.T, structure.positions.T).T
  try:
    with warnings.catch_warnings():
      # spglib 2.x warns about its legacy error handling on every call.
      warnings.simplefilter("ignore", DeprecationWarning)
      data = spglib.get_symmetry_dataset(
          (cell, frac, structure.atomic_numbers), symprec=symprec,
          angle_tolerance=angle_tolerance)
      message = None if data is not None else spglib.get_error_message()
  except Exception as e:  # pylint: disable=broad-except  (SpglibError)
    data, message = None, str(e)
  if data is None:
    raise DataError(structure.id, f"spglib found no symmetry ({message})")
  return data


def symmetry_labels(structure: Structure,
                    symprec: float = SYMPREC) -> Dict[str, object]:
  """Detected labels of one crystal.

  Returns:
    dict with ``space_group`` (int 1..230), ``crystal_system`` (int 0..6),
    ``crystal_system_name`` and ``international`` (Hermann–Mauguin symbol).
  """
  data = symmetry_dataset(structure, symprec)
  sg = int(data.number)
  return {"space_group": sg, "crystal_system": crystal_system_index(sg),
          "crystal_system_name": crystal_system_name(sg),
          "international": str(data.international)}


def add_symmetry_labels(structure: Structure,
                        symprec: float = SYMPREC) -> Structure:
  """Stores the labels in ``targets`` (floats, as every target) and ``info``.

  ``targets['space_group']`` holds the number 1..230 and
  ``targets['crystal_system']`` the index 0..6; ``info`` also records the
  symbol and the tolerance used.
  """
  labels = symmetry_labels(structure, symprec)
  structure.targets["space_group"] = np.float64(labels["space_group"])
  structure.targets["crystal_system"] = np.float64(labels["crystal_system"])
  structure.info.update(
      space_group=labels["space_group"],
      crystal_system=labels["crystal_system_name"],
      space_group_symbol=labels["international"], symprec=symprec,
      angle_tolerance=ANGLE_TOLERANCE)
  return structure
