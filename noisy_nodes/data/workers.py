"""Featurisation in worker processes (``data.workers=K``).

K processes featurise training samples ahead of the step, in the stream's
order; the main process packs them (``batching.GraphStream``). A sample's
graph is a pure function of (seed, epoch, index) (``batching.sample_rng``),
so the batches are identical for every K, including K = 0 (featurised in the
main process's prefetch thread), and exact resume still holds.

Workers are *spawned* (a fork of a process that has initialised JAX can
deadlock in XLA's thread pools) and rebuild what they need from picklable
pieces: the config as JSON, the task's ``state_dict()`` (what
``noisy_nodes.load`` rebuilds a task from) and the split's ``Source`` (paths
and index arrays; LMDB environments re-open lazily in each worker).

Faults never hang the run: a sample that does not read or featurise comes
back as a ``DataError`` naming it (the worker stays up); a worker that dies
(killed, out of memory) breaks the pool, and the sample being waited for is
named in a ``WorkerError`` with the worker's pid and signal, within the
executor's detection time (well under a second).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import signal
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple

from noisy_nodes.data.structures import DataError

__all__ = ["FeaturizePool", "WorkerError"]


class WorkerError(RuntimeError):
  """A data worker died or failed outside a sample's own fault."""


# -- inside a worker -------------------------------------------------------------
_WORKER: dict = {}
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def single_threaded_children(**extra: str) -> Iterator[None]:
  """Sets OMP/OpenBLAS/MKL threads to 1 (and ``extra`` variables) in the
  environment child processes inherit, restoring it on exit.

  Spawned workers read these before their numpy import: K workers with a
  BLAS thread per core oversubscribe the host (docs/benchmarks.md). The
  parent's already-loaded BLAS is unaffected.
  """
  old = dict(os.environ)
  os.environ.update({k: "1" for k in _THREAD_VARS}, **extra)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(old)


def _init(task_cls, config_json: str, task_state: Mapping[str, Any], source,
          seed: int, randomized: bool):
  # Workers featurise on the host: never let JAX claim an accelerator here.
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  try:
    import ml_collections  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(json.loads(config_json))
    task = task_cls(config)
    task.load_state_dict(task_state)
    _WORKER.update(task=task, source=source, seed=int(seed),
                   randomized=bool(randomized), error=None)
  except Exception:  # pylint: disable=broad-except
    # Reported with the first sample (an initializer exception would only
    # break the pool without saying why).
    _WORKER["error"] = traceback.format_exc(limit=4)


def _featurize(items: Sequence[Tuple[int, int]]):
  """[(epoch, index)] -> ('packed', concat_samples(graphs)), ('ok', [graphs])
  when they cannot be concatenated, or an error tuple for the first bad."""
  from noisy_nodes.data import batching  # pylint: disable=g-import-not-at-top
  sample_rng = batching.sample_rng
  if _WORKER.get("error"):
    return ("init", os.getpid(), _WORKER["error"])
  task, source = _WORKER["task"], _WORKER["source"]
  if "releaser" not in _WORKER:
    from noisy_nodes.data.sources import Releaser  # pylint: disable=g-import-not-at-top
    _WORKER["releaser"] = Releaser(source)
  out = []
  for epoch, idx in items:
    _WORKER["releaser"].tick()
    try:
      rng = (sample_rng(_WORKER["seed"], epoch, idx)
             if _WORKER["randomized"] else None)
      if not _WORKER["randomized"] and getattr(source, "has_graphs", False):
        out.append(task.expand_graph(source.graph(idx)))  # preprocessed
      else:
        out.append(task.featurize(source[idx], rng, _WORKER["randomized"]))
    except DataError as e:
      return ("data", idx, e.sample, e.fault)
    except Exception as e:  # pylint: disable=broad-except
      return ("other", idx, f"{type(e).__name__}: {e}",
              traceback.format_exc(limit=6))
  packed = batching.concat_samples(out)   # one array per key (compact)
  return ("packed", packed) if packed is not None else ("ok", out)


def _pid(_):
  return os.getpid()


