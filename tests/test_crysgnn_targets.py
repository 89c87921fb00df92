"""Connectivity targets and symmetry labels of known prototypes."""
import itertools

import numpy as np
import pytest
from ase.build import bulk
from ase.spacegroup import crystal

from noisy_nodes.data.structures import DataError, Structure
from crystal.crysgnn import symmetry, targets


def _brute_counts(s: Structure, k=12, cutoff=8.0, cap=5):
  """Direct enumeration of images in a box of +-R cells."""
  n = s.num_atoms
  heights = 1.0 / np.linalg.norm(np.linalg.inv(s.cell), axis=0)
  reps = [int(np.ceil(cutoff / h)) + 1 for h in heights]
  counts = np.zeros((n, n), int)
  for i in range(n):
    cand = []
    for j in range(n):
      for sh in itertools.product(*[range(-r, r + 1) for r in reps]):
        if j == i and sh == (0, 0, 0):
          continue
        d = np.linalg.norm(s.positions[i] - s.positions[j]
                           + np.array(sh) @ s.cell)
        if d <= cutoff:
          cand.append((d, j, sh))
    cand.sort()
    for _, j, _ in cand[:k]:
      counts[i, j] += 1
  return np.minimum(counts, cap)


def _random_cell(n, seed):
  rng = np.random.default_rng(seed)
  cell = np.diag([2.6, 2.9, 3.3]) + rng.uniform(-0.4, 0.4, (3, 3))
  frac = rng.random((n, 3))
  return Structure(id=f"rand{seed}", atomic_numbers=np.full(n, 14),
                   positions=frac @ cell, cell=cell, pbc=True)


@pytest.mark.parametrize("n,seed", [(1, 0), (2, 1), (3, 2)])
def test_counts_match_brute_force_over_images(n, seed):
  s = _random_cell(n, seed)
  got = targets.connectivity_counts(s, cap=100)
  ref = _brute_counts(s, cap=100)
  np.testing.assert_array_equal(got, ref)
  assert got.sum() == 12 * n               # every atom has 12 neighbours.
  assert got.max() > 1                     # images of one j counted apart.
  np.testing.assert_array_equal(targets.connectivity_counts(s),
                                np.minimum(ref, 5))


def test_fcc_one_atom_and_sparse_storage():
  s = Structure.from_ase(bulk("Cu", "fcc", a=3.6), id="cu")
  np.testing.assert_array_equal(targets.connectivity_counts(s, cap=100),
                                [[12]])
  t = targets.connectivity_target(s)
  np.testing.assert_array_equal(t["connectivity_partner"], [[0] + [-1] * 11])
  np.testing.assert_array_equal(t["connectivity_count"], [[5] + [0] * 11])
  hcp = Structure.from_ase(bulk("Mg", "hcp", a=3.21, c=5.21), id="mg")
  np.testing.assert_array_equal(targets.connectivity_counts(hcp, cap=100),
                                [[6, 6], [6, 6]])
  # Any size: [n, 12] per crystal, the dense counts recovered exactly.
  big = Structure.from_ase(bulk("Cu", "fcc", a=3.6, cubic=True) * (5, 5, 1),
                           id="cu100")
  t = targets.connectivity_target(big)
  assert t["connectivity_partner"].shape == (100, 12)
  dense = np.zeros((100, 100), np.int32)
  rows = np.repeat(np.arange(100), 12)
  ok = t["connectivity_partner"].reshape(-1) >= 0
  dense[rows[ok], t["connectivity_partner"].reshape(-1)[ok]] = (
      t["connectivity_count"].reshape(-1)[ok])
  np.testing.assert_array_equal(dense, targets.connectivity_counts(big))


def _s(atoms):
  return Structure.from_ase(atoms, id="proto")


