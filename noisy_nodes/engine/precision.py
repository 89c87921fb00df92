"""Numerical precision of a training or evaluation step (``train.precision``).

  fp32   everything in float32; on GPU/TPU matmuls at full float32 precision
         (JAX's default there rounds float32 matmul inputs to TF32 / bf16).
  tf32   float32 storage and arithmetic, matmuls with TF32 inputs (GPU) or
         three bf16 passes (TPU); the same as fp32 on CPU.
  bf16   mixed precision: float32 master parameters, optimizer state, EMA,
         BatchNorm running statistics and checkpoints; matmuls and
         activations in bfloat16; norms, softmaxes, pooling sums, readouts,
         losses and metrics in float32 (docs/design.md, "Precision").
  auto   bf16 on TPU and on GPUs with bf16 tensor cores (compute capability
         >= 8.0: A100, H100, H200), fp32 elsewhere (XLA:CPU has no fast bf16
         matmul; older GPUs neither).

The bf16 policy is applied to a Haiku model from the outside, so no model
carries a copy of it: (``Policy.wrap(model_fn)``, inside ``hk.transform``)
installs a method interceptor, a parameter creator and a getter:

  * every parameter is created in float32 (the master copy the optimizer
    updates and the checkpoint stores);
  * a *compute* module (any module not listed below) reads its parameters as
    bf16, gets its floating inputs cast to bf16 and returns bf16 outputs, so
    matmuls run on bf16 operands (the fast path of tensor cores and MXUs) and
    the activations between layers are stored in bf16;
  * a *full-precision* module (class attribute ``full_precision``: 'norm' for
    BatchNorm / DiffGroupNorm, plus ``hk.LayerNorm``; 'readout' for the
    output layer) computes in float32 with float32 parameters, and so does
    every module it calls; a norm returns its result in the compute dtype (a
    layer's carry stays one dtype through ``lax.scan``), a readout in
    float32 (a bf16 energy of 5 eV would be rounded to 0.03 eV);
  * a *model* (a module called on a ``jraph.GraphsTuple``) keeps its raw
    inputs as given (positions, vectors, cells stay float32: the geometry is
    computed before any rounding) and returns what its layers made.

The engine casts the model's outputs to float32 before the loss, so losses,
metrics and gradients reductions are float32; gradients arrive in float32 on
the float32 master parameters (the bf16 casts are differentiated through).
No loss scaling: bf16 has float32's exponent range (fp16 is not offered).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp
import jraph

PRECISIONS = ("fp32", "bf16", "tf32")

_STATE = threading.local()


@dataclasses.dataclass(frozen=True)
class Policy:
  """What runs in which dtype; see the module docstring."""
  name: str                      # fp32 | bf16 | tf32
  platform: str = "cpu"

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.name == "bf16" else jnp.float32

  @property
  def matmul_precision(self) -> Optional[str]:
    """``jax.default_matmul_precision`` for the step; None leaves XLA:CPU's
    default (float32 dots there are float32 already)."""
    if self.platform == "cpu":
      return None
    return "tensorfloat32" if self.name == "tf32" else "highest"

  @contextlib.contextmanager
  def step_scope(self):
    """Wraps the traced body of a step (matmul precision)."""
    if self.matmul_precision is None:
      yield
    else:
      with jax.default_matmul_precision(self.matmul_precision):
        yield

  def wrap(self, model_fn):
    """``model_fn`` (to be ``hk.transform``-ed) under the policy's casts."""
    if self.compute_dtype == jnp.float32:
      return model_fn

    @functools.wraps(model_fn)
    def wrapped(*args, **kwargs):
      with hk.custom_creator(_float32_creator), \
          hk.custom_getter(self._getter), \
          hk.intercept_methods(self._interceptor):
        return model_fn(*args, **kwargs)
    return wrapped

  def _getter(self, next_getter, value, context):
    del context
    if _full_depth() == 0 and jnp.issubdtype(value.dtype, jnp.floating):
      value = value.astype(self.compute_dtype)
    return next_getter(value)

  def _interceptor(self, next_f, args, kwargs, context: hk.MethodContext):
    kind = module_kind(context.module)
    if _full_depth() > 0 or _any_graph((args, kwargs)):
      return next_f(*args, **kwargs)  # inside a norm / readout, or a model
    if kind == "compute":
      args, kwargs = _cast((args, kwargs), self.compute_dtype)
      return _cast(next_f(*args, **kwargs), self.compute_dtype)
    args, kwargs = _cast((args, kwargs), jnp.float32)
    _STATE.full = _full_depth() + 1
    try:
      out = next_f(*args, **kwargs)
    finally:
      _STATE.full -= 1
    return out if kind == "readout" else _cast(out, self.compute_dtype)


def _float32_creator(next_creator, shape, dtype, init, context):
  del context
  if jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return next_creator(shape, dtype, init)


def _full_depth() -> int:
  return getattr(_STATE, "full", 0)


def _cast(tree, dtype):
  """Floating arrays of ``tree`` as ``dtype`` (ints, bools, None as they are)."""
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def _is_float(x) -> bool:
  return hasattr(x, "dtype") and hasattr(x, "astype") and jnp.issubdtype(
      x.dtype, jnp.floating)


def _any_graph(tree) -> bool:
  return any(isinstance(x, jraph.GraphsTuple) for x in jax.tree_util.tree_leaves(
      tree, is_leaf=lambda x: isinstance(x, jraph.GraphsTuple)))


def module_kind(module: hk.Module) -> str:
  """'norm' | 'readout' (full precision) or 'compute'."""
  kind = getattr(type(module), "full_precision", None)
  if kind is not None:
    return kind
  return "norm" if isinstance(module, hk.LayerNorm) else "compute"


def to_float32(tree):
  """Floating leaves of ``tree`` as float32 (model outputs before the loss)."""
  return _cast(tree, jnp.float32)


def default_precision(platform: str, device=None) -> str:
  """What ``auto`` resolves to on ``platform`` (device: its first device)."""
  if platform == "tpu":
    return "bf16"
  if platform == "gpu":
    capability = getattr(device, "compute_capability", None)
    try:
      major = int(str(capability).split(".")[0])
    except ValueError:
      major = 0
    return "bf16" if major >= 8 else "fp32"
  return "fp32"


def resolve(name: str = "auto", platform: Optional[str] = None,
            device=None) -> Policy:
  """The policy for ``train.precision = name`` on ``platform``."""
  platform = platform or jax.default_backend()
  if platform == "cuda" or platform == "rocm":
    platform = "gpu"
  if name == "auto":
    if device is None and platform == jax.default_backend():
      device = jax.devices()[0]
    name = default_precision(platform, device)
  if name not in PRECISIONS:
    raise ValueError(f"train.precision must be one of {PRECISIONS + ('auto',)}"
                     f", got {name!r}")
  return Policy(name, platform)


def from_config(config) -> Policy:
  """``config.train.precision`` (absent: 'auto'), logged once."""
  name = str(config.train.get("precision", "auto") or "auto")
  policy = resolve(name)
  logging.info("precision %s%s on %s (%s)", policy.name,
               " (auto)" if name == "auto" else "", policy.platform,
               jax.devices()[0].device_kind)
  return policy
