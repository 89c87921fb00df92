"""Tests for noisy_nodes.data.neighbors against ASE and direct enumeration."""
import ase
import ase.build
from ase.neighborlist import neighbor_list as ase_neighbor_list
import numpy as np
import pytest

from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.data.structures import DataError


def _ours(atoms, cutoff, **kw):
  return neighbor_list(atoms.positions, np.asarray(atoms.cell), atoms.pbc,
                       cutoff, **kw)


def _edge_dict(senders, receivers, shifts, values):
  return {(int(s), int(r), tuple(int(x) for x in k)): v
          for s, r, k, v in zip(senders, receivers, shifts, values)}


def _assert_matches_ase(atoms, cutoff):
  """Same (sender, receiver, shift) set and vectors as ASE, 1e-10 Å."""
  nl = _ours(atoms, cutoff)
  # ASE: D = x[j] - x[i] + S @ cell, so ASE (i, j, S) = our (sender, receiver,
  # shift) and D = our vector.
  i, j, s, d = ase_neighbor_list("ijSD", atoms, cutoff)
  ref = _edge_dict(i, j, s, d)
  got = _edge_dict(nl.senders, nl.receivers, nl.shifts, nl.vectors)
  assert len(ref) == len(i) and len(got) == len(nl.senders)  # no duplicates
  assert set(got) == set(ref)
  keys = sorted(ref)
  np.testing.assert_allclose(np.array([got[k] for k in keys]),
                             np.array([ref[k] for k in keys]), atol=1e-10)
  # Contract: vectors from the given positions and shifts; distances = norms.
  expect = (atoms.positions[nl.receivers] - atoms.positions[nl.senders]
            + nl.shifts @ np.asarray(atoms.cell))
  np.testing.assert_allclose(nl.vectors, expect, atol=1e-12)
  np.testing.assert_allclose(nl.distances,
                             np.linalg.norm(nl.vectors, axis=1), atol=1e-12)
  assert nl.distances.max(initial=0) <= cutoff
  _assert_sorted(nl)
  return nl


def _assert_sorted(nl):
  assert np.all(np.diff(nl.receivers) >= 0)
  same = np.diff(nl.receivers) == 0
  assert np.all(np.diff(nl.distances)[same] >= -1e-8)
  for name in ("senders", "receivers", "shifts"):
    assert getattr(nl, name).dtype == np.int32
  assert nl.vectors.dtype == nl.distances.dtype == np.float64


def _random_triclinic(seed, n=6, pbc=True):
  rng = np.random.default_rng(seed)
  cell = np.diag(rng.uniform(3.5, 7.0, 3)) + np.triu(
      rng.uniform(-2.5, 2.5, (3, 3)), 1)
  cell = cell[rng.permutation(3)]  # also left-handed cells
  frac = rng.uniform(-0.3, 1.3, (n, 3))  # some atoms outside the cell
  return ase.Atoms(f"H{n}", positions=frac @ cell, cell=cell, pbc=pbc)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_triclinic_matches_ase(seed):
  _assert_matches_ase(_random_triclinic(seed), cutoff=5.0)


@pytest.mark.parametrize("pbc", [(True, True, False), (False, True, True),
                                 (True, False, False), (False, False, True)])
def test_mixed_pbc_matches_ase(pbc):
  _assert_matches_ase(_random_triclinic(7, n=8, pbc=pbc), cutoff=4.5)


def test_molecule_matches_ase():
  rng = np.random.default_rng(3)
  atoms = ase.Atoms("C12", positions=rng.normal(size=(12, 3)) * 2.0)
  assert not atoms.pbc.any() and not np.asarray(atoms.cell).any()
  nl = _assert_matches_ase(atoms, cutoff=3.0)
  assert np.all(nl.shifts == 0)
  assert np.all(nl.senders != nl.receivers)
  # Molecules: the complete graph for a large cutoff.
  assert len(_ours(atoms, 100.0).senders) == 12 * 11


def test_molecule_ignores_garbage_cell_rows():
  rng = np.random.default_rng(4)
  pos = rng.normal(size=(5, 3))
  a = neighbor_list(pos, np.zeros((3, 3)), False, 2.5)
  b = neighbor_list(pos, np.full((3, 3), np.nan), False, 2.5)
  np.testing.assert_array_equal(a.senders, b.senders)
  np.testing.assert_array_equal(a.vectors, b.vectors)


