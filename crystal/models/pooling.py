"""Masked segment softmax and graph readouts for padded batches.

Every function here takes the padding masks of ``noisy_nodes.data.batching`` so
padding nodes/edges never contribute to a real graph's softmax or pool.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from noisy_nodes import nn as nn_lib


def segment_softmax(logits: jnp.ndarray, segment_ids: jnp.ndarray,
                    num_segments: int, mask: jnp.ndarray) -> jnp.ndarray:
  """Numerically stable softmax of ``logits`` within each segment.

  Args:
    logits: [E, ...] scores (e.g. [E, heads]).
    segment_ids: [E] int, the segment (receiver node, graph) of each row.
    num_segments: static number of segments.
    mask: [E] bool; rows with False get weight 0 and are left out of the
      normaliser of their segment.
  Returns:
    [E, ...] float32 weights (whatever the dtype of ``logits``: the
    normaliser is a sum over up to hundreds of rows); for every segment with
    a real row they sum to 1.
  """
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  m = mask.reshape((-1,) + (1,) * (logits.ndim - 1))
  masked = jnp.where(m, logits, -jnp.inf)
  seg_max = jax.ops.segment_max(masked, segment_ids, num_segments)
  # The shift only improves conditioning (softmax is shift invariant), so
  # no gradient has to flow through the max.
  seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max,
                                            0.0))
  ex = jnp.where(m, jnp.exp(logits - seg_max[segment_ids]), 0.0)
  denom = jax.ops.segment_sum(ex, segment_ids, num_segments)
  return ex / jnp.maximum(denom[segment_ids], 1e-30)


def pool_nodes(x: jnp.ndarray, graph_index: jnp.ndarray, num_graphs: int,
               mask: jnp.ndarray, reduce: str = "mean") -> jnp.ndarray:
  """Masked per-graph pooling of rows ``x`` [N, F] -> [G, F].

  ``reduce`` is 'mean', 'sum' (alias 'add') or 'max'. Graphs with no real
  rows get zeros.
  """
  m = mask.reshape((-1,) + (1,) * (x.ndim - 1))
  if reduce == "mean":
    return nn_lib.segment_mean(x, graph_index, num_graphs, mask)
  if reduce in ("sum", "add"):
    return jax.ops.segment_sum(jnp.where(m, x, 0.0), graph_index, num_graphs)
  if reduce == "max":
    out = jax.ops.segment_max(jnp.where(m, x, -jnp.inf), graph_index,
                              num_graphs)
    return jnp.where(jnp.isfinite(out), out, 0.0)
  raise ValueError(f"unknown pooling {reduce!r}; use mean, sum or max")


class GlobalAttentionPool(hk.Module):
  """GATGNN's global attention readout (paper eq. 2, reference GIM1).

  For each node, an MLP of [x_i ‖ composition of its crystal] gives one logit;
  a softmax over the nodes of each crystal gives weights g_i; the readout is
  Σ_i g_i x_i (sum pool of the weighted nodes).
  """

  def __init__(self, hidden: int, num_hidden_layers: int = 2,
               activation: str = "softplus", name: Optional[str] = None):
    super().__init__(name=name)
    self.hidden = hidden
    self.num_hidden_layers = num_hidden_layers
    self.act = nn_lib.get_activation(activation)

  def __call__(self, x: jnp.ndarray, composition: jnp.ndarray,
               graph_index: jnp.ndarray, num_graphs: int,
               mask: jnp.ndarray):
    """x [N, F], composition [G, C] -> (pooled [G, F], weights [N])."""
    h = jnp.concatenate([x, composition[graph_index]], axis=-1)
    for i in range(self.num_hidden_layers):
      h = self.act(hk.Linear(self.hidden, name=f"linear_{i}")(h))
    logits = hk.Linear(1, name="logit")(h)[:, 0]
    weights = segment_softmax(logits, graph_index, num_graphs, mask)
    pooled = pool_nodes(x * weights[:, None], graph_index, num_graphs, mask,
                        "sum")
    return pooled, weights
