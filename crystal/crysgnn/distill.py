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
"""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from noisy_nodes import nn as nn_lib
from crystal.crysgnn import heads as heads_lib

DELTA = 0.5  # the reference code's α = 0.5 weights both terms equally.
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
