"""CrysGNN tasks for the one training engine: pre-training and distillation.

``CrysGNNPretrainTask`` ("crysgnn_pretrain", paper §2.1, eq. 2):

  data     an untagged corpus: ``data.path`` = a corpus manifest (JSON from
           ``crystal.crysgnn.corpus``) or structure files/folders (several
           comma-separated), converted once with ``build_corpus`` (symmetry
           labels by spglib) and cached under ``data.cache_dir``, keyed by
           the request and the files' fingerprint; with an empty path a
           corpus of ``data.corpus.n`` generated crystals is built on first
           use. Read on demand (``corpus.CorpusSource``: memory-mapped
           chunks). A seeded ``data.val_fraction`` is held out.
  features CGCNN inputs (``features.cgcnn_config``: 92-d binned element
           features, 12 NN in 8 Å, 41 Gaussians) + ``targets.pretrain_labels``
           (the non-zero connectivity targets [n, 12], space group, crystal
           system): per atom, linear in the crystal's size, no size cap.
           The 92-d node features are also the reconstruction target, so
           ``data.graph`` may change the graph but not the node features.
  model    ``heads.CrysGNNPretrainModel(encoder, M = loss.background_pairs)``
           (all pairs of crystals up to M atoms, unbiased pair samples of
           larger ones: ``heads.pair_slots``); the
           encoder is any library model (``config.model.name``:
           ``original_cgcnn``, the default: the reference's 5 x 64 original
           CGCNN encoder, ``encoder.py``; cgcnn, gatgnn, schnet, mpnn, megnet
           or the Noisy Nodes ``gns``).
  loss     ``losses.crysgnn_pretrain_loss`` with α β γ λ = ``loss.weights``.
  metrics  every component on the validation split, batch independent:
           L_FR, L_CR and L_SG are means over all validation atoms / pairs /
           crystals; NT-Xent is computed on the host over consecutive chunks
           of ``data.contrastive_chunk`` validation crystals (more negatives
           than a training batch, so its scale differs from the train log).
           Selection metric: ``loss`` = α L_FR + β L_CR + γ L_SG + λ L_NTXent.

``CrysGNNDistillTask`` ("crysgnn_distill", paper §2.2, eqs. 3-4) extends
``crystal.tasks.CrystalPropertyTask`` (labelled data, splits, normalised
targets, MAE selection) with a frozen teacher restored from
``config.teacher.workdir`` (``trainer.restore_run``):

  * the teacher's params and BatchNorm statistics are host numpy arrays the
    student's ``model()`` closes over, so under jit they are constants: they
    are not part of the student's params, optimiser state or checkpoint and
    cannot change; the teacher runs in eval mode behind ``stop_gradient``
    (``distill.teacher_node_embeddings``);
  * the teacher sees its own featurisation: if the student's graph settings
    equal the teacher's the batch is shared, otherwise every sample carries
    the teacher's node features and its (at most K per atom) edges as per-node
    arrays ``teacher_*`` [n, K, ...] that ride along the normal batching, and
    ``teacher_graph`` rebuilds the teacher's padded graph on device;
  * the student is any library model or ``gns``; ``DistilledStudent`` adds a
    learned projection only when its width differs from the teacher's;
  * L = δ L_prop + (1 − δ) L_KD (``distill.delta``); the property loss is the
    parent's (``train.loss``, normalised targets with
    ``data.normalize_targets``);
  * ``init_from_teacher=True`` (fine-tuning baseline) copies the teacher's
    encoder params and BN statistics into the student (``init_params``); the
    student's encoder must match the teacher's module for module.

Restoring a distilled student (``evaluate``) restores its teacher too.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

import jraph
from noisy_nodes import models as models_lib
from noisy_nodes import nn as nn_lib
from noisy_nodes.gns import model as _gns  # noqa: F401  (registers 'gns')
from noisy_nodes.models import plain
from noisy_nodes.data.sources import Source, Subset
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.tasks.base import Task

from crystal import features as features_lib
from crystal.crysgnn import corpus as corpus_lib
from crystal.crysgnn import distill
# Registers original_cgcnn (and, through crystal.models, the crystal models).
from crystal.crysgnn import encoder as _encoder  # noqa: F401
from crystal.crysgnn import heads as heads_lib
from crystal.crysgnn import losses
from crystal.crysgnn import targets as targets_lib
from crystal.tasks import CrystalPropertyTask


def pretrain_featurizer_config(graph_cfg) -> features_lib.FeaturizerConfig:
  """``data.graph`` overrides on top of the CGCNN/CrysGNN inputs.

  The node features must stay the 92-d CGCNN vectors: they are the target of
  the feature-reconstruction decoder.
  """
  items = plain(graph_cfg)
  if items.get("max_neighbors", None) == 0:
    items["max_neighbors"] = None
  cfg = features_lib.cgcnn_config(**items)
  if cfg.node_features != "cgcnn92" or cfg.degree:
    raise ValueError("CrysGNN pre-training reconstructs the 92-d CGCNN node "
                     "features: data.graph.node_features must be 'cgcnn92' "
                     "and data.graph.degree False")
  if cfg.distance_scaling != "none":
    raise ValueError("CrysGNN pre-training uses raw distances "
                     "(data.graph.distance_scaling='none')")
  return cfg


# -- pre-training ----------------------------------------------------------------------
class CrysGNNPretrainTask(Task):
  """Self-supervised CrysGNN pre-training (module docstring)."""

  selection_metric = "loss"
  randomized_features = False
  prediction_keys = ()  # a teacher predicts no property: Predictor.embed
  # Restored as a teacher (distill.Teacher) it needs shapes only, never its
  # corpus.
  teacher_overrides = {"data.example_only": True}

  def __init__(self, config):
    super().__init__(config)
    self.featurizer = features_lib.CrystalFeaturizer(
        pretrain_featurizer_config(config.data.get("graph", None)))
    self.num_background = int(config.get("loss", {}).get(
        "background_pairs", heads_lib.NUM_BACKGROUND))
    lc = config.get("loss", {})
    self.weights = losses._weights(plain(lc.get("weights", None)) or None)  # pylint: disable=protected-access
    self.temperature = float(lc.get("temperature", losses.TEMPERATURE))

  # -- data ------------------------------------------------------------------------
  def corpus(self) -> Source:
    """The corpus (``corpus.CorpusRequest``), read on demand."""
    d = self.config.data
    request = corpus_lib.CorpusRequest(d)
    if d.get("example_only", False):
      source = corpus_lib.CorpusSource(request.manifest(shapes_only=True))
      return Subset(source, range(min(8, len(source))))
    manifest = request.manifest()
    self.skipped.extend(corpus_lib.check_input_failures(
        manifest, bool(d.get("skip_invalid", False))))
    return corpus_lib.CorpusSource(manifest)

  def load_splits(self) -> Dict[str, Source]:
    """A seeded ``data.val_fraction`` of the corpus is ``val``; both splits
    are index views of the corpus (no structure is read here)."""
    d = self.config.data
    structures = self.corpus()
    if d.get("example_only", False):
      return {"train": Subset(structures, []), "val": structures}
    n = len(structures)
    if n < 2:
      raise DataError(d.get("path", "") or "generated corpus",
                      f"{n} structures: need at least 2 to train and validate")
    perm = np.random.default_rng(int(d.get("seed", 0))).permutation(n)
    n_val = min(n - 1, max(1, int(round(float(d.val_fraction) * n))))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return {"train": Subset(structures, train),
            "val": Subset(structures, val)}

  def featurize(self, structure: Structure, rng: Optional[np.random.Generator],
                training: bool) -> jraph.GraphsTuple:
    del rng, training
    g = self.featurizer(structure)
    nodes, glob = targets_lib.pretrain_labels(structure)
    g_glob = {k: v for k, v in g.globals.items() if k != "target"}
    return g._replace(nodes={**g.nodes, **nodes}, globals={**g_glob, **glob})

  def compact_graph(self, graph):
    return self.featurizer.compact(graph)  # shards: no Gaussians stored

  def expand_graph(self, graph):
    return self.featurizer.expand(graph)

  # -- model and loss ----------------------------------------------------------------
  def model(self, graph, is_training):
    encoder = models_lib.build_model(self.config.model, num_targets=1)
    return heads_lib.CrysGNNPretrainModel(encoder, self.num_background)(
        graph, is_training)

  def loss(self, outputs, graph):
    return losses.crysgnn_pretrain_loss(outputs, graph, self.weights,
                                        self.temperature)

  def predict(self, outputs, graph):
    """Per-node / per-graph loss terms, so host metrics are batch free.

    Returns ``node_feature_bce`` [N] (BCE summed over the 92 features),
    ``connectivity_nll`` / ``connectivity_weight`` [G] (class-weighted sums
    over the crystal's ordered pairs), ``space_group_nll`` [G],
    ``space_group_correct`` [G], ``crystal_embedding`` [G, D] and
    ``crystal_system`` [G].
    """
    x = outputs["feature_logits"]
    t = graph.nodes["features"].astype(x.dtype)
    bce = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
    node_bce = jnp.where(graph.nodes["mask"], jnp.sum(bce, -1), 0.0)
    conn_nll, conn_w = losses.connectivity_terms(outputs, graph)  # [N]
    num_graphs = graph.n_node.shape[0]
    gidx = nn_lib.node_graph_index(graph.n_node, x.shape[0])
    sg_logits = outputs["space_group_logits"]
    label = graph.globals["space_group"].reshape(-1).astype(jnp.int32) - 1
    sg_logp = jax.nn.log_softmax(sg_logits, -1)
    sg_nll = -jnp.take_along_axis(
        sg_logp, jnp.clip(label, 0, sg_logits.shape[-1] - 1)[:, None], -1)[:, 0]
    return {"node_feature_bce": node_bce,
            "connectivity_nll": jax.ops.segment_sum(conn_nll, gidx,
                                                    num_graphs),
            "connectivity_weight": jax.ops.segment_sum(conn_w, gidx,
                                                       num_graphs),
            "space_group_nll": sg_nll,
            "space_group_correct": (jnp.argmax(sg_logits, -1) == label
                                    ).astype(jnp.float32),
            "crystal_embedding": outputs["crystal_embedding"],
            "crystal_system": graph.globals["crystal_system"].reshape(-1)}

  def metrics(self, structures, predictions) -> Dict[str, float]:
    num_atoms = sum(s.num_atoms for s in structures)
    feat = float(np.sum([np.sum(v) for v in predictions["node_feature_bce"]])
                 / (num_atoms * heads_lib.NUM_NODE_FEATURES))
    conn = float(np.sum(predictions["connectivity_nll"]) /
                 max(np.sum(predictions["connectivity_weight"]), 1e-12))
    sg = float(np.mean(predictions["space_group_nll"]))
    emb = np.stack(predictions["crystal_embedding"])
    labels = np.stack(predictions["crystal_system"]).astype(np.int32)
    chunk = int(self.config.data.get("contrastive_chunk", 256))
    total, pairs = 0.0, 0.0
    for i in range(0, len(emb), chunk):
      e = emb[i:i + chunk]
      s, c = losses.nt_xent(jnp.asarray(e), jnp.asarray(labels[i:i + chunk]),
                            jnp.ones(len(e), bool), self.temperature)
      total, pairs = total + float(s), pairs + float(c)
    ntx = total / pairs if pairs else 0.0
    w = self.weights
    return {"loss_feature": feat, "loss_connectivity": conn,
            "loss_space_group": sg, "loss_contrastive": ntx,
            "loss": (w["feature"] * feat + w["connectivity"] * conn +
                     w["space_group"] * sg + w["contrastive"] * ntx),
            "space_group_accuracy": float(np.mean(
                predictions["space_group_correct"]))}

  def describe(self) -> str:
    m = self.config.model
    return (f"CrysGNN({m.name}, {m.get('num_layers', '?')} layers, dim "
            f"{m.get('dim', m.get('latent_size', '?'))}; M={self.num_background})")


# -- distillation ------------------------------------------------------------------------
class CrysGNNDistillTask(CrystalPropertyTask):
  """Property prediction distilled from a frozen CrysGNN (module docstring)."""

  prediction_keys = ("target",)  # not the KD metric's node_kd_sq

  def __init__(self, config):
    super().__init__(config)
    t = config.get("teacher", {})
    if not t.get("workdir", ""):
      raise ValueError("config.teacher.workdir is required: the workdir of a "
                       "crysgnn_pretrain run (see configs/crysgnn_pretrain.py)")
    self.teacher = distill.load_teacher(
        os.path.expanduser(t.workdir), t.get("checkpoint", "best"),
        t.get("embedding_key", "node_embedding"))
    self.delta = float(config.get("distill", {}).get("delta", distill.DELTA))
    if not 0.0 <= self.delta <= 1.0:
      raise ValueError(f"distill.delta must be in [0, 1], got {self.delta}")
    self.init_from_teacher = bool(config.get("init_from_teacher", False))

  def shares_teacher_graph(self) -> bool:
    """True when the student's (fitted) graph settings equal the teacher's."""
    return self.featurizer.settings() == self.teacher.featurizer.settings()

  def featurize(self, structure, rng, training):
    g = super().featurize(structure, rng, training)
    if self.shares_teacher_graph():
      return g
    tg = self.teacher.featurizer(structure)
    extra = distill.dense_teacher_edges(tg, self.teacher.slots, structure.id)
    extra["teacher_features"] = tg.nodes["features"]
    return g._replace(nodes={**g.nodes, **extra})

  # -- model and loss ----------------------------------------------------------------
  def model(self, graph, is_training):
    if self.num_targets is None:
      raise RuntimeError("the number of targets is unknown: call "
                         "load_splits() or load_state_dict() first")
    student = models_lib.build_model(self.config.model,
                                     num_targets=self.num_targets)
    outputs = distill.DistilledStudent(student, self.teacher.dim)(
        graph, is_training)
    outputs["teacher_embedding"] = self.teacher.embeddings(graph)
    return outputs

  def loss(self, outputs, graph):
    prop = super().loss  # L_prop: the parent's L1/MSE on normalised targets.
    return distill.distillation_loss(prop, self.delta)(
        outputs, distill.attach_teacher_embeddings(
            graph, outputs["teacher_embedding"]))

  def predict(self, outputs, graph):
    out = super().predict(outputs, graph)
    sq = jnp.square(outputs["kd_embedding"] - outputs["teacher_embedding"])
    out["node_kd_sq"] = jnp.where(graph.nodes["mask"], jnp.sum(sq, -1), 0.0)
    return out

  def metrics(self, structures, predictions):
    out = super().metrics(structures, predictions)
    # Per crystal, then over crystals (distill.kd_loss).
    out["loss_kd"] = float(np.mean([np.sum(v) / (len(v) * self.teacher.dim)
                                    for v in predictions["node_kd_sq"]]))
    return out

  def state_dict(self):
    out = super().state_dict()
    out["teacher"] = {"workdir": os.path.abspath(self.teacher.workdir),
                      "step": self.teacher.step}
    return out

  # -- fine-tuning baseline --------------------------------------------------------------
  def init_params(self, params, state):
    """With ``init_from_teacher``: the student's encoder <- the teacher's
    (``distill.copy_teacher_encoder``)."""
    if not self.init_from_teacher:
      return params, state
    return distill.copy_teacher_encoder(params, state, self.teacher)

  def describe(self) -> str:
    return (f"{super().describe()} distilled from {self.teacher.workdir} "
            f"(delta {self.delta}{', teacher init' if self.init_from_teacher else ''})")