# -- in the main process ---------------------------------------------------------
class FeaturizePool:
  """K spawned processes that featurise ``source[i]`` for the training stream.

  Args:
    task_cls: the task's class (pickled by reference: module and name).
    config: the run's ConfigDict (sent as JSON).
    task_state: ``task.state_dict()`` after ``setup``.
    source: the training split (a picklable ``Source`` or list).
    seed: the stream's seed (per-sample RNG).
    randomized: ``task.randomized_features``: noisy featurisation with the
      per-sample RNG (``training=True``), else the deterministic graph.
    workers: K >= 1.
    names: index -> sample id, for error messages.
  """

  def __init__(self, task_cls, config, task_state, source, seed: int,
               randomized: bool, workers: int, names=None):
    if workers < 1:
      raise ValueError(f"FeaturizePool needs workers >= 1, got {workers}")
    self.workers = int(workers)
    self.names = names or str
    t0 = time.time()
    # One thread each (BLAS/OpenMP in numpy and the neighbour search: K
    # workers with a thread per core oversubscribe the host), no accelerator:
    # set while the workers spawn, before they import numpy and JAX.
    with single_threaded_children(JAX_PLATFORMS="cpu"):
      self._pool = concurrent.futures.ProcessPoolExecutor(
          max_workers=self.workers,
          mp_context=multiprocessing.get_context("spawn"),
          initializer=_init,
          initargs=(task_cls, config.to_json_best_effort(), dict(task_state),
                    source,
                    int(seed), bool(randomized)))
      # Start every worker now (the executor spawns on demand) and learn their
      # pids, to name one that dies.
      try:
        warm = [self._pool.submit(_pid, k) for k in range(self.workers)]
        self._procs = dict(getattr(self._pool, "_processes", {}) or {})
        self.pids = sorted({f.result() for f in warm})
      except (BrokenProcessPool, RuntimeError) as e:
        self._pool.shutdown(wait=False, cancel_futures=True)
        raise WorkerError(
            f"data.workers={self.workers}: the worker processes did not start "
            f"({e}); they are spawned, so a script that trains must guard its "
            f"entry point with `if __name__ == '__main__':`") from None
    self._procs.update(getattr(self._pool, "_processes", {}) or {})
    self.startup_seconds = time.time() - t0
    self._closed = False

  def submit(self, items: Sequence[Tuple[int, int]]
             ) -> "concurrent.futures.Future":
    """Featurises [(epoch, index)] in one worker (results in order)."""
    return self._pool.submit(_featurize, list(items))

  def result(self, future, items: Sequence[Tuple[int, int]], timeout=None
             ) -> List[Any]:
    """The graphs of ``submit(items)``, or the error naming the sample."""
    try:
      res = future.result(timeout=timeout)
    except BrokenProcessPool:
      raise WorkerError(self._death_message(items)) from None
    kind = res[0]
    if kind == "packed":
      from noisy_nodes.data import batching  # pylint: disable=g-import-not-at-top
      return batching.split_samples(res[1])
    if kind == "ok":
      return res[1]
    if kind == "data":
      _, idx, sample, fault = res
      raise DataError(sample, f"{fault} (training sample {idx}, in a data "
                      f"worker)")
    if kind == "init":
      raise WorkerError(f"data worker pid {res[1]} could not rebuild the task "
                        f"from the config and task state:\n{res[2]}")
    _, idx, msg, tb = res
    raise WorkerError(f"featurising training sample {self.names(idx)} "
                      f"(index {idx}) failed in a data worker: {msg}\n{tb}")

  def _death_message(self, items) -> str:
    dead = []
    for pid, proc in self._procs.items():
      code = proc.exitcode
      if code is None:
        try:
          proc.join(timeout=0.5)
        except Exception:  # pylint: disable=broad-except
          pass
        code = proc.exitcode
      if code is not None and code != 0:
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 else
               f"exit code {code}")
        dead.append((code, f"pid {pid} ({how})"))
    # The executor terminates the other workers (SIGTERM) once one died.
    first = [d for c, d in dead if c != -signal.SIGTERM] or [d for _, d in dead]
    who = ", ".join(first) or "a worker"
    names = [self.names(i) for _, i in items[:3]]
    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
    return (f"data worker {who} died while featurising training samples "
            f"{', '.join(names)}{more} (epoch {items[0][0]}); the run stops "
            f"here (rerun to resume from the last checkpoint; data.workers=0 "
            f"featurises in the main process)")

  def close(self):
    if not self._closed:
      self._closed = True
      self._pool.shutdown(wait=False, cancel_futures=True)

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass
