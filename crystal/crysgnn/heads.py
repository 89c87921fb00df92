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

Pairs are never materialised across crystals nor padded to the largest
crystal: each atom u gets S = K + M pair slots (``pair_slots``), so memory is
O(N S), linear in the batch's atoms whatever the size of its largest crystal
(the dense [G, P, P] block of earlier versions was O(G P^2), and crystals over
P atoms had to be dropped). The K = 12 neighbour slots hold the pairs (u, v)
with a non-zero target (``targets.py``), evaluated exactly. The M =
``num_background`` background slots hold the class-0 pairs: every v of u's
crystal when it has n <= M atoms (the full loss, exactly), otherwise a
systematic sample v_s = floor((s + φ_u) n / M), s = 0..M-1, with a uniform
phase φ_u per atom (fresh from the RNG in training, a fixed key in
evaluation), which picks every v with probability exactly M / n, so each kept
sample counts n / M times: an unbiased estimate of the class-0 sum. The
normaliser (Σ class weights over all n^2 pairs) is known exactly from the
neighbour slots (``losses.connectivity_terms``), so the sampled loss is an
unbiased estimate of the full one.
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
# M: crystals up to this size get the exact all-pairs loss (48 = the size cap
# of earlier versions, so every crystal they trained on keeps its loss).
NUM_BACKGROUND = 48


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


def pair_slots(graph: jraph.GraphsTuple, num_background: int,
               rng: Optional[jax.Array] = None
               ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Every atom's connectivity pair slots (module docstring).

  Args:
    graph: padded batch; its neighbour slots are
      ``nodes['connectivity_partner']`` [N, K] (``targets.py``) when present
      (K = 0 otherwise: a teacher's or an unlabelled batch).
    num_background: M, background slots per atom.
    rng: draws the phases φ_u; None: a fixed key (deterministic evaluation).
  Returns:
    partner [N, K + M] int32: local index v of the pair (u, v) in u's
    crystal, -1 for an unused slot; multiplicity [N, K + M] float32: how many
    pairs the slot stands for (1 for neighbour slots and enumerated
    background pairs, n / M for sampled ones, 0 for unused slots and for
    background pairs already in one of u's neighbour slots).
  """
  mask = graph.nodes["mask"]
  num_nodes = mask.shape[0]
  gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
  n = jnp.asarray(graph.n_node)[gidx].astype(jnp.int32)[:, None]  # [N, 1]
  m = int(num_background)
  s = jnp.arange(m, dtype=jnp.int32)[None, :]                    # [1, M]
  key = jax.random.PRNGKey(0) if rng is None else rng
  phase = jax.random.uniform(key, (num_nodes, 1))
  sampled = n > m
  stride = n.astype(jnp.float32) / m
  drawn = jnp.minimum(jnp.floor((s + phase) * stride).astype(jnp.int32),
                      n - 1)
  background = jnp.where(sampled, drawn, s)
  bg_valid = mask[:, None] & (sampled | (s < n))
  bg_mult = jnp.where(sampled, stride, 1.0)
  if "connectivity_partner" in graph.nodes:
    nb = graph.nodes["connectivity_partner"].astype(jnp.int32)  # [N, K]
  else:
    nb = jnp.zeros((num_nodes, 0), jnp.int32)
  nb_valid = mask[:, None] & (nb >= 0)
  # A pair in a neighbour slot is not counted again in the background.
  hit = jnp.any((background[:, :, None] == nb[:, None, :]) &
                nb_valid[:, None, :], axis=-1)
  bg_valid = bg_valid & ~hit
  partner = jnp.concatenate([jnp.where(nb_valid, nb, -1),
                             jnp.where(bg_valid, background, -1)], 1)
  mult = jnp.concatenate([nb_valid.astype(jnp.float32),
                          jnp.where(bg_valid, bg_mult, 0.0)], 1)
  return partner, mult


class Bilinear(hk.Module):
  """y_k = x1^T W_k x2 + b_k (torch ``nn.Bilinear``), batched over pairs.

  ``rows(a, b)`` evaluates it for each row of a [N, D1] against its S
  partners b [N, S, D2] -> [N, S, K].
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

  def rows(self, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    w, bias = self._params(a.dtype)
    aw = jnp.einsum("nd,kde->nke", a, w)        # [N, K, D2]
    return jnp.einsum("nke,nse->nsk", aw, b) + bias

  def __call__(self, x1: jnp.ndarray, x2: jnp.ndarray) -> jnp.ndarray:
    w, bias = self._params(x1.dtype)
    return jnp.einsum("...d,kde,...e->...k", x1, w, x2) + bias


class CrysGNNHeads(hk.Module):
  """All CrysGNN pre-training decoders.

  Call with the encoder's raw node embeddings [N, D] and the padded batch;
  returns a dict:
    ``node_embedding_normalized`` [N, D], ``crystal_embedding`` [G, D],
    ``feature_logits`` [N, F], ``connectivity_logits`` [N, S, 6] (slot s of
    atom u: the pair (u, ``connectivity_partner[u, s]``), a local index),
    ``connectivity_partner`` / ``connectivity_multiplicity`` [N, S]
    (``pair_slots``), ``space_group_logits`` [G, 230] (class c = space
    group c + 1).
  """

  def __init__(self, num_background: int = NUM_BACKGROUND,
               num_node_features: int = NUM_NODE_FEATURES,
               num_space_groups: int = NUM_SPACE_GROUPS,
               num_connectivity_classes: int = NUM_CONNECTIVITY_CLASSES,
               name: Optional[str] = "crysgnn_heads"):
    super().__init__(name=name)
    self.num_background = int(num_background)
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
    partner, mult = pair_slots(graph, self.num_background,
                               hk.maybe_next_rng_key())
    num_nodes = z.shape[0]
    gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
    offsets = jnp.cumsum(graph.n_node) - graph.n_node
    other = jnp.where(partner >= 0, partner + offsets[gidx][:, None],
                      jnp.arange(num_nodes)[:, None])             # [N, S]
    pair = Bilinear(dim, dim, self.num_classes,
                    name="connectivity_bilinear").rows(z, z[other])
    conn_logits = hk.Linear(self.num_classes, name="connectivity_out")(pair)
    sg_logits = hk.Linear(self.num_space_groups,
                          name="space_group_decoder")(z_graph)
    return {"node_embedding_normalized": z, "crystal_embedding": z_graph,
            "feature_logits": feature_logits,
            "connectivity_logits": conn_logits,
            "connectivity_partner": partner,
            "connectivity_multiplicity": mult,
            "space_group_logits": sg_logits}


class CrysGNNPretrainModel(hk.Module):
  """Encoder + CrysGNN heads: ``model(graph, is_training) -> outputs``.

  ``encoder`` is any callable module ``encoder(graph, is_training)`` returning
  a dict with ``node_embedding``; its other outputs are passed through.
  """

  def __init__(self, encoder, num_background: int = NUM_BACKGROUND,
               num_node_features: int = NUM_NODE_FEATURES,
               name: Optional[str] = "crysgnn"):
    super().__init__(name=name)
    self.encoder = encoder
    self.num_background = num_background
    self.num_node_features = num_node_features

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool):
    outputs = dict(self.encoder(graph, is_training))
    outputs.update(CrysGNNHeads(self.num_background,
                                 self.num_node_features)(
        outputs["node_embedding"], graph))
    return outputs
