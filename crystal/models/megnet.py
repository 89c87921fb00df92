"""MEGNet (Chen et al. 2019) and DeeperMEGNet, MatDeepLearn preset.

Each layer (PyG ``MetaLayer``) first embeds the node, edge and global latents
with two Linear+ReLU layers, then updates
  edges:   e' = φ_e([x_src ‖ x_dst ‖ e ‖ u])
  nodes:   x' = φ_v([x ‖ mean_{edges into i} e' ‖ u])
  globals: u' = φ_u([mean over the crystal of (per-node mean e') ‖
                     mean over the crystal of x' ‖ u])
and adds its input (MEGNet's own skip): (x, e, u) <- (x', e', u') + (x, e, u).
Each φ is ``fc_layers + 1`` blocks of Linear -> act -> BatchNorm (DGN if
deeper) -> (+ previous block for all but the first) -> dropout, as in the
reference. ``deeper`` also adds the stack's residual after every layer.
Readout: [pool(x) ‖ pool(edges per node) ‖ u] -> post-FC -> Linear -> T.

Differences from the reference, for a homogeneous scanned stack: edge and
global inputs get one pre-FC Linear+act to ``dim`` (the reference feeds raw
edge features to the first layer's embedding only), and the global input is
the composition vector when present (zeros [G, 1] otherwise).
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib
from crystal.models import pooling
from crystal.models import stack


class _UpdateMLP(hk.Module):
  """φ of one MetaLayer part: Linear -> act -> norm (-> + prev) -> dropout."""

  def __init__(self, dim, num_blocks, activation, norm, dropout_rate,
               name=None):
    super().__init__(name=name)
    self.dim = dim
    self.num_blocks = num_blocks
    self.act = nn_lib.get_activation(activation)
    self.norm = norm
    self.dropout_rate = dropout_rate

  def __call__(self, h, mask, is_training):
    prev = None
    for i in range(self.num_blocks):
      h = self.act(hk.Linear(self.dim, name=f"linear_{i}")(h))
      h = stack.make_norm(self.norm, f"norm_{i}")(h, mask, is_training)
      if prev is not None:
        h = h + prev
      h = stack.dropout(h, self.dropout_rate, is_training)
      prev = h
    return h


class MEGNet(hk.Module):
  """MEGNet / DeeperMEGNet; ``model(graph, is_training) -> dict``."""

  def __init__(self, num_targets: int = 1, dim: int = 100,
               num_layers: int = 4, post_fc_layers: int = 3,
               fc_layers: int = 2, pool: str = "mean",
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
    self.fc_layers = fc_layers
    self.pool = pool
    self.activation = activation
    self.dropout_rate = dropout_rate
    self.norm = stack.norm_kind(deeper, norm)
    self.residual = deeper if residual is None else residual

  def _embed(self, h, name):
    return nn_lib.MLP([self.dim, self.dim], activation="relu",
                      activate_final=True, name=name)(h)

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool) -> dict:
    g = stack.read_graph(graph)
    act = nn_lib.get_activation(self.activation)
    n, ng = g.num_nodes, g.num_graphs
    u_in = (g.composition if g.composition is not None
            else jnp.zeros((ng, 1), jnp.float32))
    carry = {
        "nodes": act(hk.Linear(self.dim, name="pre_fc_node")(g.nodes)),
        "edges": act(hk.Linear(self.dim, name="pre_fc_edge")(g.edges)),
        "globals": act(hk.Linear(self.dim, name="pre_fc_global")(u_in)),
    }

    def update(name):
      return _UpdateMLP(self.dim, self.fc_layers + 1, self.activation,
                        self.norm, self.dropout_rate, name=name)

    def layer(c, index):
      del index
      x = self._embed(c["nodes"], "embed_nodes")
      e = self._embed(c["edges"], "embed_edges")
      u = self._embed(c["globals"], "embed_globals")
      e_new = update("edge_model")(
          jnp.concatenate([x[g.senders], x[g.receivers], e,
                           u[g.edge_graph]], axis=-1), g.edge_mask,
          is_training)
      e_per_node = nn_lib.segment_mean(e_new, g.receivers, n, g.edge_mask)
      x_new = update("node_model")(
          jnp.concatenate([x, e_per_node, u[g.node_graph]], axis=-1),
          g.node_mask, is_training)
      u_e = pooling.pool_nodes(e_per_node, g.node_graph, ng, g.node_mask,
                               "mean")
      u_v = pooling.pool_nodes(x_new, g.node_graph, ng, g.node_mask, "mean")
      u_new = update("global_model")(
          jnp.concatenate([u_e, u_v, u], axis=-1), g.graph_mask, is_training)
      return {"nodes": x_new + c["nodes"], "edges": e_new + c["edges"],
              "globals": u_new + c["globals"]}, None

    carry, _ = stack.scanned_stack(layer, carry, self.num_layers,
                                   residual=self.residual,
                                   dropout_rate=self.dropout_rate,
                                   is_training=is_training, remat=self.remat)
    x = carry["nodes"]
    e_per_node = pooling.pool_nodes(carry["edges"], g.receivers, n,
                                    g.edge_mask, self.pool)
    pooled = jnp.concatenate([
        pooling.pool_nodes(x, g.node_graph, ng, g.node_mask, self.pool),
        pooling.pool_nodes(e_per_node, g.node_graph, ng, g.node_mask,
                           self.pool),
        carry["globals"]], axis=-1)
    out = stack.output_head(pooled, [self.dim] * self.post_fc_layers,
                            self.num_targets, self.activation)
    return {"graph": out, "node_embedding": x}
