"""What every benchmark prints about where it ran (any JAX backend).

``describe(policy)``: backend, device kind and count, precision.
``matmul_flops_per_s(policy)``: a dense n x n matmul's rate in the run's
precision (bf16 operands under bf16, TF32 under tf32), the yardstick the
benchmarks divide their step FLOP/s by. ``peak_memory()``: the device's peak
bytes in use (``Device.memory_stats()``, GPU/TPU) or, where JAX keeps no
statistics (CPU), the process's peak resident memory. ``profile(dir)``: a
``jax.profiler`` trace of the enclosed steps (``--profile DIR``; open with
TensorBoard's profile plugin or Perfetto).
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import time
from typing import Optional

import jax
import jax.numpy as jnp

from noisy_nodes.engine import parallel


def describe(policy) -> str:
  d = jax.devices()[0]
  return (f"backend {jax.default_backend()}, {jax.device_count()} x "
          f"{d.device_kind}, precision {policy.name}, JAX {jax.__version__}")


def matmul_flops_per_s(policy, n: int = 2048, repeats: int = 7) -> float:
  """FLOP/s of an n x n matmul in ``policy``'s compute dtype and precision."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(
      policy.compute_dtype)

  def mm(x, y):
    with policy.step_scope():
      return jnp.dot(x, y)
  f = jax.jit(mm, compiler_options=parallel.compiler_options())
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2.0 * n ** 3 / statistics.median(times)


def peak_memory() -> tuple:
  """(bytes, what): the device's peak in use, else the process's peak RSS."""
  stats: Optional[dict] = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return int(rss), "process peak RSS (no device memory_stats)"


@contextlib.contextmanager
def profile(directory: str = ""):
  """``jax.profiler.trace(directory)`` when given, else nothing."""
  if not directory:
    yield
    return
  with jax.profiler.trace(directory):
    yield
  print(f"profile written to {directory}")
