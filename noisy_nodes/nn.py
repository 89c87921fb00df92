"""Neural-network building blocks shared by every model.

All models see padded batches (see ``noisy_nodes.data.batching``): padding nodes,
edges and graphs are marked by boolean masks in ``graph.nodes['mask']``,
``graph.edges['mask']`` and ``graph.globals['mask']``. Anything that pools
statistics over a batch (BatchNorm, DiffGroupNorm, normalisers) must use those
masks so padding never leaks in, and must reduce over the data-parallel axis
so that 2 devices give the same statistics as 1 device on the global batch.

The engine traces the model inside ``data_parallel_axis(name)``; outside it
(tests, single-device eval) ``axis_name()`` is None and reductions are local.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp

_STATE = threading.local()


@contextlib.contextmanager
def data_parallel_axis(name: Optional[str]):
  """Binds the mesh axis over which batch statistics are reduced."""
  old = getattr(_STATE, "axis", None)
  _STATE.axis = name
  try:
    yield
  finally:
    _STATE.axis = old


def axis_name() -> Optional[str]:
  return getattr(_STATE, "axis", None)


def cross_replica_sum(x):
  """Sum over the data-parallel axis (identity outside ``shard_map``)."""
  name = axis_name()
  return x if name is None else jax.lax.psum(x, name)


# softplus(x) = max(x, 0) + log1p(t) with t = e^-|x| in (0, 1]. log1p costs
# twice an exp on XLA:CPU, so log1p(t) is evaluated as t * P(t): P is the
# degree-9 least-squares Chebyshev fit of log1p(t) / t on [0, 1], written in
# monomials for Horner's rule (relative error of t P(t) < 1.6e-7, about one
# float32 ulp; tests/test_gatgnn.py checks 4 million points of [-87, 100]).
_LOG1P_OVER_T = (1.0, -0.4999985, 0.333291, -0.24947809, 0.19651492,
                 -0.15251452, 0.105332285, -0.05643503, 0.019649167,
                 -0.0032140363)


def _log1p_unit(t):
  """log(1 + t) for t in [0, 1] (see ``_LOG1P_OVER_T``)."""
  acc = jnp.asarray(_LOG1P_OVER_T[-1], t.dtype)
  for c in _LOG1P_OVER_T[-2::-1]:
    acc = acc * t + c
  return t * acc


@jax.custom_jvp
def softplus(x):
  """ln(1 + e^x), equal to ``jax.nn.softplus`` to float32 rounding.

  Softplus is evaluated on every edge of every layer of the crystal models
  ([E, heads·dim] per AGAT layer) and in every MLP of the GNS, where it
  dominates the elementwise cost on CPU. ``jax.nn.softplus`` goes through
  ``logaddexp`` (max, abs, exp, log1p, NaN select) and a generic derivative;
  here the forward is one exp and a polynomial (docs/benchmarks.md) and the
  derivative sigmoid(x) reuses the same exp.
  """
  return jnp.maximum(x, 0) + _log1p_unit(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  t = jnp.exp(-jnp.abs(x))
  y = jnp.maximum(x, 0) + _log1p_unit(t)
  # sigmoid(x) = 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) below. The
  # division is the last operation of the transposed product (d_y / (1 + t)
  # * w transposes to d_y * w / (1 + t)): XLA:CPU does not duplicate an
  # expensive root into several consumers, so d_x is materialised once,
  # where a cheap root (a multiply by a materialised sigmoid) was evaluated
  # again by each consumer (AGAT: the scatter of d xw and the pair sum of
  # d e W_e).
  return y, (dx / (1.0 + t)) * jnp.where(x >= 0, 1.0, t).astype(x.dtype)


def shifted_softplus(x):
  """ln(0.5 e^x + 0.5) = softplus(x) - ln 2 (SchNet; Noisy Nodes §3.2)."""
  return softplus(x) - jnp.log(2.0).astype(x.dtype)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "softplus": softplus,
    "shifted_softplus": shifted_softplus,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.2),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


def get_activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; "
                     f"choose from {sorted(ACTIVATIONS)}") from None


def masked_row_sum(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Σ over rows where ``mask``: x [N, ...], mask [N] bool -> [...].

  A [1, N] @ [N, F] matvec: XLA:CPU lowers a column reduction of a tall
  array to a slow tree of reduce-windows (DiffGroupNorm's [N, 640] column
  sums), while the matvec runs at memory speed.
  """
  rows = x.reshape(x.shape[0], -1)
  total = mask.astype(x.dtype)[None, :] @ rows
  return total.reshape(x.shape[1:])


