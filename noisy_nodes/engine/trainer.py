"""The one training engine: every model and task in the library trains here.

``train(config, workdir)``:
  data (task.load_splits) -> featurise (cached unless randomised) -> dynamic
  batches per device -> sharded step (parallel.py) -> EMA -> periodic
  evaluation with EMA parameters -> orbax checkpoints (latest + best) ->
  metrics.jsonl / TensorBoard / console with graphs/s and ETA.
Resuming from the latest checkpoint restores parameters, optimiser, EMA, RNG,
step, plateau state and each host's data position, so an interrupted run ends
with bit-identical parameters (CPU). ``noisy_nodes.load(workdir)`` (the
``api``) re-evaluates and predicts with a saved run.
"""
from __future__ import annotations

import collections.abc
import json
import logging
import math
import os
import signal
import time
from typing import Any, Dict, List, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import jraph
import ml_collections
import numpy as np

from noisy_nodes import nn
from noisy_nodes.data import batching
from noisy_nodes.data import shards as shards_lib
from noisy_nodes.data import sources
from noisy_nodes.data import workers as data_workers
from noisy_nodes.engine import checkpoint as ckpt_lib
from noisy_nodes.engine import checks
from noisy_nodes.engine import logger as logger_lib
from noisy_nodes.engine import optim
from noisy_nodes.engine import parallel
from noisy_nodes.engine import precision
from noisy_nodes.engine import runtime
from noisy_nodes.errors import ConfigError
from noisy_nodes.errors import NonFiniteError, ResumeError  # noqa: F401
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.tasks import base as task_base

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: "checkpointed, rerun to resume"


class Preempted(SystemExit):
  """Checkpointed after SIGTERM (exit 143) or Ctrl-C (SIGINT, exit 130)."""

  def __init__(self, signum: int = signal.SIGTERM):
    super().__init__(128 + int(signum))


