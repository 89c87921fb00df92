"""CrysGNN decoder heads (paper §2.1.1, Fig. 1) on top of any node encoder.

The encoder (e.g. ``crystal.models.cgcnn``) returns ``outputs['node_embedding']``
[N, D] for a padded batch (docs/design.md). Following the reference
implementation (kdmsit/crysgnn ``crysgnn/model.py``), the decoder first
L2-normalises node embeddings *within each crystal*: every node vector is
divided by its Euclidean norm (``F.normalize(atom_fea, dim=1)`` applied to the
nodes of one crystal at a time in the reference), and the crystal embedding
Z_G is the mean of its normalised node embeddings. All heads read these
normalised embeddings:

* node-feature reconstruction: Linear(D -> 92) logits of the binned CGCNN
  features x_u;
* connectivity reconstruction: z_uv = Bilinear(z_u, z_v) (D, D -> 6), then
  Linear(6 -> 6) logits of how often v is among u's 12 nearest neighbours
  (0..5), for every ordered pair of atoms (u, v) of the SAME crystal;
* space group: Linear(D -> 230) logits from Z_G;
* Z_G itself feeds the NT-Xent contrastive loss (``losses.nt_xent``).

Pairs are never materialised across crystals: node embeddings of graph g are
scattered into a dense block [G, P, D], P = ``max_atoms`` (static), so the
pairwise logits are [G, P, P, 6] — O(G P^2) instead of O(N^2).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib

NUM_CONNECTIVITY_CLASSES = 6
NUM_NODE_FEATURES = 92
NUM_SPACE_GROUPS = 230


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """x / max(||x||, eps) along the last axis (torch ``F.normalize``).

  The norm is sqrt(max(||x||^2, eps^2)): the same value, but its gradient is
  finite at x = 0 (zeroed padding rows; sqrt'(0) would give 0 * inf = NaN).
  """
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def normalize_node_embeddings(h: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """[N, D] -> [N, D] unit node vectors; padding rows set to 0."""
  return jnp.where(mask[:, None], l2_normalize(h), 0.0)


def crystal_embedding(z: jnp.ndarray, graph: jraph.GraphsTuple) -> jnp.ndarray:
  """Z_G [G, D]: mean of the (normalised) node embeddings of each crystal."""
  num_nodes = z.shape[0]
  gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
  return nn_lib.segment_mean(z, gidx, graph.n_node.shape[0],
                             mask=graph.nodes["mask"])


def node_slots(graph: jraph.GraphsTuple, max_atoms: int
               ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Position of every node in the dense [G, P] block.

  Returns:
    graph_index [N] int, slot [N] int (index of the node within its crystal),
    valid [N] bool: a real node whose slot is < ``max_atoms``. Padding nodes
    (and, defensively, atoms beyond P — the host side rejects such crystals
    in ``targets.connectivity_target``) are not valid.
  """
  num_nodes = graph.nodes["mask"].shape[0]
  gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
  offsets = jnp.cumsum(graph.n_node) - graph.n_node
  slot = jnp.arange(num_nodes) - offsets[gidx]
  valid = graph.nodes["mask"] & (slot < max_atoms)
  return gidx, slot, valid


def to_dense_block(x: jnp.ndarray, graph: jraph.GraphsTuple, max_atoms: int,
                   fill=0) -> jnp.ndarray:
  """Scatters per-node rows [N, ...] into a [G, P, ...] block (``fill`` where
  no real node sits). Out-of-block nodes are dropped, not wrapped."""
  gidx, slot, valid = node_slots(graph, max_atoms)
  num_graphs = graph.n_node.shape[0]
  # Invalid nodes get an out-of-range graph index so mode='drop' skips them.
  gidx = jnp.where(valid, gidx, num_graphs)
  block = jnp.full((num_graphs, max_atoms) + x.shape[1:], fill, x.dtype)
  return block.at[gidx, slot].set(x, mode="drop")


def dense_node_mask(graph: jraph.GraphsTuple, max_atoms: int) -> jnp.ndarray:
  """[G, P] bool: True where a real atom occupies the slot."""
  return to_dense_block(graph.nodes["mask"], graph, max_atoms, fill=False)


class Bilinear(hk.Module):
  """y_k = x1^T W_k x2 + b_k (torch ``nn.Bilinear``), batched over pairs.

  ``pairwise(a, b)`` evaluates it for every pair of rows of a [G, P, D1] and
  b [G, Q, D2] -> [G, P, Q, K] without materialising [G, P, Q, D] inputs.
  """

  def __init__(self, in1: int, in2: int, out: int, name: Optional[str] = None):
    super().__init__(name=name)
    self.in1, self.in2, self.out = in1, in2, out

  def _params(self, dtype):
    bound = 1.0 / jnp.sqrt(self.in1)  # torch's U(-1/sqrt(in1), 1/sqrt(in1)).
    init = hk.initializers.RandomUniform(-bound, bound)
    w = hk.get_parameter("w", (self.out, self.in1, self.in2), dtype, init)
    b = hk.get_parameter("b", (self.out,), dtype, init)
    return w, b

  def pairwise(self, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    w, bias = self._params(a.dtype)
    aw = jnp.einsum("gpd,kde->gpke", a, w)      # [G, P, K, D2]
    return jnp.einsum("gpke,gqe->gpqk", aw, b) + bias

  def __call__(self, x1: jnp.ndarray, x2: jnp.ndarray) -> jnp.ndarray:
    w, bias = self._params(x1.dtype)
    return jnp.einsum("...d,kde,...e->...k", x1, w, x2) + bias


class CrysGNNHeads(hk.Module):
  """All CrysGNN pre-training decoders.

  Call with the encoder's raw node embeddings [N, D] and the padded batch;
  returns a dict:
    ``node_embedding_normalized`` [N, D], ``crystal_embedding`` [G, D],
    ``feature_logits`` [N, F], ``connectivity_logits`` [G, P, P, 6]
    (entry [g, i, j] = ordered pair (i-th atom, j-th atom) of crystal g),
    ``space_group_logits`` [G, 230] (class c = space group c + 1).
  """

  def __init__(self, max_atoms: int, num_node_features: int = NUM_NODE_FEATURES,
               num_space_groups: int = NUM_SPACE_GROUPS,
               num_connectivity_classes: int = NUM_CONNECTIVITY_CLASSES,
               name: Optional[str] = "crysgnn_heads"):
    super().__init__(name=name)
    self.max_atoms = int(max_atoms)
    self.num_node_features = num_node_features
    self.num_space_groups = num_space_groups
    self.num_classes = num_connectivity_classes

  def __call__(self, node_embedding: jnp.ndarray,
               graph: jraph.GraphsTuple) -> Dict[str, jnp.ndarray]:
    mask = graph.nodes["mask"]
    dim = node_embedding.shape[-1]
    z = normalize_node_embeddings(node_embedding, mask)
    z_graph = crystal_embedding(z, graph)
    feature_logits = hk.Linear(self.num_node_features,
                               name="feature_decoder")(z)
    block = to_dense_block(z, graph, self.max_atoms)          # [G, P, D]
    pair = Bilinear(dim, dim, self.num_classes,
                    name="connectivity_bilinear").pairwise(block, block)
    conn_logits = hk.Linear(self.num_classes, name="connectivity_out")(pair)
    sg_logits = hk.Linear(self.num_space_groups,
                          name="space_group_decoder")(z_graph)
    return {"node_embedding_normalized": z, "crystal_embedding": z_graph,
            "feature_logits": feature_logits,
            "connectivity_logits": conn_logits,
            "space_group_logits": sg_logits}


class CrysGNNPretrainModel(hk.Module):
  """Encoder + CrysGNN heads: ``model(graph, is_training) -> outputs``.

  ``encoder`` is any callable module ``encoder(graph, is_training)`` returning
  a dict with ``node_embedding``; its other outputs are passed through.
  """

  def __init__(self, encoder, max_atoms: int,
               num_node_features: int = NUM_NODE_FEATURES,
               name: Optional[str] = "crysgnn"):
    super().__init__(name=name)
    self.encoder = encoder
    self.max_atoms = max_atoms
    self.num_node_features = num_node_features

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool):
    outputs = dict(self.encoder(graph, is_training))
    outputs.update(CrysGNNHeads(self.max_atoms, self.num_node_features)(
        outputs["node_embedding"], graph))
    return outputs
