"""Helpers shared by the data pipeline tests."""
import jax
import numpy as np


def assert_same_batches(a, b):
  """Two lists of ``batching.Batch``: same positions, bitwise-equal arrays."""
  assert [x.position for x in a] == [y.position for y in b]
  for x, y in zip(a, b):
    for u, v in zip(jax.tree_util.tree_leaves(x.graph),
                    jax.tree_util.tree_leaves(y.graph)):
      np.testing.assert_array_equal(u, v)
