"""The fused AGAT edge kernels (crystal/models/agat_cpu.cc): the same values
and gradients as the jnp edge block, the same GATGNN training step as the
XLA path, and a clean fallback when they cannot be built."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crystal.models import GATGNN, agat_cpu, gatgnn

from test_edge_pairs import _batches

pytestmark = pytest.mark.skipif(not agat_cpu.available(),
                                reason=f"kernels not built: {agat_cpu._load()}")


def _inputs(seed, n, pairs, halves, heads, dim):
  rng = np.random.default_rng(seed)
  e = pairs * halves
  f32 = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  receivers = jnp.asarray(rng.integers(0, n, e), jnp.int32)
  segments = jnp.asarray(rng.integers(0, n, e), jnp.int32)
  return (f32(n, heads * dim), f32(pairs, heads * dim), receivers, segments,
          0.3 * f32(2, heads, dim))


def _middle(heads):
  """Stands in for BN + softmax + the reverse-row swap: mixes rows/heads."""
  def middle(both):
    logits = both[:, :heads] + jnp.roll(both[:, heads:], 3, axis=0)
    return 0.8 * jax.nn.softmax(jax.nn.softplus(logits), axis=1)
  return middle


# dim 16: the AVX-512 row code; dim 6: the portable loops. halves 2: the
# paired layout (rows t and t + P share ew[t]); 1: one ew row per edge.
# 2048 pairs: the walks split over XLA's intra-op threads (>= 512 rows per
# chunk), each chunk with its own scatter accumulators.
@pytest.mark.parametrize("dim,halves,pairs,nodes", [
    (16, 2, 23, 9), (6, 2, 23, 9), (16, 1, 23, 9), (16, 2, 2048, 600)])
def test_kernels_match_the_jnp_edge_block(dim, halves, pairs, nodes):
  heads = 4
  xw, ew, receivers, segments, att = _inputs(0, nodes, pairs, halves, heads,
                                             dim)
  middle = _middle(heads)

  def loss(block):
    def f(xw, ew, att):
      return jnp.sum(jnp.sin(block(xw, ew, receivers, segments, att, middle)))
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

  want = jax.jit(agat_cpu.reference_edge_block, static_argnums=5)(
      xw, ew, receivers, segments, att, middle)
  got = jax.jit(agat_cpu.edge_block, static_argnums=5)(
      xw, ew, receivers, segments, att, middle)
  assert got.shape == (nodes, dim)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  (l0, g0), (l1, g1) = (loss(agat_cpu.reference_edge_block)(xw, ew, att),
                        loss(agat_cpu.edge_block)(xw, ew, att))
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for a, b in zip(g1, g0):
    assert np.abs(b).max() > 1e-2  # every input gets a real gradient
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rows_outside_the_node_range_are_dropped_like_segment_sum():
  xw, ew, receivers, segments, att = _inputs(1, 7, 10, 2, 2, 16)
  segments = segments.at[3].set(7).at[11].set(50)      # padding beyond N
  middle = _middle(2)
  want = agat_cpu.reference_edge_block(xw, ew, receivers, segments, att,
                                       middle)
  got = agat_cpu.edge_block(xw, ew, receivers, segments, att, middle)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fused_training_step_equals_the_xla_path():
  """With remat (the configs' setting): the saved logits and messages feed
  the gradient kernels directly. Without remat the kernels are the same."""
  batch = _batches(dict(minimum_image=False, max_neighbors=5), True)
  model = lambda fused: hk.transform_with_state(
      lambda g, t: GATGNN(dim=16, num_layers=2, heads=4, remat=True,
                          use_kernels=fused)(g, t))
  params, state = model(True).init(jax.random.PRNGKey(0), batch, True)
  params = jax.tree_util.tree_map(
      lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
      params)

  def run(fused):
    def loss(p):
      out, new_state = model(fused).apply(p, state, None, batch, True)
      return jnp.sum(out["graph"] ** 2), (out, new_state)
    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

  (l0, (o0, s0)), g0 = run(False)
  (l1, (o1, s1)), g1 = run(True)
  program = lambda fused: str(jax.make_jaxpr(lambda p: model(fused).apply(
      p, state, None, batch, True))(params))
  assert "AgatAttentionDots" in program(True)        # the kernels ran
  assert "Agat" not in program(False)                # use_kernels=False
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(o1["node_embedding"], o0["node_embedding"],
                             rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves((g1, s1)),
                  jax.tree_util.tree_leaves((g0, s0))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def _step_program(is_training):
  """The jaxpr of a small paired GATGNN's forward pass, as text."""
  batch = _batches(dict(), True)
  model = hk.transform_with_state(
      lambda g, t: GATGNN(dim=16, num_layers=2, heads=4)(g, t))
  params, state = model.init(jax.random.PRNGKey(0), batch, True)
  return str(jax.make_jaxpr(
      lambda p: model.apply(p, state, None, batch, is_training))(params))


def test_inference_keeps_the_xla_path():
  assert "Agat" in _step_program(True)
  assert "Agat" not in _step_program(False)


def test_falls_back_with_the_reason_when_the_kernels_cannot_be_built(
    monkeypatch, tmp_path, caplog):
  try:
    monkeypatch.setenv("NN_AGAT_KERNEL", "0")
    agat_cpu._load.cache_clear()
    assert not agat_cpu.available()
    assert agat_cpu._load() == "NN_AGAT_KERNEL=0"
    monkeypatch.delenv("NN_AGAT_KERNEL")
    monkeypatch.setenv("NN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/bin/false")
    agat_cpu._load.cache_clear()
    assert not agat_cpu.available()
    assert "/bin/false" in agat_cpu._load() and "failed" in agat_cpu._load()
    assert "using the XLA path" in caplog.text
    assert not list(tmp_path.glob("*.so"))          # no half-written library
    assert "Agat" not in _step_program(True)   # training: the XLA path
  finally:
    monkeypatch.undo()
    agat_cpu._load.cache_clear()
  assert agat_cpu.available()