def masked_moments(x: jnp.ndarray, mask: jnp.ndarray):
  """Mean and (biased) variance over rows where ``mask`` is True.

  Args:
    x: [N, ...] values.
    mask: [N] bool.
  Returns:
    mean, var: [...], reduced over real rows of all data-parallel replicas.
    Two passes (the variance of x - mean), not E[x²] - E[x]².
  """
  count = jnp.maximum(masked_count(mask, x.dtype), 1.0)
  mean = cross_replica_sum(masked_row_sum(x, mask)) / count
  var = cross_replica_sum(masked_row_sum(jnp.square(x - mean), mask)) / count
  return mean, var


def masked_count(mask: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
  """Number of True rows of ``mask`` over all data-parallel replicas."""
  return cross_replica_sum(jnp.sum(mask.astype(dtype)))


class MaskedBatchNorm(hk.Module):
  """BatchNorm over the real rows of a padded batch, with running statistics.

  Training mode normalises with the masked (cross-replica) batch moments and
  updates exponential moving averages held in Haiku state; evaluation mode uses
  the moving averages (PyTorch ``BatchNorm1d`` semantics, momentum 0.1 =
  decay 0.9, and PyTorch's unbiased running variance).

  ``statistics`` and ``affine`` expose the two halves for layers that compute
  the batch moments of an array they never materialise (DiffGroupNorm).
  Statistics are float32 under every ``train.precision``
  (``engine.precision``: a full-precision module).
  """
  full_precision = "norm"

  def __init__(self, decay: float = 0.9, eps: float = 1e-5,
               create_scale: bool = True, create_offset: bool = True,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.decay = decay
    self.eps = eps
    self.create_scale = create_scale
    self.create_offset = create_offset

  def statistics(self, shape, dtype, is_training: bool,
                 batch_moments: Callable[[], Tuple[jnp.ndarray, jnp.ndarray,
                                                   jnp.ndarray]]):
    """(mean, var) to normalise with; updates the running averages.

    ``batch_moments() -> (mean, biased var, row count)`` is called in
    training mode only.
    """
    mean_ema = hk.get_state("mean", shape, dtype, jnp.zeros)
    var_ema = hk.get_state("var", shape, dtype, jnp.ones)
    if not is_training:
      return mean_ema, var_ema
    mean, var, n = batch_moments()
    unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
    hk.set_state("mean", self.decay * mean_ema + (1 - self.decay) * mean)
    hk.set_state("var", self.decay * var_ema + (1 - self.decay) * unbiased)
    return mean, var

  def affine(self, shape, dtype):
    """(scale γ, offset β), ones / zeros when not created."""
    scale = (hk.get_parameter("scale", shape, dtype, jnp.ones)
             if self.create_scale else jnp.ones(shape, dtype))
    offset = (hk.get_parameter("offset", shape, dtype, jnp.zeros)
              if self.create_offset else jnp.zeros(shape, dtype))
    return scale, offset

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray,
               is_training: bool) -> jnp.ndarray:
    shape = x.shape[1:]

    def batch_moments():
      return masked_moments(x, mask) + (masked_count(mask, x.dtype),)
    mean, var = self.statistics(shape, x.dtype, is_training, batch_moments)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.create_scale:
      y = y * hk.get_parameter("scale", shape, x.dtype, jnp.ones)
    if self.create_offset:
      y = y + hk.get_parameter("offset", shape, x.dtype, jnp.zeros)
    return jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), y, 0.0)


