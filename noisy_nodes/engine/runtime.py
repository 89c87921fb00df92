"""Process-level memory settings for XLA:CPU.

Returning compiler scratch. XLA:CPU's compilation of a 20-layer DeeperGATGNN
training step allocates ~400 MB of scratch that glibc keeps after it is
freed, so the process's resident memory stays ~0.95 GB for the whole run
though the step itself needs ~0.5 GB. ``release_free_memory``
(``malloc_trim``), called by the trainer after each compilation, hands it
back: ~0.55 GB resident while training, and a lower peak because the next
compilation starts from less.

Transparent huge pages, a setting that only takes effect when the process
starts. XLA allocates every step's buffers with ``malloc``; the GNS at the
paper's width (latent 512, 12,800 edge rows per batch) has [E, 512]
intermediates of 26 MB, which glibc serves with fresh ``mmap`` regions whose
4 KiB pages fault in one by one on first touch each step. glibc >= 2.35 can
``madvise`` those regions for 2 MiB pages (tunable ``glibc.malloc.hugetlb=1``)
but reads tunables only at process start, so ``reexec_with_hugepages``
restarts the interpreter with the same arguments and the tunable set.
It speeds up the paper-width GNS step and not the small crystal models
(docs/benchmarks.md), so configs opt in (``train.hugepages``);
``NN_HUGEPAGES=0`` opts out everywhere.

The persistent compilation cache. Compiling a training step is most of a
run's start-up (~15-45 s for the demo GNS on 2 CPU cores, minutes for deep
models on TPU), and it is paid again by every resume, every seed of a sweep
and every chunk of an experiment that trains in chunks, though the program
is the same. ``enable_compilation_cache`` points JAX's persistent cache at a
folder (``train.compilation_cache``, default ``~/.cache/noisy_nodes/xla``,
``NN_COMPILATION_CACHE`` overrides, ``off`` disables): a program compiled
once is read back in well under a second by any later process with the same
program, JAX and backend. Only compilations over a second are stored.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def hugepages_supported() -> bool:
  """Linux with THP not ``never`` and glibc >= 2.35."""
  try:
    version = os.confstr("CS_GNU_LIBC_VERSION") or ""   # "glibc 2.36"
    with open(_THP) as f:
      mode = f.read()
  except (OSError, ValueError, AttributeError):
    return False
  name, _, number = version.partition(" ")
  try:
    major, minor = (int(x) for x in number.split(".")[:2])
  except ValueError:
    return False
  return name == "glibc" and (major, minor) >= (2, 35) and "[never]" not in mode


def expected_platform() -> str:
  """'cpu', 'gpu' or 'tpu': where JAX will run, without starting it.

  Huge pages must be decided before JAX starts (a GPU backend would claim
  its memory before the restart). ``JAX_PLATFORMS`` when set; otherwise an
  accelerator plugin that is installed *and* a device node it drives.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    first = platforms.split(",")[0].strip().lower()
    return {"cuda": "gpu", "rocm": "gpu"}.get(first, first)

  def installed(*names):
    return any(importlib.util.find_spec(n) is not None for n in names)
  if os.path.exists("/dev/nvidia0") and installed(
      "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12"):
    return "gpu"
  if os.path.exists("/dev/kfd") and installed("jax_rocm60_plugin",
                                              "jax_rocm7_plugin"):
    return "gpu"
  if (os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")) and (
      installed("libtpu")):
    return "tpu"
  return "cpu"


def hugepages_active() -> bool:
  return "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", "")


def reexec_command(env: dict) -> tuple:
  """(executable, argv, env) that restarts this process with huge pages."""
  tunables = env.get("GLIBC_TUNABLES", "")
  new_env = dict(env, GLIBC_TUNABLES=":".join(t for t in (tunables, TUNABLE)
                                               if t))
  return sys.executable, [sys.executable] + list(sys.orig_argv[1:]), new_env


def reexec_with_hugepages(wanted: bool) -> None:
  """Restarts the process with ``glibc.malloc.hugetlb=1`` if it helps.

  Call before any work (before ``jax.distributed`` in particular): the
  process image is replaced (same PID, same arguments). Does nothing when
  not ``wanted``, when ``NN_HUGEPAGES=0``, when already active, where
  unsupported, or when JAX will run on a GPU/TPU (``expected_platform``:
  the buffers then live in device memory).
  """
  if (not wanted or os.environ.get("NN_HUGEPAGES") == "0" or
      hugepages_active() or not hugepages_supported() or
      expected_platform() != "cpu"):
    return
  exe, argv, env = reexec_command(dict(os.environ))
  logging.info("restarting with %s (transparent huge pages for XLA buffers; "
               "NN_HUGEPAGES=0 turns this off)", TUNABLE)
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(exe, argv, env)
  except OSError as e:  # carry on without huge pages rather than fail
    logging.warning("could not restart with %s (%s); continuing without",
                    TUNABLE, e)


DEFAULT_COMPILATION_CACHE = "~/.cache/noisy_nodes/xla"


def compilation_cache_dir(configured: str = DEFAULT_COMPILATION_CACHE) -> str:
  """The cache folder in effect ('' = off): ``NN_COMPILATION_CACHE`` first."""
  path = os.environ.get("NN_COMPILATION_CACHE", configured)
  if path.strip().lower() in ("", "off", "0", "none"):
    return ""
  return os.path.abspath(os.path.expanduser(path))


def enable_compilation_cache(configured: str = DEFAULT_COMPILATION_CACHE
                             ) -> str:
  """Turns on JAX's persistent compilation cache; returns its folder or ''.

  Takes effect for every later compilation of the process unless a cache
  was already in use (the first folder wins: JAX opens its cache once).
  A folder that cannot be created leaves the cache off with a warning.
  """
  import jax  # pylint: disable=g-import-not-at-top
  path = compilation_cache_dir(configured)
  if not path:
    return ""
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache %s unusable (%s): compiling without",
                    path, e)
    return ""
  jax.config.update("jax_compilation_cache_dir", path)
  return path


@functools.lru_cache(maxsize=None)
def _malloc_trim():
  try:
    return ctypes.CDLL(None).malloc_trim
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
    return None


def release_free_memory() -> bool:
  """Returns freed heap memory to the OS (glibc ``malloc_trim(0)``).

  A few milliseconds; call after a compilation, never in the hot loop.
  Returns whether anything could be released.
  """
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False
