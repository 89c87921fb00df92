"""CGCNN (Xie & Grossman 2018) and DeeperCGCNN, MatDeepLearn preset.

Convolution (PyG ``CGConv``, as the reference uses it): for an edge j -> i,
z_ij = [x_i ‖ x_j ‖ e_ij] and
  x_i' = x_i + agg_j sigmoid(z_ij W_f + b_f) ⊙ softplus(z_ij W_s + b_s)
with ``aggregation`` 'mean' (reference) or 'sum' (original CGCNN). With
``gate_norm`` the gate pre-activations are batch-normalised first (Xie's
original layer, as in CrysGNN). The stack: pre-FC Linear + act; L x [CGConv
-> BatchNorm (DGN if deeper) -> (+ previous if deeper) -> dropout]; mean pool;
post-FC layers; Linear -> T.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib
from crystal.models import pooling
from crystal.models import stack


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
    """x [N, D], e [E, F_e] -> [N, D]."""
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


class CGCNN(hk.Module):
  """CGCNN / DeeperCGCNN; ``model(graph, is_training) -> dict``."""

  def __init__(self, num_targets: int = 1, dim: int = 100,
               num_layers: int = 4, post_fc_layers: int = 3,
               pool: str = "mean", activation: str = "relu",
               dropout_rate: float = 0.0, deeper: bool = False,
               norm: Optional[str] = None, residual: Optional[bool] = None,
               aggregation: str = "mean", gate_norm: bool = False,
               remat: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.remat = remat
    self.num_targets = num_targets
    self.dim = dim
    self.num_layers = num_layers
    self.post_fc_layers = post_fc_layers
    self.pool = pool
    self.activation = activation
    self.dropout_rate = dropout_rate
    self.norm = stack.norm_kind(deeper, norm)
    self.residual = deeper if residual is None else residual
    self.aggregation = aggregation
    self.gate_norm = gate_norm

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool) -> dict:
    g = stack.read_graph(graph)
    act = nn_lib.get_activation(self.activation)
    x = act(hk.Linear(self.dim, name="pre_fc_node")(g.nodes))

    def layer(h, index):
      del index
      h = CGConv(self.aggregation, self.gate_norm, name="cgconv")(
          h, g.edges, g.senders, g.receivers, g.edge_mask, is_training)
      h = stack.make_norm(self.norm, "norm")(h, g.node_mask, is_training)
      return h, None

    x, _ = stack.scanned_stack(layer, x, self.num_layers,
                               residual=self.residual,
                               dropout_rate=self.dropout_rate,
                               is_training=is_training, remat=self.remat)
    pooled = pooling.pool_nodes(x, g.node_graph, g.num_graphs, g.node_mask,
                                self.pool)
    out = stack.output_head(pooled, [self.dim] * self.post_fc_layers,
                            self.num_targets, self.activation)
    return {"graph": out, "node_embedding": x}
