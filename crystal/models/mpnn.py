"""MPNN (Gilmer et al. 2017) and DeeperMPNN, MatDeepLearn preset.

Edge-network convolution (PyG ``NNConv``, mean aggregation, root weight):
  m_i = x_i W_root + b + mean_j x_j Θ(e_ij),   Θ(e) = reshape(MLP(e), [D, D])
followed by BatchNorm (DGN if deeper) and a GRU update whose hidden state is
the node latent: x' = GRU(m, x). The stack adds the previous output if deeper
(the GRU then also sees that skip, because its hidden state is the carry).
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib
from crystal.models import pooling
from crystal.models import stack


class NNConv(hk.Module):
  """Edge-conditioned convolution, x [N, D] -> [N, D]."""

  def __init__(self, edge_hidden: int, name: Optional[str] = None):
    super().__init__(name=name)
    self.edge_hidden = edge_hidden

  def __call__(self, x, e, senders, receivers, edge_mask):
    n, d = x.shape
    theta = nn_lib.MLP([self.edge_hidden, d * d], activation="relu",
                       name="edge_network")(e).reshape(-1, d, d)
    msg = jnp.einsum("ed,edf->ef", x[senders], theta)
    agg = nn_lib.segment_mean(msg, receivers, n, edge_mask)
    return hk.Linear(d, name="root")(x) + agg


class MPNN(hk.Module):
  """MPNN / DeeperMPNN; ``model(graph, is_training) -> dict``."""

  def __init__(self, num_targets: int = 1, dim: int = 100,
               num_layers: int = 4, post_fc_layers: int = 3,
               edge_hidden: Optional[int] = None, pool: str = "mean",
               activation: str = "relu", dropout_rate: float = 0.0,
               deeper: bool = False, norm: Optional[str] = None,
               residual: Optional[bool] = None, remat: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.remat = remat
    self.num_targets = num_targets
    self.dim = dim
    self.num_layers = num_layers
    self.post_fc_layers = post_fc_layers
    self.edge_hidden = edge_hidden or dim
    self.pool = pool
    self.activation = activation
    self.dropout_rate = dropout_rate
    self.norm = stack.norm_kind(deeper, norm)
    self.residual = deeper if residual is None else residual

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool) -> dict:
    g = stack.read_graph(graph)
    act = nn_lib.get_activation(self.activation)
    x = act(hk.Linear(self.dim, name="pre_fc_node")(g.nodes))

    def layer(h, index):
      del index
      m = NNConv(self.edge_hidden, name="nnconv")(
          h, g.edges, g.senders, g.receivers, g.edge_mask)
      m = stack.make_norm(self.norm, "norm")(m, g.node_mask, is_training)
      h, _ = hk.GRU(self.dim, name="gru")(m, h)
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
