"""The shared "deeper" recipe: a scanned stack of convolutions with an
optional normalisation swap and residual skip.

DeeperGATGNN (Omee et al. 2021, §2.2-2.3) makes any message-passing network
deeper with two changes, applied here in one place for every model:

  * the BatchNorm after each convolution becomes DiffGroupNorm
    (``norm_kind(deeper=True) == 'diff_group'``), and
  * each convolution's output gets the previous layer's output added
    (``residual=True``), then dropout.

``scanned_stack`` runs the L layers with ``hk.layer_stack`` (one set of
parameters and Haiku state stacked on a leading [L] axis, ``lax.scan`` over
it), so compile time does not grow with depth and BatchNorm running
statistics are carried per layer through the scan.

The module also holds the small pieces every crystal model shares: reading a
padded ``jraph.GraphsTuple`` (``GraphInputs``) and the post-pooling MLP head.
The network around the convolutions is ``skeleton.CrystalModel``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from noisy_nodes import nn as nn_lib
from crystal.models import norms

NORM_KINDS = ("batch", "diff_group", "none")


def norm_kind(deeper: bool, norm: Optional[str] = None) -> str:
  """The normalisation the recipe asks for (``norm`` overrides)."""
  kind = norm if norm is not None else ("diff_group" if deeper else "batch")
  if kind not in NORM_KINDS:
    raise ValueError(f"unknown norm {kind!r}; choose from {NORM_KINDS}")
  return kind


def make_norm(kind: str, name: str, groups: int = 10, lamda: float = 0.01
              ) -> Callable[[jnp.ndarray, jnp.ndarray, bool], jnp.ndarray]:
  """A norm ``f(x [N, F], mask [N], is_training) -> [N, F]`` of ``kind``."""
  if kind == "batch":
    return nn_lib.MaskedBatchNorm(name=name)
  if kind == "diff_group":
    return norms.DiffGroupNorm(groups=groups, lamda=lamda, name=name)
  if kind == "none":
    return lambda x, mask, is_training: x
  raise ValueError(f"unknown norm {kind!r}; choose from {NORM_KINDS}")


def dropout(x: jnp.ndarray, rate: float, is_training: bool) -> jnp.ndarray:
  if not is_training or rate <= 0.0:
    return x
  return hk.dropout(hk.next_rng_key(), rate, x)


def scanned_stack(layer_fn: Callable[[Any, jnp.ndarray], Tuple[Any, Any]],
                  carry: Any, num_layers: int, *, residual: bool,
                  dropout_rate: float, is_training: bool,
                  remat: bool = False,
                  remat_saved: Sequence[str] = (),
                  name: str = "conv_stack") -> Tuple[Any, Any]:
  """Applies ``layer_fn`` ``num_layers`` times with unshared parameters.

  Args:
    layer_fn: ``(carry, layer_index) -> (new_carry, aux)``; creates its Haiku
      modules inside (they are stacked along a leading [L] axis). ``carry`` is
      any pytree of arrays (node latents, or nodes/edges/globals for MEGNet);
      the graph structure is closed over.
    carry: initial carry (after the pre-FC embedding).
    num_layers: L >= 1.
    residual: add the previous carry to each layer's output (the "deeper"
      skip connection, paper §2.3), leaf by leaf.
    dropout_rate: dropout on every leaf of the carry after each layer.
    is_training: enables dropout (and training-mode norms inside layer_fn).
    remat: rematerialise each layer in the backward pass: only the carry is
      kept per layer (e.g. [N, D] instead of several [E, heads·D] edge
      arrays for AGAT), at the cost of one more forward pass per step.
    remat_saved: with ``remat``, the names (``jax.ad_checkpoint.
      checkpoint_name``) of small intermediates to keep rather than
      recompute (the fused AGAT layer's [E, 2H] logits and [N, D] output,
      so its backward pass never runs the forward kernels again).
  Returns:
    (final carry, aux stacked over layers with leading axis [L]).
  """
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")

  def body(c, index):
    new, aux = layer_fn(c, index)
    if residual:
      new = jax.tree_util.tree_map(jnp.add, new, c)
    new = jax.tree_util.tree_map(
        lambda v: dropout(v, dropout_rate, is_training), new)
    return new, aux

  if remat:
    policy = (jax.checkpoint_policies.save_only_these_names(*remat_saved)
              if remat_saved else None)
    body = hk.remat(body, policy=policy)
  stacked = hk.layer_stack(num_layers, with_per_layer_inputs=True,
                           name=name)(body)
  return stacked(carry, jnp.arange(num_layers))


@dataclasses.dataclass
class GraphInputs:
  """What a crystal model reads from a padded batch (docs/design.md).

  Shapes: nodes [N, F_node], edges [E, F_edge], distances [E], senders and
  receivers [E], node_mask [N], edge_mask [E], graph_mask [G],
  node_graph [N] and edge_graph [E] (graph index of each row),
  composition [G, C] or None, reverse [E] or None.

  ``reverse`` is present when the featurizer paired every edge with its
  reverse (``crystal.edge_pairs.pair_reverse_edges``); its phantom edges are
  False in ``edge_mask``, so every model leaves them out of aggregations.
  """
  nodes: jnp.ndarray
  edges: jnp.ndarray
  distances: Optional[jnp.ndarray]
  senders: jnp.ndarray
  receivers: jnp.ndarray
  node_mask: jnp.ndarray
  edge_mask: jnp.ndarray
  graph_mask: jnp.ndarray
  node_graph: jnp.ndarray
  edge_graph: jnp.ndarray
  composition: Optional[jnp.ndarray]
  reverse: Optional[jnp.ndarray] = None

  @property
  def num_nodes(self) -> int:
    return self.nodes.shape[0]

  @property
  def num_graphs(self) -> int:
    return self.graph_mask.shape[0]


def read_graph(graph: jraph.GraphsTuple) -> GraphInputs:
  """Unpacks a padded batch; masks default to all-True when absent."""
  for where, feats, key in (("nodes", graph.nodes, "features"),
                            ("edges", graph.edges, "features")):
    if not isinstance(feats, dict) or key not in feats:
      raise ValueError(f"graph.{where} needs a '{key}' array (got "
                       f"{sorted(feats) if isinstance(feats, dict) else feats})")
  # jnp.asarray: host (numpy) batches closed over by a jitted function must
  # not be indexed with traced indices by numpy.
  nodes = jnp.asarray(graph.nodes["features"], jnp.float32)
  edges = jnp.asarray(graph.edges["features"], jnp.float32)
  n, e, g = nodes.shape[0], edges.shape[0], graph.n_node.shape[0]
  glob = graph.globals if isinstance(graph.globals, dict) else {}
  node_mask = jnp.asarray(graph.nodes.get("mask", np.ones(n, bool)), bool)
  edge_mask = jnp.asarray(graph.edges.get("mask", np.ones(e, bool)), bool)
  if "phantom" in graph.edges:
    edge_mask = edge_mask & ~jnp.asarray(graph.edges["phantom"], bool)
  reverse = graph.edges.get("reverse")
  graph_mask = jnp.asarray(glob.get("mask", np.ones(g, bool)), bool)
  node_graph = nn_lib.node_graph_index(jnp.asarray(graph.n_node), n)
  receivers = jnp.asarray(graph.receivers)
  dist = graph.edges.get("distances")
  comp = glob.get("composition")
  return GraphInputs(
      nodes=nodes, edges=edges,
      distances=None if dist is None else jnp.asarray(dist, jnp.float32),
      senders=jnp.asarray(graph.senders), receivers=receivers,
      node_mask=node_mask, edge_mask=edge_mask, graph_mask=graph_mask,
      node_graph=node_graph, edge_graph=node_graph[receivers],
      composition=None if comp is None else jnp.asarray(comp, jnp.float32),
      reverse=None if reverse is None else jnp.asarray(reverse, jnp.int32))


def output_head(x: jnp.ndarray, hidden: Sequence[int], num_targets: int,
                activation: str, name: str = "head",
                b_init: Optional[hk.initializers.Initializer] = None,
                w_init: Optional[hk.initializers.Initializer] = None
                ) -> jnp.ndarray:
  """Post-pooling dense layers (Linear + act each) then Linear -> [G, T]
  (output weights / bias from ``w_init`` / ``b_init``, Haiku's defaults
  when None)."""
  act = nn_lib.get_activation(activation)
  with hk.experimental.name_scope(name):
    for i, size in enumerate(hidden):
      x = act(hk.Linear(size, name=f"post_fc_{i}")(x))
    return nn_lib.ReadoutLinear(num_targets, w_init=w_init, b_init=b_init,
                                name="out")(x)


def format_params(params) -> str:
  """Print-friendly per-module parameter table with the total."""
  lines = []
  for module, leaves in sorted(params.items()):
    size = sum(v.size for v in leaves.values())
    shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in sorted(leaves.items()))
    lines.append(f"{module:60s} {size:>10,d}  {shapes}")
  lines.append(f"{'total':60s} {nn_lib.count_params(params):>10,d}")
  return "\n".join(lines)