class _SignalFlag:
  """SIGTERM/SIGINT -> finish the step, checkpoint, exit (preemption).

  A second Ctrl-C interrupts at once (Python's default handler is back).
  """

  def __init__(self):
    self.received = None
    self._old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handler)
      except ValueError:  # not in the main thread
        pass

  def _handler(self, signum, frame):
    del frame
    self.received = signum
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.warning("received signal %d: will checkpoint after this step",
                    signum)

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class Experiment:
  """Builds task, data, model and step functions from a config.

  Memory stays flat in the training set's size: a training split of more than
  ``data.cache_limit`` samples (default ``CACHE_LIMIT``) is featurised on the
  fly (by ``data.workers`` processes, or the prefetch thread), never held as
  graphs; the batch budget and the training elements come from the shards'
  metadata (``noisy_nodes.preprocess``) or from the first ``SIZE_SAMPLE``
  samples, so nothing reads every sample before the first step. Evaluation
  splits are featurised once and cached.
  """

  CACHE_LIMIT = 20_000
  SIZE_SAMPLE = 2000

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               need_train_data: bool = True):
    self.config = config
    self.workdir = workdir
    self.task: task_base.Task = task_base.resolve_task(config.task)(config)
    self.mesh = parallel.make_mesh()
    self.local_mesh = parallel.make_mesh(local_only=True)
    self.num_local = jax.local_device_count()
    self.policy = precision.from_config(config)  # train.precision, logged
    # data.path: a folder of noisy_nodes.preprocess shards, or the task's
    # own inputs.
    self.manifest: Optional[Dict[str, Any]] = None
    if shards_lib.is_shard_dir(str(config.data.get("path", "") or "")):
      self.splits, self.manifest = shards_lib.open_splits(config.data.path,
                                                          config)
      self.task.skipped.extend(self.manifest.get("skipped", []))
      self.task.link_splits(self.splits)
      logging.info("preprocessed shards in %s (%s)", config.data.path,
                   self.manifest["stores"])
    else:
      self.splits = self.task.load_splits()
    for name, items in self.splits.items():
      logging.info("split %s: %d structures", name, len(items))
    if self.task.skipped:
      logging.warning("%d invalid inputs were skipped (data.skip_invalid); "
                      "see %s", len(self.task.skipped),
                      os.path.join(workdir, "data_report.json"))
    if need_train_data and not self.splits.get("train"):
      raise DataError(config.data.get("path", "dataset"),
                      "empty training split: no structures to train on")
    self._graph_cache: Dict[str, Sequence[jraph.GraphsTuple]] = {}
    self._largest: Dict[str, tuple] = {}  # split -> (n_node, n_edge) max
    self._train_elements: Optional[List[int]] = None
    self._eval_step = None
    self._eval_compiled = False

  def write_data_report(self):
    """Lists inputs skipped under ``data.skip_invalid`` (never silently)."""
    skipped = list(self.task.skipped)
    if jax.process_index() == 0 and self.workdir:
      os.makedirs(self.workdir, exist_ok=True)
      with open(os.path.join(self.workdir, "data_report.json"), "w") as f:
        json.dump({"num_skipped": len(skipped), "skipped": skipped,
                   "splits": {k: len(v) for k, v in self.splits.items()},
                   **getattr(self.task, "data_report", {})}, f, indent=2)

  # -- featurisation -----------------------------------------------------------
  def graphs(self, split: str) -> Sequence[jraph.GraphsTuple]:
    """Deterministic (training=False) graphs of a split.

    Featurised once and held for a split of up to ``data.cache_limit``
    samples; a larger one (OC20's validation splits are ~25,000 systems
    each) is a lazy sequence featurised again on each pass, so memory
    stays flat in the split's size (``batching.eval_batches`` streams).
    """
    if split not in self._graph_cache:
      t0 = time.time()
      items = self.splits[split]
      limit = int(self.config.data.get("cache_limit", self.CACHE_LIMIT))
      lazy = _LazyGraphs(items, self.task)
      if len(items) > limit:
        logging.info("%s: %d structures, featurised on each pass (over "
                     "data.cache_limit=%d)", split, len(items), limit)
        self._graph_cache[split] = lazy
      else:
        self._graph_cache[split] = [lazy[i] for i in range(len(lazy))]
        logging.info("featurised %d %s structures in %.1fs",
                     len(self._graph_cache[split]), split, time.time() - t0)
    return self._graph_cache[split]

  def setup_task(self) -> None:
    """The task's statistics (target mean/std...) from the training split,
    or those ``noisy_nodes.preprocess`` fitted (no pass over the data)."""
    if self.manifest is not None:
      self.task.load_state_dict(self.manifest["task_state"])
    else:
      self.task.setup(self.splits["train"])

  def _cache_train(self) -> bool:
    """Whether the training graphs are featurised once and held."""
    limit = int(self.config.data.get("cache_limit", self.CACHE_LIMIT))
    return (not self.task.randomized_features
            and len(self.splits["train"]) <= limit)

  def _size_sample(self):
    """(n_node, n_edge) of the first ``SIZE_SAMPLE`` deterministic training
    graphs (those the budget is estimated from)."""
    train = self.splits["train"]
    if getattr(train, "meta", None) is not None:  # preprocessed metadata
      return (train.meta["n_node"][:self.SIZE_SAMPLE].tolist(),
              train.meta["n_edge"][:self.SIZE_SAMPLE].tolist())
    if self._cache_train():
      graphs = self.graphs("train")[:self.SIZE_SAMPLE]
    else:
      graphs = [self.task.featurize(train[i], None, False)
                for i in range(min(len(train), self.SIZE_SAMPLE))]
    return ([int(g.n_node[0]) for g in graphs],
            [int(g.n_edge[0]) for g in graphs])

  def budget(self) -> batching.Budget:
    b = self.config.batch
    if b.get("max_nodes", 0) and b.get("max_edges", 0):
      return batching.Budget(int(b.max_nodes), int(b.max_edges),
                             int(b.max_graphs))
    # Estimated from (up to 2,000 of) the training graphs; the training
    # stream (noise) can add edges, hence the safety factor on edges.
    n_node, n_edge = self._size_sample()
    est = batching.estimate_budget(n_node, n_edge, int(b.max_graphs))
    margin = float(b.get("edge_margin", 1.0))
    return batching.Budget(est.max_nodes,
                           int(math.ceil(est.max_edges * margin / 64) * 64),
                           est.max_graphs)

  def train_stream(self, budget: batching.Budget, seed: int
                   ) -> batching.GraphStream:
    train = self.splits["train"]
    names = sources.as_source(train).name
    randomized = self.task.randomized_features
    workers = int(self.config.data.get("workers", 0) or 0)
    pool = None
    if self._cache_train():
      cached = self.graphs("train")

      def featurize(i, rng):
        del rng
        return cached[i]
      if workers:
        logging.info("data.workers=%d unused: the %d training graphs are "
                     "featurised once and cached", workers, len(cached))
    else:
      releaser = sources.Releaser(train)

      def featurize(i, rng):
        releaser.tick()  # keeps the mapped pages of the files bounded
        if getattr(train, "has_graphs", False):
          return self.task.expand_graph(train.graph(i))
        return self.task.featurize(train[i], rng, randomized)
      if workers:
        pool = data_workers.FeaturizePool(
            type(self.task), self.config, self.task.state_dict(), train, seed,
            randomized, workers, names)
        logging.info("%d data workers featurise the training stream (started "
                     "in %.1fs)", workers, pool.startup_seconds)
    return batching.GraphStream(
        len(train), featurize, budget, seed=seed,
        shuffle=self.config.batch.get("shuffle", True),
        devices=self.num_local,
        shard_index=jax.process_index() * self.num_local,
        num_shards=jax.device_count(),
        skip_oversized=self.config.batch.get("skip_oversized", False),
        names=names, randomized=randomized, pool=pool,
        chunk=self.worker_chunk(budget))

  def worker_chunk(self, budget) -> int:
    """Samples per worker task (``data.worker_chunk``; 0: about two batches'
    worth, at most 64): larger chunks spread a task's fixed cost (its future,
    pipe write and wake-ups in the main process) over more samples."""
    chunk = int(self.config.data.get("worker_chunk", 0) or 0)
    return chunk if chunk > 0 else max(1, min(64, 2 * int(budget.max_graphs)))

  # -- model ---------------------------------------------------------------------
  def transformed(self) -> hk.TransformedWithState:
    return transformed_model(self.task, self.policy)

  def init_state(self, example: jraph.GraphsTuple, optimizer) -> parallel.TrainState:
    return init_train_state(self.task, self.transformed(),
                            int(self.config.train.seed), example, optimizer)

  def train_elements(self) -> List[int]:
    """Atomic numbers present in the training split (saved in checkpoints:
    prediction warns about elements the model never saw).

    Every structure of a set up to ``data.cache_limit``; of a larger one the
    first ``SIZE_SAMPLE`` (read once, not at every checkpoint).
    """
    if self._train_elements is None and hasattr(self.splits.get("train"),
                                                "elements"):
      self._train_elements = list(self.splits["train"].elements)
    if self._train_elements is None:
      train = self.splits.get("train", ())
      limit = int(self.config.data.get("cache_limit", self.CACHE_LIMIT))
      count = len(train) if len(train) <= limit else min(len(train),
                                                         self.SIZE_SAMPLE)
      self._train_elements = sorted(
          {int(z) for i in range(count)
           for z in np.unique(train[i].atomic_numbers)})
      if count < len(train):
        logging.info("training elements from the first %d of %d structures",
                     count, len(train))
    return self._train_elements

  def fitting_budget(self, split: str, budget: batching.Budget
                     ) -> batching.Budget:
    """``batching.fitting_budget`` for a split, its largest graph found once
    (from the shards' metadata where they have it)."""
    if split not in self._largest:
      items = self.splits[split]
      meta = getattr(items, "meta", None)
      if meta is not None and len(items):
        self._largest[split] = (int(np.max(meta["n_node"])),
                                int(np.max(meta["n_edge"])))
      else:
        graphs = self.graphs(split)
        self._largest[split] = (max(int(g.n_node[0]) for g in graphs),
                                max(int(g.n_edge[0]) for g in graphs))
    n, e = self._largest[split]
    if budget.fits(n, e):
      return budget
    return batching.Budget(max(budget.max_nodes, n), max(budget.max_edges, e),
                           budget.max_graphs)

  def predict(self, params, state, split: str, budget: batching.Budget):
    """Predictions for every structure of a split (EMA params if given)."""
    graphs = self.graphs(split)
    if not graphs:
      return {}
    # Evaluation predicts every structure: one larger than the training
    # budget (skipped there under batch.skip_oversized) gets a budget that
    # fits it (one more compilation), never an error or a missing row.
    budget = self.fitting_budget(split, budget)
    if self._eval_step is None:
      self._eval_step = parallel.make_eval_step(self.task, self.transformed(),
                                                self.local_mesh, self.policy)
    preds = predict_graphs(self._eval_step, params, state, graphs, budget,
                           self.num_local,
                           _Names(sources.as_source(self.splits[split])),
                           compile_first=not self._eval_compiled)
    self._eval_compiled = True
    return preds

  def evaluate(self, params, state, split: str, budget: batching.Budget
               ) -> Dict[str, float]:
    t0 = time.time()
    preds = self.predict(params, state, split, budget)
    if not preds:
      return {}
    metrics = self.task.metrics(self.splits[split], preds)
    metrics["eval_seconds"] = time.time() - t0
    metrics["num_structures"] = len(self.splits[split])
    return metrics

  def validation_splits(self) -> List[str]:
    """Names of the validation splits: ``val``, or fairchem's ``val_*``."""
    return sorted(k for k in self.splits
                  if (k == "val" or k.startswith("val_")) and self.splits[k])

  def evaluate_splits(self, params, state, names: Sequence[str],
                      budget: batching.Budget) -> Dict[str, Dict[str, Any]]:
    """{split: metrics} for each of ``names``, plus ``'val'``: their average.

    With several validation splits (OC20's val_id, val_ood_ads, val_ood_cat,
    val_ood_both) the paper's tables report each and their unweighted mean;
    the mean is what ``'val'`` holds (one split: that split's metrics).
    """
    out = {n: self.evaluate(params, state, n, budget) for n in names}
    out = {n: m for n, m in out.items() if m}
    if len(out) > 1 or (out and "val" not in out):
      out["val"] = average_metrics(out)
    return out


