"""Oversmoothing analysis (MAD per message-passing step, §8.1 Fig. 3)."""
import jax
import jax.numpy as jnp
import numpy as np

from noisy_nodes.gns import analysis
from test_gns import _slab_graph, model_fn  # pylint: disable=g-bad-import-order


def test_step_latents_same_parameters_and_outputs():
  g = _slab_graph()
  plain, latents = model_fn(), model_fn(step_latents=True)
  params = jax.jit(plain.init)(jax.random.PRNGKey(0), g)
  assert (jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      jax.eval_shape(latents.init, jax.random.PRNGKey(0), g)))
  a, b = jax.jit(plain.apply)(params, g), jax.jit(latents.apply)(params, g)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
  v = b["step_node_latents"]
  assert v.shape == (1 + 2 * 2,) + b["node_embedding"].shape
  np.testing.assert_allclose(v[-1], b["node_embedding"], rtol=1e-6, atol=1e-6)


def test_graph_mad_matches_pairwise_definition():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(3, 7, 5)).astype(np.float32)
  n_node = np.array([3, 3, 1], np.int32)  # last graph: padding
  mask = np.array([1, 1, 1, 1, 1, 0, 0], bool)  # graph 1 has 2 real nodes
  sums, pairs = jax.device_get(analysis.graph_mad_sums(
      jnp.asarray(h), jnp.asarray(n_node), jnp.asarray(mask)))
  np.testing.assert_array_equal(pairs, [6, 2, 0])
  for s in range(3):
    for gi, nodes in enumerate(([0, 1, 2], [3, 4])):
      x = h[s, nodes] / np.linalg.norm(h[s, nodes], axis=-1, keepdims=True)
      d = 1 - x @ x.T
      want = d[~np.eye(len(nodes), dtype=bool)].mean()
      assert abs(sums[s, gi] / pairs[gi] - want) < 1e-5
  # Identical node vectors (oversmoothed): MAD 0.
  same = np.repeat(h[:, :1], 7, axis=1)
  sums, pairs = jax.device_get(analysis.graph_mad_sums(
      jnp.asarray(same), jnp.asarray(n_node), jnp.asarray(mask)))
  np.testing.assert_allclose(sums[:, :2] / pairs[:2], 0.0, atol=1e-6)
