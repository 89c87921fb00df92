"""Knowledge distillation from a frozen pre-trained CrysGNN (paper §2.2).

L = δ · L_prop + (1 − δ) · L_KD                                   (eq. 3)
L_KD = ‖Z^T − Z^S‖²                                               (eq. 4)

(the reference writes (1 − α) L_prop + α L_KD with α = 0.5: δ = 1 − α.)

* Z^T: the teacher's node embeddings, computed by ``teacher_node_embeddings``
  from the teacher's params and state with ``is_training=False`` (running
  BatchNorm statistics; the reference left the teacher in training mode, a
  flaw we do not copy) and ``jax.lax.stop_gradient``; the teacher's params and
  state are never returned, so nothing can update them.
* Z^S: the student's ``outputs['node_embedding']``. Both are L2-normalised
  per crystal as in pre-training (each node vector divided by its norm,
  ``heads.normalize_node_embeddings``). The paper says both are "projected on
  the same latent space": ``DistilledStudent`` adds a learned
  ``hk.Linear(teacher_dim)`` projection ONLY when the widths differ (the
  reference has none and needs equal widths); with equal widths Z^S is used
  as is, so a distilled model has exactly the student's parameters.
* L_KD as the reference averages it: per crystal the mean squared
  difference over its atoms × embedding dims (torch ``MSELoss`` on one
  crystal's [n, D] embeddings), then the mean over crystals, so every crystal
  weighs the same whatever its size. L_prop is any property loss of
  docs/design.md form (per graph).

The teacher must see the same atoms in the same order as the student (the
same batch featurised twice, e.g. CGCNN 92-d features for the teacher):
nodes are matched row by row and masked with the student's node mask.

Teacher handling (used by ``tasks.CrysGNNDistillTask``):
* ``Teacher`` / ``load_teacher``: a pre-training run restored once per process
  (``trainer.restore_run``), its params and BatchNorm statistics as read-only
  host arrays;
* ``dense_teacher_edges`` / ``teacher_graph``: when the student's graph
  settings differ from the teacher's, each sample carries the teacher's edges
  as per-node ``teacher_*`` arrays [n, K, ...] that ride along the normal
  batching, and the teacher's padded graph is rebuilt from them on device;
* ``copy_teacher_encoder``: the fine-tuning baseline's initialisation, the
  teacher's encoder params and statistics copied into the student.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from noisy_nodes import nn as nn_lib
from noisy_nodes.data.structures import DataError
from crystal import features as features_lib
from crystal.crysgnn import heads as heads_lib

DELTA = 0.5  # the reference code's α = 0.5 weights both terms equally.
TEACHER_PREFIX = "teacher_"
# Student modules the pre-training loss never trains: not copied by
# ``copy_teacher_encoder`` (crystal models' output head, GNS decoders).
_HEAD_MARKERS = ("/head/", "decoder")
LossFn = Callable[[Mapping[str, jnp.ndarray], jraph.GraphsTuple],
                  Tuple[jnp.ndarray, jnp.ndarray, Dict[str, jnp.ndarray]]]


def teacher_node_embeddings(teacher_apply: Callable, teacher_params,
                            teacher_state, graph: jraph.GraphsTuple,
                            key: str = "node_embedding") -> jnp.ndarray:
  """Frozen teacher's normalised node embeddings Z^T [N, D_T].

  Args:
    teacher_apply: ``hk.transform_with_state(f).apply`` of a model
      ``f(graph, is_training) -> outputs`` (called as
      ``apply(params, state, None, graph, is_training=False)``).
    teacher_params, teacher_state: the pre-trained teacher's variables.
    graph: the teacher's view of the batch (with ``nodes['mask']``).
  Returns:
    stop_gradient(unit node vectors), zeros on padding rows. The updated
    state the apply returns is dropped: the teacher never changes.
  """
  outputs, _ = teacher_apply(teacher_params, teacher_state, None, graph,
                             is_training=False)
  z = heads_lib.normalize_node_embeddings(outputs[key], graph.nodes["mask"])
  return jax.lax.stop_gradient(z)


class DistilledStudent(hk.Module):
  """Wraps a student ``model(graph, is_training)`` and adds
  ``outputs['kd_embedding']`` [N, D_T]: its normalised node embeddings,
  projected to the teacher's width by ``hk.Linear`` only if D_S != D_T.

  The projection is applied to the raw embeddings and the result is
  normalised, so L_KD compares unit vectors in the teacher's space.
  """

  def __init__(self, student: Callable, teacher_dim: int,
               name: Optional[str] = "distilled"):
    super().__init__(name=name)
    self.student = student
    self.teacher_dim = int(teacher_dim)

  def __call__(self, graph: jraph.GraphsTuple, is_training: bool):
    outputs = dict(self.student(graph, is_training))
    h = outputs["node_embedding"]
    if h.shape[-1] != self.teacher_dim:
      h = hk.Linear(self.teacher_dim, name="kd_projection")(h)
    outputs["kd_embedding"] = heads_lib.normalize_node_embeddings(
        h, graph.nodes["mask"])
    return outputs


def kd_loss(student_z: jnp.ndarray, teacher_z: jnp.ndarray,
            graph: jraph.GraphsTuple) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(Σ over real crystals of their per-crystal MSE, number of real crystals).

  Per crystal g: mean over its real atoms and the D dims of (Z^S − Z^T)²
  (torch ``MSELoss`` on one crystal), so the global mean over crystals is
  psum(first) / psum(second) (module docstring).
  """
  if student_z.shape != teacher_z.shape:
    raise ValueError(f"student embeddings {student_z.shape} and teacher "
                     f"embeddings {teacher_z.shape} differ: use "
                     "DistilledStudent(teacher_dim=...) to project")
  node_mask = graph.nodes["mask"]
  num_graphs = graph.n_node.shape[0]
  gidx = nn_lib.node_graph_index(graph.n_node, student_z.shape[0])
  sq = jnp.sum(jnp.square(student_z - jax.lax.stop_gradient(teacher_z)), -1)
  sq = jnp.where(node_mask, sq, 0.0)
  atoms = jax.ops.segment_sum(node_mask.astype(sq.dtype), gidx, num_graphs)
  per_crystal = jax.ops.segment_sum(sq, gidx, num_graphs) / (
      jnp.maximum(atoms, 1.0) * student_z.shape[-1])
  real = graph.globals["mask"] & (atoms > 0)
  return (jnp.sum(jnp.where(real, per_crystal, 0.0)),
          jnp.sum(real.astype(sq.dtype)))


def distillation_loss(prop_loss_fn: LossFn, delta: float = DELTA,
                      teacher_key: str = "teacher_embedding") -> LossFn:
  """Eq. 3 as a docs/design.md loss ``loss_fn(outputs, graph)``.

  ``outputs['kd_embedding']`` comes from ``DistilledStudent`` and the
  teacher's Z^T from ``graph.nodes[teacher_key]`` (the train step fills it
  with ``teacher_node_embeddings`` before calling the loss). Both terms are
  global means: L_prop = psum(prop_sum)/psum(prop_weight) and L_KD the mean
  over crystals of their per-crystal MSE (``kd_loss``), so (loss_sum, weight)
  are returned per real graph as in ``losses.py``.
  """
  def loss_fn(outputs, graph):
    prop_sum, prop_weight, metrics = prop_loss_fn(outputs, graph)
    kd_sum, kd_count = kd_loss(outputs["kd_embedding"],
                               graph.nodes[teacher_key], graph)
    weight = jnp.sum(graph.globals["mask"].astype(jnp.float32))
    g = nn_lib.cross_replica_sum(weight)
    # Rescale from each term's own weight to "per real graph" sums.
    scale = g / jnp.maximum(nn_lib.cross_replica_sum(prop_weight), 1e-12)
    prop = prop_sum * scale
    kd = kd_sum * g / jnp.maximum(nn_lib.cross_replica_sum(kd_count), 1e-12)
    metrics = {k: v * scale for k, v in metrics.items()}
    metrics.update(loss_prop=prop, loss_kd=kd)
    return delta * prop + (1.0 - delta) * kd, weight, metrics
  return loss_fn


def attach_teacher_embeddings(graph: jraph.GraphsTuple, teacher_z: jnp.ndarray,
                              key: str = "teacher_embedding"
                              ) -> jraph.GraphsTuple:
  """Returns ``graph`` with ``nodes[key] = teacher_z`` (for ``distillation_loss``)."""
  return graph._replace(nodes=dict(graph.nodes, **{key: teacher_z}))


# -- the teacher ---------------------------------------------------------------------
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
    from noisy_nodes.tasks.base import resolve_task  # pylint: disable=g-import-not-at-top
    # A task restored as a teacher may ask for lighter data (the
    # pre-training task: example crystals for shapes, not its corpus).
    overrides = getattr(resolve_task(task_name), "teacher_overrides",
                        None) if task_name else None
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
    return teacher_node_embeddings(self.apply, self.params,
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

# -- fine-tuning initialisation ------------------------------------------------------
def copy_teacher_encoder(params, state, teacher: Teacher):
  """(params, state) with the student's encoder <- the teacher's.

  Every student module except the KD projection and the output head /
  decoders (which pre-training never trains) must exist in the teacher with
  the same parameter shapes; BatchNorm statistics are copied too.
  """
  new_params, copied = _copy_matching(params, teacher.params, "params")
  new_state, _ = _copy_matching(state, teacher.state, "state")
  logging.info("init_from_teacher: copied %d modules from %s", copied,
               teacher.workdir)
  return new_params, new_state


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