def test_slab_with_adsorbate_matches_ase():
  slab = ase.build.fcc111("Cu", size=(3, 3, 4), vacuum=8.0)
  ase.build.add_adsorbate(slab, "O", 1.2, "fcc")
  assert list(slab.pbc) == [True, True, False]
  nl = _assert_matches_ase(slab, cutoff=6.0)
  assert np.all(nl.shifts[:, 2] == 0)
  # Slabs whose vacuum vector is zero (non-periodic row unused) agree too.
  cell = np.asarray(slab.cell).copy()
  cell[2] = 0.0
  nl0 = neighbor_list(slab.positions, cell, slab.pbc, 6.0)
  np.testing.assert_array_equal(nl0.shifts, nl.shifts)
  np.testing.assert_array_equal(nl0.senders, nl.senders)


def test_atoms_on_cell_faces_match_ase():
  # Conventional fcc cell: atoms exactly at fractional 0 and 1/2.
  atoms = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
  nl = _assert_matches_ase(atoms, cutoff=4.1)
  # Known shells of fcc: 12 at a/sqrt2 and 6 at a (4.05 <= 4.1).
  np.testing.assert_array_equal(np.bincount(nl.receivers), [18] * 4)


def test_cell_shorter_than_cutoff_matches_ase():
  rng = np.random.default_rng(5)
  cell = np.eye(3) * 2.5
  atoms = ase.Atoms("H2", positions=rng.uniform(0, 2.5, (2, 3)), cell=cell,
                    pbc=True)
  _assert_matches_ase(atoms, cutoff=6.0)


def test_skewed_one_atom_cell_matches_ase():
  cell = np.array([[2.0, 0.0, 0.0], [1.7, 1.2, 0.0], [0.9, 0.6, 1.8]])
  atoms = ase.Atoms("H", positions=[[0.3, -0.2, 0.1]], cell=cell, pbc=True)
  nl = _assert_matches_ase(atoms, cutoff=5.0)
  assert np.all(nl.senders == 0) and len(nl.senders) > 50


def test_two_angstrom_cell_cutoff_8_counts_lattice_points():
  # Simple cubic 2 Å, one atom: edges = lattice points with 0 < |n| a <= 8.
  nl = neighbor_list(np.array([[0.7, 1.9, 0.1]]), np.eye(3) * 2.0, True, 8.0)
  grid = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"),
                  -1).reshape(-1, 3)
  norm2 = (grid ** 2).sum(1)
  expected = int(np.sum((norm2 > 0) & (norm2 <= 16)))
  assert len(nl.senders) == expected
  assert {tuple(s) for s in nl.shifts.tolist()} == {
      tuple(g) for g, r in zip(grid.tolist(), norm2) if 0 < r <= 16}


def test_200_atoms_cutoff_8_matches_ase():
  slab = ase.build.fcc111("Pt", size=(5, 5, 8), vacuum=7.0)
  assert len(slab) == 200
  _assert_matches_ase(slab, cutoff=8.0)


def test_shifts_refer_to_unwrapped_positions():
  atoms = _random_triclinic(11)
  moved = atoms.copy()
  lattice_move = np.array([[3, -2, 1]] + [[0, 0, 0]] * 5)
  moved.positions += lattice_move @ np.asarray(atoms.cell)
  a, b = _ours(atoms, 4.0), _ours(moved, 4.0)
  np.testing.assert_allclose(b.vectors, a.vectors, atol=1e-9)
  np.testing.assert_array_equal(b.senders, a.senders)
  # Atom 0 moved by +L: edges it receives need -L, edges it sends need +L.
  expect = (a.shifts - (a.receivers == 0)[:, None] * lattice_move[0]
            + (a.senders == 0)[:, None] * lattice_move[0])
  np.testing.assert_array_equal(b.shifts, expect)


def test_max_neighbors_equals_direct_sort():
  atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
  atoms.rattle(0.05, seed=1)
  full = _ours(atoms, 6.0)
  for k in (1, 5, 12, 13):
    nl = _ours(atoms, 6.0, max_neighbors=k)
    rows = []
    for i in range(len(atoms)):
      mine = np.nonzero(full.receivers == i)[0]
      key = sorted(mine, key=lambda e: (full.distances[e], full.senders[e],
                                        tuple(full.shifts[e])))
      rows.extend(key[:k])
    rows = np.array(rows)
    np.testing.assert_array_equal(nl.senders, full.senders[rows])
    np.testing.assert_array_equal(nl.shifts, full.shifts[rows])
    np.testing.assert_array_equal(np.bincount(nl.receivers), [k] * len(atoms))


