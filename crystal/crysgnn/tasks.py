"""CrysGNN tasks for the one training engine: pre-training and distillation.

``CrysGNNPretrainTask`` ("crysgnn_pretrain", paper §2.1, eq. 2):

  data     an untagged corpus: ``data.path`` = a corpus manifest (JSON from
           ``crystal.crysgnn.corpus``) or structure files/folders (several
           comma-separated), read once with ``build_corpus`` (symmetry labels
           by spglib) and cached under ``data.cache_dir``; with an empty path
           a corpus of ``data.corpus.n`` generated crystals is built on first
           use. A seeded ``data.val_fraction`` is held out.
  features CGCNN inputs (``features.cgcnn_config``: 92-d binned element
           features, 12 NN in 8 Å, 41 Gaussians) + ``targets.pretrain_labels``
           (connectivity counts [n, P], space group, crystal system).
           The 92-d node features are also the reconstruction target, so
           ``data.graph`` may change the graph but not the node features.
  model    ``heads.CrysGNNPretrainModel(encoder, P = data.max_atoms)``; the
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

import hashlib
import json
import logging
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

import jraph
from noisy_nodes import models as models_lib
from noisy_nodes import nn as nn_lib
from noisy_nodes.gns import model as _gns  # noqa: F401  (registers 'gns')
from noisy_nodes.models import plain
from noisy_nodes.data.structures import DataError, Structure, load_structures
from noisy_nodes.tasks.base import Task, resolve_task

from crystal import features as features_lib
from crystal.crysgnn import corpus as corpus_lib
from crystal.crysgnn import distill
# Registers original_cgcnn (and, through crystal.models, the crystal models).
from crystal.crysgnn import encoder as _encoder  # noqa: F401
from crystal.crysgnn import heads as heads_lib
from crystal.crysgnn import losses
from crystal.crysgnn import symmetry
from crystal.crysgnn import targets as targets_lib
from crystal.tasks import CrystalPropertyTask

TEACHER_PREFIX = "teacher_"
# Student modules the pre-training loss never trains: not copied by
# ``init_from_teacher`` (crystal models' output head, GNS decoders).
_HEAD_MARKERS = ("/head/", "decoder")


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

  def __init__(self, config):
    super().__init__(config)
    self.featurizer = features_lib.CrystalFeaturizer(
        pretrain_featurizer_config(config.data.get("graph", None)))
    self.max_atoms = int(config.data.max_atoms)
    lc = config.get("loss", {})
    self.weights = losses._weights(plain(lc.get("weights", None)) or None)  # pylint: disable=protected-access
    self.temperature = float(lc.get("temperature", losses.TEMPERATURE))

  # -- data ------------------------------------------------------------------------
  def _corpus_settings(self, n: int, inputs: Sequence[str]):
    """(manifest path, settings) of a corpus request; the file name hashes
    the settings, so a different request never reads a stale corpus."""
    d = self.config.data
    c = d.get("corpus", {})
    settings = {"n": n, "seed": int(c.get("seed", 0)),
                "mix": [float(x) for x in c.get("mix", corpus_lib.DEFAULT_MIX)],
                "max_atoms": self.max_atoms,
                "inputs": [os.path.abspath(p) for p in inputs],
                # Labels depend on the tolerances: a corpus labelled with
                # other ones is never reused.
                "symprec": symmetry.SYMPREC,
                "angle_tolerance": symmetry.ANGLE_TOLERANCE}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()
                         ).hexdigest()[:12]
    return os.path.join(os.path.expanduser(d.cache_dir),
                        f"corpus_n{n}_{key}.json"), settings

  def _manifest(self, n: int, inputs: Sequence[str]) -> str:
    path, settings = self._corpus_settings(n, inputs)
    if not os.path.exists(path):
      c = self.config.data.get("corpus", {})
      self._build(path, n, settings, int(c.get("workers", 1)),
                  float(c.get("timeout_s", corpus_lib.ITEM_TIMEOUT_S)))
    return path

  def _build(self, path, n, settings, workers, timeout_s):
    logging.info("building the CrysGNN corpus %s (%d generated + %d input "
                 "paths; once)", path, n, len(settings["inputs"]))
    if workers <= 1:
      corpus_lib.build_corpus(path, n, settings["seed"], 1, settings["inputs"],
                              settings["mix"], self.max_atoms, timeout_s,
                              log=logging.info)
      return
    # Worker pools fork; forking this (multithreaded JAX) process is unsafe,
    # so the CLI runs in a fresh interpreter.
    cmd = [sys.executable, "-m", "crystal.crysgnn.corpus", f"--out={path}",
           f"--n={n}", f"--seed={settings['seed']}", f"--workers={workers}",
           f"--max_atoms={self.max_atoms}", f"--timeout={timeout_s}",
           "--mix", *map(str, settings["mix"])]
    if settings["inputs"]:
      cmd += ["--inputs", *settings["inputs"]]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + [p for p in [env.get("PYTHONPATH")] if p])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         check=False)
    if res.returncode:
      raise DataError(path, f"corpus build failed:\n{res.stderr[-2000:]}")

  def corpus(self) -> List[Structure]:
    """Every structure of the corpus (module docstring)."""
    d = self.config.data
    example_only = bool(d.get("example_only", False))
    path = str(d.get("path", "") or "")
    paths = [p.strip() for p in path.split(",") if p.strip()]
    if len(paths) == 1 and paths[0].endswith(".json"):
      manifest = paths[0]
    else:
      n = int(d.get("corpus", {}).get("n", 0)) if not paths else int(
          d.get("corpus", {}).get("extra", 0))
      if example_only and not paths:
        # Restoring a run as a teacher needs shapes only; never rebuild a
        # large corpus for that.
        if not os.path.exists(self._corpus_settings(n, paths)[0]):
          n = min(n, 4)
      manifest = self._manifest(n, paths)
    if example_only:
      with open(manifest) as f:
        chunks = json.load(f)["chunks"]
      root = os.path.dirname(os.path.abspath(manifest))
      for c in chunks:
        if c["count"]:
          return load_structures(os.path.join(root, c["path"]))[:8]
      return []
    self._check_input_failures(manifest)
    return corpus_lib.load_corpus(manifest)

  def _check_input_failures(self, manifest: str):
    """The user's structure files that the corpus build could not use.

    Generated items that fail (a pyxtal request with no solution, a timeout)
    are retried by design and only recorded in the manifest. A file the user
    gave is different: unreadable or invalid, it is a ``DataError`` naming it,
    unless ``data.skip_invalid``, which skips it and lists it in
    DIR/data_report.json. Files over ``data.max_atoms`` are the configured cap
    (the connectivity block size), not a fault: they are listed there too,
    with a warning.
    """
    with open(manifest) as f:
      failures = [x for x in json.load(f).get("failures", [])
                  if x.get("source") == "file"]
    too_big = [x for x in failures if "> max_atoms=" in x["error"]]
    bad = [x for x in failures if x not in too_big]
    if bad and not bool(self.config.data.get("skip_invalid", False)):
      x = bad[0]
      more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
      error = x["error"].split(": ", 1)[-1] if x["error"].startswith(
          "DataError") else x["error"]
      if error.startswith(x["item"] + ": "):
        error = error[len(x["item"]) + 2:]
      raise DataError(x["item"], f"{error}{more}; "
                      "--config.data.skip_invalid=True skips such files")
    if too_big:
      logging.warning("%d input structures over data.max_atoms=%d left out "
                      "(listed in data_report.json)", len(too_big),
                      self.max_atoms)
    self.skipped.extend(f"{x['item']}: {x['error']}" for x in bad + too_big)

  def load_splits(self) -> Dict[str, List[Structure]]:
    d = self.config.data
    structures = [s for s in self.corpus() if s.num_atoms <= self.max_atoms]
    for s in structures:
      if "space_group" not in s.targets:
        raise DataError(s.id, "corpus structure without a space group label")
    if d.get("example_only", False):
      return {"train": [], "val": structures}
    n = len(structures)
    if n < 2:
      raise DataError(d.get("path", "") or "generated corpus",
                      f"{n} structures: need at least 2 to train and validate")
    perm = np.random.default_rng(int(d.get("seed", 0))).permutation(n)
    n_val = min(n - 1, max(1, int(round(float(d.val_fraction) * n))))
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return {"train": [structures[i] for i in train],
            "val": [structures[i] for i in val]}

  def featurize(self, structure: Structure, rng: Optional[np.random.Generator],
                training: bool) -> jraph.GraphsTuple:
    del rng, training
    g = self.featurizer(structure)
    nodes, glob = targets_lib.pretrain_labels(structure, self.max_atoms)
    g_glob = {k: v for k, v in g.globals.items() if k != "target"}
    return g._replace(nodes={**g.nodes, **nodes}, globals={**g_glob, **glob})

  # -- model and loss ----------------------------------------------------------------
  def model(self, graph, is_training):
    encoder = models_lib.build_model(self.config.model, num_targets=1)
    return heads_lib.CrysGNNPretrainModel(encoder, self.max_atoms)(
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
    conn_t = losses.connectivity_target_block(graph)             # [G, P, P]
    w = jnp.asarray(losses.CLASS_WEIGHTS, x.dtype)
    valid = conn_t >= 0
    ct = jnp.where(valid, conn_t, 0)
    logp = jax.nn.log_softmax(outputs["connectivity_logits"], -1)
    nll = -jnp.take_along_axis(logp, ct[..., None], -1)[..., 0]
    wt = jnp.where(valid, w[ct], 0.0)
    sg_logits = outputs["space_group_logits"]
    label = graph.globals["space_group"].reshape(-1).astype(jnp.int32) - 1
    sg_logp = jax.nn.log_softmax(sg_logits, -1)
    sg_nll = -jnp.take_along_axis(
        sg_logp, jnp.clip(label, 0, sg_logits.shape[-1] - 1)[:, None], -1)[:, 0]
    return {"node_feature_bce": node_bce,
            "connectivity_nll": jnp.sum(wt * nll, (1, 2)),
            "connectivity_weight": jnp.sum(wt, (1, 2)),
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
            f"{m.get('dim', m.get('latent_size', '?'))}; P={self.max_atoms})")


# -- distillation ------------------------------------------------------------------------
def dense_teacher_edges(graph: jraph.GraphsTuple, k: int, sample: str
                        ) -> Dict[str, np.ndarray]:
  """A single graph's edges as per-receiver arrays with ``k`` slots.

  Returns ``teacher_senders`` int32 [n, k] (local sender index, -1 = empty
  slot), ``teacher_edge_features`` [n, k, F], ``teacher_vectors`` [n, k, 3],
  ``teacher_distances`` [n, k]; slot order follows the edge order of each
  receiver.
  """
  n = int(graph.n_node[0])
  recv = np.asarray(graph.receivers, np.int64)
  order = np.argsort(recv, kind="stable")
  r = recv[order]
  rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")
  if len(r) and rank.max() >= k:
    raise DataError(sample, f"an atom has {int(rank.max()) + 1} teacher edges,"
                    f" more than the {k} slots (max_neighbors + self loop)")
  out = {"teacher_senders": np.full((n, k), -1, np.int32)}
  out["teacher_senders"][r, rank] = np.asarray(graph.senders)[order]
  for key, name in (("features", "teacher_edge_features"),
                    ("vectors", "teacher_vectors"),
                    ("distances", "teacher_distances")):
    v = np.asarray(graph.edges[key])
    dense = np.zeros((n, k) + v.shape[1:], v.dtype)
    dense[r, rank] = v[order]
    out[name] = dense
  return out


def teacher_graph(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """The teacher's padded batch, rebuilt on device from ``teacher_*`` arrays.

  Nodes (and their order) are the student's; edges are the N·K slots, edge
  (i, s) going from ``teacher_senders[i, s]`` (shifted by the node offset of
  i's crystal) to i; empty slots and padding nodes are masked self edges.
  Without ``teacher_*`` arrays the graph is shared and returned as is.
  """
  nodes = graph.nodes
  if TEACHER_PREFIX + "senders" not in nodes:
    return graph
  local = nodes["teacher_senders"]
  num_nodes, k = local.shape
  node_mask = nodes["mask"]
  gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
  offsets = jnp.cumsum(graph.n_node) - graph.n_node
  valid = (local >= 0) & node_mask[:, None]
  self_idx = jnp.broadcast_to(jnp.arange(num_nodes)[:, None], local.shape)
  senders = jnp.where(valid, local + offsets[gidx][:, None], self_idx)

  def flat(x):
    return x.reshape((num_nodes * k,) + x.shape[2:])
  edges = {"features": flat(nodes["teacher_edge_features"]),
           "vectors": flat(nodes["teacher_vectors"]),
           "distances": flat(nodes["teacher_distances"]),
           "mask": flat(valid)}
  t_nodes = {key: v for key, v in nodes.items()
             if not key.startswith(TEACHER_PREFIX)}
  t_nodes["features"] = nodes["teacher_features"]
  return graph._replace(
      nodes=t_nodes, edges=edges, senders=flat(senders).astype(jnp.int32),
      receivers=flat(self_idx).astype(jnp.int32),
      n_edge=(graph.n_node * k).astype(jnp.int32))


class Teacher:
  """A frozen pre-trained run: host params/state, apply, featurizer, width."""

  def __init__(self, workdir: str, which: str = "best",
               embedding_key: str = "node_embedding"):
    from noisy_nodes.data import batching  # pylint: disable=g-import-not-at-top
    from noisy_nodes.engine import parallel  # pylint: disable=g-import-not-at-top
    from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.exists(cfg_path):
      raise DataError(workdir, "no teacher run here (config.json missing): "
                      "set config.teacher.workdir to a pre-training workdir")
    with open(cfg_path) as f:
      task_name = json.load(f).get("task", "")
    pretrain = bool(task_name) and resolve_task(task_name) is (
        CrysGNNPretrainTask)
    overrides = {"data.example_only": True} if pretrain else None
    exp, ts, meta, budget, step = trainer.restore_run(workdir, which,
                                                      overrides)
    self.workdir, self.step, self.task_name = workdir, int(step), task_name
    params = ts.ema_params if exp.config.optim.get("ema_decay", 0) else (
        ts.params)
    # Host numpy copies, closed over by the student's model: jit constants.
    self.params = parallel.to_host(params)
    self.state = parallel.to_host(ts.state)
    for leaf in jax.tree_util.tree_leaves((self.params, self.state)):
      leaf.setflags(write=False)
    self.apply = exp.transformed().apply
    self.embedding_key = embedding_key
    featurizer = getattr(exp.task, "featurizer", None)
    if not isinstance(featurizer, features_lib.CrystalFeaturizer):
      raise ValueError(f"teacher task {task_name!r} has no CrystalFeaturizer "
                       "(task.featurizer): cannot featurise its inputs")
    self.featurizer = featurizer
    self.config = exp.config
    example = batching.pad_graphs(exp.graphs("val")[:1], budget)
    out = jax.eval_shape(
        lambda g: self.apply(self.params, self.state, None, g,
                             is_training=False)[0], example)
    if embedding_key not in out:
      raise ValueError(f"teacher outputs {sorted(out)} have no "
                       f"{embedding_key!r}")
    self.dim = int(out[embedding_key].shape[-1])
    logging.info("teacher %s (step %d): %s, embedding width %d", workdir,
                 self.step, exp.task.describe(), self.dim)

  @property
  def slots(self) -> int:
    """K: the most teacher edges one atom can receive."""
    c = self.featurizer.config
    if c.max_neighbors is None:
      raise ValueError("the teacher's graph has no max_neighbors bound, so "
                       "its edges cannot ride along the student's batch: use "
                       "the teacher's graph settings for the student "
                       "(data.graph) or a teacher with max_neighbors")
    return int(c.max_neighbors) + int(c.self_loops)

  def embeddings(self, graph: jraph.GraphsTuple) -> jnp.ndarray:
    """Z^T [N, D_T] of a padded batch (eval mode, stop_gradient)."""
    return distill.teacher_node_embeddings(self.apply, self.params,
                                           self.state, teacher_graph(graph),
                                           self.embedding_key)


_TEACHERS: Dict[tuple, Teacher] = {}


def load_teacher(workdir: str, which: str = "best",
                 embedding_key: str = "node_embedding") -> Teacher:
  """``Teacher(...)``, memoised per process on the run's checkpoint folders
  (several students of one teacher restore and compile it once)."""
  stamp = tuple(
      (d, os.path.getmtime(os.path.join(workdir, d)))
      for d in ("best", "checkpoints") if os.path.isdir(os.path.join(workdir,
                                                                     d)))
  key = (os.path.abspath(workdir), which, embedding_key, stamp)
  if key not in _TEACHERS:
    _TEACHERS[key] = Teacher(workdir, which, embedding_key)
  return _TEACHERS[key]


class CrysGNNDistillTask(CrystalPropertyTask):
  """Property prediction distilled from a frozen CrysGNN (module docstring)."""

  prediction_keys = ("target",)  # not the KD metric's node_kd_sq

  def __init__(self, config):
    super().__init__(config)
    t = config.get("teacher", {})
    if not t.get("workdir", ""):
      raise ValueError("config.teacher.workdir is required: the workdir of a "
                       "crysgnn_pretrain run (see configs/crysgnn_pretrain.py)")
    self.teacher = load_teacher(os.path.expanduser(t.workdir),
                                t.get("checkpoint", "best"),
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
    extra = dense_teacher_edges(tg, self.teacher.slots, structure.id)
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
    """With ``init_from_teacher``: the student's encoder <- the teacher's.

    Every student module except the KD projection and the output head /
    decoders (which pre-training never trains) must exist in the teacher
    with the same parameter shapes; BatchNorm statistics are copied too.
    """
    if not self.init_from_teacher:
      return params, state
    new_params, copied = _copy_matching(params, self.teacher.params,
                                        "params")
    new_state, _ = _copy_matching(state, self.teacher.state, "state")
    logging.info("init_from_teacher: copied %d modules from %s", copied,
                 self.teacher.workdir)
    return new_params, new_state

  def describe(self) -> str:
    return (f"{super().describe()} distilled from {self.teacher.workdir} "
            f"(delta {self.delta}{', teacher init' if self.init_from_teacher else ''})")


def _is_encoder_module(name: str) -> bool:
  return not name.startswith("distilled") and not any(
      m in name for m in _HEAD_MARKERS)


def _copy_matching(student: Mapping[str, Mapping[str, Any]],
                   teacher: Mapping[str, Mapping[str, Any]], what: str):
  """Student tree with its encoder modules replaced by the teacher's."""
  out = {m: dict(v) for m, v in student.items()}
  copied, problems = 0, []
  for module, leaves in student.items():
    if not _is_encoder_module(module):
      continue
    src = teacher.get(module)
    if src is None:
      problems.append(f"{module} (not in the teacher)")
      continue
    for name, value in leaves.items():
      if name not in src or np.shape(src[name]) != np.shape(value):
        problems.append(f"{module}/{name} {np.shape(value)} vs teacher "
                        f"{np.shape(src.get(name))}")
        continue
      out[module][name] = jnp.asarray(src[name], value.dtype)
    copied += 1
  if problems or (what == "params" and not copied):
    raise ValueError(
        "init_from_teacher needs a student encoder identical to the teacher's "
        "(same config.model and graph/feature settings); mismatched "
        f"{what}: {problems[:8] or 'no encoder modules'}")
  return out, copied
