"""SchNet (Schütt et al. 2018) and DeeperSchNet, MatDeepLearn preset.

Interaction block (PyG ``InteractionBlock``): continuous-filter convolution
with filters from the Gaussian edge features, smoothed by a cosine cutoff,
  W_ij = (Linear ∘ ssp ∘ Linear)(e_ij) · ½(cos(π d_ij / r_c) + 1)
  v_i = Linear_2( Σ_j Linear_1(x_j) ⊙ W_ij ),  block(x) = Linear(ssp(v))
then x' = x + block(x) (SchNet's own residual). The stack: pre-FC; L x [x +
block -> BatchNorm (DGN if deeper) -> (+ previous if deeper) -> dropout];
pool (max in the preset); post-FC; Linear -> T.
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


def cosine_cutoff(d: jnp.ndarray, cutoff: float) -> jnp.ndarray:
  """½(cos(π d / r_c) + 1) inside the cutoff, 0 beyond."""
  return jnp.where(d < cutoff, 0.5 * (jnp.cos(jnp.pi * d / cutoff) + 1.0),
                   0.0)


class InteractionBlock(hk.Module):
  """One SchNet interaction (cfconv + dense), x [N, D] -> update [N, D]."""

  def __init__(self, num_filters: int, cutoff: float = 8.0,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.num_filters = num_filters
    self.cutoff = cutoff

  def __call__(self, x, e, distances, senders, receivers, edge_mask):
    n, d = x.shape
    ssp = nn_lib.shifted_softplus
    filt = hk.Linear(self.num_filters, name="filter_0")(e)
    filt = hk.Linear(self.num_filters, name="filter_1")(ssp(filt))
    filt = filt * (cosine_cutoff(distances, self.cutoff) *
                   edge_mask)[:, None]
    h = hk.Linear(self.num_filters, with_bias=False, name="in2f")(x)
    v = jax.ops.segment_sum(h[senders] * filt, receivers, n)
    v = hk.Linear(d, name="f2out")(v)
    return hk.Linear(d, name="dense")(ssp(v))


class SchNet(hk.Module):
  """SchNet / DeeperSchNet; ``model(graph, is_training) -> dict``.

  Needs ``graph.edges['distances']`` (Å, or the same units as ``cutoff``).
  """

  def __init__(self, num_targets: int = 1, dim: int = 100,
               num_layers: int = 4, post_fc_layers: int = 3,
               num_filters: Optional[int] = None, cutoff: float = 8.0,
               pool: str = "max", activation: str = "relu",
               dropout_rate: float = 0.0, deeper: bool = False,
               norm: Optional[str] = None, residual: Optional[bool] = None,
               remat: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.remat = remat
    self.num_targets = num_targets
    self.dim = dim
    self.num_layers = num_layers
    self.post_fc_layers = post_fc_layers
    self.num_filters = num_filters or dim
    self.cutoff = cutoff
    self.pool = pool
    self.activation = activation
    self.dropout_rate = dropout_rate
    self.norm = stack.norm_kind(deeper, norm)
    self.residual = deeper if residual is None else residual

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool) -> dict:
    g = stack.read_graph(graph)
    if g.distances is None:
      raise ValueError("SchNet needs graph.edges['distances'] for its cutoff")
    act = nn_lib.get_activation(self.activation)
    x = act(hk.Linear(self.dim, name="pre_fc_node")(g.nodes))

    def layer(h, index):
      del index
      h = h + InteractionBlock(self.num_filters, self.cutoff,
                               name="interaction")(
                                   h, g.edges, g.distances, g.senders,
                                   g.receivers, g.edge_mask)
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
