"""Xie & Grossman's original CGCNN, as CrysGNN's reference code uses it.

kdmsit/crysgnn builds its pre-training encoder (``CrystalAE``, 5 layers) and
its distilled student (``CrystalGraphConvNet``, 3 layers) from the ORIGINAL
CGCNN convolution (Xie & Grossman 2018, eq. 5, with the two BatchNorms of
their code), not from PyG's ``CGConv`` that ``crystal.models.cgcnn`` follows
(MatDeepLearn). For an atom i with neighbours j (edges j -> i: i's own 12
nearest, the original CGCNN's direction) and z_ij = [h_i ‖ h_j ‖ e_ij]:

  g_ij  = BN_1(z_ij W + b)                          [E, 2D]  (BN over edges)
  s_i   = Σ_j σ(g_ij^filter) ⊙ softplus(g_ij^core)  [N, D]   (sum, not mean)
  h_i'  = softplus(h_i + BN_2(s_i))                 [N, D]

The stack: h^0 = x W_emb (+ b_emb in the student; the teacher's embedding has
no bias and neither has an activation), L layers (scanned), node embeddings
h^L. With ``head``, the student's readout: mean pool -> softplus -> Linear(D ->
H) -> softplus -> (``num_hidden`` − 1 more Linear(H -> H) + softplus) ->
Linear(H -> T) (CGCNN's ``conv_to_fc`` / ``fcs`` / ``fc_out``).

Parameters (D = 64, 41 Gaussian edge features, 92 node features):
  embedding 92·64 (+ 64), each layer (2·64 + 41 + 1)·128 + 2·128 + 2·64 =
  22,144; teacher (5 layers, no bias, no head) 116,608; student (3 layers,
  bias, H = 128, T = 1) 80,833.

Padding edges and nodes are masked out of the BatchNorm moments and the sums
(``noisy_nodes.nn.MaskedBatchNorm``).

Registered as model ``original_cgcnn`` (``noisy_nodes.models.build_model``),
with the reference's teacher and student settings (``presets``).
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from noisy_nodes import models as models_lib
from noisy_nodes import nn as nn_lib
from crystal.models import stack


class ConvLayer(hk.Module):
  """One original CGCNN convolution (module docstring): [N, D] -> [N, D]."""

  def __call__(self, h, e, senders, receivers, edge_mask, node_mask,
               is_training):
    n, d = h.shape
    z = jnp.concatenate([h[receivers], h[senders], e], axis=-1)
    g = hk.Linear(2 * d, name="fc_full")(z)
    g = nn_lib.MaskedBatchNorm(name="bn1")(g, edge_mask, is_training)
    msg = jax.nn.sigmoid(g[:, :d]) * nn_lib.softplus(g[:, d:])
    s = jax.ops.segment_sum(jnp.where(edge_mask[:, None], msg, 0.0),
                            receivers, n)
    s = nn_lib.MaskedBatchNorm(name="bn2")(s, node_mask, is_training)
    return nn_lib.softplus(h + s)


class OriginalCGCNN(hk.Module):
  """``model(graph, is_training) -> {'node_embedding' [N, D], 'graph' [G, T]}``.

  Args:
    num_targets: T (the head's outputs).
    dim: D, the atom feature width (reference 64).
    num_layers: L convolutions (teacher 5, student 3).
    input_bias: bias of the input embedding (student True, teacher False).
    head: build the readout (False for the pre-training encoder, whose
      outputs are only node embeddings; then no ``'graph'`` output).
    hidden: H, width after pooling (``h_fea_len``, 128).
    num_hidden: pooled layers before the output (``n_h``, 1).
    remat: rematerialise each convolution in the backward pass.
  """

  def __init__(self, num_targets: int = 1, dim: int = 64, num_layers: int = 3,
               input_bias: bool = True, head: bool = True, hidden: int = 128,
               num_hidden: int = 1, remat: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    if num_layers < 1 or num_hidden < 1:
      raise ValueError(f"num_layers and num_hidden must be >= 1, got "
                       f"{num_layers}, {num_hidden}")
    self.num_targets = num_targets
    self.dim = dim
    self.num_layers = num_layers
    self.input_bias = input_bias
    self.head = head
    self.hidden = hidden
    self.num_hidden = num_hidden
    self.remat = remat

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool) -> dict:
    g = stack.read_graph(graph)
    h = hk.Linear(self.dim, with_bias=self.input_bias, name="embedding")(
        g.nodes)

    def layer(x, index):
      del index
      return ConvLayer(name="conv")(x, g.edges, g.senders, g.receivers,
                                    g.edge_mask, g.node_mask, is_training), None

    body = hk.remat(layer) if self.remat else layer
    h, _ = hk.layer_stack(self.num_layers, with_per_layer_inputs=True,
                          name="convs")(body)(h, jnp.arange(self.num_layers))
    out = {"node_embedding": h}
    if self.head:
      pooled = nn_lib.segment_mean(h, g.node_graph, g.num_graphs, g.node_mask)
      with hk.experimental.name_scope("head"):
        x = nn_lib.softplus(pooled)
        for i in range(self.num_hidden):
          x = nn_lib.softplus(hk.Linear(self.hidden, name=f"fc_{i}")(x))
        out["graph"] = hk.Linear(self.num_targets, name="fc_out")(x)
    return out


def presets(role: str = "teacher") -> dict:
  """kdmsit/crysgnn's settings: the pre-training encoder (``'teacher'``:
  ``CrystalAE``, 5 x 64, no input bias, no head) or the distilled student
  (``'student'``: ``CrystalGraphConvNet`` 3 x 64 with bias and the readout,
  H = 128, one hidden layer)."""
  if role == "teacher":
    return dict(dim=64, num_layers=5, input_bias=False, head=False)
  if role == "student":
    return dict(dim=64, num_layers=3, input_bias=True, head=True, hidden=128,
                num_hidden=1)
  raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")


models_lib.register("original_cgcnn", OriginalCGCNN, presets=presets)