class _Names:
  """``names[i]`` = the source's sample name, read only for an error."""

  def __init__(self, source):
    self.source = source

  def __getitem__(self, i: int) -> str:
    return self.source.name(i)


class _LazyGraphs(collections.abc.Sequence):
  """A split's deterministic graphs, featurised when read (``Experiment.graphs``)."""

  def __init__(self, items, task):
    self.items, self.task = items, task
    self.static = getattr(items, "has_graphs", False)  # preprocessed graphs

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if self.static:
      return self.task.expand_graph(self.items.graph(i))
    return self.task.featurize(self.items[i], None, False)


def transformed_model(task: task_base.Task, policy: precision.Policy
                      ) -> hk.TransformedWithState:
  """The task's model in ``policy``'s precision (training, evaluation and
  ``noisy_nodes.load`` all run this one)."""
  return hk.transform_with_state(policy.wrap(task.model))


def init_train_state(task: task_base.Task, transformed: hk.TransformedWithState,
                     seed: int, example: jraph.GraphsTuple, optimizer
                     ) -> parallel.TrainState:
  """Fresh TrainState from one single-device example batch.

  Initialised in evaluation mode so that running statistics start at their
  initial values (a training-mode init would already update them once).
  """
  key = jax.random.PRNGKey(seed)
  init_key, key = jax.random.split(key)
  params, state = jax.jit(
      lambda k, g: transformed.init(k, g, False))(init_key, example)
  params, state = task.init_params(params, state)
  runtime.release_free_memory()  # the init compilation's scratch
  return parallel.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, state=state,
      opt_state=optimizer.init(params), ema_params=params,
      rng=jax.random.key_data(key) if key.dtype != jnp.uint32 else key)


