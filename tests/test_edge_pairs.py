"""Reverse-edge pairs: the graph transform, the paired batch layout, and
GATGNN (and a baseline) giving the same results on paired batches."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.data import batching
from noisy_nodes.data.graphs import structure_to_graph
from noisy_nodes.data.structures import Structure
from crystal.edge_pairs import pair_reverse_edges
from crystal import features as F
from crystal.models import CGCNN, GATGNN


def _periodic(seed, n=7, a=5.5):
  """Random atoms in a skewed periodic cell: with a neighbour cap, many
  edges j -> i have no reverse i -> j."""
  rng = np.random.default_rng(seed)
  cell = np.diag([a, a * 1.1, a * 0.9]) + rng.normal(size=(3, 3)) * 0.3
  return Structure(id=f"p{seed}", atomic_numbers=rng.choice([8, 26, 78], n),
                   positions=rng.uniform(size=(n, 3)) @ cell, cell=cell,
                   pbc=[True, True, True], targets={"target": [0.0]})


def _cluster(seed, n=6):
  rng = np.random.default_rng(seed)
  return Structure(id=f"c{seed}", atomic_numbers=[78] * n,
                   positions=rng.normal(size=(n, 3)) * 1.6,
                   targets={"target": [0.0]})


def _edge_set(g, real_only=True):
  keep = ~np.asarray(g.edges.get("phantom", np.zeros(len(g.senders), bool)))
  if "mask" in g.edges:
    keep &= np.asarray(g.edges["mask"])
  return sorted(zip(g.senders[keep].tolist(), g.receivers[keep].tolist(),
                    map(tuple, np.asarray(g.edges["shifts"])[keep].tolist())))


@pytest.mark.parametrize("minimum_image,cap", [(False, 5), (True, 12),
                                               (False, None)])
def test_pairs_are_reverses_with_identical_geometry(minimum_image, cap):
  s = _periodic(0)
  g = structure_to_graph(s, 6.0, cap, self_loops=True,
                         minimum_image=minimum_image)
  p = pair_reverse_edges(g)
  e = int(p.n_edge[0])
  assert e >= int(g.n_edge[0])
  # The real edges are exactly the original ones.
  assert _edge_set(p) == _edge_set(g)
  phantom = p.edges["phantom"]
  rev = p.edges["reverse"]
  own = rev == np.arange(e)
  m = int(own.sum())
  k = (e - m) // 2
  assert not phantom[:k].any() and not phantom[own].any()
  t, r = np.arange(k), np.arange(k) + k
  np.testing.assert_array_equal(rev, np.r_[r, t, np.arange(2 * k, e)])
  # The edges that are their own reverse are the zero-shift self loops.
  loops = (g.senders == g.receivers) & ~np.asarray(g.edges["shifts"]).any(1)
  assert m == int(loops.sum()) == s.num_atoms
  assert np.all(p.senders[own] == p.receivers[own])
  assert not p.edges["shifts"][own].any()
  np.testing.assert_array_equal(p.senders[t], p.receivers[r])
  np.testing.assert_array_equal(p.receivers[t], p.senders[r])
  np.testing.assert_array_equal(p.edges["shifts"][t], -p.edges["shifts"][r])
  np.testing.assert_array_equal(p.edges["distances"][t],
                                p.edges["distances"][r])  # bitwise
  np.testing.assert_array_equal(p.edges["vectors"][t], -p.edges["vectors"][r])
  # Phantoms exist exactly for missing reverses.
  unmatched = set(_edge_set(g)) - {(b, a, tuple(-np.array(sh)))
                                   for a, b, sh in _edge_set(g)}
  assert int(phantom.sum()) == len(unmatched)
  if cap == 5:
    assert unmatched  # the case the phantoms are for
  # The geometry is that of the structure.
  pos = s.positions
  vec = (pos[p.receivers] - pos[p.senders]
         + p.edges["shifts"] @ np.asarray(s.cell))
  np.testing.assert_allclose(p.edges["vectors"], vec, atol=1e-5)


def test_paired_batch_layout_swaps_halves():
  f = F.CrystalFeaturizer(F.reference_config(pair_edges=True,
                                             max_neighbors=5,
                                             minimum_image=False))
  graphs = [f(_periodic(i)) for i in range(3)] + [f(_cluster(5))]
  tot_e = sum(int(g.n_edge[0]) for g in graphs)
  budget = batching.Budget(64, tot_e, 6)  # odd, all used: padded to even
  b = batching.pad_graphs(graphs, budget)
  e = b.senders.shape[0]
  assert e % 2 == 0 and e == tot_e + 1
  h = e // 2
  rows = np.arange(e)
  rev = b.edges["reverse"]
  own = rev == rows
  np.testing.assert_array_equal(rev[~own], ((rows + h) % e)[~own])
  np.testing.assert_array_equal(b.senders[~own],
                                b.receivers[(rows + h) % e][~own])
  # Self loops (one per atom, an odd count here) share pairs of rows; the
  # odd one out has a padding partner.
  num_loops = sum(int(g.n_node[0]) for g in graphs)
  assert num_loops % 2 == 1
  real = b.edges["mask"]
  assert int((own & real).sum()) == num_loops
  assert int((own & ~real).sum()) == 1
  assert own[:h].sum() == own[h:].sum()
  loops = own & real
  assert np.all(b.senders[loops] == b.receivers[loops])
  assert not b.edges["shifts"][loops].any()
  # The two rows of every pair (self loops included) share edge features.
  for key in ("distances", "features"):
    top, bottom = b.edges[key][:h], b.edges[key][h:]
    both = real[:h] & real[h:]
    np.testing.assert_array_equal(top[both], bottom[both])
  # Every graph's edges are there (with node offsets), padding is masked and
  # points at the padding node.
  offsets = np.r_[0, np.cumsum([int(g.n_node[0]) for g in graphs])]
  want = sorted((int(s) + offsets[i], int(r) + offsets[i], int(ph))
                for i, g in enumerate(graphs)
                for s, r, ph in zip(g.senders, g.receivers,
                                    g.edges["phantom"]))
  mask = b.edges["mask"]
  got = sorted(zip(b.senders[mask].tolist(), b.receivers[mask].tolist(),
                   b.edges["phantom"][mask].astype(int).tolist()))
  assert got == want
  assert np.all(b.senders[~mask] == offsets[-1])
  # Self loops with different features are only paired within their group.
  odd = graphs[0]
  own = odd.edges["reverse"] == np.arange(len(odd.senders))
  feats = odd.edges["features"].copy()
  feats[own] += 1.0
  mixed = [odd._replace(edges=dict(odd.edges, features=feats))] + graphs[1:]
  m = batching.pad_graphs(mixed, batching.Budget(64, tot_e + 1, 6))
  rev = m.edges["reverse"]
  loops = (rev == np.arange(len(rev))) & m.edges["mask"]
  assert int(loops.sum()) == num_loops
  h = len(rev) // 2
  both = m.edges["mask"][:h] & m.edges["mask"][h:]
  np.testing.assert_array_equal(m.edges["features"][:h][both],
                                m.edges["features"][h:][both])
  # A sample that is not paired as pair_reverse_edges pairs is refused.
  bad = graphs[0]._replace(edges=dict(graphs[0].edges,
                                      reverse=graphs[0].edges["reverse"][::-1]))
  with pytest.raises(ValueError, match="reverse"):
    batching.pad_graphs([bad], budget)


def _batches(model_graph, pair):
  f = F.CrystalFeaturizer(F.reference_config(pair_edges=pair,
                                             **model_graph)).fit(
                                                 _STRUCTURES)
  graphs = [f(s) for s in _STRUCTURES]
  budget = batching.Budget(80, sum(int(g.n_edge[0]) for g in graphs) + 10, 8)
  return batching.pad_graphs(graphs, budget)


_STRUCTURES = [_periodic(i) for i in range(4)] + [_cluster(7), _cluster(8)]


@pytest.mark.parametrize("graph", [dict(minimum_image=False, max_neighbors=5),
                                   dict()])
def test_gatgnn_is_the_same_model_on_paired_batches(graph):
  plain, paired = _batches(graph, False), _batches(graph, True)
  rev = paired.edges["reverse"]
  assert (rev == np.arange(len(rev))).any()         # paired self loops
  if graph:
    assert paired.edges["phantom"].any()            # unmatched edges
  model = hk.transform_with_state(
      lambda g, t: GATGNN(dim=16, num_layers=3, heads=4, remat=True)(g, t))
  params, state = model.init(jax.random.PRNGKey(0), plain, True)
  params = jax.tree_util.tree_map(  # nonzero BN offsets, DGN scales, ...
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
      params)

  def loss(p, batch, training):
    out, new_state = model.apply(p, state, None, batch, training)
    return jnp.sum(out["graph"] ** 2), (out, new_state)

  for training in (True, False):
    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=2)
    g0, (o0, s0) = grad_fn(params, plain, training)
    g1, (o1, s1) = grad_fn(params, paired, training)
    n = len(_STRUCTURES)
    np.testing.assert_allclose(o1["graph"][:n], o0["graph"][:n], rtol=2e-5,
                               atol=2e-5)
    np.testing.assert_allclose(o1["node_embedding"], o0["node_embedding"],
                               rtol=2e-4, atol=2e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1),
                    jax.tree_util.tree_leaves(g0)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # Running statistics (edge BatchNorm on the attention logits included)
    # see the real edges only.
    for a, b in zip(jax.tree_util.tree_leaves(s1),
                    jax.tree_util.tree_leaves(s0)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_baselines_ignore_phantom_edges():
  graph = dict(minimum_image=False, max_neighbors=5)
  plain, paired = _batches(graph, False), _batches(graph, True)
  model = hk.transform_with_state(
      lambda g, t: CGCNN(dim=16, num_layers=2, deeper=True)(g, t))
  params, state = model.init(jax.random.PRNGKey(0), plain, True)
  o0, _ = model.apply(params, state, None, plain, True)
  o1, _ = model.apply(params, state, None, paired, True)
  np.testing.assert_allclose(o1["graph"][:6], o0["graph"][:6], rtol=1e-5,
                             atol=1e-5)
