"""Bulk alloy crystals with EMT formation energies (CrysGNN experiment data).

The property a CrysGNN student should predict better after distillation must
come from the pre-training corpus's chemical space (bulk crystals) and must
not be readable off the composition. Crystal i (``np.random.default_rng([seed,
i])``): 2 or 3 of the EMT metals (``crystal.generators.METALS``) on an fcc,
bcc or hcp supercell of 4-16 sites, each site drawn by the composition (so
the ordering varies at a fixed composition); lattice constant by Vegard's law
on the elements' fcc constants (bcc and hcp at the same volume per atom),
times an isotropic strain of ±3 %, times a random shear of up to 2 %; atoms
rattled by 0.03 Å. No relaxation: the label is the energy of THIS structure.

  E_f = (E_EMT − Σ_el n_el μ_el) / N      (eV/atom)

with μ_el the EMT energy per atom of the element's fcc crystal at its
reference lattice constant. Lattice, ordering, strain and rattle move E_f at
a fixed composition, so composition alone leaves an error a structure-aware
model can remove (the experiment reports a composition-only least-squares
baseline next to the students).
"""
from __future__ import annotations

import functools
from typing import Dict, List

import numpy as np

from noisy_nodes.data.structures import Structure
from crystal import generators

LATTICES = ("fcc", "bcc", "hcp")


def _fcc_a(symbol: str) -> float:
  from ase.data import atomic_numbers, reference_states  # pylint: disable=g-import-not-at-top
  return float(reference_states[atomic_numbers[symbol]]["a"])


@functools.lru_cache(maxsize=None)
def chemical_potentials() -> Dict[str, float]:
  """μ_el: EMT energy per atom of each metal's fcc crystal (eV)."""
  from ase.build import bulk  # pylint: disable=g-import-not-at-top
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  out = {}
  for el in generators.METALS:
    atoms = bulk(el, "fcc", a=_fcc_a(el))
    atoms.calc = EMT()
    out[el] = float(atoms.get_potential_energy()) / len(atoms)
  return out


def alloy_crystal(i: int, seed: int = 0) -> Structure:
  """Crystal i of the seeded stream (module docstring)."""
  from ase.build import bulk  # pylint: disable=g-import-not-at-top
  from ase.calculators.emt import EMT  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, i])
  metals = generators.METALS
  k = int(rng.integers(2, 4))
  elements = [metals[j] for j in rng.choice(len(metals), k, replace=False)]
  weights = rng.dirichlet(np.ones(k))
  lattice = LATTICES[int(rng.integers(len(LATTICES)))]
  a_fcc = float(np.dot(weights, [_fcc_a(el) for el in elements]))
  volume = a_fcc ** 3 / 4                      # per atom, Vegard on fcc.
  if lattice == "fcc":
    cell = bulk("Cu", "fcc", a=a_fcc, cubic=True)              # 4 sites
  elif lattice == "bcc":
    cell = bulk("Cu", "bcc", a=(2 * volume) ** (1 / 3), cubic=True)  # 2
  else:
    a = (volume * 4 / (np.sqrt(3) * 1.633)) ** (1 / 3)
    cell = bulk("Cu", "hcp", a=a, c=1.633 * a)                 # 2 sites
  reps = {"fcc": [(1, 1, 1), (2, 1, 1), (2, 2, 1)],
          "bcc": [(2, 1, 1), (2, 2, 1), (2, 2, 2)],
          "hcp": [(2, 1, 1), (2, 2, 1), (2, 2, 2)]}[lattice]
  atoms = cell.repeat(reps[int(rng.integers(len(reps)))])
  n = len(atoms)
  atoms.set_chemical_symbols(
      [elements[j] for j in rng.choice(k, n, p=weights)])
  strain = (1 + rng.uniform(-0.03, 0.03)) * np.eye(3) + rng.uniform(
      -0.02, 0.02, (3, 3)) * (1 - np.eye(3))
  atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
  atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
  atoms.calc = EMT()
  energy = float(atoms.get_potential_energy())
  mu = chemical_potentials()
  e_form = (energy - sum(mu[s] for s in atoms.get_chemical_symbols())) / n
  present = sorted(set(atoms.get_chemical_symbols()))
  return Structure(
      id=f"{''.join(present)}_{lattice}_{seed}_{i:06d}",
      atomic_numbers=atoms.numbers, positions=atoms.positions,
      cell=np.asarray(atoms.cell), pbc=np.ones(3, bool),
      targets={"target": [e_form]},
      info={"kind": "alloy_crystal", "lattice": lattice,
            "elements": present, "energy": energy,
            "label": "EMT formation energy (eV/atom)"})


def alloy_crystals(n: int, seed: int = 0, start: int = 0) -> List[Structure]:
  """Crystals start..start+n-1 of the seeded stream (disjoint ranges are
  disjoint samples)."""
  return [alloy_crystal(i, seed) for i in range(start, start + n)]


def composition_baseline(train: List[Structure], test: List[Structure]
                         ) -> float:
  """Test MAE of least squares on element fractions (+ bias): what the
  composition alone predicts."""
  from ase.data import atomic_numbers  # pylint: disable=g-import-not-at-top
  z = [atomic_numbers[el] for el in generators.METALS]

  def x(structures):
    rows = []
    for s in structures:
      counts = np.bincount(s.atomic_numbers, minlength=100)
      frac = [counts[k] / s.num_atoms for k in z]
      rows.append(frac + [1.0])
    return np.asarray(rows)

  def y(structures):
    return np.asarray([float(np.ravel(s.targets["target"])[0])
                       for s in structures])
  coef, *_ = np.linalg.lstsq(x(train), y(train), rcond=None)
  return float(np.mean(np.abs(x(test) @ coef - y(test))))