def predict_graphs(eval_step, params, state,
                   graphs: Sequence[jraph.GraphsTuple],
                   budget: batching.Budget, devices: int,
                   names: Optional[Sequence[str]] = None,
                   compile_first: bool = False
                   ) -> Dict[str, List[np.ndarray]]:
  """Runs ``eval_step`` (``parallel.make_eval_step``) over ``graphs``.

  One ordered pass in batches padded to ``budget``, ``devices`` batches per
  step. Returns {key: [len(graphs)] arrays}: [n_i, ...] for ``node_`` keys,
  the graph's row otherwise.
  """
  params = jax.device_put(parallel.to_host(params))
  state = jax.device_put(parallel.to_host(state))
  preds: Dict[str, List[Optional[np.ndarray]]] = {}
  for batch, index_lists in batching.eval_batches(graphs, budget, devices,
                                                  names):
    if compile_first:
      parallel.compile_ahead(eval_step, params, state, batch)
      compile_first = False
    out = jax.device_get(eval_step(params, state, batch))
    for d, idx in enumerate(index_lists):
      if not idx:
        continue
      n_node = batch.n_node[d][:len(idx)]
      node_off = np.concatenate([[0], np.cumsum(n_node)])
      for key, val in out.items():
        lst = preds.setdefault(key, [None] * len(graphs))
        for j, i in enumerate(idx):
          if key.startswith("node_"):
            lst[i] = val[d][node_off[j]:node_off[j + 1]]
          else:
            lst[i] = val[d][j]
  return preds


def _meta(exp: Experiment, positions, plateau, best_value, budget, step):
  return {
      "step": int(step),
      "data_positions": [[int(e), int(c)] for e, c in positions],
      "plateau": plateau.state_dict() if plateau else None,
      "best_value": best_value,
      "task_state": exp.task.state_dict(),
      "budget": [budget.max_nodes, budget.max_edges, budget.max_graphs],
      "train_elements": exp.train_elements(),
  }


def _gather_positions(positions):
  """Every device's stream position, in global device order."""
  local = np.array([[p.epoch, p.cursor] for p in positions], np.int64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    local = multihost_utils.process_allgather(local)
  return [tuple(r) for r in np.asarray(local).reshape(-1, 2)]


def _any_process(received: bool) -> bool:
  """Whether any process got the signal: all must stop at the same step.

  Hosts receive SIGTERM at slightly different times (or only one host is
  preempted); a host that stopped alone would wait in the checkpoint's
  barriers while the others wait in the next step's collectives, a deadlock
  (tests/test_multihost.py). One tiny all-gather per step settles it.
  """
  if jax.process_count() == 1:
    return received
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.int32(received))))


