"""SchNet (Schütt et al. 2018) and DeeperSchNet, as in the reference.

Interaction block (PyG ``InteractionBlock``): continuous-filter convolution
with filters from the Gaussian edge features, smoothed by a cosine cutoff on
the raw distance (Å),
  W_ij = (Linear ∘ ssp ∘ Linear)(e_ij) · ½(cos(π d_ij / r_c) + 1)
  v_i = Linear_2( Σ_j Linear_1(x_j) ⊙ W_ij ),  block(x) = Linear(ssp(v))
summed at PyG's ``edge_index[1]`` (``aggregate_at='neighbor'``, reference;
``skeleton.message_flow``), then x' = x + block(x) (SchNet's own residual).
The rest is ``skeleton.CrystalModel``: pre-FC; L x [x + block -> BatchNorm
(DGN if deeper) -> (+ previous if deeper) -> dropout]; max pool; post-FC;
Linear -> T.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from noisy_nodes import nn as nn_lib
from crystal.models import skeleton

# MatDeepLearn config.yml SchNet_demo (dim1 100, dim2 100, dim3 = 150
# filters, cutoff 8, gc_count 4, post_fc_count 3, global_max_pool, relu,
# AdamW 0.0005); SUPER_SchNet: 10 layers.
PRESET = dict(dim=100, num_layers=4, post_fc_layers=3, post_fc_dim=100,
              num_filters=150, cutoff=8.0, pool="max", activation="relu",
              dropout_rate=0.0)
DEEPER = dict(num_layers=10)
LEARNING_RATE = 0.0005


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
    """Messages senders -> receivers, summed at the receivers."""
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


class SchNet(skeleton.CrystalModel):
  """SchNet / DeeperSchNet; ``model(graph, is_training) -> dict``.

  Needs ``graph.edges['distances']`` (Å, or the same units as ``cutoff``).
  """

  def __init__(self, num_targets: int = 1, *, num_filters: int = 150,
               cutoff: float = 8.0, aggregate_at: str = "neighbor",
               **kwargs):
    kwargs = {**{k: v for k, v in PRESET.items()
                 if k not in ("num_filters", "cutoff")}, **kwargs}
    super().__init__(num_targets, **kwargs)
    self.num_filters = num_filters
    self.cutoff = cutoff
    self.aggregate_at = aggregate_at

  @hk.transparent
  def prepare(self, g, is_training):
    if g.distances is None:
      raise ValueError("SchNet needs graph.edges['distances'] for its cutoff")
    return super().prepare(g, is_training)

  @hk.transparent
  def conv(self, h, g, ctx, is_training, first=False):
    src, dst = skeleton.message_flow(g, self.aggregate_at)
    return h + InteractionBlock(self.num_filters, self.cutoff,
                                name="interaction")(
                                    h, g.edges, g.distances, src, dst,
                                    g.edge_mask), None