PROTOTYPES = {
    "rocksalt NaCl": (bulk("NaCl", "rocksalt", a=5.64), 225, "cubic"),
    "wurtzite ZnO": (bulk("ZnO", "wurtzite", a=3.25, c=5.2), 186,
                     "hexagonal"),
    "rutile TiO2": (crystal(["Ti", "O"], [(0, 0, 0), (0.3, 0.3, 0)],
                            spacegroup=136,
                            cellpar=[4.59, 4.59, 2.96, 90, 90, 90]),
                    136, "tetragonal"),
    "fcc Cu": (bulk("Cu", "fcc", a=3.6), 225, "cubic"),
    "diamond Si": (bulk("Si", "diamond", a=5.43), 227, "cubic"),
    "hcp Mg": (bulk("Mg", "hcp", a=3.21, c=5.21), 194, "hexagonal"),
    "perovskite SrTiO3": (crystal(["Sr", "Ti", "O"], [(0, 0, 0),
                                                     (.5, .5, .5),
                                                     (.5, .5, 0)],
                                  spacegroup=221, cellpar=[3.905] * 3
                                  + [90] * 3), 221, "cubic"),
    "alpha quartz": (crystal(["Si", "O"], [(0.4697, 0, 0),
                                          (0.4135, 0.2669, 0.1191)],
                             spacegroup=152,
                             cellpar=[4.916, 4.916, 5.405, 90, 90, 120]),
                     152, "trigonal"),
    "bcc Fe": (bulk("Fe", "bcc", a=2.87), 229, "cubic"),
    "CsCl": (bulk("CsCl", "cesiumchloride", a=4.12), 221, "cubic"),
}


@pytest.mark.parametrize("name", sorted(PROTOTYPES))
def test_symmetry_labels_of_prototypes(name):
  atoms, sg, system = PROTOTYPES[name]
  s = symmetry.add_symmetry_labels(_s(atoms))
  assert s.info["space_group"] == sg
  assert s.info["crystal_system"] == system
  assert s.targets["space_group"] == sg
  assert symmetry.CRYSTAL_SYSTEMS[int(s.targets["crystal_system"])] == system


def test_detected_not_requested_and_tolerance():
  # A ~0.001 Å rattle keeps Fm-3m at the default symprec (0.01) but not 1e-4.
  atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
  atoms.rattle(0.001, seed=0)
  s = _s(atoms)
  assert symmetry.symmetry_labels(s)["space_group"] == 225
  assert symmetry.symmetry_labels(s, symprec=1e-4)["space_group"] == 1


def test_strained_crystal_gets_the_reference_label():
  """pymatgen's SpacegroupAnalyzer defaults (symprec 0.01, angle 5°), not 0.1:
  fcc Cu stretched 0.8 % along c is cubic at 0.1 but tetragonal at 0.01."""
  from pymatgen.io.ase import AseAtomsAdaptor  # pylint: disable=g-import-not-at-top
  from pymatgen.symmetry.analyzer import SpacegroupAnalyzer  # pylint: disable=g-import-not-at-top
  atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
  cell = atoms.cell.array.copy()
  cell[2] *= 1.008
  atoms.set_cell(cell, scale_atoms=True)
  s = _s(atoms)
  assert symmetry.symmetry_labels(s, symprec=0.1)["space_group"] == 225
  labels = symmetry.symmetry_labels(s)
  assert labels["space_group"] == 139          # I4/mmm
  assert labels["crystal_system_name"] == "tetragonal"
  ref = SpacegroupAnalyzer(AseAtomsAdaptor.get_structure(atoms))
  assert labels["space_group"] == ref.get_space_group_number()
  assert symmetry.add_symmetry_labels(s).info["symprec"] == 0.01


def test_crystal_system_ranges_and_errors():
  edges = {1: 0, 2: 0, 3: 1, 15: 1, 16: 2, 74: 2, 75: 3, 142: 3, 143: 4,
           167: 4, 168: 5, 194: 5, 195: 6, 230: 6}
  for sg, cs in edges.items():
    assert symmetry.crystal_system_index(sg) == cs
  with pytest.raises(ValueError):
    symmetry.crystal_system_index(231)
  mol = Structure(id="h2", atomic_numbers=[1, 1],
                  positions=[[0, 0, 0], [0, 0, 0.74]])
  with pytest.raises(DataError, match="h2"):
    symmetry.symmetry_labels(mol)


def test_pretrain_labels_consistency():
  s = symmetry.add_symmetry_labels(_s(bulk("Si", "diamond", a=5.43)))
  nodes, glob = targets.pretrain_labels(s)
  assert nodes["connectivity_partner"].shape == (2, 12)
  assert nodes["connectivity_count"].shape == (2, 12)
  assert glob["space_group"].tolist() == [227]
  assert glob["crystal_system"].tolist() == [6]
  s.targets["crystal_system"] = np.float64(2.0)
  with pytest.raises(DataError, match="inconsistent"):
    targets.pretrain_labels(s)
