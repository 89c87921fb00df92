"""The reference's original-CGCNN encoder: parameter counts from the layer
shapes of kdmsit/crysgnn, one convolution against numpy."""
import haiku as hk
import jax
import numpy as np
import pytest
from ase.build import bulk

import noisy_nodes  # noqa: F401
from noisy_nodes.data import batching
from noisy_nodes.data.structures import Structure
from noisy_nodes.models import build_model
from crystal import features as features_lib
from crystal.crysgnn import encoder


def _batch():
  featurizer = features_lib.CrystalFeaturizer(features_lib.cgcnn_config())
  graphs = []
  for i, atoms in enumerate([bulk("NaCl", "rocksalt", a=5.64),
                             bulk("Si", "diamond", a=5.43, cubic=True)]):
    graphs.append(featurizer(Structure(
        id=str(i), atomic_numbers=atoms.numbers, positions=atoms.positions,
        cell=atoms.cell.array, pbc=np.ones(3, bool))))
  return batching.pad_graphs(graphs, batching.Budget(16, 256, 3))


def _linear(fan_in, fan_out, bias=True):
  return fan_in * fan_out + (fan_out if bias else 0)


@pytest.mark.parametrize("layers,bias,head", [(5, False, False),
                                               (3, True, True)])
def test_parameter_count_matches_reference_layer_shapes(layers, bias, head):
  """CrystalAE (teacher) and CrystalGraphConvNet (student) of the reference:
  embedding Linear(92, 64[, bias]); per ConvLayer fc_full Linear(2*64 + 41,
  128), bn1 BatchNorm1d(128), bn2 BatchNorm1d(64); student conv_to_fc
  Linear(64, 128) and fc_out Linear(128, 1)."""
  batch = _batch()
  model = hk.transform_with_state(
      lambda g, is_training: build_model(dict(
          name="original_cgcnn", dim=64, num_layers=layers, input_bias=bias,
          head=head))(g, is_training))
  params, state = jax.eval_shape(
      lambda b: model.init(jax.random.PRNGKey(0), b, True), batch)
  per_layer = _linear(2 * 64 + 41, 128) + 2 * 128 + 2 * 64
  expected = _linear(92, 64, bias) + layers * per_layer
  if head:
    expected += _linear(64, 128) + _linear(128, 1)
  assert per_layer == 22144
  assert hk.data_structures.tree_size(params) == expected
  assert expected == (116608 if layers == 5 else 80833)
  # Running statistics: mean and var of both BatchNorms per layer.
  assert hk.data_structures.tree_size(state) == layers * 2 * (128 + 64)
  out, _ = jax.eval_shape(
      lambda p, s, b: model.apply(p, s, None, b, is_training=False),
      params, state, batch)
  assert out["node_embedding"].shape == (batch.nodes["mask"].shape[0], 64)
  assert ("graph" in out) == head


def _softplus(x):
  return np.logaddexp(0.0, x)


def _bn(x, gamma, beta):
  return (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5) * gamma + beta


def test_one_conv_layer_against_numpy():
  batch = _batch()
  nodes = batch.nodes
  mask, emask = np.asarray(nodes["mask"]), np.asarray(batch.edges["mask"])
  rng = np.random.default_rng(0)
  n = mask.shape[0]
  h = rng.normal(size=(n, 8)).astype(np.float32)

  def f(h, is_training):
    return encoder.ConvLayer(name="conv")(
        h, np.asarray(batch.edges["features"], np.float32), batch.senders,
        batch.receivers, emask, mask, is_training)
  model = hk.transform_with_state(f)
  params, state = model.init(jax.random.PRNGKey(0), h, True)
  # Random BatchNorm affines, so nothing is an identity.
  params = jax.tree_util.tree_map(
      lambda v: np.asarray(rng.normal(size=v.shape), np.float32), params)
  out, new_state = model.apply(params, state, None, h, is_training=True)

  e = np.asarray(batch.edges["features"], np.float64)[emask]
  snd, rcv = batch.senders[emask], batch.receivers[emask]
  p = {k.split("/")[-1]: {name: np.asarray(v, np.float64)
                          for name, v in d.items()}
       for k, d in params.items()}
  z = np.concatenate([h[rcv], h[snd], e], axis=1)
  g = z @ p["fc_full"]["w"] + p["fc_full"]["b"]
  g = _bn(g, p["bn1"]["scale"], p["bn1"]["offset"])
  msg = 1 / (1 + np.exp(-g[:, :8])) * _softplus(g[:, 8:])
  s = np.zeros((n, 8))
  np.add.at(s, rcv, msg)                  # sum over i's own neighbours
  s = _bn(s[mask], p["bn2"]["scale"], p["bn2"]["offset"])
  ref = _softplus(h[mask] + s)
  np.testing.assert_allclose(np.asarray(out)[mask], ref, rtol=2e-4,
                             atol=2e-5)
  # The edge BatchNorm's running mean moved by 0.1 of the real edges' mean.
  z_lin = z @ p["fc_full"]["w"] + p["fc_full"]["b"]
  np.testing.assert_allclose(new_state[[k for k in new_state if k.endswith("bn1")][0]]["mean"],
                             0.1 * z_lin.mean(0), rtol=1e-4, atol=1e-6)
