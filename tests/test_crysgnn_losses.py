"""CrysGNN heads and pre-training losses against direct numpy computations."""
import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from crystal.crysgnn import heads as heads_lib
from crystal.crysgnn import losses
from crystal.crysgnn import targets as targets_lib

M = 5      # background pair slots: the exact loss up to 5 atoms
K = 12     # neighbour slots
F = 92
D = 8


def _batch(sizes, seed=0, pad_nodes=4, pad_graphs=2, systems=None):
  """A padded batch of random crystals with CrysGNN labels."""
  rng = np.random.default_rng(seed)
  graphs = []
  for g, n in enumerate(sizes):
    # Dense counts with at most K non-zero per row (any classes 1..5).
    counts = rng.integers(0, 6, (n, n)) * (rng.random((n, n)) < min(
        1.0, 6.0 / n))
    for row in counts:
      row[np.flatnonzero(row)[K:]] = 0
    partner, count = targets_lib.sparse_connectivity(counts.astype(np.int32))
    nodes = {"features": (rng.random((n, F)) < 0.1).astype(np.float32),
             "connectivity_partner": partner, "connectivity_count": count,
             "dense_counts": np.pad(counts, ((0, 0), (0, max(sizes) - n))),
             "emb": rng.normal(size=(n, D)).astype(np.float32)}
    cs = systems[g] if systems is not None else rng.integers(0, 3)
    glob = {"space_group": np.array([rng.integers(1, 231)], np.int32),
            "crystal_system": np.array([cs], np.int32)}
    graphs.append(jraph.GraphsTuple(
        nodes=nodes, edges={"x": np.zeros((1, 1), np.float32)},
        senders=np.zeros(1, np.int32), receivers=np.zeros(1, np.int32),
        n_node=np.array([n], np.int32), n_edge=np.array([1], np.int32),
        globals=glob))
  b = jraph.batch(graphs)
  n_real, g_real = int(sum(sizes)), len(sizes)
  b = jraph.pad_with_graphs(b, n_real + pad_nodes, len(sizes) + 1,
                            g_real + pad_graphs)
  nodes = dict(b.nodes, mask=np.arange(n_real + pad_nodes) < n_real)
  # Padding values must never matter: fill them with junk.
  nodes["emb"] = np.where(nodes["mask"][:, None], nodes["emb"], 7.0)
  nodes["features"] = np.where(nodes["mask"][:, None], nodes["features"], 1.)
  glob = dict(b.globals, mask=np.arange(g_real + pad_graphs) < g_real)
  glob["crystal_system"] = np.where(glob["mask"],
                                    glob["crystal_system"], 0)
  return b._replace(nodes=nodes, globals=glob)


def _model(graph, num_background=M):
  return heads_lib.CrysGNNHeads(num_background)(graph.nodes["emb"], graph)


_heads = hk.without_apply_rng(hk.transform(_model))
_init, _apply = jax.jit(_heads.init), jax.jit(_heads.apply)


def _np_normalize(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_ntxent(emb, labels, tau):
  z = _np_normalize(emb)
  s = z @ z.T / tau
  losses_ = []
  for a in range(len(z)):
    for p in range(len(z)):
      if a == p or labels[a] != labels[p]:
        continue
      neg = [n for n in range(len(z)) if labels[n] != labels[a]]
      den = np.exp(s[a, p]) + sum(np.exp(s[a, n]) for n in neg)
      losses_.append(-np.log(np.exp(s[a, p]) / den))
  return float(np.sum(losses_)), len(losses_)


def test_nt_xent_matches_numpy_with_padding_graphs_masked():
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(7, 4)).astype(np.float32)
  labels = np.array([0, 1, 0, 2, 1, 0, 0])
  mask = np.array([1, 1, 1, 1, 1, 0, 0], bool)   # last two are padding.
  total, count = losses.nt_xent(jnp.asarray(emb), jnp.asarray(labels),
                                jnp.asarray(mask), temperature=0.07)
  ref_total, ref_count = _np_ntxent(emb[:5], labels[:5], 0.07)
  assert int(count) == ref_count == 4   # (0,2), (2,0), (1,4), (4,1).
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
  # Padding embeddings can be anything.
  emb2 = emb.copy()
  emb2[5:] = 100.0
  total2, _ = losses.nt_xent(jnp.asarray(emb2), jnp.asarray(labels),
                             jnp.asarray(mask))
  np.testing.assert_allclose(float(total2), float(total), rtol=1e-6)