def plateau_monitor(config) -> str:
  """What ReduceLROnPlateau watches: ``optim.plateau.monitor``.

  'train': the mean training loss over the steps since the last evaluation
  (the DeeperGATGNN reference steps its scheduler on the epoch's training
  error); 'val' (default): the task's validation selection metric.
  """
  p = config.optim.get("plateau", None) or {}
  monitor = str(p.get("monitor", "val"))
  if monitor not in ("train", "val"):
    raise ValueError(f"optim.plateau.monitor must be 'train' or 'val', got "
                     f"{monitor!r}")
  return monitor


def _make_plateau(config) -> Optional[optim.Plateau]:
  p = config.optim.get("plateau", None)
  if not (p and p.get("enabled", False)):
    return None
  return optim.Plateau(factor=p.factor, patience=p.patience, min_lr=p.min_lr,
                       threshold=float(p.get("threshold", 1e-4)))


class _Run:
  """The state of one ``train`` call that its checkpoints hold.

  The TrainState, step, each device's data position, the plateau schedule,
  the best selection value and the training loss since the last plateau
  step (weighted by graphs: the reference's epoch-mean training error).
  """

  def __init__(self, exp: Experiment, ts: parallel.TrainState,
               budget: batching.Budget, ckpt: ckpt_lib.Checkpointer):
    self.exp, self.ts, self.budget, self.ckpt = exp, ts, budget, ckpt
    self.step = 0
    self.position = None  # start of epoch 0 on every device
    self.plateau = _make_plateau(exp.config)
    self.best_value: Optional[float] = None
    self.epoch_loss = {"sum": 0.0, "graphs": 0}

  def restore_or_init(self, workdir: str) -> Optional[int]:
    """Resumes from the latest checkpoint if there is one; returns its
    step (None: a fresh run, kept as initialised)."""
    exp, ckpt = self.exp, self.ckpt
    if ckpt.latest_step() is None:
      return None
    self.ts, meta, resume_step = ckpt.restore(self.ts)
    first_shard = jax.process_index() * exp.num_local
    self.position = tuple(
        batching.DataPosition(int(e), int(c)) for e, c in
        meta["data_positions"][first_shard:first_shard + exp.num_local])
    if len(meta["data_positions"]) != jax.device_count():
      raise ResumeError(
          f"checkpoint in {workdir} was written with "
          f"{len(meta['data_positions'])} devices, this run has "
          f"{jax.device_count()}: exact resume needs the same device count "
          f"(on CPU: the same --cpu_devices)")
    if self.plateau and meta.get("plateau"):
      self.plateau = optim.Plateau(**meta["plateau"])
    self.best_value = meta.get("best_value")
    ckpt.set_aside(ckpt.skipped)  # so that this run can write them again
    self.epoch_loss.update(meta.get("plateau_train_loss") or {})
    self.step = int(resume_step)
    logging.info("resuming from step %d (data epoch %d, sample %d on device "
                 "0)", resume_step, self.position[0].epoch,
                 self.position[0].cursor)
    return resume_step

  def save(self, which: str = "latest"):
    positions = self.position or [batching.DataPosition()] * (
        self.exp.num_local)
    meta = _meta(self.exp, _gather_positions(positions), self.plateau,
                 self.best_value, self.budget, self.step)
    meta["plateau_train_loss"] = dict(self.epoch_loss)
    self.ckpt.save(self.step, self.ts, meta, which)

  def step_plateau(self, value: float):
    """One ReduceLROnPlateau step on ``value`` (lower is better)."""
    if self.plateau is not None:
      scale = self.plateau.update(float(value),
                                  float(self.exp.config.optim.lr))
      self.ts = self.ts._replace(
          opt_state=optim.set_lr_scale(self.ts.opt_state, scale))

  def add_train_loss(self, loss: float, num_graphs: int):
    self.epoch_loss["sum"] += float(loss) * num_graphs
    self.epoch_loss["graphs"] += num_graphs

  def step_plateau_on_train(self, monitor: str):
    """Ends a plateau window: steps on its training loss if monitored."""
    if monitor == "train" and self.epoch_loss["graphs"]:
      self.step_plateau(self.epoch_loss["sum"] / self.epoch_loss["graphs"])
    self.epoch_loss.update(sum=0.0, graphs=0)


