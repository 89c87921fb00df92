"""Oversmoothing analysis of a trained GNS (Noisy Nodes §8.1, Fig. 3).

MAD, the Mean Average Distance of Chen et al. (AAAI 2020, [18] of the
paper), measures how diverse node representations are: for the node
vectors h_i of one graph,

  MAD = mean over ordered pairs i != j of (1 - cos(h_i, h_j)),

(0: all nodes identical up to scale; higher: more diverse).  We take it
per graph, over the graph's real nodes, and average over the graphs of a
split.  ``mad_by_step`` reports it after every message-passing step s for

  * ``latents``: the node latents v^(s) (s = 0 is the encoder output), and
  * ``updates``: the residual updates v^(s) - v^(s-1) of each step, what
    the paper's Fig. 3 plots ("MAD of the residual updates of each layer").

``python -m noisy_nodes.evaluate --workdir=DIR --analysis=mad [--split=val]``
writes ``DIR/mad_<split>.json`` and ``DIR/mad_<split>.png``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from noisy_nodes.data import batching
from noisy_nodes import nn
from noisy_nodes.engine import parallel


def graph_mad_sums(h: jnp.ndarray, n_node: jnp.ndarray,
                   node_mask: jnp.ndarray):
  """Per-graph sums of pairwise cosine distances and pair counts.

  Args:
    h: [S, N, D] node vectors of S steps.
    n_node: [G] nodes per graph (padded batch, last graph padding).
    node_mask: [N] real nodes.
  Returns:
    (sums [S, G], pairs [G]): MAD of graph g at step s = sums / pairs.
  """
  num_nodes, num_graphs = h.shape[1], n_node.shape[0]
  graph = nn.node_graph_index(n_node, num_nodes)
  unit = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
  cos = jnp.einsum("snd,smd->snm", unit, unit)
  pair = ((graph[:, None] == graph[None, :]) & node_mask[:, None]
          & node_mask[None, :] & ~jnp.eye(num_nodes, dtype=bool))
  dist = jnp.where(pair[None], 1.0 - cos, 0.0).sum(-1)  # [S, N]
  sums = jax.ops.segment_sum(dist.T, graph, num_graphs).T
  pairs = jax.ops.segment_sum(pair.sum(-1).astype(jnp.float32), graph,
                              num_graphs)
  return sums, pairs


def mad_by_step(workdir: str, split: str = "val", which: str = "best",
                overrides: Optional[Dict[str, Any]] = None
                ) -> Dict[str, Any]:
  """MAD of node latents and residual updates after each step on a split."""
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  ov = dict(overrides or {}, **{"model.step_latents": True})
  exp, ts, _, budget, step = trainer.restore_run(workdir, which, ov,
                                                 example_split=split)
  if split not in exp.splits and split == "val":
    split = exp.validation_splits()[0]
  params = ts.ema_params if exp.config.optim.get("ema_decay", 0) else (
      ts.params)
  params, state = parallel.to_host(params), parallel.to_host(ts.state)
  transformed = exp.transformed()  # the run's precision policy too

  @jax.jit
  def sums_fn(params, state, graph):
    out, _ = transformed.apply(params, state, None, graph, False)
    v = out["step_node_latents"]
    mask = graph.nodes["mask"]
    lat = graph_mad_sums(v, graph.n_node, mask)
    upd = graph_mad_sums(v[1:] - v[:-1], graph.n_node, mask)
    return lat, upd

  totals = {"latents": [], "updates": []}
  graphs = exp.graphs(split)
  budget = batching.fitting_budget(budget, graphs)  # every graph, none cut
  for batch, index_lists in batching.eval_batches(graphs, budget, 1):
    graph = jax.tree_util.tree_map(lambda x: x[0], batch)
    (ls, lp), (us, up) = jax.device_get(sums_fn(params, state, graph))
    real = np.arange(ls.shape[1]) < len(index_lists[0])
    for key, (s, p) in (("latents", (ls, lp)), ("updates", (us, up))):
      ok = real & (p > 0)  # graphs of one atom have no pairs
      totals[key].append(s[:, ok] / p[ok])
  result: Dict[str, Any] = {"split": split, "checkpoint": which,
                            "step": int(step),
                            "block_layout": [
                                int(exp.config.model.num_block_iterations),
                                int(exp.config.model.num_message_passing_steps)]}
  for key, rows in totals.items():
    per_graph = np.concatenate(rows, axis=1)  # [S, graphs]
    result[key] = per_graph.mean(1).tolist()
    result["num_graphs"] = int(per_graph.shape[1])
  return result


def write_mad(workdir: str, split: str = "val", which: str = "best",
              overrides: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
  """Computes ``mad_by_step`` and writes ``mad_<split>.json`` / ``.png``."""
  result = mad_by_step(workdir, split, which, overrides)
  base = os.path.join(workdir, f"mad_{result['split']}")
  with open(base + ".json", "w") as f:
    json.dump(result, f, indent=2)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  lat, upd = result["latents"], result["updates"]
  axes[0].plot(range(len(lat)), lat, "-o")
  axes[0].set(xlabel="message-passing step (0 = encoder)",
              ylabel="MAD of node latents")
  axes[1].bar(range(1, len(upd) + 1), sorted(upd, reverse=True))
  axes[1].set(xlabel="step, sorted by MAD (Fig. 3)",
              ylabel="MAD of residual updates")
  n, m = result["block_layout"]
  fig.suptitle(f"{os.path.basename(os.path.abspath(workdir))}: {n}x{m}, "
               f"{result['split']} ({result['num_graphs']} graphs), step "
               f"{result['step']}")
  fig.tight_layout()
  fig.savefig(base + ".png", dpi=100)
  plt.close(fig)
  return {"json": base + ".json", "png": base + ".png"}
