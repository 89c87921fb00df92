"""GATGNN and DeeperGATGNN (Louis et al. 2020; Omee et al. 2021).

Architecture (DeeperGATGNN paper Fig. 1, reference ``DEEP_GATGNN``):

  x = leaky_relu_0.2(Linear(node features)),  e = leaky_relu_0.2(Linear(edge
  features));  L x [AGAT -> DiffGroupNorm -> + previous output -> dropout];
  global attention pooling with the composition vector (eq. 2);
  Linear -> T outputs (the reference's post_fc_count 0). The network around
  AGAT is ``skeleton.CrystalModel``.

``deeper=False`` gives plain GATGNN: BatchNorm instead of DGN and no skip.
Edge features are not updated by the layers.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from noisy_nodes import nn as nn_lib
from crystal.models import agat_cpu
from crystal.models import pooling
from crystal.models import skeleton
from crystal.models import stack

_GLOROT = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")


def _block_diagonal(att: jnp.ndarray) -> jnp.ndarray:
  """[K, H, D] per-head vectors -> [H·D, K·H]: column k·H + h holds att[k, h]
  in rows h·D..(h+1)·D (K block-diagonal matrices side by side)."""
  k, heads, dim = att.shape
  eye = jnp.eye(heads, dtype=att.dtype)
  blocks = att[:, :, :, None] * eye[None, :, None, :]          # [K, H, D, H]
  return blocks.transpose(1, 2, 0, 3).reshape(heads * dim, k * heads)


@jax.custom_vjp
def head_dot(u: jnp.ndarray, att: jnp.ndarray) -> jnp.ndarray:
  """Per-head dot products: u [E, H·D], att [K, H, D] -> [E, K·H].

  out[e, k·H + h] = Σ_d u[e, h·D + d] att[k, h, d], as one plain matmul
  ``u @ blockdiag(att)``: on XLA:CPU the multiply + sum over D otherwise
  becomes separate reduce kernels (slower: docs/benchmarks.md).
  """
  return u @ _block_diagonal(att)


def _head_dot_fwd(u, att):
  return head_dot(u, att), (u, att)


def _head_dot_bwd(res, g):
  u, att = res
  k, heads, dim = att.shape
  # g.T @ u is [K·H, H·D]; its diagonal blocks are the gradient. XLA's own
  # transpose, u.T @ g [H·D, K·H] (a matmul contracting the long axis of a
  # transposed operand), was several times slower on XLA:CPU.
  # (Cotangents in the primals' dtypes: under bf16 the incoming g can be
  # float32.)
  g = g.astype(u.dtype)
  blocks = (g.T @ u).reshape(k, heads, heads, dim)
  g_att = jnp.diagonal(blocks, axis1=1, axis2=2)               # [K, D, H]
  return (g @ _block_diagonal(att).T).astype(u.dtype), g_att.transpose(
      0, 2, 1).astype(att.dtype)


head_dot.defvjp(_head_dot_fwd, _head_dot_bwd)


@jax.custom_vjp
def head_weighted_sum(u: jnp.ndarray, alpha: jnp.ndarray) -> jnp.ndarray:
  """Σ_h alpha[e, h] u[e, h, :]: u [E, H, D], alpha [E, H] -> [E, D].

  The gradient of alpha, Σ_d u[e, h, d] g[e, d], is a batched dot product:
  autodiff's multiply-then-sum materialises the [E, H, D] product and
  XLA:CPU then sums it in two passes (a reduce-window over D); the einsum
  is one kernel (docs/benchmarks.md).
  """
  return (u * alpha[:, :, None]).sum(axis=1)


def _head_weighted_sum_fwd(u, alpha):
  return head_weighted_sum(u, alpha), (u, alpha)


def _head_weighted_sum_bwd(res, g):
  u, alpha = res
  return ((g[:, None, :] * alpha[:, :, None]).astype(u.dtype),
          jnp.einsum("ehd,ed->eh", u, g).astype(alpha.dtype))


head_weighted_sum.defvjp(_head_weighted_sum_fwd, _head_weighted_sum_bwd)


def swap_halves(a: jnp.ndarray) -> jnp.ndarray:
  """a[(t + E/2) mod E]: the reverse-edge gather of the paired edge layout
  (``crystal.edge_pairs.paired_layout``; E is even) as a swap of halves."""
  return jnp.flip(a.reshape((2, -1) + a.shape[1:]), axis=0).reshape(a.shape)


def _reverse_rows(a: jnp.ndarray, self_rows: jnp.ndarray) -> jnp.ndarray:
  """a[reverse] in the paired layout: the swap of halves, except for the
  rows that are their own reverse."""
  return jnp.where(self_rows.reshape((-1,) + (1,) * (a.ndim - 1)), a,
                   swap_halves(a))


class AGATLayer(hk.Module):
  """Augmented graph attention layer (paper eq. 1; reference AGAT layer).

  For an edge j -> i with (projected) edge feature e_ij and head h:
    u_i = act([x_i ‖ e_ij] W),  u_j = act([x_j ‖ e_ij] W)   W: [2D, H·D]
    a_ij = act(BN(act(Σ_d [u_i ‖ u_j]_h · att_h)))          logits [E, H]
    α_ij = softmax over the edges entering i of a_ij        eq. 1
    x_i' = mean_h Σ_j α_ij,h u_j,h + bias
  [x ‖ e] W = x W_x + e W_e, so x W_x is computed once per node and e W_e
  once per edge (shared by both endpoints) instead of twice per edge.

  The edge block (u, the attention dots and the weighted messages) has two
  implementations of the same maths (``tests/test_agat_cpu.py``):
  ``_xla_edges`` and ``_fused_edges``, the ``agat_cpu`` kernels, which never
  store an [E, H·D] array. ``use_kernels`` (like jax-md's) lets training
  steps run the fused one where it applies: a batch in the paired layout,
  float32, softplus, XLA:CPU with the kernels built (``agat_cpu.available``;
  ``NN_AGAT_KERNEL=0`` turns them off for a whole machine). Inference keeps
  the XLA block, which evaluates u once where the kernels rebuild it in
  each of their two forward walks.
  """

  def __init__(self, dim: int, heads: int = 4, activation: str = "softplus",
               dropout_rate: float = 0.0, use_kernels: bool = True,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.dim = dim
    self.heads = heads
    self.act = nn_lib.get_activation(activation)
    self.dropout_rate = dropout_rate
    self.use_kernels = use_kernels

  def fused(self, paired: bool, is_training: bool, dtype) -> bool:
    """Whether this call runs the edge block as the ``agat_cpu`` kernels."""
    return (self.use_kernels and paired and is_training and
            dtype == jnp.float32 and self.act is nn_lib.softplus and
            agat_cpu.available())

  def __call__(self, x, e, senders, receivers, edge_mask, is_training,
               self_rows=None):
    """x [N, D], e [E, D] -> (x' [N, D], attention α [E, H]).

    ``self_rows`` [E] bool, given for a batch in the paired layout of
    ``noisy_nodes.data.batching`` (edge t's reverse is edge (t + E/2) mod E, with
    an identical edge feature, except the rows marked True, self loops that
    are their own reverse); ``e`` then holds the first E / 2 rows only. u_j
    of an edge is u_i of its reverse: act([x ‖ e] W) is evaluated once per
    edge instead of twice and e W_e once per pair instead of twice per edge
    (the same layer at half the work, forward and backward).
    """
    n, d = x.shape
    w = hk.get_parameter("w", (2 * d, self.heads * self.dim), x.dtype,
                         _GLOROT)
    att = hk.get_parameter("att", (self.heads, 2 * self.dim), x.dtype,
                           _GLOROT)
    bias = hk.get_parameter("bias", (self.dim,), x.dtype, jnp.zeros)
    att = jnp.stack([att[:, :self.dim], att[:, self.dim:]])    # [2, H, D]
    xw = x @ w[:d]                                             # [N, H·D]
    ew = e @ w[d:]                                  # [E, H·D] or [E/2, H·D]

    head_norm = nn_lib.MaskedBatchNorm(name="head_norm")

    def attention(logits):
      """Raw logits [E, H] -> the dropped-out α used for the messages and
      the α the layer returns (its softmax over the edges entering i)."""
      logits = self.act(head_norm(self.act(logits), edge_mask, is_training))
      alpha = pooling.segment_softmax(logits, receivers, n, edge_mask)
      return stack.dropout(alpha, self.dropout_rate, is_training), alpha

    edges = (_fused_edges if self.fused(self_rows is not None, is_training,
                                        x.dtype) else self._xla_edges)
    out, alpha = edges(xw, ew, att, senders, receivers, self_rows, n,
                       attention)
    return out / self.heads + bias, alpha

  @hk.transparent
  def _xla_edges(self, xw, ew, att, senders, receivers, self_rows, n,
                 attention):
    """The edge block in XLA: summed messages [N, D] (before the mean over
    heads) and α [E, H]."""
    heads, hd = self.heads, self.heads * self.dim
    if self_rows is not None:
      # Both edges of pair t (rows t and t + E/2) share e W_e: a broadcast
      # over the two halves, not a concatenation (slower on XLA:CPU).
      pre = (xw[receivers].reshape((2,) + ew.shape) + ew).reshape(-1, hd)
      u = self.act(pre)                                   # u_i [E, H·D]
      both = head_dot(u, att)                                  # [E, 2H]
      used, alpha = attention(both[:, :heads] + _reverse_rows(
          both[:, heads:], self_rows))
      # Row t is u_j of edge t's reverse r, whose receiver is senders[t]:
      # Σ_{r -> i} α_r u_j(r) = Σ_{t: senders[t] = i} α_reverse(t) u_i(t).
      weight, seg = _reverse_rows(used, self_rows), senders
    else:
      u_i = self.act(xw[receivers] + ew)
      u = self.act(xw[senders] + ew)                      # u_j [E, H·D]
      used, alpha = attention(head_dot(u_i, att[:1]) + head_dot(u, att[1:]))
      weight, seg = used, receivers
    # Mean over heads before the scatter-add (the same sum, reordered):
    # the scatter moves [E, D] instead of [E, H, D].
    msg = head_weighted_sum(u.reshape(-1, heads, self.dim), weight)
    return jax.ops.segment_sum(msg, seg, n), alpha


def _fused_edges(xw, ew, att, senders, receivers, self_rows, n, attention):
  """The paired edge block as the ``agat_cpu`` kernels (the same maths as
  ``AGATLayer._xla_edges``): summed messages [N, D] and α [E, H]."""
  del n
  heads = att.shape[1]
  both, link = agat_cpu.attention_dots(xw, ew, receivers, senders, att)
  both = checkpoint_name(both, "agat_both")                    # [E, 2H]
  used, alpha = attention(both[:, :heads] + _reverse_rows(both[:, heads:],
                                                          self_rows))
  out = agat_cpu.messages(xw, ew, receivers, senders,
                          _reverse_rows(used, self_rows), link)
  return checkpoint_name(out, "agat_messages"), alpha          # [N, D]


# With remat, the fused layer keeps its [E, 2H] logits and [N, D] messages
# (20 layers, 10,000 edges, 1,000 nodes: 11 MB) so the backward goes straight to
# the gradient kernels instead of running the forward walks again (faster:
# docs/benchmarks.md). The XLA path names nothing: it saves nothing.
_REMAT_SAVED = ("agat_both", "agat_messages")


class GATGNN(skeleton.CrystalModel):
  """DeeperGATGNN (``deeper=True``, default) or plain GATGNN.

  Call ``model(graph, is_training)`` on a padded batch; returns
  ``{'graph': [G, T], 'node_embedding': [N, dim], 'pooled':
  [G, dim], 'attention_pool': [N]}`` and, with ``output_attention``,
  ``'attention': [L, E, heads]``.
  """

  remat_saved = _REMAT_SAVED
  aux_name = "attention"

  def __init__(self, num_targets: int = 1, *, deeper: bool = True,
               output_attention: bool = False, **kwargs):
    """``presets(deeper)`` overridden by ``kwargs``; besides the skeleton's
    arguments: ``heads``, ``global_fc_layers`` (the attention pooling's
    layers) and ``use_kernels`` (``AGATLayer``)."""
    kwargs = {**presets(deeper), **kwargs}
    del kwargs["deeper"]
    own = {k: kwargs.pop(k) for k in ("heads", "global_fc_layers",
                                      "use_kernels")}
    super().__init__(num_targets, deeper=deeper, **kwargs)
    self.heads = own["heads"]
    self.global_fc_layers = own["global_fc_layers"]
    self.use_kernels = own["use_kernels"]
    self.output_attention = output_attention

  @hk.transparent
  def prepare(self, g, is_training):
    del is_training
    if g.composition is None:
      raise ValueError("GATGNN needs graph.globals['composition'] [G, C] "
                       "for its global attention")
    leaky = nn_lib.get_activation("leaky_relu")
    x = leaky(hk.Linear(self.dim, name="pre_fc_node")(g.nodes))
    # Paired layout: both edges of a pair have the same features, so the
    # edge embedding is computed once per pair (the first half of the rows).
    self_rows, edges = None, g.edges
    if g.reverse is not None:
      self_rows = g.reverse == jnp.arange(g.reverse.shape[0])
      edges = g.edges[:g.edges.shape[0] // 2]                     # E even
    e = leaky(hk.Linear(self.dim, name="pre_fc_edge")(edges))
    return x, (e, self_rows)

  @hk.transparent
  def conv(self, h, g, ctx, is_training, first=False):
    e, self_rows = ctx
    h, alpha = AGATLayer(self.dim, self.heads, self.activation,
                         self.dropout_rate, self.use_kernels, name="agat")(
                             h, e, g.senders, g.receivers, g.edge_mask,
                             is_training, self_rows)
    return h, (alpha if self.output_attention else None)

  @hk.transparent
  def readout(self, x, g, ctx):
    pooled, weights = pooling.GlobalAttentionPool(
        self.dim, self.global_fc_layers, self.activation,
        name="global_attention")(x, g.composition, g.node_graph,
                                 g.num_graphs, g.node_mask)
    return pooled, {"attention_pool": weights}


def presets(deeper: bool = True) -> dict:
  """The reference's DEEP_GATGNN_demo (20 layers) or GATGNN_demo (5).

  config.yml: dim1 64, post_fc_count 0 (Linear(64 -> T) right after the
  pooling), softplus, global_add_pool of the attention-weighted nodes,
  AdamW 0.005. ``remat`` only trades memory for compute (the same maths).
  """
  return dict(dim=64, num_layers=20 if deeper else 5, heads=4,
              activation="softplus", dropout_rate=0.0, deeper=deeper,
              post_fc_layers=0, global_fc_layers=2, dgn_groups=10,
              dgn_lamda=0.01,
              # Rematerialising each AGAT layer keeps [N, D] per layer
              # instead of several [E, 4·D] edge arrays: half the memory
              # and faster on CPU (benchmarks/crystal_bench.py).
              remat=True,
              # The fused CPU edge block where it applies (AGATLayer).
              use_kernels=True)


LEARNING_RATE = 0.005
