"""The baselines and DeeperGATGNN as the reference (MatDeepLearn /
usccolumbia/deeperGATGNN) defines them: parameter counts computed by hand
from the reference's layer shapes, and the reference's message direction
on an asymmetric 12-nearest-neighbour graph."""
import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from crystal import models
from noisy_nodes.models import build_model

F_NODE, F_EDGE, F_COMP = 114, 50, 108   # one-hot Z + degree, 50 Gaussians


def lin(i, o, bias=True):
  return i * o + (o if bias else 0)


def bn(d):
  return 2 * d


def dgn(d, groups=10):
  # PyG DiffGroupNorm: Linear(d, groups, bias=False) + BatchNorm1d(groups·d).
  return d * groups + 2 * groups * d


def _knn_graph(rng, n=30, k=12, f_node=F_NODE, f_edge=F_EDGE):
  """Each atom's own k nearest (MatDeepLearn's lists): edge j -> i for j in
  the k nearest of i (receiver i = the reference's edge_index[0])."""
  pos = rng.rand(n, 3) * 6.0
  d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  nbrs = np.argsort(d, axis=1)[:, :k]
  r = np.repeat(np.arange(n), k).astype(np.int32)
  s = nbrs.reshape(-1).astype(np.int32)
  pairs = set(zip(s.tolist(), r.tolist()))
  no_reverse = np.mean([(b, a) not in pairs for a, b in pairs])
  assert no_reverse > 0.1, no_reverse     # the two directions differ
  dist = d[r, s].astype(np.float32)
  nodes = rng.rand(n, f_node).astype(np.float32)
  edges = rng.rand(len(s), f_edge).astype(np.float32)
  comp = np.full((1, F_COMP), 1.0 / F_COMP, np.float32)
  ones = lambda m: np.ones(m, bool)  # noqa: E731
  return jraph.GraphsTuple(
      nodes={"features": nodes, "mask": ones(n)},
      edges={"features": edges, "distances": dist, "mask": ones(len(s))},
      senders=s, receivers=r, n_node=np.array([n]), n_edge=np.array([len(s)]),
      globals={"composition": comp, "mask": ones(1)})


def _count(name, **kw):
  g = _knn_graph(np.random.RandomState(0), n=6, k=3)
  f = hk.transform_with_state(
      lambda x: build_model(dict(name=name, **kw))(x, True))
  params, _ = jax.eval_shape(f.init, jax.random.PRNGKey(0), g)
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))


def _cgcnn(layers, norm):
  return (lin(F_NODE, 100) + layers * (2 * lin(2 * 100 + F_EDGE, 100) + norm)
          + lin(100, 150) + 2 * lin(150, 150) + lin(150, 1))


def _schnet(layers, norm):
  block = (lin(F_EDGE, 150) + lin(150, 150) + lin(100, 150, bias=False) +
           lin(150, 100) + lin(100, 100))
  return (lin(F_NODE, 100) + layers * (block + norm) + 3 * lin(100, 100) +
          lin(100, 1))


def _mpnn(layers, norm):
  nnconv = lin(F_EDGE, 100) + lin(100, 100 * 100) + lin(100, 100)
  gru = 2 * lin(100, 3 * 100)          # torch.nn.GRU: W_ih, W_hh, b_ih, b_hh
  return (lin(F_NODE, 100) + layers * (nnconv + norm + gru) +
          3 * lin(100, 100) + lin(100, 1))


def _megnet(layers, norm):
  embed0 = (lin(F_EDGE, 100) + lin(100, 100) + 2 * lin(100, 100) +
            lin(3, 100) + lin(100, 100))       # edges, nodes, zeros(3) u
  embed = 3 * 2 * lin(100, 100)
  phis = (lin(4 * 100, 100) + lin(3 * 100, 100) + lin(3 * 100, 100) +
          3 * lin(100, 100) + 6 * norm)        # gc_fc_count 1: 2 per φ
  return (lin(F_NODE, 100) + embed0 + (layers - 1) * embed + layers * phis +
          lin(3 * 100, 100) + 2 * lin(100, 100) + lin(100, 1))


@pytest.mark.parametrize("name,formula", [
    ("cgcnn", _cgcnn), ("schnet", _schnet), ("mpnn", _mpnn),
    ("megnet", _megnet)])
def test_baseline_parameter_counts_equal_the_reference(name, formula):
  assert _count(name, **models.presets(name)) == formula(4, bn(100))
  # SUPER_* (the deeper recipe, 10 layers): DiffGroupNorm for BatchNorm.
  assert _count(name, **models.presets(name, deeper=True)) == formula(
      10, dgn(100))


def test_deeper_gatgnn_used_parameters_equal_the_reference():
  # The reference's 737,186 / 1,089,906 minus the 5,760 parameters of the
  # three DiffGroupNorms its pooling module builds and never calls.
  for layers, want in ((20, 731_426), (30, 1_084_146)):
    assert _count("gatgnn", **dict(models.presets("gatgnn", True),
                                   num_layers=layers)) == want


