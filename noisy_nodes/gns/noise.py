"""Noisy Nodes corruption, auxiliary node targets and loss (paper §3.3, §4).

Host side (numpy, model agnostic): positions are corrupted *before* the
graph is built, so the neighbour list is computed from the noisy positions
and the edge set changes with the noise (§3.2 "Edges are computed ... after
noise has been applied"; §3.3 "calculated from the noisy nodes").

  ṽ_i = v_i + σ_i,  σ_i ~ N(0, sigma^2 I_3)                       (§3.3)

Auxiliary node targets are *relative* (a displacement from the noisy input,
[41], §3.3), which is what the node decoder predicts (a^Δ, §3.2):

* denoising (QM9, IS2RE without frames): the paper sets v'_i = v_i ("predict
  the uncorrupted input nodes"); we express it as v_i - ṽ_i = -σ_i.  The
  model only sees relative vectors, so it cannot output absolute
  coordinates; the displacement is the translation-invariant encoding of
  "the clean position" and is what GNS-style relative targets mean.
* IS2RE (§5.1 "Source of Noise"): sample a frame v^(f) of the relaxation
  trajectory, add noise, target = relaxed - noisy.
* IS2RS (§3.3): input ṽ = v + σ with v the initial structure; target
  v' - ṽ = (v' - v) - σ = Δ - σ, Δ the relaxation displacement and σ the
  noise that was added.

Device side (jnp): ``noisy_nodes_loss`` is the training objective of §4 and
Fig. 1B, averaged over block iterations and summed over real graphs.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from noisy_nodes.data.structures import DataError


class NoisySample(NamedTuple):
  """Corrupted positions and their auxiliary node target (numpy).

  positions: [n, 3] noisy input positions ṽ (feed these to the graph builder).
  target: [n, 3] relative node target (what ``node`` output should predict).
  noise: [n, 3] the σ that was added (zero rows for atoms left clean).
  frame: index of the sampled trajectory frame, or -1 when none was used.
  """
  positions: np.ndarray
  target: np.ndarray
  noise: np.ndarray
  frame: int


def corrupt_positions(positions: np.ndarray, sigma: float,
                      rng: np.random.Generator,
                      fixed: Optional[np.ndarray] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
  """Adds i.i.d. Gaussian noise N(0, sigma^2) to every coordinate (§3.3).

  ``sigma`` is the standard deviation in Å: Table 9 gives σ = 0.3 for OC20
  (the §5.1 text writes "σ^2 = 0.3"; we follow the table), Table 10 σ = 0.02
  for QM9.

  Fixed atoms.  The paper noises all input positions, and that is the
  default (``fixed=None``): even atoms clamped during DFT are inputs whose
  exact bulk geometry the model could otherwise memorise, and denoising them
  is a valid autoencoder signal.  Passing ``fixed`` (1/True = fixed) leaves
  those atoms clean, for settings where the node target exists only for
  free atoms and the slab geometry should stay exact.

  Args:
    positions: [n, 3] Å.
    sigma: noise standard deviation (Å); 0 returns a copy.
    rng: numpy ``Generator`` (or ``RandomState``) — the caller's
      per-sample stream, so corruption is reproducible.
    fixed: optional [n] flags of atoms to leave uncorrupted.
  Returns:
    (noisy positions [n, 3], noise σ [n, 3]).
  """
  positions = np.asarray(positions, np.float64)
  if sigma < 0 or not np.isfinite(sigma):
    raise ValueError(f"noise sigma must be finite and >= 0, got {sigma}")
  noise = sigma * rng.normal(size=positions.shape) if sigma > 0 else (
      np.zeros_like(positions))
  if fixed is not None:
    fixed = np.asarray(fixed).astype(bool).reshape(-1)
    if fixed.shape[0] != positions.shape[0]:
      raise ValueError(f"fixed has {fixed.shape[0]} entries for "
                       f"{positions.shape[0]} atoms")
    noise = np.where(fixed[:, None], 0.0, noise)
  return positions + noise, noise


def minimum_image(displacements: np.ndarray, cell: np.ndarray,
                  pbc: np.ndarray) -> np.ndarray:
  """Wraps displacements to their nearest periodic image along pbc axes.

  Relaxation frames may have atoms wrapped to the other side of the cell;
  a raw difference would then be a lattice vector off.  Rounding fractional
  components is exact for displacements shorter than half the plane spacing,
  which is always the case for relaxation steps and noise.

  Args:
    displacements: [n, 3] Å.
    cell: [3, 3] rows = lattice vectors.
    pbc: [3] bool.
  Returns:
    [n, 3] wrapped displacements.
  """
  pbc = np.asarray(pbc, bool)
  if not pbc.any():
    return displacements
  frac = np.linalg.solve(np.asarray(cell, np.float64).T, displacements.T).T
  frac[:, pbc] -= np.round(frac[:, pbc])
  return frac @ cell


def denoising_sample(positions: np.ndarray, sigma: float,
                     rng: np.random.Generator,
                     fixed: Optional[np.ndarray] = None) -> NoisySample:
  """Denoising autoencoder target: clean - noisy = -σ (§3.3, QM9 §5.2)."""
  noisy, noise = corrupt_positions(positions, sigma, rng, fixed)
  return NoisySample(noisy, np.asarray(positions, np.float64) - noisy, noise,
                     -1)


def relaxation_sample(positions: np.ndarray, positions_relaxed: np.ndarray,
                      sigma: float, rng: np.random.Generator,
                      frames_positions: Optional[np.ndarray] = None,
                      fixed: Optional[np.ndarray] = None,
                      cell: Optional[np.ndarray] = None,
                      pbc: Optional[np.ndarray] = None,
                      sample: str = "structure") -> NoisySample:
  """Noisy input and relative relaxed-position target (§3.3, §5.1).

  Without ``frames_positions`` the input is the initial structure v and the
  target is v' - ṽ = Δ - σ (IS2RS, §3.3).  With ``frames_positions``
  [F, n, 3] a frame f is drawn uniformly first and plays the role of v
  (IS2RE "Source of Noise", §5.1: "first sample from a point in this
  relaxation trajectory, and then add I.I.D Gaussian noise ... The Noisy
  Node target is the relaxed structure").

  Args:
    positions: [n, 3] initial positions (Å).
    positions_relaxed: [n, 3] relaxed positions v'.
    sigma: noise standard deviation (Å).
    rng: numpy random generator.
    frames_positions: optional [F, n, 3] trajectory frames, or a lazy
      sequence of F frames [n, 3] (only the drawn one is read).
    fixed: see ``corrupt_positions``.
    cell, pbc: when given, Δ is taken to the minimum image.
    sample: id for error messages.
  Returns:
    ``NoisySample`` with target = minimum_image(v' - v) - σ.
  """
  v = np.asarray(positions, np.float64)
  frame = -1
  if frames_positions is not None:
    # An array [F, n, 3], or a lazy sequence of F frames (``len`` and
    # ``[f]``, e.g. ``oc20.frames.SystemFrames``): only frame f is read.
    if isinstance(frames_positions, (np.ndarray, list, tuple)):
      frames_positions = np.asarray(frames_positions, np.float64)
      if frames_positions.ndim != 3 or frames_positions.shape[0] == 0 or (
          frames_positions.shape[1:] != v.shape):
        raise DataError(sample, f"frames_positions has shape "
                        f"{frames_positions.shape}, expected [F>0, {len(v)}, "
                        "3]")
    count = len(frames_positions)
    if count == 0:
      raise DataError(sample, "trajectory has no frames")
    frame = int(rng.integers(count) if hasattr(rng, "integers")
                else rng.randint(count))
    v = np.asarray(frames_positions[frame], np.float64)
    if v.shape != (len(positions), 3):
      raise DataError(sample, f"trajectory frame {frame} has shape {v.shape},"
                      f" expected ({len(positions)}, 3)")
  relaxed = np.asarray(positions_relaxed, np.float64)
  if relaxed.shape != v.shape:
    raise DataError(sample, f"positions_relaxed has shape {relaxed.shape}, "
                    f"expected {v.shape}")
  if not (np.all(np.isfinite(v)) and np.all(np.isfinite(relaxed))):
    raise DataError(sample, "non-finite initial, frame or relaxed positions")
  delta = relaxed - v
  if cell is not None and pbc is not None:
    delta = minimum_image(delta, cell, pbc)
  noisy, noise = corrupt_positions(v, sigma, rng, fixed)
  return NoisySample(noisy, delta - noise, noise, frame)


def is2rs_sample(positions, positions_relaxed, sigma, rng, **kwargs):
  """IS2RS: ṽ = v_initial + σ, target Δ - σ (§3.3)."""
  return relaxation_sample(positions, positions_relaxed, sigma, rng, **kwargs)


def is2re_sample(positions, positions_relaxed, frames_positions, sigma, rng,
                 **kwargs):
  """IS2RE: sample a trajectory frame, add noise, target = relaxed - ṽ."""
  return relaxation_sample(positions, positions_relaxed, sigma, rng,
                           frames_positions=frames_positions, **kwargs)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
  """Uniform random proper rotation [3, 3] (QR of a Gaussian matrix).

  The GNS is not rotation invariant on molecules (it uses Cartesian unit
  vectors, §3.2); tasks may augment with ``positions @ R.T``.
  """
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] = -q[:, 0]
  return q


# -- loss (jnp) ----------------------------------------------------------------
def noisy_nodes_loss(outputs: Dict[str, jnp.ndarray], graph,
                     position_loss_weight: float = 1.0,
                     graph_loss_weight: float = 1.0,
                     target_mean=None, target_std=None,
                     target_key: str = "target"
                     ) -> Tuple[jnp.ndarray, jnp.ndarray, Dict]:
  """Noisy Nodes objective (§4, Fig. 1B), summed over real graphs.

  For every real graph g and block iteration b:
    L_g^b = graph_loss_weight * mean_t (y_gt^b - ŷ_gt)^2
          + position_loss_weight * mean_{i in g, target_mask} mean_xyz
                                   (x_i^b - x̂_i)^2
  with ŷ = (target - target_mean) / target_std (normalised targets, §4;
  identity when not given) and x̂ = ``nodes['position_target']``.  The loss
  is averaged over block iterations ("We optimise the average of the
  losses", Fig. 1B) and summed over real graphs; ``weight`` is the number of
  real graphs, so the engine divides the sum by the global weight.  The
  node term is a per-graph mean so that a large slab and a small molecule
  count equally, like the graph term.

  Args:
    outputs: model outputs; uses 'per_block_graph' [B, G, T] and
      'per_block_node' [B, N, 3] (else 'graph' / 'node' as B = 1).
    graph: the padded batch; uses globals[target_key] [G, T] (optional: no
      graph term without it), globals['mask'], nodes['position_target']
      [N, 3] (optional: no node term without it), nodes['target_mask'] [N]
      (optional), nodes['mask'].
    position_loss_weight: the "Position Loss Coefficient" (1.0 OC20, 0.1
      QM9, Tables 9/10).
    graph_loss_weight: 0 for a positions-only model (Table 3 "+ Pos only").
    target_mean, target_std: [T] normalisation of the graph targets.
    target_key: name of the graph target in globals.
  Returns:
    loss_sum: scalar, sum over real graphs.
    weight: scalar, number of real graphs.
    metrics: sums over real graphs/nodes (divide by the counts given):
      'graph_mse' (last block, normalised units), 'graph_mae' (last block,
      target units), 'node_mse' (last block, per-graph mean), 'num_graphs',
      'num_target_nodes', 'loss_per_block' [B] sums.
  """
  num_graphs = graph.n_node.shape[0]
  gmask = _mask(graph.globals, num_graphs)
  gm = gmask.astype(jnp.float32)
  per_block = jnp.zeros((1, num_graphs), jnp.float32)
  metrics = {"num_graphs": jnp.sum(gm)}

  has_graph = (isinstance(graph.globals, dict) and target_key in graph.globals
               and graph_loss_weight != 0)
  if has_graph:
    ys = outputs.get("per_block_graph", outputs["graph"][None])
    target = graph.globals[target_key].astype(jnp.float32)
    target = target.reshape(target.shape[0], -1)
    mean = 0.0 if target_mean is None else jnp.asarray(target_mean, jnp.float32)
    std = 1.0 if target_std is None else jnp.asarray(target_std, jnp.float32)
    norm_target = (target - mean) / std
    # where(), not multiply: padding graphs may hold NaN/garbage targets.
    sq = jnp.where(gmask[None, :, None],
                   jnp.square(ys - norm_target[None]), 0.0)
    graph_term = jnp.mean(sq, axis=-1)  # [B, G]
    per_block = per_block + graph_loss_weight * graph_term
    metrics["graph_mse"] = jnp.sum(graph_term[-1])
    abs_err = jnp.abs(ys[-1] * std + mean - target)
    metrics["graph_mae"] = jnp.sum(
        jnp.where(gmask[:, None], abs_err, 0.0).mean(axis=-1))

  nodes = graph.nodes
  if "position_target" in nodes and position_loss_weight != 0:
    xs = outputs.get("per_block_node", outputs["node"][None])
    num_nodes = xs.shape[1]
    nmask = _mask(nodes, num_nodes)
    if "target_mask" in nodes:
      nmask = nmask & nodes["target_mask"].astype(bool)
    node_graph = jnp.repeat(jnp.arange(num_graphs), graph.n_node,
                            total_repeat_length=num_nodes)
    target = nodes["position_target"].astype(jnp.float32)
    sq = jnp.where(nmask[None, :, None], jnp.square(xs - target[None]), 0.0)
    sq = jnp.mean(sq, axis=-1)  # [B, N]
    count = jax.ops.segment_sum(nmask.astype(jnp.float32), node_graph,
                                num_graphs)
    node_sum = jax.ops.segment_sum(sq.T, node_graph, num_graphs).T  # [B, G]
    node_term = node_sum / jnp.maximum(count, 1.0)[None]
    node_term = jnp.where(gmask[None], node_term, 0.0)
    per_block = per_block + position_loss_weight * node_term
    metrics["node_mse"] = jnp.sum(node_term[-1])
    metrics["num_target_nodes"] = jnp.sum(jnp.where(gmask, count, 0.0))

  per_block = jnp.where(gmask[None], per_block, 0.0)
  metrics["loss_per_block"] = jnp.sum(per_block, axis=1)
  loss_sum = jnp.sum(jnp.mean(per_block, axis=0))
  return loss_sum, metrics["num_graphs"], metrics


def _mask(tree, n: int) -> jnp.ndarray:
  if isinstance(tree, dict) and "mask" in tree:
    return tree["mask"].astype(bool)
  return jnp.ones((n,), bool)