def test_max_neighbors_ties_broken_by_sender_then_shift():
  # Perfect simple cubic: 6 equal nearest neighbours, all images of atom 0.
  nl = neighbor_list(np.zeros((1, 3)), np.eye(3) * 3.0, True, 3.5,
                     max_neighbors=3)
  assert nl.shifts.tolist() == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
  # Translating the crystal does not change which ties are kept.
  moved = neighbor_list(np.full((1, 3), 0.123456789), np.eye(3) * 3.0, True,
                        3.5, max_neighbors=3)
  np.testing.assert_array_equal(moved.shifts, nl.shifts)


def test_minimum_image_matches_ase_mic_distances():
  atoms = _random_triclinic(2, n=7)
  cutoff = 4.0
  nl = _ours(atoms, cutoff, minimum_image=True)
  mic = atoms.get_all_distances(mic=True)  # mic[i, j] = |x_j - x_i| nearest
  want = {(j, i) for i in range(7) for j in range(7)
          if i != j and mic[i, j] <= cutoff}
  got = list(zip(nl.senders.tolist(), nl.receivers.tolist()))
  assert len(got) == len(set(got))  # one edge per ordered pair
  assert set(got) == want
  np.testing.assert_allclose(nl.distances, mic[nl.receivers, nl.senders],
                             atol=1e-9)
  # With max_neighbors: the k nearest of those pairs.
  nl3 = _ours(atoms, cutoff, minimum_image=True, max_neighbors=3)
  for i in range(7):
    d = np.sort(mic[i][[j for j in range(7) if (j, i) in want]])[:3]
    np.testing.assert_allclose(nl3.distances[nl3.receivers == i], d,
                               atol=1e-9)


def test_self_loops():
  atoms = _random_triclinic(9)
  base = _ours(atoms, 4.0, max_neighbors=4)
  nl = _ours(atoms, 4.0, max_neighbors=4, self_loops=True)
  assert len(nl.senders) == len(base.senders) + len(atoms)
  loop = (nl.senders == nl.receivers) & np.all(nl.shifts == 0, axis=1)
  assert loop.sum() == len(atoms)
  np.testing.assert_array_equal(nl.receivers[loop], np.arange(len(atoms)))
  np.testing.assert_array_equal(nl.distances[loop], 0.0)
  # The self loop comes first in its receiver's block (distance 0), and the
  # other edges are unchanged (self loops do not count towards k).
  starts = np.searchsorted(nl.receivers, np.arange(len(atoms)))
  assert np.all(loop[starts])
  np.testing.assert_array_equal(nl.senders[~loop], base.senders)
  np.testing.assert_array_equal(nl.shifts[~loop], base.shifts)
  # Without self_loops no zero-shift self edge, even for coincident images.
  assert not np.any((base.senders == base.receivers)
                    & np.all(base.shifts == 0, axis=1))


def test_empty_and_isolated():
  nl = neighbor_list(np.zeros((0, 3)), np.eye(3), True, 5.0)
  assert nl.senders.shape == (0,) and nl.shifts.shape == (0, 3)
  nl = neighbor_list(np.array([[0, 0, 0], [10, 0, 0.]]), np.zeros((3, 3)),
                     False, 5.0, self_loops=True)
  assert nl.senders.tolist() == [0, 1] and nl.receivers.tolist() == [0, 1]


def test_errors_name_sample_and_fault():
  pos = np.zeros((2, 3))
  pos[1] = [np.nan, 0, 0]
  with pytest.raises(DataError, match=r"mol7: non-finite .* atom 1"):
    neighbor_list(pos, np.zeros((3, 3)), False, 5.0, sample="mol7")
  with pytest.raises(DataError, match="cutoff"):
    neighbor_list(np.zeros((1, 3)), np.eye(3), True, 0.0)
  with pytest.raises(DataError, match="cutoff"):
    neighbor_list(np.zeros((1, 3)), np.eye(3), True, -1.0)
  singular = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 0, 3.0]])
  with pytest.raises(DataError, match="x.cif: singular cell"):
    neighbor_list(np.zeros((1, 3)), singular, True, 5.0, sample="x.cif")
  zero_row = np.diag([3.0, 3.0, 0.0])
  with pytest.raises(DataError, match="singular cell"):
    neighbor_list(np.zeros((1, 3)), zero_row, True, 5.0)
  # ... but a zero row on a non-periodic direction is fine.
  assert len(neighbor_list(np.zeros((1, 3)), zero_row, [True, True, False],
                           3.5).senders) == 4
  with pytest.raises(DataError, match="non-finite cell"):
    neighbor_list(np.zeros((1, 3)), np.full((3, 3), np.inf), True, 5.0)
  with pytest.raises(DataError, match="cell too small"):
    neighbor_list(np.zeros((1, 3)), np.eye(3) * 0.01, True, 8.0)
