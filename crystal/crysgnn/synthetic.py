"""Generators of the CrysGNN corpus's synthetic crystals (``corpus.py``).

Each generator maps a seeded ``np.random.Generator`` and a size bound to a
``Structure`` without labels (``corpus.make_item`` labels it):
``pyxtal`` random symmetric crystals, ``prototype`` AFLOW prototypes with
substituted elements, ``bulk`` strained ASE ground states, ``known``
strained shipped test structures (the corpus module docstring).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from noisy_nodes.data.structures import Structure

# Elements drawn for generated crystals: H..Bi without noble gases, Tc, Pm.
ELEMENTS = tuple(z for z in range(1, 84) if z not in (2, 10, 18, 36, 54, 43,
                                                      61))


# -- generators (each: rng -> Structure without labels) -------------------------
def _pyxtal(rng: np.random.Generator, max_atoms: int) -> Structure:
  from pyxtal import pyxtal  # pylint: disable=g-import-not-at-top
  from pyxtal.symmetry import Group  # pylint: disable=g-import-not-at-top
  from ase.data import chemical_symbols  # pylint: disable=g-import-not-at-top
  group = int(rng.integers(1, 231))
  mults = sorted({w.multiplicity for w in Group(group).Wyckoff_positions})
  last = None
  for _ in range(4):  # A few compositions; pyxtal rejects incompatible ones.
    n_species = int(rng.integers(1, 4))
    zs = rng.choice(ELEMENTS, n_species, replace=False)
    # Each species occupies 1-2 Wyckoff sites, smallest orbits most likely.
    p = 1.0 / np.arange(1, len(mults) + 1) ** 2
    counts = [int(sum(rng.choice(mults, int(rng.integers(1, 3)), p=p / p.sum())))
              for _ in zs]
    if sum(counts) > max_atoms:
      last = f"{sum(counts)} atoms > max_atoms for group {group}"
      continue
    c = pyxtal()
    try:
      c.from_random(3, group, [chemical_symbols[z] for z in zs], counts,
                    random_state=int(rng.integers(2**31)))
    except Exception as e:  # pylint: disable=broad-except  (pyxtal errors)
      last = f"pyxtal: {type(e).__name__}: {e}"
      continue
    if not c.valid:
      last = f"pyxtal produced no valid crystal for group {group}"
      continue
    s = Structure.from_ase(c.to_ase(), id="")
    s.info["requested_space_group"] = group
    return s
  raise RuntimeError(last)


_PROTOTYPES = None
_KNOWN = None


def _prototypes():
  global _PROTOTYPES
  if _PROTOTYPES is None:
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY  # pylint: disable=g-import-not-at-top
    _PROTOTYPES = [(e["tags"].get("mineral") or e["tags"].get("aflow") or
                    str(i), e["snl"].structure)
                   for i, e in enumerate(AFLOW_PROTOTYPE_LIBRARY)]
  return _PROTOTYPES


def _covalent(z):
  from ase.data import covalent_radii  # pylint: disable=g-import-not-at-top
  return covalent_radii[np.asarray(z)]


def _rescale_to_bonds(s: Structure, rng) -> Structure:
  """Scales the cell so the shortest bond is 0.95-1.2 × Σ covalent radii."""
  from noisy_nodes.data.neighbors import neighbor_list  # pylint: disable=g-import-not-at-top
  nl = neighbor_list(s.positions, s.cell, s.pbc, 12.0, max_neighbors=1)
  if len(nl.distances) == 0:
    raise RuntimeError("no neighbours within 12 Å")
  z = s.atomic_numbers
  ratio = nl.distances / (_covalent(z[nl.senders]) + _covalent(z[nl.receivers]))
  factor = rng.uniform(0.95, 1.2) / ratio.min()
  return Structure(id="", atomic_numbers=z, positions=s.positions * factor,
                   cell=s.cell * factor, pbc=True, info=s.info)


def _prototype(rng, max_atoms: int) -> Structure:
  protos = _prototypes()
  for _ in range(4):
    name, ps = protos[int(rng.integers(len(protos)))]
    if len(ps) <= max_atoms:
      break
  else:
    raise RuntimeError("no prototype small enough")
  species = sorted({site.specie.Z for site in ps})
  new = dict(zip(species, rng.choice(ELEMENTS, len(species), replace=False)))
  z = np.array([new[site.specie.Z] for site in ps])
  s = Structure(id="", atomic_numbers=z, positions=ps.cart_coords,
                cell=ps.lattice.matrix, pbc=True,
                info={"prototype": str(name)})
  return _rescale_to_bonds(s, rng)


def _strain(s: Structure, rng, amount=0.02, isotropic=False) -> Structure:
  if isotropic:
    m = np.eye(3) * (1 + rng.uniform(-amount, amount))
  else:
    e = rng.uniform(-amount, amount, (3, 3))
    m = np.eye(3) + 0.5 * (e + e.T)
  return Structure(id="", atomic_numbers=s.atomic_numbers,
                   positions=s.positions @ m, cell=s.cell @ m, pbc=True,
                   info=s.info)


def bulk_elements() -> List[str]:
  """Element symbols ``ase.build.bulk`` can build without extra arguments."""
  from ase.data import chemical_symbols, reference_states  # pylint: disable=g-import-not-at-top
  ok = ("fcc", "bcc", "hcp", "diamond", "sc", "rhombohedral", "bct",
        "orthorhombic")
  return [chemical_symbols[z] for z, st in enumerate(reference_states)
          if st and st.get("symmetry") in ok]


def _bulk(rng, max_atoms: int) -> Structure:
  del max_atoms
  from ase.build import bulk  # pylint: disable=g-import-not-at-top
  symbols = bulk_elements()
  sym = symbols[int(rng.integers(len(symbols)))]
  cubic = bool(rng.random() < 0.3)
  try:
    atoms = bulk(sym, cubic=cubic)
  except Exception:  # pylint: disable=broad-except  (no cubic cell)
    atoms, cubic = bulk(sym), False
  s = Structure.from_ase(atoms, id="", info={"element": sym, "cubic": cubic})
  return _strain(s, rng)


def _known_files() -> List[str]:
  global _KNOWN
  if _KNOWN is None:
    import pymatgen.core  # pylint: disable=g-import-not-at-top
    import pyxtal  # pylint: disable=g-import-not-at-top
    pmg = os.path.join(os.path.dirname(os.path.dirname(pymatgen.core.__file__)),
                       "util", "structures")
    pyx = os.path.join(os.path.dirname(pyxtal.__file__), "database", "cifs")
    files = []
    for d, ext in ((pmg, ".json"), (pyx, ".cif")):
      if os.path.isdir(d):
        files += sorted(os.path.join(d, f) for f in os.listdir(d)
                        if f.endswith(ext))
    _KNOWN = files
  return _KNOWN


def _read_pymatgen(path: str) -> Structure:
  """Shipped files (pymatgen JSON, pyxtal CIFs with unusual space-group
  spellings that ASE rejects) are read with pymatgen."""
  from pymatgen.core import Structure as PmgStructure  # pylint: disable=g-import-not-at-top
  ps = PmgStructure.from_file(path)
  return Structure(id=os.path.basename(path), atomic_numbers=ps.atomic_numbers,
                   positions=ps.cart_coords, cell=ps.lattice.matrix,
                   pbc=True, info={"source": path})


def _known(rng, max_atoms: int) -> Structure:
  files = _known_files()
  last = "no known structure small enough"
  for _ in range(4):
    path = files[int(rng.integers(len(files)))]
    try:  # Some shipped files are disordered (partial occupancies).
      s = _read_pymatgen(path)
    except Exception as e:  # pylint: disable=broad-except
      last = f"{os.path.basename(path)}: {type(e).__name__}: {e}"
      continue
    if s.num_atoms <= max_atoms and s.pbc.all():
      s.info = {"source": os.path.basename(path)}
      return _strain(s, rng, isotropic=True)
  raise RuntimeError(last)


GENERATORS = {"pyxtal": _pyxtal, "prototype": _prototype, "bulk": _bulk,
               "known": _known}


def preload(sources) -> None:
  """Imports and loads shipped libraries once, before workers fork, so that
  no item pays (or times out on) a multi-second library load."""
  import pyxtal  # pylint: disable=g-import-not-at-top,unused-import
  from pyxtal.symmetry import Group  # pylint: disable=g-import-not-at-top
  Group(225)
  if "prototype" in sources:
    _prototypes()
  if "known" in sources:
    _known_files()
    import pymatgen.core  # pylint: disable=g-import-not-at-top,unused-import
