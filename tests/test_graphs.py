"""Tests for noisy_nodes.data.graphs.structure_to_graph."""
import ase.build
import numpy as np
import pytest

from noisy_nodes.data.graphs import structure_to_graph
from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.data.structures import DataError, Structure


def _slab():
  slab = ase.build.fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
  ase.build.add_adsorbate(slab, "O", 1.2, "fcc")
  return Structure.from_ase(slab, id="slab0",
                            tags=np.arange(len(slab), dtype=np.int32) % 3)


def test_layout_dtypes_and_values():
  s = _slab()
  g = structure_to_graph(s, cutoff=5.0)
  n = s.num_atoms
  e = int(g.n_edge[0])
  assert g.n_node.tolist() == [n] and g.n_node.dtype == np.int32
  assert g.n_edge.dtype == np.int32 and e == len(g.senders) > 0
  assert g.senders.dtype == g.receivers.dtype == np.int32
  assert g.nodes["atomic_numbers"].dtype == np.int32
  np.testing.assert_array_equal(g.nodes["atomic_numbers"], s.atomic_numbers)
  assert g.nodes["positions"].dtype == np.float32
  np.testing.assert_allclose(g.nodes["positions"], s.positions, rtol=1e-7)
  assert g.edges["vectors"].shape == (e, 3)
  assert g.edges["vectors"].dtype == g.edges["distances"].dtype == np.float32
  assert g.edges["shifts"].dtype == np.int32
  assert g.globals["cell"].shape == (1, 3, 3)
  assert g.globals["cell"].dtype == np.float32
  np.testing.assert_allclose(g.globals["cell"][0], s.cell, rtol=1e-7)
  assert g.globals["pbc"].tolist() == [[True, True, False]]
  # Edges are the neighbour list's, and vectors follow the design contract.
  nl = neighbor_list(s.positions, s.cell, s.pbc, 5.0)
  np.testing.assert_array_equal(g.senders, nl.senders)
  np.testing.assert_array_equal(g.receivers, nl.receivers)
  expect = (s.positions[g.receivers] - s.positions[g.senders]
            + g.edges["shifts"] @ s.cell)
  np.testing.assert_allclose(g.edges["vectors"], expect, atol=1e-5)
  np.testing.assert_allclose(g.edges["distances"],
                             np.linalg.norm(expect, axis=1), atol=1e-5)


def test_positions_override_defines_the_graph():
  s = _slab()
  noisy = s.positions + np.random.default_rng(0).normal(
      scale=0.3, size=s.positions.shape)
  g = structure_to_graph(s, cutoff=4.0, positions=noisy)
  np.testing.assert_allclose(g.nodes["positions"], noisy, rtol=1e-7)
  nl = neighbor_list(noisy, s.cell, s.pbc, 4.0)
  np.testing.assert_array_equal(g.senders, nl.senders)
  np.testing.assert_allclose(g.edges["distances"], nl.distances, rtol=1e-6)
  clean = structure_to_graph(s, cutoff=4.0)
  assert not np.allclose(clean.edges["distances"].sum(),
                         g.edges["distances"].sum())
  # The structure itself is untouched.
  np.testing.assert_array_equal(s.positions, _slab().positions)


def test_options_are_passed_through():
  s = _slab()
  g = structure_to_graph(s, cutoff=6.0, max_neighbors=4, self_loops=True)
  # k = 4 neighbours plus one self loop per atom.
  assert np.bincount(g.receivers).tolist() == [5] * s.num_atoms
  g = structure_to_graph(s, cutoff=6.0, minimum_image=True)
  pairs = set(zip(g.senders.tolist(), g.receivers.tolist()))
  assert len(pairs) == len(g.senders)


def test_extra_arrays():
  s = _slab()
  n = s.num_atoms
  g = structure_to_graph(
      s, cutoff=3.0,
      extra_nodes={"tags": s.node_arrays["tags"],
                   "features": np.ones((n, 7), np.float32)},
      extra_globals={"target": np.array([[1.5, -2.0]], np.float32),
                     "energy": np.float32(3.25)})
  np.testing.assert_array_equal(g.nodes["tags"], s.node_arrays["tags"])
  assert g.nodes["features"].shape == (n, 7)
  assert g.globals["target"].shape == (1, 2)
  assert g.globals["energy"].tolist() == [3.25]
  with pytest.raises(DataError, match="slab0: node array 'tags'"):
    structure_to_graph(s, 3.0, extra_nodes={"tags": np.zeros(n + 1)})
  with pytest.raises(DataError, match="leading axis of size 1"):
    structure_to_graph(s, 3.0, extra_globals={"target": np.zeros(3)})
  with pytest.raises(ValueError, match="positions"):
    structure_to_graph(s, 3.0, extra_nodes={"positions": s.positions})


def test_molecule_graph_is_invariant_to_rigid_motion():
  rng = np.random.default_rng(1)
  pos = rng.normal(size=(9, 3)) * 1.5
  s = Structure(id="mol", atomic_numbers=np.full(9, 6), positions=pos)
  g = structure_to_graph(s, cutoff=2.5)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  moved = Structure(id="mol", atomic_numbers=np.full(9, 6),
                    positions=pos @ q.T + np.array([10.0, -3.0, 7.0]))
  g2 = structure_to_graph(moved, cutoff=2.5)
  got = {(s_, r): d for s_, r, d in zip(g2.senders, g2.receivers,
                                         g2.edges["distances"])}
  ref = {(s_, r): d for s_, r, d in zip(g.senders, g.receivers,
                                        g.edges["distances"])}
  assert got.keys() == ref.keys() and len(ref) > 0
  np.testing.assert_allclose([got[k] for k in ref], list(ref.values()),
                             rtol=1e-5)
  # Edge vectors rotate with the molecule (translation cancels).
  vec2 = {(s_, r): v for s_, r, v in zip(g2.senders, g2.receivers,
                                         g2.edges["vectors"])}
  np.testing.assert_allclose(
      np.array([vec2[(s_, r)] for s_, r in zip(g.senders, g.receivers)]),
      g.edges["vectors"] @ q.T, atol=1e-5)
  assert g.globals["pbc"].tolist() == [[False, False, False]]
  np.testing.assert_array_equal(g.globals["cell"], np.zeros((1, 3, 3)))


def test_errors_name_the_sample():
  s = _slab()
  with pytest.raises(DataError, match="slab0: positions have shape"):
    structure_to_graph(s, 3.0, positions=np.zeros((2, 3)))
  bad = s.positions.copy()
  bad[3, 1] = np.inf
  with pytest.raises(DataError, match="custom: non-finite .* atom 3"):
    structure_to_graph(s, 3.0, positions=bad, sample="custom")
  with pytest.raises(DataError, match="slab0: cutoff"):
    structure_to_graph(s, 0.0)
