"""The Noisy Nodes Graph Net Simulator (Godwin et al. 2022, §3.2, Fig. 1).

Encoder -> Processor (N block iterations of M unshared interaction-network
steps, N x M message-passing steps in total) -> Decoders, on the padded
batched ``jraph.GraphsTuple`` of ``docs/design.md``:

  nodes:   atomic_numbers int32[N], (optional) tags int32[N], fixed int32[N],
           mask bool[N]
  edges:   vectors float32[E, 3] (x_receiver - x_sender + shift @ cell),
           distances float32[E], mask bool[E]
  globals: cell float32[G, 3, 3], mask bool[G]

Outputs (``GNS.__call__``):
  'graph'           [G, T]     graph-level prediction of the last block,
  'node'            [N, 3]     node-level prediction (position change a^Delta)
                               of the last block, Cartesian frame,
  'per_block_graph' [B, G, T]  the graph decoder applied after every block
                               iteration (Fig. 1B, B = N iterations),
  'per_block_node'  [B, N, 3]  idem for the node decoder,
  'node_embedding'  [N, D]     the last processor node latents.
Padding rows of every output are zero.

Depth is scanned, so compile time does not grow with N or M: the M unshared
steps of a block are an ``hk.layer_stack`` (parameters stacked [M, ...]) and
the N block iterations are an ``hk.scan`` calling the same block module, so
they share its parameters ("block iteration", §3.2).

Symmetries.  The encoder sees only relative vectors, so outputs are
translation invariant by construction (§3.2).  The paper's raw unit vectors
d/|d| are not rotation invariant ("no equivariance or invariance
symmetries", §5.2).  For periodic systems the paper works in the periodic
basis, A(GNN(A^-1 v)) (§5.1); we use the rotation part of A
(``features.lattice_frame``): directions are expressed in the cell's frame
and node outputs rotated back, so for periodic graphs the graph output is
rotation invariant and the node output rotation equivariant.  Molecules (all
zero cell) keep Cartesian directions, as in the paper; pass
``use_directions=False`` for an exactly invariant (distance-only) model.

Registered as model ``gns`` (``noisy_nodes.models.build_model``), with the
paper's OC20 and QM9 settings (``presets``).
"""
from __future__ import annotations

from typing import Dict, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

from noisy_nodes.gns import features
from noisy_nodes import models as models_lib
from noisy_nodes import nn
from noisy_nodes.data.structures import MAX_ATOMIC_NUMBER

NUM_TAGS = 3  # OC20 tags: 0 sub-surface, 1 surface, 2 adsorbate.


def _mask(tree: Dict[str, jnp.ndarray], key: str, n: int) -> jnp.ndarray:
  if tree is not None and key in tree:
    return tree[key].astype(bool)
  return jnp.ones((n,), bool)


class _Block(hk.Module):
  """M unshared interaction-network steps (one "block", Fig. 1B).

  One step (Interaction Network [6], as in GNS [45]) with residuals on nodes
  and edges (§3.2):
    e'_k = MLP_e([e_k, v_{s_k}, v_{r_k}])
    v'_i = MLP_v([v_i, sum_{k: r_k = i} e'_k])
    e_k <- e_k + e'_k,  v_i <- v_i + v'_i
  MLPs have ``mlp_layers`` layers with the activation between them and a
  final LayerNorm.  Padding edges are masked out of the sum.
  """

  def __init__(self, num_steps: int, latent_size: int, mlp_layers: int,
               activation: str, remat: bool, name: Optional[str] = None,
               hidden_size: Optional[int] = None):
    super().__init__(name=name)
    self.num_steps = num_steps
    self.latent_size = latent_size
    self.hidden_size = hidden_size or latent_size
    self.mlp_layers = mlp_layers
    self.activation = activation
    self.remat = remat

  def __call__(self, nodes, edges, senders, receivers, edge_mask,
               step_latents: bool = False):
    """nodes [N, D], edges [E, D] -> (nodes, edges) after M steps.

    With ``step_latents`` also the node latents after each step [M, N, D]
    (the same parameters: the stack only emits a per-step output).
    """
    num_nodes = nodes.shape[0]
    emask = edge_mask[:, None].astype(edges.dtype)

    def step(v, e):
      sizes = [self.hidden_size] * (self.mlp_layers - 1) + [self.latent_size]
      mlp = lambda name: nn.MLP(sizes,
                                activation=self.activation, layer_norm=True,
                                name=name)
      # = MLP_e(concat([e, v[senders], v[receivers]])), with the node blocks
      # of the first layer applied per node before gathering (nn.MLP parts).
      de = mlp("edge_mlp")(parts=[e, v, v], rows=[None, senders, receivers])
      incoming = jax.ops.segment_sum(de * emask, receivers, num_nodes)
      dv = mlp("node_mlp")(jnp.concatenate([v, incoming], axis=-1))
      return v + dv, e + de

    if self.remat:
      step = hk.remat(step)
    if step_latents:
      def step_out(carry):
        v, e = step(*carry)
        return (v, e), v
      stack = hk.layer_stack(self.num_steps, with_per_layer_inputs=True,
                             name="steps")(step_out)
      (v, e), vs = stack((nodes, edges))
      return v, e, vs
    stack = hk.layer_stack(self.num_steps, name="steps")(step)
    return stack(nodes, edges)


