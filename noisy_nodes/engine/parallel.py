"""Data parallelism with ``jax.shard_map`` (pmap semantics) over all devices.

Each device gets its own padded batch (a slice of the leading device axis);
parameters are replicated. Gradients are *summed* across devices and divided
by the total number of real examples on all devices, so a step on D devices
equals one step on the union of their batches on 1 device (``pmean`` of
per-device means would over-weight devices with fewer real graphs).

Multi-host: ``initialize_distributed`` calls ``jax.distributed.initialize``;
the mesh then spans every process's devices and each host feeds only its
local slice via ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from noisy_nodes import nn
from noisy_nodes.engine import optim
from noisy_nodes.engine import precision as precision_lib
from noisy_nodes.engine import runtime

AXIS = "batch"


class TrainState(NamedTuple):
  step: jnp.ndarray          # int32 scalar
  params: Any
  state: Any                 # Haiku state (BatchNorm statistics...)
  opt_state: Any
  ema_params: Any            # == params when EMA is off
  rng: jnp.ndarray           # uint32[2] PRNG key data


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           mode: str = "auto") -> bool:
  """Starts ``jax.distributed`` when running on several hosts.

  Explicit arguments win, then the NN_COORDINATOR_ADDRESS / NN_NUM_PROCESSES /
  NN_PROCESS_ID environment (``launch/local.py`` sets them). With none given,
  ``mode='auto'`` initialises without arguments under SLURM (several tasks) or
  on a multi-worker TPU slice, where JAX detects the cluster itself.
  Returns True if ``jax.distributed`` was initialised.
  """
  addr = coordinator_address or os.environ.get("NN_COORDINATOR_ADDRESS")
  nproc = num_processes or os.environ.get("NN_NUM_PROCESSES")
  pid = process_id if process_id is not None else os.environ.get(
      "NN_PROCESS_ID")
  if mode == "off":
    return False
  if addr:
    if nproc is None or pid is None:
      raise ValueError("coordinator_address needs num_processes and "
                       "process_id (flags or NN_NUM_PROCESSES/NN_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=addr,
                               num_processes=int(nproc), process_id=int(pid))
    return True
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if mode == "on" or slurm or tpu_pod:
    jax.distributed.initialize()
    return True
  return False


def set_cpu_devices(count: int) -> None:
  """Makes this process expose ``count`` XLA:CPU devices.

  Each is one data-parallel replica of the training step (its own slice of
  the batch, gradients and norm statistics reduced over all of them, as on
  accelerators), executed on its own thread. XLA:CPU runs many kernels of a
  message-passing step on a single thread (scatter-adds, small fusions), so
  on a CPU-only host one device per core keeps the cores busier than one
  device with an intra-op thread pool (docs/benchmarks.md). Must run before
  JAX starts its backends; raises otherwise.
  """
  if count < 1:
    raise ValueError(f"cpu devices must be >= 1, got {count}")
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as e:  # backends already started
    raise RuntimeError(f"cannot set {count} CPU devices: {e}") from e


def make_mesh(local_only: bool = False) -> Mesh:
  devices = jax.local_devices() if local_only else jax.devices()
  return Mesh(np.array(devices), (AXIS,))


# XLA:CPU hands elementwise and reduce fusions to YNNPACK by default; on the
# crystal and GNS steps those become separate kernels over materialised
# [E, heads·D] broadcasts of every constant (a profile of the 20-layer
# DeeperGATGNN step: 11 constant broadcasts of [10000, 256] per layer), so
# YNNPACK is kept for matmuls only (docs/benchmarks.md). NN_XLA_DEFAULTS=1
# keeps XLA's defaults.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def _host_has_avx512() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return any(line.startswith("flags") and " avx512f" in line for line in f)
  except OSError:
    return False


# XLA:CPU vectorises its own kernels for 256-bit registers by default (to
# spare older Xeons the AVX-512 clock penalty); on an AVX-512 host 512-bit
# vectors speed up softplus, exp and the other [E, 256] elementwise kernels
# (docs/benchmarks.md).
if _host_has_avx512():
  _CPU_OPTIONS["xla_cpu_prefer_vector_width"] = 512


@functools.lru_cache(maxsize=None)
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(
        np.float32(0)).compile()
    return True
  except Exception:  # pylint: disable=broad-except
    logging.warning("this jaxlib does not take %s; compiling with XLA's "
                    "defaults", sorted(_CPU_OPTIONS))
    return False


def compiler_options(mesh: Optional[Mesh] = None) -> dict:
  """XLA options for jitted steps on ``mesh``'s (or the default) platform."""
  platform = (jax.default_backend() if mesh is None
              else mesh.devices.flat[0].platform)
  if (platform != "cpu" or os.environ.get("NN_XLA_DEFAULTS") == "1" or
      not _cpu_options_supported()):
    return {}
  return dict(_CPU_OPTIONS)