class GatheredLinear(hk.Module):
  """``concat([parts[k][rows[k]] for k]) @ w + b`` without the concatenation.

  Same parameters (``w`` [sum F_k, out], ``b`` [out]) and initialisation as
  ``hk.Linear`` on the concatenated input, so the two are interchangeable in
  a checkpoint. Each part is multiplied by its block of ``w`` *before* its
  rows are gathered: for an interaction network's edge update
  ``MLP([e, v[senders], v[receivers]])`` the node blocks cost N·F·out
  instead of E·F·out each (E ~ 12 N), a third of the first layer's FLOPs.
  """

  def __init__(self, output_size: int, name: Optional[str] = None):
    super().__init__(name=name)
    self.output_size = output_size

  def __call__(self, parts: Sequence[jnp.ndarray],
               rows: Sequence[Optional[jnp.ndarray]]) -> jnp.ndarray:
    sizes = [p.shape[-1] for p in parts]
    fan_in = sum(sizes)
    dtype = parts[0].dtype
    w = hk.get_parameter("w", [fan_in, self.output_size], dtype,
                         hk.initializers.TruncatedNormal(1.0 / fan_in ** 0.5))
    b = hk.get_parameter("b", [self.output_size], dtype, jnp.zeros)
    out, start = None, 0
    for part, index, size in zip(parts, rows, sizes):
      y = part @ w[start:start + size]
      start += size
      if index is not None:
        y = y[index]
      out = y if out is None else out + y
    return out + b


class ReadoutLinear(hk.Linear):
  """``hk.Linear`` for the layer that produces a model's predictions: it runs
  in float32 under every ``train.precision`` (``engine.precision``), since a
  bf16 output keeps 8 significant bits (an energy of 5 eV to 0.03 eV).
  Parameters are those of ``hk.Linear`` (give the same ``name``)."""
  full_precision = "readout"


class MLP(hk.Module):
  """Linear layers with an activation between them (none after the last),
  optionally followed by LayerNorm (the GNS convention).

  Call with an array ``x`` [R, F], or with ``parts`` and ``rows`` to feed the
  concatenation of gathered parts (see ``GatheredLinear``) to the first layer.
  """

  def __init__(self, sizes: Sequence[int], activation: str = "relu",
               activate_final: bool = False, layer_norm: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.sizes = tuple(sizes)
    self.act = get_activation(activation)
    self.activate_final = activate_final
    self.layer_norm = layer_norm

  def __call__(self, x=None, *, parts=None, rows=None):
    if (x is None) == (parts is None):
      raise ValueError("MLP needs exactly one of x or parts")
    for i, size in enumerate(self.sizes):
      if i == 0 and parts is not None:
        x = GatheredLinear(size, name="linear_0")(
            parts, rows if rows is not None else [None] * len(parts))
      else:
        x = hk.Linear(size, name=f"linear_{i}")(x)
      if i < len(self.sizes) - 1 or self.activate_final:
        x = self.act(x)
    if self.layer_norm:
      x = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)(x)
    return x


def segment_mean(data, segment_ids, num_segments, mask=None):
  """Mean of ``data`` rows per segment (rows with mask False ignored), summed
  in float32 whatever the dtype of ``data``."""
  data = data.astype(jnp.promote_types(data.dtype, jnp.float32))
  w = jnp.ones(data.shape[:1], data.dtype) if mask is None else mask.astype(
      data.dtype)
  w = w.reshape((-1,) + (1,) * (data.ndim - 1))
  total = jax.ops.segment_sum(data * w, segment_ids, num_segments)
  count = jax.ops.segment_sum(w, segment_ids, num_segments)
  return total / jnp.maximum(count, 1.0)


def node_graph_index(n_node: jnp.ndarray, num_nodes: int) -> jnp.ndarray:
  """[N] index of the graph each node belongs to (static ``num_nodes``)."""
  return jnp.repeat(jnp.arange(n_node.shape[0]), n_node,
                    total_repeat_length=num_nodes)


def count_params(params) -> int:
  """Number of scalars in a parameter tree (every model's count)."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