def _mlp(model: "GNS", name: str, layer_norm: bool = True,
         out: Optional[int] = None) -> nn.MLP:
  sizes = [model.mlp_hidden_size] * (model.mlp_layers - 1) + [
      model.latent_size]
  if out is not None:
    sizes[-1] = out
  return nn.MLP(sizes, activation=model.activation, layer_norm=layer_norm,
                name=name)


def encode(model: "GNS", graph: jraph.GraphsTuple, node_graph, frames):
  """Latent graph G^(0): node latents [N, D], edge latents [E, D]."""
  nodes, edges = graph.nodes, graph.edges
  z = nodes["atomic_numbers"].astype(jnp.int32)
  parts = [hk.Embed(MAX_ATOMIC_NUMBER + 1, model.latent_size,
                    name="atom_embedding")(z)]
  if model.use_tags and "tags" in nodes:
    tags = jnp.clip(nodes["tags"].astype(jnp.int32), 0, NUM_TAGS - 1)
    parts.append(hk.Embed(NUM_TAGS, model.latent_size,
                          name="tag_embedding")(tags))
  if model.use_tags and "fixed" in nodes:
    fixed = jnp.clip(nodes["fixed"].astype(jnp.int32), 0, 1)
    parts.append(hk.Embed(2, model.latent_size,
                          name="fixed_embedding")(fixed))
  v = _mlp(model, "node_encoder")(jnp.concatenate(parts, axis=-1))

  # e_k = [RBF_1(|d|) .. RBF_c(|d|), d/|d| (, cell vector)]   (§3.2, §5.1)
  # The paper writes d = a_s - a_r; ours is a_r - a_s (design.md).  The
  # sign is absorbed by the first linear layer.
  edge_graph = node_graph[graph.receivers]
  dist = edges["distances"].astype(jnp.float32)
  feats = [features.bessel_basis(dist, model.num_basis, model.cutoff)]
  if model.use_directions:
    vec = edges["vectors"].astype(jnp.float32)
    if frames is not None:
      vec = jnp.einsum("eij,ej->ei", frames[edge_graph], vec)
    feats.append(features.unit_vectors(vec))
  if model.use_cell_vector:
    cv = features.cell_vector(graph.globals["cell"].astype(jnp.float32))
    # Dimensionless, O(1) inputs: dot products in R^2, lengths in R.
    cv = cv / jnp.array([model.cutoff ** 2] * 3 + [model.cutoff] * 3,
                        jnp.float32)
    feats.append(cv[edge_graph])
  e = _mlp(model, "edge_encoder")(jnp.concatenate(feats, axis=-1))
  return v, e


