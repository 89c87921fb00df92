"""CrysGNN pre-training losses (paper eqs. 1–2; kdmsit/crysgnn).

L_pretrain = α L_FR + β L_CR + γ L_SG + λ L_NTXent            (eq. 2)

* L_FR: BCE-with-logits between ``feature_logits`` [N, 92] and the binned
  node features ``graph.nodes['features']``, mean over real nodes × features.
* L_CR: class-weighted cross-entropy over every ordered atom pair (u, v) of
  each crystal, weights [0.1, 1, 1, 1, 1, 1], normalised by the summed
  weights of those pairs (torch ``nll_loss(weight=...)``). The pairs come
  from the heads' slots (``heads.pair_slots``: the non-zero targets
  ``graph.nodes['connectivity_count']`` exactly, the class-0 rest enumerated
  up to M atoms per crystal and sampled without bias above), the normaliser
  exactly from the counts (``connectivity_terms``).
* L_SG: cross-entropy of ``space_group_logits`` [G, 230] against
  ``graph.globals['space_group']`` (1..230), mean over real crystals.
* L_NTXent (eq. 1) on crystal embeddings with temperature 0.07; positives are
  all ordered pairs (a, p), a != p, of real crystals with the same
  ``graph.globals['crystal_system']``. As in the reference's
  ``pytorch_metric_learning.NTXentLoss``: cosine similarity, the denominator
  of each positive pair holds that pair plus all negatives of the anchor
  (other positives excluded), the loss is the mean over positive pairs.

Every component is a global mean: numerators are local sums, denominators are
``cross_replica_sum``-med counts, so under ``shard_map`` the engine's
psum(loss_sum) / psum(weight) equals the single-device value on the global
batch. NT-Xent additionally all-gathers the crystal embeddings over the
data-parallel axis (``noisy_nodes.nn.axis_name()``) so negatives and
positives come from the whole global batch, not only the local shard.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib
from crystal.crysgnn import heads as heads_lib

TEMPERATURE = 0.07
CLASS_WEIGHTS = (0.1, 1.0, 1.0, 1.0, 1.0, 1.0)
# α, β, γ, λ of eq. 2: 0.25 each in the reference code.
DEFAULT_WEIGHTS = {"feature": 0.25, "connectivity": 0.25,
                   "space_group": 0.25, "contrastive": 0.25}
_WEIGHT_ORDER = ("feature", "connectivity", "space_group", "contrastive")

SumCount = Tuple[jnp.ndarray, jnp.ndarray]


def feature_reconstruction_loss(logits: jnp.ndarray, features: jnp.ndarray,
                                mask: jnp.ndarray) -> SumCount:
  """BCE-with-logits summed over real nodes and features.

  Args:
    logits, features: [N, F] (features in [0, 1]); mask: [N] bool.
  Returns:
    (sum, count) with count = real nodes × F.
  """
  x = logits
  # Stable BCE: max(x, 0) - x t + log(1 + exp(-|x|)).
  bce = jnp.maximum(x, 0) - x * features + jnp.log1p(jnp.exp(-jnp.abs(x)))
  m = mask.astype(x.dtype)
  return jnp.sum(bce * m[:, None]), jnp.sum(m) * x.shape[-1]


def connectivity_terms(outputs: Mapping[str, jnp.ndarray],
                       graph: jraph.GraphsTuple,
                       class_weights: Sequence[float] = CLASS_WEIGHTS
                       ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Per-atom parts of L_CR over the pairs (u, ·) of u's crystal.

  Args:
    outputs: ``connectivity_logits`` [N, K + M, C] and
      ``connectivity_multiplicity`` [N, K + M] of ``heads.CrysGNNHeads``.
    graph: the batch with ``nodes['connectivity_count']`` [N, K] (the
      targets of the K neighbour slots; background slots are class 0).
  Returns:
    (nll [N], weight [N]): Σ_v w[t_uv] · -log p_uv[t_uv] (estimated with the
    slots' multiplicities when u's crystal has more than M atoms) and
    Σ_v w[t_uv], exact: Σ of the neighbour slots' weights + w[0] times the
    crystal's remaining atoms. Zero for padding nodes.
  """
  logits = outputs["connectivity_logits"]
  mult = outputs["connectivity_multiplicity"].astype(logits.dtype)
  count = graph.nodes["connectivity_count"].astype(jnp.int32)     # [N, K]
  num_nodes, k = count.shape
  w = jnp.asarray(class_weights, logits.dtype)
  t = jnp.concatenate(
      [count, jnp.zeros((num_nodes, logits.shape[1] - k), jnp.int32)], 1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
  total = jnp.sum(mult * w[t] * nll, axis=1)
  nb = mult[:, :k] > 0
  gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
  n = jnp.asarray(graph.n_node)[gidx].astype(logits.dtype)
  weight = (jnp.sum(jnp.where(nb, w[count], 0.0), axis=1) +
            w[0] * (n - jnp.sum(nb, axis=1)))
  real = graph.nodes["mask"]
  return jnp.where(real, total, 0.0), jnp.where(real, weight, 0.0)


def connectivity_loss(outputs: Mapping[str, jnp.ndarray],
                      graph: jraph.GraphsTuple,
                      class_weights: Sequence[float] = CLASS_WEIGHTS
                      ) -> SumCount:
  """(Σ w[t] · -log p[t], Σ w[t]) over the ordered atom pairs of every real
  crystal (``connectivity_terms`` summed over atoms)."""
  total, weight = connectivity_terms(outputs, graph, class_weights)
  return jnp.sum(total), jnp.sum(weight)


def space_group_loss(logits: jnp.ndarray, space_group: jnp.ndarray,
                     mask: jnp.ndarray) -> SumCount:
  """Cross-entropy, labels 1..230 (class = number - 1), over real graphs."""
  label = space_group.reshape(-1).astype(jnp.int32) - 1
  valid = mask & (label >= 0) & (label < logits.shape[-1])
  label = jnp.clip(label, 0, logits.shape[-1] - 1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, label[:, None], axis=-1)[:, 0]
  m = valid.astype(logits.dtype)
  return jnp.sum(nll * m), jnp.sum(m)


def _gather_graphs(x):
  """All-gathers [G, ...] over the data-parallel axis -> ([D·G, ...], offset
  of this shard's rows)."""
  name = nn_lib.axis_name()
  if name is None:
    return x, 0
  full = jax.lax.all_gather(x, name, tiled=True)
  return full, jax.lax.axis_index(name) * x.shape[0]


def nt_xent(embeddings: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray,
            temperature: float = TEMPERATURE) -> SumCount:
  """Supervised NT-Xent (eq. 1) with same-label pairs as positives.

  For anchor a and positive p (a != p, same label, both real):
    l_ap = -log( e^{s_ap/τ} / (e^{s_ap/τ} + Σ_{n: label_n != label_a} e^{s_an/τ}) )
  with s = cosine similarity. Anchors are this shard's graphs, candidates the
  graphs of all shards (all-gather; gradients flow back through it).

  Args:
    embeddings: [G, D]; labels: [G] int (crystal system); mask: [G] bool.
  Returns:
    (Σ_{positive pairs} l_ap, number of positive pairs).
  """
  labels = labels.reshape(-1).astype(jnp.int32)
  z = heads_lib.l2_normalize(embeddings)
  z_all, offset = _gather_graphs(z)
  lab_all, _ = _gather_graphs(labels)
  mask_all, _ = _gather_graphs(mask)
  sim = (z @ z_all.T) / temperature                          # [G, K]
  anchor_ids = offset + jnp.arange(z.shape[0])
  not_self = anchor_ids[:, None] != jnp.arange(z_all.shape[0])[None, :]
  real = mask[:, None] & mask_all[None, :]
  same = labels[:, None] == lab_all[None, :]
  pos = real & same & not_self
  neg = real & ~same
  # Shift by the row max over candidates for stability (cancels exactly).
  row_max = jax.lax.stop_gradient(
      jnp.max(jnp.where(real, sim, -jnp.inf), axis=1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  e = jnp.exp(sim - row_max)
  neg_sum = jnp.sum(jnp.where(neg, e, 0.0), axis=1, keepdims=True)
  # -log(e_ap / (e_ap + neg)) = log(e_ap + neg) - (s_ap - max).
  per_pair = jnp.log(e + neg_sum) - (sim - row_max)
  per_pair = jnp.where(pos, per_pair, 0.0)
  return jnp.sum(per_pair), jnp.sum(pos.astype(embeddings.dtype))


def _weights(weights) -> Dict[str, float]:
  if weights is None:
    return dict(DEFAULT_WEIGHTS)
  if isinstance(weights, Mapping) or hasattr(weights, "items"):
    out = dict(DEFAULT_WEIGHTS)
    unknown = set(weights.keys()) - set(out)
    if unknown:
      raise ValueError(f"unknown CrysGNN loss weights {sorted(unknown)}; "
                       f"expected {list(_WEIGHT_ORDER)}")
    out.update({k: float(v) for k, v in weights.items()})
    return out
  vals = list(weights)
  if len(vals) != 4:
    raise ValueError("weights must be (alpha, beta, gamma, lambda)")
  return dict(zip(_WEIGHT_ORDER, map(float, vals)))


def crysgnn_pretrain_loss(
    outputs: Mapping[str, jnp.ndarray], graph: jraph.GraphsTuple,
    weights: Union[Mapping[str, float], Sequence[float], None] = None,
    temperature: float = TEMPERATURE,
    class_weights: Sequence[float] = CLASS_WEIGHTS,
) -> Tuple[jnp.ndarray, jnp.ndarray, Dict[str, jnp.ndarray]]:
  """Eq. 2 as ``(loss_sum, weight, metrics)`` (docs/design.md).

  Args:
    outputs: ``CrysGNNHeads`` outputs.
    graph: padded batch with ``nodes['features']`` [N, 92],
      ``nodes['connectivity_count']`` [N, 12],
      ``globals['space_group']`` [G(,1)]
      (1..230) and ``globals['crystal_system']`` [G(,1)] (0..6), plus masks.
    weights: α, β, γ, λ as {'feature', 'connectivity', 'space_group',
      'contrastive'} or a 4-sequence; default 0.25 each.
  Returns:
    loss_sum, weight (= number of real graphs on this shard) and metrics.
    loss_sum / weight (after the engine's sums over shards) is eq. 2 with
    every component a global mean. Metrics follow the same convention
    (divide by weight): ``loss_feature``, ``loss_connectivity``,
    ``loss_space_group``, ``loss_contrastive``, ``space_group_accuracy``.
  """
  w = _weights(weights)
  node_mask = graph.nodes["mask"]
  graph_mask = graph.globals["mask"].reshape(-1)
  parts = {
      "feature": feature_reconstruction_loss(
          outputs["feature_logits"],
          graph.nodes["features"].astype(outputs["feature_logits"].dtype),
          node_mask),
      "connectivity": connectivity_loss(outputs, graph, class_weights),
      "space_group": space_group_loss(
          outputs["space_group_logits"], graph.globals["space_group"],
          graph_mask),
      "contrastive": nt_xent(
          outputs["crystal_embedding"], graph.globals["crystal_system"],
          graph_mask, temperature),
  }
  weight = jnp.sum(graph_mask.astype(jnp.float32))
  global_weight = nn_lib.cross_replica_sum(weight)
  loss_sum = jnp.zeros((), jnp.float32)
  metrics = {}
  for name, (total, count) in parts.items():
    # This shard's share of the global mean, rescaled to a per-graph sum.
    share = total / jnp.maximum(nn_lib.cross_replica_sum(count), 1e-12)
    metrics[f"loss_{name}"] = share * global_weight
    loss_sum = loss_sum + w[name] * share * global_weight
  label = graph.globals["space_group"].reshape(-1).astype(jnp.int32) - 1
  correct = jnp.argmax(outputs["space_group_logits"], -1) == label
  metrics["space_group_accuracy"] = jnp.sum(correct & graph_mask).astype(
      jnp.float32)
  return loss_sum, weight, metrics
