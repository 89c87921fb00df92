"""CGCNN (Xie & Grossman 2018) and DeeperCGCNN, as in the reference.

Convolution (PyG ``CGConv``, as MatDeepLearn uses it): for an edge j -> i,
z_ij = [x_i ‖ x_j ‖ e_ij] and
  x_i' = x_i + agg_j sigmoid(z_ij W_f + b_f) ⊙ softplus(z_ij W_s + b_s)
with ``aggregation`` 'mean' (reference) or 'sum' (original CGCNN), over the
atoms whose neighbour lists hold i (``aggregate_at='neighbor'``, PyG's
``edge_index[1]``; reference) or over i's own neighbours ('center',
original CGCNN). With ``gate_norm`` the gate pre-activations are
batch-normalised first (Xie's original layer, as in CrysGNN). The rest of
the network is ``skeleton.CrystalModel``: pre-FC Linear + act; L x [CGConv ->
BatchNorm (DGN if deeper) -> (+ previous if deeper) -> dropout]; mean pool;
post-FC; Linear -> T.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from noisy_nodes import nn as nn_lib
from crystal.models import skeleton

# MatDeepLearn config.yml CGCNN_demo (dim1 100, dim2 150, gc_count 4,
# post_fc_count 3, global_mean_pool, relu, AdamW 0.002); SUPER_CGCNN: 10.
PRESET = dict(dim=100, num_layers=4, post_fc_layers=3, post_fc_dim=150,
              pool="mean", activation="relu", dropout_rate=0.0)
DEEPER = dict(num_layers=10)
LEARNING_RATE = 0.002


class CGConv(hk.Module):
  """Crystal graph convolution with a gated, edge-conditioned message."""

  def __init__(self, aggregation: str = "mean", gate_norm: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    if aggregation not in ("mean", "sum"):
      raise ValueError(f"aggregation must be mean or sum, got {aggregation!r}")
    self.aggregation = aggregation
    self.gate_norm = gate_norm

  def __call__(self, x, e, senders, receivers, edge_mask, is_training):
    """x [N, D], e [E, F_e] -> [N, D]; messages senders -> receivers."""
    n, d = x.shape
    z = jnp.concatenate([x[receivers], x[senders], e], axis=-1)
    gates = hk.Linear(2 * d, name="lin_fs")(z)                  # [E, 2D]
    if self.gate_norm:
      gates = nn_lib.MaskedBatchNorm(name="gate_norm")(gates, edge_mask,
                                                       is_training)
    msg = jax.nn.sigmoid(gates[:, :d]) * nn_lib.softplus(gates[:, d:])
    if self.aggregation == "mean":
      agg = nn_lib.segment_mean(msg, receivers, n, edge_mask)
    else:
      agg = jax.ops.segment_sum(jnp.where(edge_mask[:, None], msg, 0.0),
                                receivers, n)
    return x + agg


class CGCNN(skeleton.CrystalModel):
  """CGCNN / DeeperCGCNN; ``model(graph, is_training) -> dict``."""

  def __init__(self, num_targets: int = 1, *, aggregation: str = "mean",
               gate_norm: bool = False, aggregate_at: str = "neighbor",
               **kwargs):
    kwargs = {**PRESET, **kwargs}
    super().__init__(num_targets, **kwargs)
    self.aggregation = aggregation
    self.gate_norm = gate_norm
    self.aggregate_at = aggregate_at

  @hk.transparent
  def conv(self, h, g, ctx, is_training, first=False):
    src, dst = skeleton.message_flow(g, self.aggregate_at)
    return CGConv(self.aggregation, self.gate_norm, name="cgconv")(
        h, g.edges, src, dst, g.edge_mask, is_training), None