def replicate(tree, mesh: Mesh):
  """Host values (identical on every process) -> replicated global arrays."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
  return jax.tree_util.tree_map(put, tree)


def shard_batch(batch, mesh: Mesh):
  """Host-local [D_local, ...] arrays -> global arrays sharded on ``batch``."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _unstack(tree):
  """Inside shard_map each device holds a [1, ...] block of the device axis."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_train_step(task, transformed: hk.TransformedWithState,
                    optimizer: optax.GradientTransformation, mesh: Mesh,
                    ema_decay: float = 0.0, skip_nonfinite: bool = False,
                    policy: Optional[precision_lib.Policy] = None
                    ) -> Callable[[TrainState, Any], Any]:
  """Builds the jitted, device-sharded training step.

  Returns ``step(train_state, batch) -> (train_state, metrics)`` where
  ``batch`` leads with the device axis and metrics are global averages
  (plus ``finite``: whether loss and gradients were finite; when not, the
  update is not applied). ``policy`` (default fp32) sets the matmul
  precision; ``transformed`` carries its casts (``Policy.wrap``). The loss,
  gradients, optimizer and EMA are float32 under every policy.
  """
  policy = policy or precision_lib.Policy("fp32", mesh.devices.flat[0].platform)

  @policy.step_scope()
  def per_device(ts: TrainState, batch):
    batch = _unstack(batch)
    key = jax.random.wrap_key_data(ts.rng)
    key, step_key = jax.random.split(key)
    dev_key = jax.random.fold_in(jax.random.fold_in(step_key, ts.step),
                                 jax.lax.axis_index(AXIS))

    def loss_fn(params):
      with nn.data_parallel_axis(AXIS):
        outputs, new_state = transformed.apply(params, ts.state, dev_key,
                                               batch, True)
        outputs = precision_lib.to_float32(outputs)
        loss_sum, weight, metrics = task.loss(outputs, batch)
      return loss_sum, (weight, metrics, new_state)

    (loss_sum, (weight, metrics, new_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(ts.params)
    total = jnp.maximum(jax.lax.psum(weight, AXIS), 1e-12)
    grads = jax.tree_util.tree_map(lambda g: jax.lax.psum(g, AXIS) / total,
                                   grads)
    loss = jax.lax.psum(loss_sum, AXIS) / total
    metrics = {k: jax.lax.psum(v, AXIS) / total for k, v in metrics.items()}
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    params = optax.apply_updates(ts.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if ema_decay > 0:
      ema = optim.ema_update(ts.ema_params, params, ts.step, ema_decay)
    else:
      ema = params

    def keep(new, old):
      return jax.tree_util.tree_map(
          lambda n, o: jnp.where(finite, n, o), new, old)
    new_ts = TrainState(step=ts.step + 1, params=keep(params, ts.params),
                        state=keep(new_state, ts.state),
                        opt_state=keep(opt_state, ts.opt_state),
                        ema_params=keep(ema, ts.ema_params),
                        rng=jax.random.key_data(key))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   finite=finite.astype(jnp.float32))
    return new_ts, metrics

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)),
                          out_specs=(P(), P()), check_vma=False)
  del skip_nonfinite  # the host decides whether a non-finite step is fatal
  return jax.jit(sharded, donate_argnums=(0,),
                 compiler_options=compiler_options(mesh))


def make_eval_step(task, transformed: hk.TransformedWithState, mesh: Mesh,
                   policy: Optional[precision_lib.Policy] = None):
  """``eval(params, state, batch) -> predictions`` with a device axis."""
  policy = policy or precision_lib.Policy("fp32", mesh.devices.flat[0].platform)

  @policy.step_scope()
  def per_device(params, state, batch):
    batch = _unstack(batch)
    outputs, _ = transformed.apply(params, state, None, batch, False)
    preds = task.predict(precision_lib.to_float32(outputs), batch)
    return jax.tree_util.tree_map(lambda x: x[None], preds)

  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                          out_specs=P(AXIS), check_vma=False)
  return jax.jit(sharded, compiler_options=compiler_options(mesh))


def compile_ahead(step, *args) -> None:
  """Compiles the jitted ``step`` for ``args`` and frees the compiler's
  scratch (``runtime.release_free_memory``) before the step first runs.

  The next ``step(*args)`` (same shapes) reuses the compiled executable.
  A first call that compiles and runs at once holds XLA's compilation
  scratch (~0.3 GB for a 20-layer DeeperGATGNN) and the step's own buffers
  together; compiling ahead makes the peak the larger of the two.
  """
  step.lower(*args).compile()
  if jax.default_backend() == "cpu":  # host-heap scratch; none on GPU/TPU
    runtime.release_free_memory()


def to_host(tree):
  """Fully replicated/addressable global arrays -> numpy on this host."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_data(0)
    return np.asarray(x)
  return jax.tree_util.tree_map(get, tree)


def local_rows(x) -> np.ndarray:
  """The rows of a batch-sharded global array that live on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    return np.concatenate([np.asarray(s.data) for s in shards])
  return np.asarray(x)


def cpu_machinery() -> dict:
  """Which CPU-only settings this process may use; all off on GPU/TPU,
  where none of them is built or set: the fused AGAT kernels
  (``crystal.models.agat_cpu``, built on first use by a GATGNN training
  step), the XLA:CPU compiler options, huge pages for XLA:CPU buffers and
  handing compiler scratch back after each compilation."""
  cpu = jax.default_backend() == "cpu"
  return {"agat_cpu_kernels": cpu and os.environ.get("NN_AGAT_KERNEL") != "0",
          "xla_cpu_options": bool(compiler_options()),
          "hugepages": cpu and runtime.hugepages_active(),
          "malloc_trim": cpu}


def log_devices():
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s)",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  logging.info("device kind %s; CPU-only settings: %s",
               jax.devices()[0].device_kind,
               ", ".join(f"{k} {'on' if v else 'off'}"
                         for k, v in cpu_machinery().items()))
