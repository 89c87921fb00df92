"""Fused AGAT edge kernels for XLA:CPU (``agat_cpu.cc``, XLA FFI).

The AGAT layer's edge block, in the paired edge layout of
``noisy_nodes.data.batching`` (row t reads pair term ``ew[t mod P]``):

  u = softplus(xw[receivers] + ew[pair])                      [E, H·D]
  attention_dots(...)  = [u·att_0 ‖ u·att_1] per head         [E, 2H]
  messages(..., seg, w)[i] = Σ_{t: seg[t] = i} Σ_h w[t, h] u[t, h, :]   [N, D]

each with a hand-written gradient (``jax.custom_vjp``). On XLA:CPU the
layer is memory-bound on ~15 materialised [E, H·D] arrays; these kernels
walk the edges once per call and never store one (u and sigmoid(pre) are
rebuilt from xw, cache-resident, and ew), so the layer's activation memory
is its [E, 2H] logits and [N, D] output. Each walk splits its rows over
XLA:CPU's intra-op threads. GPUs and TPUs keep the XLA path.

The C++ source is compiled on first use with the host's C++ compiler
(``g++ -O3 -march=native``; ``$CXX`` overrides) into
``$NN_KERNEL_CACHE`` (default ``~/.cache/noisy_nodes/kernels``), keyed by
the source, jaxlib's version and the CPU's flags. If that fails the model
uses the XLA path and says why once; ``NN_AGAT_KERNEL=0`` turns the kernels
off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "agat_cpu.cc")
_TARGETS = ("AgatAttentionDots", "AgatMessages", "AgatMessagesWeightGrad",
            "AgatEdgeBlockGrad")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC",
          "-fno-math-errno", "-fopenmp-simd")


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return ""


def _library_path() -> str:
  import jaxlib  # pylint: disable=g-import-not-at-top
  with open(_SOURCE, "rb") as f:
    source = f.read()
  key = hashlib.sha256(b"\0".join([
      source, jaxlib.__version__.encode(), _cpu_flags().encode(),
      " ".join(_FLAGS).encode()])).hexdigest()[:16]
  cache = os.environ.get("NN_KERNEL_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "noisy_nodes", "kernels")
  return os.path.join(cache, f"agat_cpu_{key}.so")


def _compile(path: str) -> None:
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which(
      "c++")
  if compiler is None:
    raise RuntimeError("no C++ compiler (set $CXX)")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
  os.close(fd)
  try:
    cmd = [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), _SOURCE, "-o", tmp]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if run.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-2000:]}")
    os.replace(tmp, path)  # atomic: concurrent builders never see half a file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.lru_cache(maxsize=None)
def _load() -> Optional[str]:
  """Builds (once) and registers the kernels; None if ready, else why not."""
  if os.environ.get("NN_AGAT_KERNEL", "1") == "0":
    return "NN_AGAT_KERNEL=0"
  try:
    path = _library_path()
    if not os.path.exists(path):
      logging.info("building the AGAT CPU kernels into %s", path)
      _compile(path)
    lib = ctypes.cdll.LoadLibrary(path)
    for name in _TARGETS:
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)),
                                  platform="cpu")
  except Exception as err:  # pylint: disable=broad-except
    logging.warning("AGAT CPU kernels unavailable, using the XLA path: %s",
                    err)
    return str(err)
  return None


def available() -> bool:
  """True if the kernels can run here (CPU backend, built and registered)."""
  return jax.default_backend() == "cpu" and _load() is None


def _f32(shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def _call(target, results):
  # vmap (not used by the engine) runs the kernel once per batch element.
  return jax.ffi.ffi_call(target, results, vmap_method="sequential")


def _index(a):
  return jnp.asarray(a, jnp.int32)


# The two custom calls of a layer are differentiated as one block. Autodiff
# reaches `messages` first (its output feeds the next layer); its VJP
# computes only d weight (one walk) and hands g_out and weight on, through
# the cotangent of `link` (a zero vector `attention_dots` returns and
# `messages` takes), to the VJP of `attention_dots`, which then forms the
# whole d pre = (g_both·att + weight ⊗ g_out) · sigmoid(pre) in one walk.
# Two walks instead of three (u and sigmoid(pre) are rebuilt in each), and
# no [E, H·D] cotangent is ever stored. `link` carries data, not a true
# cotangent: it is only meaningful between these two functions, which
# gatgnn.AGATLayer always calls as a pair.


def _link_size(n, dim, e, heads):
  return n * dim + e * heads


@jax.custom_vjp
def attention_dots(xw, ew, receivers, segments, att):
  """xw [N, H·D], ew [P, H·D], receivers/segments [E], att [2, H, D] ->
  (both [E, 2H], link): both[t, k·H + h] = u[t, h]·att[k, h]; ``link`` goes
  to ``messages`` (same receivers/segments)."""
  n, hd = xw.shape
  e, heads = receivers.shape[0], att.shape[1]
  both = _call("AgatAttentionDots", _f32((e, 2 * heads)))(
      xw, ew, _index(receivers), att)
  return both, jnp.zeros((_link_size(n, hd // heads, e, heads),), xw.dtype)


def _attention_dots_fwd(xw, ew, receivers, segments, att):
  return (attention_dots(xw, ew, receivers, segments, att),
          (xw, ew, receivers, segments, att))


def _attention_dots_bwd(res, cotangents):
  xw, ew, receivers, segments, att = res
  g_both, g_link = cotangents
  n, hd = xw.shape
  e, heads = receivers.shape[0], att.shape[1]
  g_out = g_link[:n * (hd // heads)].reshape(n, hd // heads)
  weight = g_link[n * (hd // heads):].reshape(e, heads)
  d_xw, d_ew, d_att = _call(
      "AgatEdgeBlockGrad", (_f32(xw.shape), _f32(ew.shape), _f32(att.shape)))(
          xw, ew, _index(receivers), _index(segments), att, g_both, weight,
          g_out)
  return d_xw, d_ew, None, None, d_att


attention_dots.defvjp(_attention_dots_fwd, _attention_dots_bwd)


@jax.custom_vjp
def messages(xw, ew, receivers, segments, weight, link):
  """Σ_{t: segments[t] = i} Σ_h weight[t, h] u[t, h, :] -> [N, D]
  (weight [E, H]; ``link`` from the ``attention_dots`` call on the same
  xw, ew, receivers and segments)."""
  del link
  n, hd = xw.shape
  return _call("AgatMessages", _f32((n, hd // weight.shape[1])))(
      xw, ew, _index(receivers), _index(segments), weight)


def _messages_fwd(xw, ew, receivers, segments, weight, link):
  return (messages(xw, ew, receivers, segments, weight, link),
          (xw, ew, receivers, segments, weight))


def _messages_bwd(res, g_out):
  xw, ew, receivers, segments, weight = res
  d_weight = _call("AgatMessagesWeightGrad", _f32(weight.shape))(
      xw, ew, _index(receivers), _index(segments), g_out)
  link = jnp.concatenate([g_out.reshape(-1), weight.reshape(-1)])
  return (jnp.zeros_like(xw), jnp.zeros_like(ew), None, None, d_weight, link)


messages.defvjp(_messages_fwd, _messages_bwd)


def edge_block(xw, ew, receivers, segments, att, middle):
  """The kernels' composition as the AGAT layer uses it (tests):
  ``middle(both) -> weight`` stands for BN, softmax and the reverse-row swap
  between the two calls; returns the messages [N, D]."""
  both, link = attention_dots(xw, ew, receivers, segments, att)
  return messages(xw, ew, receivers, segments, middle(both), link)


def reference_edge_block(xw, ew, receivers, segments, att, middle):
  """``edge_block`` in plain jnp (what XLA computes without the kernels)."""
  from noisy_nodes import nn as nn_lib  # pylint: disable=g-import-not-at-top
  e, p = receivers.shape[0], ew.shape[0]
  u = nn_lib.softplus(xw[receivers] + ew[jnp.arange(e) % p])
  heads, dim = att.shape[1], att.shape[2]
  u = u.reshape(e, heads, dim)
  both = jnp.concatenate([jnp.einsum("ehd,hd->eh", u, att[0]),
                          jnp.einsum("ehd,hd->eh", u, att[1])], axis=1)
  msg = (u * middle(both)[:, :, None]).sum(1)
  return jax.ops.segment_sum(msg, segments, xw.shape[0])


__all__ = ["attention_dots", "available", "edge_block", "messages",
           "reference_edge_block"]
