"""MPNN (Gilmer et al. 2017) and DeeperMPNN, as in the reference.

Edge-network convolution (PyG ``NNConv``, mean aggregation, root weight):
  m_i = x_i W_root + b + mean_j x_j Θ(e_ij),   Θ(e) = reshape(MLP(e), [D, D])
averaged at PyG's ``edge_index[1]`` (``aggregate_at='neighbor'``, reference;
``skeleton.message_flow``), then BatchNorm (DGN if deeper) -> ReLU ->
dropout and PyTorch's GRU cell whose hidden state is the node latent:
x' = GRU(m, x). The skeleton (``skeleton.CrystalModel``) adds the previous
output if deeper.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from noisy_nodes import nn as nn_lib
from crystal.models import skeleton
from crystal.models import stack

# MatDeepLearn config.yml MPNN_demo (dim1 = dim2 = dim3 = 100, gc_count 4,
# post_fc_count 3, global_mean_pool, relu, AdamW 0.001); SUPER_MPNN: 10.
PRESET = dict(dim=100, num_layers=4, post_fc_layers=3, post_fc_dim=100,
              edge_hidden=100, pool="mean", activation="relu",
              dropout_rate=0.0)
DEEPER = dict(num_layers=10)
LEARNING_RATE = 0.001


class NNConv(hk.Module):
  """Edge-conditioned convolution, x [N, D] -> [N, D] (senders -> receivers)."""

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


class TorchGRU(hk.Module):
  """``torch.nn.GRU``'s cell (one layer), with its two bias vectors:
    r = σ(x W_ir + b_ir + h W_hr + b_hr),  z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h
  (``hk.GRU`` applies r before W_hn and has one bias)."""

  def __call__(self, x: jnp.ndarray, h: jnp.ndarray) -> jnp.ndarray:
    d = h.shape[-1]
    gi = hk.Linear(3 * d, name="input")(x)
    gh = hk.Linear(3 * d, name="hidden")(h)
    r = jax.nn.sigmoid(gi[:, :d] + gh[:, :d])
    z = jax.nn.sigmoid(gi[:, d:2 * d] + gh[:, d:2 * d])
    n = jnp.tanh(gi[:, 2 * d:] + r * gh[:, 2 * d:])
    return (1.0 - z) * n + z * h


class MPNN(skeleton.CrystalModel):
  """MPNN / DeeperMPNN; ``model(graph, is_training) -> dict``."""

  def __init__(self, num_targets: int = 1, *, edge_hidden: int = 100,
               aggregate_at: str = "neighbor", **kwargs):
    kwargs = {**{k: v for k, v in PRESET.items() if k != "edge_hidden"},
              **kwargs}
    super().__init__(num_targets, **kwargs)
    self.edge_hidden = edge_hidden
    self.aggregate_at = aggregate_at

  @hk.transparent
  def conv(self, h, g, ctx, is_training, first=False):
    src, dst = skeleton.message_flow(g, self.aggregate_at)
    m = NNConv(self.edge_hidden, name="nnconv")(h, g.edges, src, dst,
                                                g.edge_mask)
    m = stack.make_norm(self.norm, "norm", self.dgn_groups, self.dgn_lamda)(
        m, g.node_mask, is_training)
    m = stack.dropout(jax.nn.relu(m), self.dropout_rate, is_training)
    return TorchGRU(name="gru")(m, h), None

  @hk.transparent
  def normalize(self, carry, g, is_training):
    return carry   # the norm acts on the message, before the GRU (conv)
