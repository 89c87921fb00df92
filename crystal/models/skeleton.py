"""The one skeleton of every crystal model (DeeperGATGNN, Omee et al. 2022).

The paper's point (§2.2-2.3) is that the deeper recipe applies to any
graph convolution, so the network around the convolution is written once:

  carry = prepare(graph)                       pre-FC embedding(s)
  L x [ conv -> norm -> (+ carry if residual) -> dropout ]    scanned
  pooled = readout(carry)                      pooling [G, F]
  out = (Linear -> act) x post_fc_layers -> Linear -> [G, T]   head

``norm`` is BatchNorm for the plain model and DiffGroupNorm when
``deeper`` (``stack.norm_kind``), ``residual`` defaults to ``deeper``. The L
layers have unshared parameters stacked on a leading [L] axis and run under
``lax.scan`` (``stack.scanned_stack``), so compile time does not grow with
depth. A model subclasses ``CrystalModel`` and writes only ``conv`` (one
layer; its Haiku modules are created inside) and, where it differs from the
default, ``prepare`` / ``normalize`` / ``readout``. A model whose first
layer has other input widths (MEGNet: raw edge features and a zeros(3)
global input) sets ``first_layer_apart``: layer 0 then runs unscanned under
its own parameters and the scan covers layers 1..L-1.

Another convolution is another subclass. CrysGNN's reference encoder (the
original CGCNN ``ConvLayer``, Xie & Grossman 2018), for example, is
``conv = softplus(h_i + BN(Σ_j σ(filter) · softplus(core)))`` with
``[filter ‖ core] = BN(Linear([h_i ‖ h_j ‖ e_ij]))``, summed over i's own
neighbours: ``cgcnn.CGConv(aggregation='sum', gate_norm=True)`` with
``aggregate_at='center'``, plus its output BatchNorm and softplus inside
``conv``, ``norm='none'``, ``residual=False`` and a bias-free, activation-free
``prepare``.

Message direction: ``message_flow`` says which end of an edge aggregates.
The reference's neighbour lists (MatDeepLearn) give each atom i (PyG
``edge_index[0]``, our receiver) its own 12 nearest; PyG's CGConv, CFConv
and NNConv aggregate at ``edge_index[1]``, i.e. over the atoms that chose i
among *their* 12 nearest (``aggregate_at='neighbor'``), while AGAT
(``flow='target_to_source'``) and MEGNet aggregate at ``edge_index[0]``
(``'center'``). On a 12-neighbour graph 12-28 % of edges have no reverse, so
the two differ.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib
from crystal.models import pooling
from crystal.models import stack

AGGREGATE_AT = ("neighbor", "center")


def message_flow(g: stack.GraphInputs, aggregate_at: str
                 ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(sources [E], targets [E]) of each message (module docstring).

  ``'neighbor'``: the reference's CGConv / CFConv / NNConv direction, atom
  i sums over the atoms whose neighbour lists hold i; ``'center'``: atom i
  sums over its own neighbour list (original CGCNN, AGAT, MEGNet).
  """
  if aggregate_at == "neighbor":
    return g.receivers, g.senders
  if aggregate_at == "center":
    return g.senders, g.receivers
  raise ValueError(f"aggregate_at must be one of {AGGREGATE_AT}, got "
                   f"{aggregate_at!r}")