def _apply_one_layer(name, g, **kw):
  kw = dict(models.presets(name), num_layers=1, norm="none",
            residual=False, **kw)
  f = hk.transform_with_state(
      lambda x: build_model(dict(name=name, **kw))(x, False)["node_embedding"])
  params, state = f.init(jax.random.PRNGKey(1), g)
  out, _ = f.apply(params, state, None, g)
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()}
       for k, d in params.items()}
  x = g.nodes["features"].astype(np.float64)
  pre = p[next(k for k in p if k.endswith("pre_fc_node"))]
  h = np.maximum(x @ pre["w"] + pre["b"], 0.0)
  layer = {k.split("conv_stack/")[1]: v for k, v in p.items()
           if "conv_stack/" in k}
  layer = {k: {n: v[0] for n, v in d.items()} for k, d in layer.items()}
  return np.asarray(out, np.float64), h, layer


def _softplus(z):
  return np.logaddexp(0.0, z)


def _reference_targets(g):
  """PyG flow source_to_target: edge k's message goes from edge_index[0]
  (our receiver: the atom whose list holds the edge) to edge_index[1]."""
  return g.senders, g.receivers    # (aggregating node, source node)


def test_cgconv_aggregates_as_the_reference():
  g = _knn_graph(np.random.RandomState(3))
  out, h, p = _apply_one_layer("cgcnn", g, dim=8, post_fc_dim=8)
  tgt, src = _reference_targets(g)
  e = g.edges["features"].astype(np.float64)
  w, b = p["cgconv/lin_fs"]["w"], p["cgconv/lin_fs"]["b"]
  want = h.copy()
  for i in range(len(h)):
    ks = np.flatnonzero(tgt == i)
    if not len(ks):
      continue
    z = np.concatenate([h[i][None].repeat(len(ks), 0), h[src[ks]], e[ks]],
                       1) @ w + b
    msg = 1 / (1 + np.exp(-z[:, :8])) * _softplus(z[:, 8:])
    want[i] += msg.mean(0)                    # aggr="mean"
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_schnet_cfconv_aggregates_as_the_reference():
  g = _knn_graph(np.random.RandomState(4))
  out, h, p = _apply_one_layer("schnet", g, dim=8, num_filters=6,
                               post_fc_dim=8)
  tgt, src = _reference_targets(g)
  e = g.edges["features"].astype(np.float64)
  d = g.edges["distances"].astype(np.float64)
  ssp = lambda z: _softplus(z) - np.log(2.0)  # noqa: E731
  f0, f1 = p["interaction/filter_0"], p["interaction/filter_1"]
  filt = ssp(e @ f0["w"] + f0["b"]) @ f1["w"] + f1["b"]
  filt *= (0.5 * (np.cos(np.pi * d / 8.0) + 1.0) * (d < 8.0))[:, None]
  x1 = h @ p["interaction/in2f"]["w"]
  v = np.zeros((len(h), 6))
  np.add.at(v, tgt, x1[src] * filt)          # aggr="add" at edge_index[1]
  v = v @ p["interaction/f2out"]["w"] + p["interaction/f2out"]["b"]
  want = h + ssp(v) @ p["interaction/dense"]["w"] + p["interaction/dense"]["b"]
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def test_mpnn_nnconv_and_gru_as_the_reference():
  g = _knn_graph(np.random.RandomState(5))
  out, h, p = _apply_one_layer("mpnn", g, dim=6, edge_hidden=7,
                               post_fc_dim=6)
  tgt, src = _reference_targets(g)
  e = g.edges["features"].astype(np.float64)
  l0, l1 = p["nnconv/edge_network/linear_0"], p["nnconv/edge_network/linear_1"]
  theta = (np.maximum(e @ l0["w"] + l0["b"], 0) @ l1["w"] + l1["b"]
           ).reshape(-1, 6, 6)
  msg = np.einsum("ed,edf->ef", h[src], theta)
  agg = np.zeros_like(h)
  cnt = np.zeros(len(h))
  np.add.at(agg, tgt, msg)
  np.add.at(cnt, tgt, 1.0)
  agg /= np.maximum(cnt, 1.0)[:, None]        # aggr="mean" at edge_index[1]
  m = h @ p["nnconv/root"]["w"] + p["nnconv/root"]["b"] + agg
  m = np.maximum(m, 0.0)                      # BN (off here) -> ReLU -> GRU
  gi = m @ p["gru/input"]["w"] + p["gru/input"]["b"]
  gh = h @ p["gru/hidden"]["w"] + p["gru/hidden"]["b"]
  sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
  r, z = sig(gi[:, :6] + gh[:, :6]), sig(gi[:, 6:12] + gh[:, 6:12])
  n = np.tanh(gi[:, 12:] + r * gh[:, 12:])
  np.testing.assert_allclose(out, (1 - z) * n + z * h, rtol=1e-4, atol=1e-5)