class GNS(hk.Module):
  """Noisy Nodes GNS: encoder, block-iterated processor, two decoders."""

  def __init__(self,
               latent_size: int = 512,
               mlp_layers: int = 3,
               num_message_passing_steps: int = 10,
               num_block_iterations: int = 1,
               num_basis: int = 512,
               cutoff: float = 6.0,
               num_targets: int = 1,
               use_tags: bool = True,
               use_cell_vector: bool = True,
               remat: bool = False,
               activation: str = "shifted_softplus",
               use_directions: bool = True,
               lattice_frame: bool = True,
               mlp_hidden_size: Optional[int] = None,
               step_latents: bool = False,
               name: Optional[str] = "gns"):
    """Builds the model.

    Args:
      latent_size: node/edge latent and MLP hidden width (512 in Tables 9/10).
      mlp_layers: layers per MLP (3).
      num_message_passing_steps: M, unshared steps per block.
      num_block_iterations: N, applications of the shared block.
      num_basis: number of radial Bessel functions (512).
      cutoff: connectivity radius R of the Bessel basis (Å).
      num_targets: T, graph-level outputs.
      use_tags: embed ``nodes['tags']`` and ``nodes['fixed']`` when present
        (OC20 adsorbate/catalyst and fixed-atom flags, §3.2).
      use_cell_vector: append the cell vector (§5.1) to every edge feature.
      remat: rematerialise each step in the backward pass (memory for time).
      activation: name in ``nn.ACTIVATIONS`` (shifted softplus in the paper).
      use_directions: include d/|d| in the edge features (§3.2).
      lattice_frame: express directions in the frame of the cell for
        periodic graphs (see module docstring); no effect on molecules.
      mlp_hidden_size: hidden width of every MLP (default ``latent_size``;
        QM9's Table 10 uses 1024 hidden with 512 latents).
      step_latents: also output 'step_node_latents' [1 + N*M, N, D], the
        encoder's node latents and those after every message-passing step
        (oversmoothing analysis, §8.1; ``noisy_nodes.gns.analysis``).
    """
    super().__init__(name=name)
    self.latent_size = latent_size
    self.mlp_layers = mlp_layers
    self.num_steps = num_message_passing_steps
    self.num_iterations = num_block_iterations
    self.num_basis = num_basis
    self.cutoff = cutoff
    self.num_targets = num_targets
    self.use_tags = use_tags
    self.use_cell_vector = use_cell_vector
    self.remat = remat
    self.activation = activation
    self.use_directions = use_directions
    self.lattice_frame = lattice_frame
    self.mlp_hidden_size = mlp_hidden_size or latent_size
    self.step_latents = step_latents

  def __call__(self, graph: jraph.GraphsTuple,
               is_training: bool = False) -> Dict[str, jnp.ndarray]:
    del is_training  # Same computation in training and evaluation.
    num_nodes = graph.nodes["atomic_numbers"].shape[0]
    num_edges = graph.senders.shape[0]
    num_graphs = graph.n_node.shape[0]
    node_mask = _mask(graph.nodes, "mask", num_nodes)
    edge_mask = _mask(graph.edges, "mask", num_edges)
    graph_mask = _mask(graph.globals, "mask", num_graphs)
    node_graph = nn.node_graph_index(graph.n_node, num_nodes)

    frames = None
    if self.use_directions and self.lattice_frame and "cell" in graph.globals:
      frames = features.lattice_frame(graph.globals["cell"].astype(jnp.float32))

    v_enc, e_enc = encode(self, graph, node_graph, frames)
    nmask = node_mask[:, None].astype(jnp.float32)

    def pool(x):  # [N, D] -> [G, D], sum over real nodes of each graph,
      # in float32 under every train.precision (engine.precision).
      return jax.ops.segment_sum(x.astype(jnp.float32) * nmask, node_graph,
                                 num_graphs)

    # Graph decoder, encoder half: W_E sum_i MLP_E(a_i^Enc) + b_E (§3.2).
    y_enc = nn.ReadoutLinear(self.num_targets,
                             name="graph_decoder_encoder_linear")(
        pool(_mlp(self, "graph_decoder_encoder_mlp", layer_norm=False)(v_enc)))

    block = _Block(self.num_steps, self.latent_size, self.mlp_layers,
                   self.activation, self.remat, name="block",
                   hidden_size=self.mlp_hidden_size)
    proc_mlp = _mlp(self, "graph_decoder_processor_mlp", layer_norm=False)
    proc_linear = nn.ReadoutLinear(self.num_targets,
                                   name="graph_decoder_processor_linear")
    node_decoder = _mlp(self, "node_decoder", layer_norm=False, out=3)

    def iteration(carry, _):
      out = block(carry[0], carry[1], graph.senders, graph.receivers,
                  edge_mask, step_latents=self.step_latents)
      v, e = out[:2]
      # y = W_P sum_i MLP_P(a_i^Proc) + b_P + [encoder half]   (§3.2)
      y = proc_linear(pool(proc_mlp(v))) + y_enc
      dx = node_decoder(v)
      return (v, e), (y, dx) + tuple(out[2:])

    (v_last, _), per_block = hk.scan(iteration, (v_enc, e_enc), None,
                                     length=self.num_iterations)
    ys, dxs = per_block[:2]

    if frames is not None:
      # Back from the lattice frame to Cartesian: d = F^T local.
      dxs = jnp.einsum("nji,bnj->bni", frames[node_graph], dxs)
    gmask = graph_mask[None, :, None].astype(ys.dtype)
    ys = ys * gmask
    dxs = dxs * nmask[None]
    out = {
        "graph": ys[-1],
        "node": dxs[-1],
        "per_block_graph": ys,
        "per_block_node": dxs,
        "node_embedding": v_last * nmask,
    }
    if self.step_latents:  # [N_iter, M, N, D] -> [1 + N_iter * M, N, D]
      vs = per_block[2].reshape((-1,) + v_enc.shape)
      out["step_node_latents"] = jnp.concatenate([v_enc[None], vs]) * nmask
    return out


# The paper's architectures (Appendix, Tables 9 and 10), keyword arguments
# of ``GNS``; the task supplies ``cutoff`` (its graph's) and ``num_targets``.
_PRESETS = {
    # OC20, Table 9: 1 x 50, latent 512, 3-layer MLPs, 512 Bessel functions.
    "oc20": dict(latent_size=512, mlp_layers=3, num_message_passing_steps=50,
                 num_block_iterations=1, num_basis=512,
                 activation="shifted_softplus", use_tags=True,
                 use_cell_vector=True, use_directions=True,
                 lattice_frame=True, remat=False),
    # QM9, Table 10: 2 x 10, latent 512 with MLP hidden 1024.
    "qm9": dict(latent_size=512, mlp_hidden_size=1024, mlp_layers=3,
                num_message_passing_steps=10, num_block_iterations=2,
                num_basis=512, activation="shifted_softplus",
                use_directions=True, remat=False),
}


def presets(setting: str = "oc20") -> dict:
  """The paper's GNS for ``setting`` 'oc20' (Table 9) or 'qm9' (Table 10)."""
  try:
    return dict(_PRESETS[setting])
  except KeyError:
    raise ValueError(f"unknown GNS setting {setting!r}: use one of "
                     f"{sorted(_PRESETS)}") from None


models_lib.register("gns", GNS, presets=presets)