class CrystalModel(hk.Module):
  """pre-FC -> scanned (conv -> norm -> skip) -> pooling -> head.

  Call ``model(graph, is_training)`` on a padded ``jraph.GraphsTuple``
  (docs/design.md); returns ``{'graph': [G, T], 'node_embedding': [N, D],
  'pooled': [G, F]}`` (the pooled vector the head reads) plus
  what ``readout`` adds.

  Args:
    num_targets: T.
    dim: width of the node latents.
    num_layers: L convolutions.
    post_fc_layers: Linear + act layers after pooling (0: Linear -> T).
    post_fc_dim: their width (default ``dim``).
    pool: 'mean', 'sum' or 'max' (models with their own readout ignore it).
    activation: of the pre-FC and post-FC layers.
    dropout_rate: after every layer.
    deeper: the DeeperGATGNN recipe (DiffGroupNorm + residual skips).
    norm: overrides the norm ('batch', 'diff_group', 'none').
    residual: overrides the skip.
    dgn_groups, dgn_lamda: DiffGroupNorm's groups and λ.
    remat: rematerialise each layer in the backward pass.
    output_bias: [T] initial bias of the output layer (the task sets the
      training targets' mean here, in model units); zeros when None.
    output_zero_weights: initialise the output layer's weights at 0 (with
      ``output_bias`` at the mean, the model starts as the mean predictor).
  """

  first_layer_apart = False
  remat_saved: Sequence[str] = ()
  aux_name = "layers"     # output key of the per-layer aux, [L, ...]

  def __init__(self, num_targets: int = 1, dim: int = 100,
               num_layers: int = 4, post_fc_layers: int = 3,
               post_fc_dim: int = 0, pool: str = "mean",
               activation: str = "relu", dropout_rate: float = 0.0,
               deeper: bool = False, norm: Optional[str] = None,
               residual: Optional[bool] = None, dgn_groups: int = 10,
               dgn_lamda: float = 0.01, remat: bool = False,
               output_bias: Optional[Sequence[float]] = None,
               output_zero_weights: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.num_targets = num_targets
    self.dim = dim
    self.num_layers = num_layers
    self.post_fc_layers = post_fc_layers
    self.post_fc_dim = post_fc_dim or dim
    self.pool = pool
    self.activation = activation
    self.dropout_rate = dropout_rate
    self.deeper = deeper
    self.norm = stack.norm_kind(deeper, norm)
    self.residual = deeper if residual is None else residual
    self.dgn_groups = dgn_groups
    self.dgn_lamda = dgn_lamda
    self.remat = remat
    self.output_bias = output_bias
    self.output_zero_weights = output_zero_weights

  # -- the parts a model may change ------------------------------------------
  @hk.transparent
  def prepare(self, g: stack.GraphInputs, is_training: bool
              ) -> Tuple[Any, Any]:
    """(initial carry, context closed over by every layer): act(pre-FC)."""
    del is_training
    act = nn_lib.get_activation(self.activation)
    return act(hk.Linear(self.dim, name="pre_fc_node")(g.nodes)), None

  @hk.transparent
  def conv(self, carry, g: stack.GraphInputs, ctx, is_training: bool,
           first: bool = False) -> Tuple[Any, Any]:
    """One convolution: (carry, ...) -> (new carry, per-layer aux or None).

    ``first`` is True for layer 0 when ``first_layer_apart``.
    """
    raise NotImplementedError

  @hk.transparent
  def normalize(self, carry, g: stack.GraphInputs, is_training: bool):
    """The norm after each convolution (node latents [N, D])."""
    return stack.make_norm(self.norm, "norm", self.dgn_groups,
                           self.dgn_lamda)(carry, g.node_mask, is_training)

  @hk.transparent
  def readout(self, carry, g: stack.GraphInputs, ctx
              ) -> Tuple[jnp.ndarray, dict]:
    """(pooled [G, F], extra outputs): masked ``pool`` of the nodes."""
    del ctx
    return pooling.pool_nodes(carry, g.node_graph, g.num_graphs,
                              g.node_mask, self.pool), {}

  @hk.transparent
  def node_embedding(self, carry) -> jnp.ndarray:
    return carry

  # -- written once --------------------------------------------------------------
  @hk.transparent
  def _layer(self, g, ctx, is_training, first):
    def layer(c, index):
      del index
      new, aux = self.conv(c, g, ctx, is_training, first)
      new = self.normalize(new, g, is_training)
      same = (jax.tree_util.tree_structure(new) ==
              jax.tree_util.tree_structure(c) and
              all(a.shape == b.shape for a, b in zip(
                  jax.tree_util.tree_leaves(new),
                  jax.tree_util.tree_leaves(c))))
      if self.residual and same:   # a first layer may change widths
        new = jax.tree_util.tree_map(jnp.add, new, c)
      new = jax.tree_util.tree_map(
          lambda v: stack.dropout(v, self.dropout_rate, is_training), new)
      return new, aux
    return layer

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool) -> dict:
    g = stack.read_graph(graph)
    carry, ctx = self.prepare(g, is_training)
    num_scanned = self.num_layers
    if self.first_layer_apart:
      carry, _ = hk.to_module(self._layer(g, ctx, is_training, True))(
          name="layer_0")(carry, 0)
      num_scanned -= 1
    aux = None
    if num_scanned > 0:
      carry, aux = stack.scanned_stack(
          self._layer(g, ctx, is_training, False), carry, num_scanned,
          residual=False, dropout_rate=0.0, is_training=is_training,
          remat=self.remat, remat_saved=self.remat_saved)
    pooled, extra = self.readout(carry, g, ctx)
    bias = (jnp.zeros if self.output_bias is None else
            hk.initializers.Constant(jnp.asarray(self.output_bias,
                                                 jnp.float32)))
    out = stack.output_head(pooled, [self.post_fc_dim] * self.post_fc_layers,
                            self.num_targets, self.activation, b_init=bias,
                            w_init=jnp.zeros if self.output_zero_weights
                            else None)
    result = {"graph": out, "node_embedding": self.node_embedding(carry),
              "pooled": pooled}
    result.update(extra)
    if aux is not None:
      result[self.aux_name] = aux
    return result