class MetricsWindow:
  """Means of the step metrics, batch utilisation and the throughput over
  the steps since the last log line, and ``input_wait``: the fraction of the
  window's wall time the loop spent waiting for its next batch (the host
  input pipeline not keeping up; ~0 when it does)."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.graphs, self.steps, self.sums, self.t = 0, 0, {}, time.time()
    self.wait = 0.0

  def add(self, metrics: Dict[str, Any], batch: batching.Batch):
    self.graphs += batch.num_graphs
    self.steps += 1
    for k, v in list(metrics.items()) + list(
        batching.utilisation(batch.graph).items()):
      self.sums[k] = self.sums.get(k, 0.0) + float(v)

  def means(self) -> Dict[str, float]:
    """The window's means and graphs/s over every process."""
    dt = time.time() - self.t
    vals = {k: v / self.steps for k, v in self.sums.items()}
    vals["graphs_per_sec"] = self.graphs * jax.process_count() / max(dt, 1e-9)
    vals["input_wait"] = self.wait / max(dt, 1e-9)
    return vals


class _Evaluation:
  """Periodic validation: logs each split, keeps the best checkpoint by the
  task's selection metric and steps a plateau schedule that watches it."""

  def __init__(self, exp: Experiment):
    config, tc = exp.config, exp.config.train
    self.exp = exp
    self.names = exp.validation_splits()
    # train.select_split: 'average' (default: the mean over the validation
    # splits, as the paper's tables) or one split's name, e.g. 'val_id'.
    select = str(tc.get("select_split", "average") or "average")
    self.select_split = "val" if select == "average" else select
    if self.names and self.select_split not in self.names + ["val"]:
      raise ConfigError(f"train.select_split={self.select_split}", f"the "
                        f"validation splits are {self.names} (or 'average')")
    self.metric = exp.task.selection_metric
    self.sign = -1.0 if exp.task.selection_higher_is_better else 1.0
    self.monitor = plateau_monitor(config)
    self.use_ema = bool(config.optim.get("ema_decay", 0))

  def __call__(self, run: _Run, log: logger_lib.MetricLogger
               ) -> Dict[str, Any]:
    """The averaged validation metrics at ``run.step`` ({}: no val data)."""
    ts = run.ts
    params = ts.ema_params if self.use_ema else ts.params
    per_split = self.exp.evaluate_splits(params, ts.state, self.names,
                                         run.budget)
    if not per_split:
      return {}
    for name, m in per_split.items():
      log.write(run.step, name, m)
      logging.info("step %d %s: %s", run.step, name, _fmt(m))
    value = per_split.get(self.select_split, {}).get(self.metric)
    if value is not None:
      value = self.sign * float(value)  # minimised
      if run.best_value is None or value < run.best_value:
        run.best_value = float(value)
        run.save("best")
      if self.monitor == "val":
        run.step_plateau(value)
    return per_split["val"]


