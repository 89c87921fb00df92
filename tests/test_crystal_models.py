"""Tests for the baselines (CGCNN, SchNet, MPNN, MEGNet), their deeper
variants through the shared stack, and the pooling / convolution pieces."""
import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
import pytest

import noisy_nodes  # noqa: F401
from crystal import models
from noisy_nodes.models import build_model
from crystal.models import cgcnn, pooling, schnet, stack

F_NODE, F_EDGE = 10, 6


def _crystal(rng, n, k=3):
  """Random points with symmetric k-nearest-neighbour edges."""
  pos = rng.rand(n, 3) * 4.0
  d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  pairs = sorted({tuple(sorted((i, int(j)))) for i in range(n)
                  for j in np.argsort(d[i])[:k]})
  s = np.array([p[0] for p in pairs] + [p[1] for p in pairs], np.int32)
  r = np.array([p[1] for p in pairs] + [p[0] for p in pairs], np.int32)
  z = rng.randint(0, F_NODE, n)
  comp = np.zeros((1, 108), np.float32)
  np.add.at(comp[0], z, 1.0 / n)
  dist = d[s, r].astype(np.float32)
  centers = np.linspace(0, 6, F_EDGE)
  # A learnable synthetic label: a smooth function of composition and bonds.
  target = np.array([[np.sum(z < 4) / n + 0.2 * np.mean(np.exp(-dist))]],
                    np.float32)
  return jraph.GraphsTuple(
      nodes={"features": np.eye(F_NODE, dtype=np.float32)[z]},
      edges={"features": np.exp(-(dist[:, None] - centers) ** 2 / 0.5
                                ).astype(np.float32), "distances": dist},
      senders=s, receivers=r, n_node=np.array([n]), n_edge=np.array([len(s)]),
      globals={"composition": comp, "target": target})


def _permute(graph, rng):
  n = graph.nodes["features"].shape[0]
  perm = rng.permutation(n)
  inv = np.argsort(perm)
  eperm = rng.permutation(len(graph.senders))
  return graph._replace(
      nodes={k: v[perm] for k, v in graph.nodes.items()},
      edges={k: v[eperm] for k, v in graph.edges.items()},
      senders=inv[graph.senders[eperm]].astype(np.int32),
      receivers=inv[graph.receivers[eperm]].astype(np.int32))


def _pad(graphs, n_node=48, n_edge=160, n_graph=7):
  g = jraph.pad_with_graphs(jraph.batch(graphs), n_node, n_edge, n_graph)
  return g._replace(
      nodes=dict(g.nodes, mask=jraph.get_node_padding_mask(g)),
      edges=dict(g.edges, mask=jraph.get_edge_padding_mask(g)),
      globals=dict(g.globals, mask=jraph.get_graph_padding_mask(g)))


CONFIGS = [(name, deeper) for name in ("cgcnn", "schnet", "mpnn", "megnet")
           for deeper in (False, True)]


