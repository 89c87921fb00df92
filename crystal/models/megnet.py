"""MEGNet (Chen et al. 2019) and DeeperMEGNet, as in the reference.

Each layer (PyG ``MetaLayer``) first embeds the node, edge and global latents
with Linear -> ReLU -> Linear -> ReLU, then updates
  edges:   e' = φ_e([x_i ‖ x_j ‖ e_ij ‖ u])       (i = the edge's centre atom)
  nodes:   x' = φ_v([x ‖ mean_{edges of i} e' ‖ u])
  globals: u' = φ_u([mean over the crystal of (per-node mean e') ‖
                     mean over the crystal of x' ‖ u])
and adds MEGNet's own skip: (x, e, u) <- (x', e', u') + (x, e, u), where
layer 0 adds its embeddings instead (its inputs have other widths: raw edge
features and the global input, so it runs apart from the scan,
``skeleton.CrystalModel.first_layer_apart``). Each φ is ``fc_layers + 1``
blocks of Linear -> act -> BatchNorm (DGN if deeper) -> dropout; with
``phi_skip`` (default: ``deeper``) each block after the first also adds the
previous block's output. Readout: [pool(x) ‖ pool(edges per node) ‖ u] ->
post-FC -> Linear -> T. Edges are averaged at their centre atom (PyG
``edge_index[0]``), as in the reference.

``global_input``: 'zeros' (reference: zeros(3) per crystal) or
'composition' (the crystal's composition vector; a deviation).
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax.numpy as jnp

from noisy_nodes import nn as nn_lib
from crystal.models import pooling
from crystal.models import skeleton
from crystal.models import stack

# MatDeepLearn config.yml MEGNet_demo (dim 100, gc_count 4, gc_fc_count 1,
# post_fc_count 3, global_mean_pool, relu, AdamW 0.0005); SUPER_MEGNet: 10.
PRESET = dict(dim=100, num_layers=4, post_fc_layers=3, post_fc_dim=100,
              fc_layers=1, pool="mean", activation="relu", dropout_rate=0.0)
DEEPER = dict(num_layers=10)
LEARNING_RATE = 0.0005
GLOBAL_INPUTS = ("zeros", "composition")


class _UpdateMLP(hk.Module):
  """φ of one MetaLayer part: blocks of Linear -> act -> norm (-> + prev)
  -> dropout."""

  def __init__(self, dim, num_blocks, activation, norm, dropout_rate, skip,
               name=None):
    super().__init__(name=name)
    self.dim = dim
    self.num_blocks = num_blocks
    self.act = nn_lib.get_activation(activation)
    self.norm = norm
    self.dropout_rate = dropout_rate
    self.skip = skip

  def __call__(self, h, mask, is_training):
    prev = None
    for i in range(self.num_blocks):
      h = self.act(hk.Linear(self.dim, name=f"linear_{i}")(h))
      h = stack.make_norm(self.norm, f"norm_{i}")(h, mask, is_training)
      if self.skip and prev is not None:
        h = h + prev
      h = stack.dropout(h, self.dropout_rate, is_training)
      prev = h
    return h


class MEGNet(skeleton.CrystalModel):
  """MEGNet / DeeperMEGNet; ``model(graph, is_training) -> dict``."""

  first_layer_apart = True

  def __init__(self, num_targets: int = 1, *, fc_layers: int = 1,
               phi_skip: Optional[bool] = None, global_input: str = "zeros",
               **kwargs):
    kwargs = {**{k: v for k, v in PRESET.items() if k != "fc_layers"},
              **kwargs}
    super().__init__(num_targets, **kwargs)
    if global_input not in GLOBAL_INPUTS:
      raise ValueError(f"global_input must be one of {GLOBAL_INPUTS}, got "
                       f"{global_input!r}")
    self.fc_layers = fc_layers
    self.phi_skip = self.deeper if phi_skip is None else phi_skip
    self.global_input = global_input

  @hk.transparent
  def prepare(self, g, is_training):
    del is_training
    act = nn_lib.get_activation(self.activation)
    if self.global_input == "composition":
      if g.composition is None:
        raise ValueError("MEGNet global_input='composition' needs "
                         "graph.globals['composition']")
      u = g.composition
    else:
      u = jnp.zeros((g.num_graphs, 3), jnp.float32)
    return {"nodes": act(hk.Linear(self.dim, name="pre_fc_node")(g.nodes)),
            "edges": g.edges, "globals": u}, None

  @hk.transparent
  def _embed(self, h, name):
    return nn_lib.MLP([self.dim, self.dim], activation="relu",
                      activate_final=True, name=name)(h)

  @hk.transparent
  def _update(self, name):
    return _UpdateMLP(self.dim, self.fc_layers + 1, self.activation,
                      self.norm, self.dropout_rate, self.phi_skip, name=name)

  @hk.transparent
  def conv(self, c, g, ctx, is_training, first=False):
    n, ng = g.num_nodes, g.num_graphs
    x = self._embed(c["nodes"], "embed_nodes")
    e = self._embed(c["edges"], "embed_edges")
    u = self._embed(c["globals"], "embed_globals")
    e_new = self._update("edge_model")(
        jnp.concatenate([x[g.receivers], x[g.senders], e, u[g.edge_graph]],
                        axis=-1), g.edge_mask, is_training)
    e_per_node = nn_lib.segment_mean(e_new, g.receivers, n, g.edge_mask)
    x_new = self._update("node_model")(
        jnp.concatenate([x, e_per_node, u[g.node_graph]], axis=-1),
        g.node_mask, is_training)
    u_e = pooling.pool_nodes(e_per_node, g.node_graph, ng, g.node_mask,
                             "mean")
    u_v = pooling.pool_nodes(x_new, g.node_graph, ng, g.node_mask, "mean")
    u_new = self._update("global_model")(
        jnp.concatenate([u_e, u_v, u], axis=-1), g.graph_mask, is_training)
    # MEGNet's own skip; layer 0 adds its embeddings (other input widths).
    base = {"nodes": x, "edges": e, "globals": u} if first else c
    return {"nodes": x_new + base["nodes"], "edges": e_new + base["edges"],
            "globals": u_new + base["globals"]}, None

  @hk.transparent
  def normalize(self, carry, g, is_training):
    return carry   # the norms are inside each φ

  @hk.transparent
  def readout(self, carry, g, ctx):
    n, ng = g.num_nodes, g.num_graphs
    e_per_node = pooling.pool_nodes(carry["edges"], g.receivers, n,
                                    g.edge_mask, self.pool)
    return jnp.concatenate([
        pooling.pool_nodes(carry["nodes"], g.node_graph, ng, g.node_mask,
                           self.pool),
        pooling.pool_nodes(e_per_node, g.node_graph, ng, g.node_mask,
                           self.pool),
        carry["globals"]], axis=-1), {}

  @hk.transparent
  def node_embedding(self, carry):
    return carry["nodes"]