def test_nt_xent_without_positives_is_zero():
  emb = jnp.asarray(np.eye(3, dtype=np.float32))
  total, count = losses.nt_xent(emb, jnp.array([0, 1, 2]),
                                jnp.ones(3, bool))
  assert float(total) == 0.0 and float(count) == 0.0


def test_heads_shapes_and_normalisation():
  graph = _batch([3, 5, 2])
  params = _init(jax.random.PRNGKey(0), graph)
  out = _apply(params, graph)
  n, g = graph.nodes["mask"].shape[0], graph.n_node.shape[0]
  assert out["feature_logits"].shape == (n, F)
  # Pair slots per atom, linear in N: no [G, P, P] block.
  assert out["connectivity_logits"].shape == (n, K + M, 6)
  assert out["space_group_logits"].shape == (g, 230)
  z = np.asarray(out["node_embedding_normalized"])
  m = graph.nodes["mask"]
  np.testing.assert_allclose(np.linalg.norm(z[m], axis=1), 1.0, rtol=1e-5)
  assert np.all(z[~m] == 0)
  # Crystal embedding = mean of the crystal's unit node vectors.
  emb = graph.nodes["emb"]
  np.testing.assert_allclose(out["crystal_embedding"][1],
                             _np_normalize(emb[3:8]).mean(0), rtol=1e-5)


def _np_connectivity(params, graph, sizes):
  """The full L_CR sums over every ordered pair of each crystal, pair by
  pair (the reference's dense n x n target matrix)."""
  bil = params["crysgnn_heads/connectivity_bilinear"]
  lin = params["crysgnn_heads/connectivity_out"]
  w_cls = np.array(losses.CLASS_WEIGHTS)
  num = den = 0.0
  off = 0
  for n in sizes:
    z = _np_normalize(np.asarray(graph.nodes["emb"][off:off + n], np.float64))
    t = graph.nodes["dense_counts"][off:off + n]
    for i in range(n):
      for j in range(n):
        pair = np.einsum("d,kde,e->k", z[i], bil["w"], z[j]) + bil["b"]
        logits = pair @ lin["w"] + lin["b"]
        c = t[i, j]
        num += -w_cls[c] * _np_log_softmax(logits)[c]
        den += w_cls[c]
    off += n
  return num, den


def test_connectivity_loss_is_the_full_loss_up_to_m_atoms():
  """Crystals of at most M atoms: every pair enumerated once, equal to the
  full loss; pairs across crystals and padding never enter."""
  sizes = [3, 5, 2]
  graph = _batch(sizes, seed=3)
  params = _init(jax.random.PRNGKey(1), graph)
  out = _apply(params, graph)
  total, count = losses.connectivity_loss(out, graph)
  ref_num, ref_den = _np_connectivity(params, graph, sizes)
  np.testing.assert_allclose(float(count), ref_den, rtol=1e-6)
  np.testing.assert_allclose(float(total), ref_num, rtol=1e-4)
  # Exact regardless of the phases (no sampling happens).
  keyed = jax.jit(hk.transform(_model).apply)(params, jax.random.PRNGKey(7),
                                              graph)
  np.testing.assert_allclose(
      float(losses.connectivity_loss(keyed, graph)[0]), float(total),
      rtol=1e-6)


def test_sampled_pairs_are_unbiased_with_exact_normaliser():
  """Crystals larger than M: the class-0 pairs are sampled (M of n per
  atom, each counting n / M times); over random phases the loss sum is the
  full one in expectation and the normaliser is exact in every draw."""
  sizes = [9, 3, 14]
  m = 4
  graph = _batch(sizes, seed=4, pad_nodes=3)
  f = hk.transform(lambda g: _model(g, m))
  params = jax.jit(f.init)(jax.random.PRNGKey(2), graph)
  ref_num, ref_den = _np_connectivity(params, graph, sizes)

  def draw(key):
    return losses.connectivity_loss(f.apply(params, key, graph), graph)
  keys = jax.random.split(jax.random.PRNGKey(3), 1000)
  nums, dens = jax.jit(jax.vmap(draw))(keys)
  np.testing.assert_allclose(np.asarray(dens), ref_den, rtol=1e-6)
  nums = np.asarray(nums, np.float64)
  stderr = nums.std() / np.sqrt(len(nums))
  assert nums.std() > 0                       # it does sample
  assert abs(nums.mean() - ref_num) < 4 * stderr + 1e-4 * ref_num
  np.testing.assert_allclose(nums.mean(), ref_num, rtol=5e-3)
  # Each partner v of an atom u is drawn with probability M / n (no
  # duplicates within a row), n / M per draw: the expected count is 1.
  partner, mult = jax.jit(jax.vmap(
      lambda k: heads_lib.pair_slots(graph._replace(nodes={
          "mask": graph.nodes["mask"]}), m, k)))(keys[:500])
  n0 = sizes[0]
  hits = np.zeros(n0)
  for p, w in zip(np.asarray(partner[:, 0]), np.asarray(mult[:, 0])):
    assert len(set(p[p >= 0])) == (p >= 0).sum() == m
    np.add.at(hits, p[p >= 0], w[p >= 0])
  np.testing.assert_allclose(hits / 500, 1.0, atol=0.2)


def test_pretrain_loss_components_and_padding_invariance():
  sizes = [3, 5, 2, 4]
  systems = [0, 1, 0, 1]
  g1 = _batch(sizes, seed=5, systems=systems)
  g2 = _batch(sizes, seed=5, pad_nodes=9, pad_graphs=4, systems=systems)
  params = _init(jax.random.PRNGKey(2), g1)
  weights = {"feature": 0.1, "connectivity": 0.2, "space_group": 0.3,
             "contrastive": 0.4}
  res = []
  for g in (g1, g2):
    out = _apply(params, g)
    loss_sum, weight, metrics = losses.crysgnn_pretrain_loss(out, g, weights)
    res.append((float(loss_sum / weight),
                {k: float(v / weight) for k, v in metrics.items()}))
    assert float(weight) == len(sizes)
  np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-5)
  out = _apply(params, g1)
  m = g1.nodes["mask"]
  x = np.asarray(out["feature_logits"], np.float64)[m]
  t = g1.nodes["features"][m]
  bce = np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))
  gm = g1.globals["mask"]
  sg = g1.globals["space_group"][gm] - 1
  lsm = _np_log_softmax(np.asarray(out["space_group_logits"], np.float64)[gm])
  ce_sg = -np.mean(lsm[np.arange(len(sg)), sg])
  nt, cnt = _np_ntxent(np.asarray(out["crystal_embedding"])[gm],
                       np.array(systems), 0.07)
  metrics = res[0][1]
  np.testing.assert_allclose(metrics["loss_feature"], bce, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_space_group"], ce_sg, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_contrastive"], nt / cnt, rtol=1e-4)
  total = (0.1 * bce + 0.2 * metrics["loss_connectivity"] + 0.3 * ce_sg
           + 0.4 * nt / cnt)
  np.testing.assert_allclose(res[0][0], total, rtol=1e-5)


def test_bad_weights_raise():
  with pytest.raises(ValueError):
    losses._weights({"alpha": 1.0})
  assert losses._weights((1, 2, 3, 4))["contrastive"] == 4.0