@pytest.mark.parametrize("name,deeper", CONFIGS)
def test_baseline_trains_and_is_permutation_invariant(name, deeper):
  rng = np.random.RandomState(0)
  crystals = [_crystal(rng, n) for n in (5, 7, 4, 6, 8, 3)]
  batch = _pad(crystals)
  kwargs = dict(models.presets(name), dim=8, num_layers=2, post_fc_layers=1,
                deeper=deeper)
  f = hk.transform_with_state(
      lambda g, t: build_model(dict(name=name, **kwargs))(g, t))
  params, state = jax.jit(f.init, static_argnums=2)(jax.random.PRNGKey(0),
                                                    batch, True)
  assert any("assign" in k for k in params) == deeper   # DGN only if deeper
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)
  gmask = batch.globals["mask"]

  def loss_fn(p, s):
    out, s = f.apply(p, s, None, batch, True)
    err = (out["graph"] - batch.globals["target"]) ** 2
    return jnp.sum(jnp.where(gmask[:, None], err, 0.0)) / gmask.sum(), s

  @jax.jit
  def step(p, s, o):
    (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
    updates, o = opt.update(grads, o, p)
    return optax.apply_updates(p, updates), s, o, loss

  losses = []
  for _ in range(12):
    params, state, opt_state, loss = step(params, state, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses

  apply = jax.jit(f.apply, static_argnums=4)
  out, _ = apply(params, state, None, batch, False)
  assert out["graph"].shape == (7, 1)
  assert out["node_embedding"].shape == (48, 8)
  permuted = _pad([_permute(c, rng) for c in crystals])
  out_p, _ = apply(params, state, None, permuted, False)
  np.testing.assert_allclose(out_p["graph"][:6], out["graph"][:6],
                             rtol=1e-4, atol=1e-5)


def test_cgconv_matches_direct_computation():
  rng = np.random.RandomState(1)
  x = rng.randn(4, 3).astype(np.float32)
  e = rng.randn(5, 2).astype(np.float32)
  s = np.array([0, 1, 2, 3, 3], np.int32)
  r = np.array([1, 0, 0, 0, 2], np.int32)
  emask = np.array([1, 1, 1, 1, 0], bool)   # the last edge is padding
  for agg in ("mean", "sum"):
    f = hk.transform_with_state(lambda *a, agg=agg: cgcnn.CGConv(agg)(*a))
    params, state = f.init(jax.random.PRNGKey(0), x, e, s, r, emask, True)
    out, _ = f.apply(params, state, None, x, e, s, r, emask, True)
    w = np.asarray(params["cg_conv/lin_fs"]["w"])
    b = np.asarray(params["cg_conv/lin_fs"]["b"])
    want = x.astype(np.float64).copy()
    for i in range(4):
      msgs = []
      for k in np.flatnonzero((r == i) & emask):
        z = np.concatenate([x[i], x[s[k]], e[k]]) @ w + b
        msgs.append(1 / (1 + np.exp(-z[:3])) * np.log1p(np.exp(z[3:])))
      if msgs:
        want[i] += np.mean(msgs, 0) if agg == "mean" else np.sum(msgs, 0)
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)


def test_cosine_cutoff_values():
  d = jnp.array([0.0, 4.0, 2.0, 8.0, 9.0])
  np.testing.assert_allclose(schnet.cosine_cutoff(d, 8.0),
                             [1.0, 0.5, 0.5 * (np.cos(np.pi / 4) + 1), 0.0,
                              0.0], atol=1e-7)


def test_pool_nodes_matches_numpy_with_mask():
  rng = np.random.RandomState(2)
  x = rng.randn(7, 3).astype(np.float32)
  seg = np.array([0, 0, 0, 1, 1, 2, 2])
  mask = np.array([1, 1, 0, 1, 1, 0, 0], bool)
  for reduce, fn in (("mean", np.mean), ("sum", np.sum), ("max", np.max)):
    out = np.asarray(pooling.pool_nodes(jnp.asarray(x), jnp.asarray(seg), 3,
                                        jnp.asarray(mask), reduce))
    for k in range(2):
      np.testing.assert_allclose(out[k], fn(x[(seg == k) & mask], 0),
                                 rtol=1e-6)
    np.testing.assert_array_equal(out[2], 0.0)   # a graph of padding only


def test_residual_stack_adds_previous_output_and_scans():
  """With a layer that returns a constant, the residual stack gives
  x + L·c, the plain stack gives c; parameters are stacked per layer."""

  def run(residual):
    def fn(x):
      def layer(h, index):
        c = hk.get_parameter("c", (2,), jnp.float32, jnp.ones)
        return jnp.broadcast_to(c * 2.0, h.shape), index
      return stack.scanned_stack(layer, x, 4, residual=residual,
                                 dropout_rate=0.0, is_training=False)
    f = hk.transform(fn)
    x = jnp.ones((3, 2))
    params = f.init(jax.random.PRNGKey(0), x)
    return params, f.apply(params, None, x)

  params, (y, idx) = run(True)
  assert params["conv_stack/~"]["c"].shape == (4, 2)
  np.testing.assert_allclose(y, 1.0 + 4 * 2.0)
  np.testing.assert_array_equal(idx, np.arange(4))
  _, (y, _) = run(False)
  np.testing.assert_allclose(y, 2.0)


def test_unknown_names_raise():
  with pytest.raises(ValueError, match="unknown model 'alignn'"):
    build_model(dict(name="alignn"))
  with pytest.raises(ValueError, match="unknown crystal model"):
    models.presets("alignn")
  with pytest.raises(ValueError, match="unknown norm"):
    stack.norm_kind(True, "layer")
