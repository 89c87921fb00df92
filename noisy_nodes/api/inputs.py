"""What ``Predictor.predict`` accepts: ASE, pymatgen and library structures.

Every item becomes a ``noisy_nodes.data.structures.Structure`` (numpy only):

* ``ase.Atoms``: numbers, Cartesian positions, cell, pbc; ``FixAtoms``
  constraints become ``fixed`` and non-zero tags ``tags`` (OC20's surface /
  adsorbate flags), as ``Structure.from_ase``; the id is ``atoms.info['id']``
  when set.
* pymatgen ``Structure``: lattice matrix rows as the cell, Cartesian site
  coordinates, periodic along the lattice's ``pbc`` (all three by default);
  ``Molecule``: no cell, not periodic. Disordered sites (partial occupancies)
  cannot be one graph and are refused.
* ``Structure``: used as given.

Items without an id are named ``items[i]`` in error messages.
"""
from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np

from noisy_nodes.data.structures import DataError, Structure


def is_single(items: Any) -> bool:
  """True for one structure (rather than a sequence of them)."""
  if isinstance(items, Structure):
    return True
  mod = type(items).__module__
  return mod.startswith("ase.") or mod.startswith("pymatgen.")


def as_list(items: Any) -> List[Any]:
  return [items] if is_single(items) else list(items)


def to_structure(item: Any, index: int) -> Structure:
  """One input item -> ``Structure`` (module docstring)."""
  name = f"items[{index}]"
  if isinstance(item, Structure):
    return item
  mod = type(item).__module__
  if mod.startswith("ase."):
    import ase  # pylint: disable=g-import-not-at-top
    if isinstance(item, ase.Atoms):
      sid = item.info.get("id", name) if item.info else name
      return Structure.from_ase(item, id=str(sid))
  if mod.startswith("pymatgen."):
    return _from_pymatgen(item, name)
  raise TypeError(f"{name}: cannot predict on a {type(item).__name__}; pass "
                  "ase.Atoms, a pymatgen Structure / Molecule or a "
                  "noisy_nodes.Structure")


def _from_pymatgen(obj: Any, name: str) -> Structure:
  if not getattr(obj, "is_ordered", True):
    raise DataError(name, "disordered pymatgen structure (partial "
                    "occupancies): a graph needs one element per site")
  numbers = np.array([site.specie.Z for site in obj], np.int32)
  positions = np.asarray(obj.cart_coords, np.float64).reshape(-1, 3)
  lattice = getattr(obj, "lattice", None)
  if lattice is None:  # Molecule
    return Structure(id=name, atomic_numbers=numbers, positions=positions)
  pbc = np.asarray(getattr(lattice, "pbc", (True, True, True)), bool)
  return Structure(id=name, atomic_numbers=numbers, positions=positions,
                   cell=np.asarray(lattice.matrix, np.float64), pbc=pbc)


def to_structures(items: Sequence[Any]) -> List[Structure]:
  return [to_structure(item, i) for i, item in enumerate(items)]