def train(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) the experiment described by ``config`` in ``workdir``.

  Returns the final validation metrics (EMA parameters when enabled).
  """
  # Config, data, then resume compatibility are checked before anything is
  # written: a rejected run leaves its workdir as it was (docs/faults.md).
  checks.check_config(config)
  checks.check_workdir(workdir)
  parallel.log_devices()
  cache = runtime.enable_compilation_cache(config.train.get(
      "compilation_cache", runtime.DEFAULT_COMPILATION_CACHE))
  logging.info("persistent compilation cache: %s", cache or "off")
  config = per_device_batch(config)
  tc = config.train
  exp = Experiment(config, workdir)
  if not exp.validation_splits():
    logging.warning("the validation split is empty: no validation metrics "
                    "and no best checkpoint (end-of-run outputs use the "
                    "latest checkpoint)")
  exp.setup_task()
  budget = exp.budget()
  logging.info("batch budget per device: %s", budget)
  optimizer = optim.make_optimizer(config.optim)
  stream = exp.train_stream(budget, int(tc.seed))

  # Initialise from the first batch's first device slice (shapes only).
  first = next(stream.iterate())
  example = jax.tree_util.tree_map(lambda x: x[0], first.graph)
  host_state = exp.init_state(example, optimizer)
  logging.info("model %s: %s parameters", exp.task.describe(),
               f"{nn.count_params(host_state.params):,}")
  run = _Run(exp, parallel.replicate(host_state, exp.mesh), budget,
             ckpt_lib.Checkpointer(workdir, int(tc.get("max_to_keep", 3))))
  evaluate = _Evaluation(exp)  # checks train.select_split, the plateau
  resume_step = run.restore_or_init(workdir)
  # Accepted: from here on the run writes to its workdir.
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  exp.write_data_report()
  step_fn = parallel.make_train_step(
      exp.task, exp.transformed(), optimizer, exp.mesh,
      ema_decay=float(config.optim.get("ema_decay", 0.0)),
      policy=exp.policy)
  log = logger_lib.MetricLogger(workdir, resume_step, int(tc.num_steps))
  try:
    val_metrics = _loop(run, stream, step_fn, log, evaluate)
  finally:
    stream.close()  # data.workers' processes
    log.close()
    run.ckpt.close()
  if jax.process_index() == 0:
    from noisy_nodes import plots  # pylint: disable=g-import-not-at-top
    png = plots.plot_learning_curve(workdir)
    if png:
      logging.info("learning curve written to %s", png)
  if stream.skipped_total:
    logging.warning("%d oversized samples were skipped",
                    len(stream.skipped_total))
  return dict(val_metrics)


def _loop(run: _Run, stream: batching.GraphStream, step_fn,
          log: logger_lib.MetricLogger, evaluate: _Evaluation
          ) -> Dict[str, Any]:
  """Steps ``run`` to ``train.num_steps``: logs, evaluates, checkpoints,
  stops on preemption; returns the last validation metrics."""
  exp, config = run.exp, run.exp.config
  tc, workdir = config.train, exp.workdir
  num_steps, eval_every = int(tc.num_steps), int(tc.get("eval_every", 0))
  first_step = run.step
  flag = _SignalFlag()
  batches = batching.Prefetcher(stream.iterate(run.position),
                                int(config.batch.get("prefetch", 2)))
  window = MetricsWindow()
  val_metrics: Dict[str, Any] = {}
  try:
    while run.step < num_steps:
      t_wait = time.perf_counter()
      batch = next(batches)
      window.wait += time.perf_counter() - t_wait
      for msg in batch.skipped:
        logging.warning("skipped oversized sample %s", msg)
      graph = parallel.shard_batch(batch.graph, exp.mesh)
      if run.step == first_step:
        parallel.compile_ahead(step_fn, run.ts, graph)
      run.ts, metrics = step_fn(run.ts, graph)
      metrics = jax.device_get(metrics)  # block: queued CPU collectives can deadlock XLA's rendezvous
      run.step += 1
      step = run.step
      run.position = batch.position
      if not metrics["finite"]:
        msg = (f"non-finite loss or gradients at step {step} (loss "
               f"{metrics['loss']}); the update was not applied")
        if not tc.get("skip_nonfinite", False):
          kept = (f"last good checkpoint kept in {workdir}"
                  if run.ckpt.latest_step() is not None else
                  f"no checkpoint was written yet in {workdir}")
          raise NonFiniteError(msg + f"; {kept}. Set "
                               "train.skip_nonfinite=True to skip such steps.")
        logging.warning(msg)
      else:
        run.add_train_loss(metrics["loss"], batch.num_graphs)
      window.add(metrics, batch)
      if step % int(tc.log_every) == 0 or step == num_steps:
        vals = window.means()
        vals["lr"] = optim.current_lr(config.optim, step, run.ts.opt_state)
        vals["epoch"] = run.position[0].epoch
        log.write(step, "train", vals)
        logging.info("step %d/%d loss %.5g | %.1f graphs/s | util n/e/g "
                     "%.2f/%.2f/%.2f | ETA %s", step, num_steps, vals["loss"],
                     vals["graphs_per_sec"], vals["util_nodes"],
                     vals["util_edges"], vals["util_graphs"], log.eta(step))
        window.reset()
      if eval_every and step % eval_every == 0:
        val_metrics = evaluate(run, log)
        run.step_plateau_on_train(evaluate.monitor)
      if step % int(tc.checkpoint_every) == 0:
        run.save()
      if _any_process(flag.received is not None):
        run.save()
        logging.warning("preempted at step %d: checkpoint written; rerun the "
                        "same command to resume", step)
        raise Preempted(flag.received or signal.SIGTERM)
    if run.step == first_step and run.ckpt.latest_step() is not None:
      # Resumed at or past num_steps (a chunked sweep calling train again
      # with steps it already ran): nothing trained, so nothing is evaluated,
      # stepped or saved again (a fresh 0-step run still evaluates and saves
      # its initial state). A repeated validation row would skew the
      # curve, and a plateau watching it would count one more epoch without
      # improvement per call.
      last = log.last.get("val", {})
      return {k: v for k, v in last.items() if k not in ("step", "split")}
    if not eval_every or run.step % eval_every:
      val_metrics = evaluate(run, log)
    run.save()
  finally:
    batches.close()
    flag.restore()
  return val_metrics


def read_config(workdir: str, overrides: Optional[Dict[str, Any]] = None
                ) -> ml_collections.ConfigDict:
  """A run's resolved ``config.json`` with dotted-key ``overrides``."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise DataError(workdir, "not a run directory (no config.json)")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  for k, v in (overrides or {}).items():
    _set_path(config, k, v)
  return config


