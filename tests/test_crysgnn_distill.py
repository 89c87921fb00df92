"""CrysGNN distillation: frozen eval-mode teacher, projection only when
widths differ, eq. 3 against numpy."""
import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np

import noisy_nodes  # noqa: F401
from noisy_nodes import nn as nn_lib
from crystal.crysgnn import distill


def _graph(sizes=(3, 4), pad=3, seed=0):
  rng = np.random.default_rng(seed)
  n = sum(sizes)
  x = rng.normal(size=(n + pad, 5)).astype(np.float32)
  mask = np.arange(n + pad) < n
  g = len(sizes)
  return jraph.GraphsTuple(
      nodes={"x": x, "mask": mask},
      edges={}, senders=np.zeros(0, np.int32), receivers=np.zeros(0, np.int32),
      n_node=np.array(list(sizes) + [pad], np.int32),
      n_edge=np.zeros(g + 1, np.int32),
      globals={"mask": np.arange(g + 1) < g,
               "target": rng.normal(size=(g + 1, 1)).astype(np.float32)})


def _encoder(width):
  def f(graph, is_training):
    h = hk.Linear(width, name="embed")(graph.nodes["x"])
    h = nn_lib.MaskedBatchNorm(name="bn")(h, graph.nodes["mask"], is_training)
    pooled = nn_lib.segment_mean(
        h, nn_lib.node_graph_index(graph.n_node, h.shape[0]),
        graph.n_node.shape[0], graph.nodes["mask"])
    return {"node_embedding": h, "graph": hk.Linear(1, name="out")(pooled)}
  return f


def _student(width, teacher_dim):
  def f(graph, is_training):
    return distill.DistilledStudent(_encoder(width), teacher_dim)(
        graph, is_training)
  return hk.transform_with_state(f)


def _prop_loss(outputs, graph):
  m = graph.globals["mask"][:, None]
  err = jnp.square(outputs["graph"] - graph.globals["target"]) * m
  return jnp.sum(err), jnp.sum(m), {"mse": jnp.sum(err)}


def test_projection_params_only_when_widths_differ():
  g = _graph()
  same = _student(6, 6).init(jax.random.PRNGKey(0), g, True)[0]
  diff = _student(4, 6).init(jax.random.PRNGKey(0), g, True)[0]
  assert not any("kd_projection" in k for k in same)
  proj = [k for k in diff if "kd_projection" in k]
  assert len(proj) == 1 and diff[proj[0]]["w"].shape == (4, 6)
  # Without projection the distilled model has exactly the student's params.
  plain = hk.transform_with_state(_encoder(6)).init(
      jax.random.PRNGKey(0), g, True)[0]
  assert sorted(k.split("/", 1)[1] for k in same) == sorted(plain)


def test_teacher_eval_mode_frozen_and_loss_value():
  g = _graph()
  teacher = hk.transform_with_state(_encoder(6))
  t_params, t_state = teacher.init(jax.random.PRNGKey(1), g, True)
  # Non-trivial running statistics, so eval mode is distinguishable.
  t_state = jax.tree_util.tree_map(lambda v: v + 0.5, t_state)
  z_t = distill.teacher_node_embeddings(teacher.apply, t_params, t_state, g)
  w, b = (np.asarray(t_params["embed"][k]) for k in ("w", "b"))
  h = g.nodes["x"] @ w + b
  bn = t_state["bn"]
  h = (h - bn["mean"]) / np.sqrt(bn["var"] + 1e-5)   # running stats (eval).
  h = h * np.asarray(t_params["bn"]["scale"]) + np.asarray(
      t_params["bn"]["offset"])
  m = g.nodes["mask"]
  ref = np.where(m[:, None], h / np.linalg.norm(h, axis=1, keepdims=True), 0)
  np.testing.assert_allclose(z_t, ref, rtol=1e-5, atol=1e-6)

  student = _student(4, 6)
  s_params, s_state = student.init(jax.random.PRNGKey(2), g, True)
  loss_fn = distill.distillation_loss(_prop_loss, delta=0.3)

  def total(s_params, t_params):
    z = distill.teacher_node_embeddings(teacher.apply, t_params, t_state, g)
    out, _ = student.apply(s_params, s_state, None, g, is_training=False)
    ls, wt, metrics = loss_fn(out, distill.attach_teacher_embeddings(g, z))
    return ls / wt, (out, metrics)

  (val, (out, metrics)), grads = jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True)(s_params, t_params)
  # The teacher gets no gradient; the student does.
  assert all(np.all(x == 0) for x in jax.tree_util.tree_leaves(grads[1]))
  assert any(np.any(x != 0) for x in jax.tree_util.tree_leaves(grads[0]))
  gm = g.globals["mask"]
  prop = np.mean((np.asarray(out["graph"])[gm] - g.globals["target"][gm]) ** 2)
  # L_KD: per-crystal MSE (3 and 4 atoms), then the mean over crystals.
  sq = (np.asarray(out["kd_embedding"]) - ref) ** 2
  kd = np.mean([sq[:3].mean(), sq[3:7].mean()])
  assert not np.isclose(kd, sq[m].mean(), rtol=1e-3)
  np.testing.assert_allclose(val, 0.3 * prop + 0.7 * kd, rtol=1e-5)
  np.testing.assert_allclose(metrics["mse"] / gm.sum(), prop, rtol=1e-5)
  z_s = np.asarray(out["kd_embedding"])
  np.testing.assert_allclose(np.linalg.norm(z_s[m], axis=1), 1, rtol=1e-5)