def restore_train_state(workdir: str, which: str, task: task_base.Task,
                        transformed: hk.TransformedWithState,
                        config: ml_collections.ConfigDict,
                        example: jraph.GraphsTuple, mesh):
  """(TrainState, meta, step) of a checkpoint, replicated over ``mesh``.

  ``example`` (one padded single-device batch) only gives the shapes of the
  target the checkpoint is restored against.
  """
  optimizer = optim.make_optimizer(config.optim)
  host = init_train_state(task, transformed, int(config.train.seed), example,
                          optimizer)
  ckpt = ckpt_lib.Checkpointer(workdir)
  try:
    ts, meta, step = ckpt.restore(parallel.replicate(host, mesh), which)
  finally:
    ckpt.close()
  # Evaluation and prediction refuse NaN parameters (docs/faults.md).
  where = f"{ckpt.directory(which)}/{step}"
  ckpt_lib.check_finite(ts.params, where)
  ckpt_lib.check_finite(ts.ema_params, where)
  return ts, meta, step


def restore_meta(workdir: str, which: str):
  """(meta, step) of the ``best``/``latest`` checkpoint, without arrays."""
  ckpt = ckpt_lib.Checkpointer(workdir)
  try:
    return ckpt.restore_meta(which)
  finally:
    ckpt.close()


def per_device_batch(config: ml_collections.ConfigDict,
                     count: Optional[int] = None
                     ) -> ml_collections.ConfigDict:
  """``batch.budget='global'``: the budgets are split over all devices.

  By default (``'per_device'``) ``batch.max_nodes/max_edges/max_graphs`` is
  what ONE device packs per step, so the global batch grows with the device
  count (the paper trains on 8 TPU devices without saying which it means).
  ``'global'`` keeps the global batch fixed: each budget is divided by
  ``jax.device_count()`` and must divide evenly.
  """
  mode = str(config.batch.get("budget", "per_device"))
  if mode not in ("per_device", "global"):
    raise ConfigError(f"batch.budget={mode}", "must be 'per_device' or "
                      "'global'")
  count = jax.device_count() if count is None else int(count)
  if mode == "per_device" or count == 1:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  for key in ("max_graphs", "max_nodes", "max_edges"):
    value = int(config.batch.get(key, 0))
    if value % count:
      raise ConfigError(f"batch.{key}={value}", f"does not divide over "
                        f"{count} devices (batch.budget='global')")
    config.batch[key] = value // count
  config.batch.budget = "per_device"  # now per device (saved in config.json)
  logging.info("global batch budget split over %d devices: %d graphs each",
               count, int(config.batch.max_graphs))
  return config


def restore_run(workdir: str, which: str = "best",
                overrides: Optional[Dict[str, Any]] = None,
                example_split: str = "val"):
  """Rebuilds a saved run: (experiment, train state, meta, budget, step).

  The task's statistics (target normalisation...) come from the checkpoint,
  so predictions need no access to the training data's statistics.
  (``noisy_nodes.load`` rebuilds a run without its data.)
  """
  config = read_config(workdir, overrides)
  exp = Experiment(config, workdir, need_train_data=False)
  checks.check_split(example_split, exp.splits)
  meta, _ = restore_meta(workdir, which)
  exp.task.load_state_dict(meta["task_state"])
  budget = batching.Budget(*meta["budget"])
  if example_split not in exp.splits and exp.validation_splits():
    example_split = exp.validation_splits()[0]  # 'val' over val_* splits
  if example_split not in exp.splits:
    raise DataError(config.data.get("path", "dataset"),
                    f"no split {example_split!r}; the data has "
                    f"{sorted(exp.splits)}")
  graphs = exp.graphs(example_split)
  if not graphs:
    raise DataError(example_split, f"split {example_split!r} is empty")
  example = batching.pad_graphs(graphs[:1], budget)
  ts, meta, step = restore_train_state(workdir, which, exp.task,
                                       exp.transformed(), config, example,
                                       exp.mesh)
  return exp, ts, meta, budget, step


def average_metrics(per_split: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """Unweighted mean over splits of every numeric metric they all have."""
  rows = list(per_split.values())
  keys = set.intersection(*(set(r) for r in rows)) if rows else set()
  out: Dict[str, Any] = {}
  for k in sorted(keys):
    vals = [r[k] for r in rows]
    if all(isinstance(v, (int, float, np.floating, np.integer))
           and not isinstance(v, bool) for v in vals):
      out[k] = float(np.mean(vals))
  for k in ("eval_seconds", "num_structures"):  # totals, not means
    if k in out:
      out[k] = float(sum(r[k] for r in rows))
  out["num_splits"] = len(rows)
  return out


def _set_path(config, dotted: str, value):
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  with config.unlocked() if hasattr(config, "unlocked") else _null():
    node[leaf] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


def _fmt(metrics: Dict[str, Any]) -> str:
  return ", ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in sorted(metrics.items()))
