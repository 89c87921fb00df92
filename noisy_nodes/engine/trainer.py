"""The one training engine: every model and task in the library trains here.

``train(config, workdir)``:
  data (task.load_splits) -> featurise (cached unless randomised) -> dynamic
  batches per device -> sharded step (parallel.py) -> EMA -> periodic
  evaluation with EMA parameters -> orbax checkpoints (latest + best) ->
  metrics.jsonl / TensorBoard / console with graphs/s and ETA.
Resuming from the latest checkpoint restores parameters, optimiser, EMA, RNG,
step, plateau state and each host's data position, so an interrupted run ends
with bit-identical parameters (CPU).
``evaluate(workdir, split, checkpoint)`` re-evaluates a saved run.
"""
from __future__ import annotations

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

from noisy_nodes.data import batching
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
  """Builds task, data, model and step functions from a config."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               need_train_data: bool = True):
    self.config = config
    self.workdir = workdir
    self.task: task_base.Task = task_base.resolve_task(config.task)(config)
    self.mesh = parallel.make_mesh()
    self.local_mesh = parallel.make_mesh(local_only=True)
    self.num_local = jax.local_device_count()
    self.policy = precision.from_config(config)  # train.precision, logged
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
    self._graph_cache: Dict[str, List[jraph.GraphsTuple]] = {}
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
  def graphs(self, split: str) -> List[jraph.GraphsTuple]:
    """Deterministic (training=False) graphs of a split, featurised once."""
    if split not in self._graph_cache:
      t0 = time.time()
      self._graph_cache[split] = [
          self.task.featurize(s, None, False) for s in self.splits[split]]
      logging.info("featurised %d %s structures in %.1fs",
                   len(self._graph_cache[split]), split, time.time() - t0)
    return self._graph_cache[split]

  def budget(self) -> batching.Budget:
    b = self.config.batch
    if b.get("max_nodes", 0) and b.get("max_edges", 0):
      return batching.Budget(int(b.max_nodes), int(b.max_edges),
                             int(b.max_graphs))
    # Estimated from (up to 2,000 of) the training graphs; the training
    # stream (noise) can add edges, hence the safety factor on edges.
    graphs = self.graphs("train")[:2000]
    est = batching.estimate_budget([int(g.n_node[0]) for g in graphs],
                                   [int(g.n_edge[0]) for g in graphs],
                                   int(b.max_graphs))
    margin = float(b.get("edge_margin", 1.0))
    return batching.Budget(est.max_nodes,
                           int(math.ceil(est.max_edges * margin / 64) * 64),
                           est.max_graphs)

  def train_stream(self, budget: batching.Budget, seed: int
                   ) -> batching.GraphStream:
    train = self.splits["train"]
    randomized = self.task.randomized_features
    if randomized:
      def featurize(i, rng):
        return self.task.featurize(train[i], rng, True)
    else:
      cached = self.graphs("train")

      def featurize(i, rng):
        del rng
        return cached[i]
    return batching.GraphStream(
        len(train), featurize, budget, seed=seed,
        shuffle=self.config.batch.get("shuffle", True),
        devices=self.num_local,
        shard_index=jax.process_index() * self.num_local,
        num_shards=jax.device_count(),
        skip_oversized=self.config.batch.get("skip_oversized", False),
        names=lambda i: train[i].id, randomized=randomized)

  # -- model ---------------------------------------------------------------------
  def transformed(self) -> hk.TransformedWithState:
    return transformed_model(self.task, self.policy)

  def init_state(self, example: jraph.GraphsTuple, optimizer) -> parallel.TrainState:
    return init_train_state(self.task, self.transformed(),
                            int(self.config.train.seed), example, optimizer)

  def train_elements(self) -> List[int]:
    """Atomic numbers present in the training split (saved in checkpoints:
    prediction warns about elements the model never saw)."""
    zs = {int(z) for s in self.splits.get("train", ())
          for z in np.unique(s.atomic_numbers)}
    return sorted(zs)

  def predict(self, params, state, split: str, budget: batching.Budget):
    """Predictions for every structure of a split (EMA params if given)."""
    graphs = self.graphs(split)
    if not graphs:
      return {}
    # Evaluation predicts every structure: one larger than the training
    # budget (skipped there under batch.skip_oversized) gets a budget that
    # fits it (one more compilation), never an error or a missing row.
    budget = batching.fitting_budget(budget, graphs)
    if self._eval_step is None:
      self._eval_step = parallel.make_eval_step(self.task, self.transformed(),
                                                self.local_mesh, self.policy)
    preds = predict_graphs(self._eval_step, params, state, graphs, budget,
                           self.num_local, [s.id for s in self.splits[split]],
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


def train(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) the experiment described by ``config`` in ``workdir``.

  Returns the final validation metrics (EMA parameters when enabled).
  """
  # Config, data, then resume compatibility are checked before anything is
  # written: a rejected run leaves its workdir as it was (docs/faults.md).
  checks.check_config(config)
  checks.check_workdir(workdir)
  parallel.log_devices()
  config = per_device_batch(config)
  tc = config.train
  exp = Experiment(config, workdir)
  if not exp.validation_splits():
    logging.warning("the validation split is empty: no validation metrics "
                    "and no best checkpoint (end-of-run outputs use the "
                    "latest checkpoint)")
  exp.task.setup(exp.splits["train"])
  budget = exp.budget()
  logging.info("batch budget per device: %s", budget)
  optimizer = optim.make_optimizer(config.optim)
  transformed = exp.transformed()
  stream = exp.train_stream(budget, int(tc.seed))

  # Initialise from the first batch's first device slice (shapes only).
  first = next(stream.iterate())
  example = jax.tree_util.tree_map(lambda x: x[0], first.graph)
  host_state = exp.init_state(example, optimizer)
  ts = parallel.replicate(host_state, exp.mesh)
  nparams = sum(int(np.prod(x.shape)) for x in
                jax.tree_util.tree_leaves(host_state.params))
  logging.info("model %s: %s parameters", exp.task.describe(),
               f"{nparams:,}")

  ckpt = ckpt_lib.Checkpointer(workdir, int(tc.get("max_to_keep", 3)))
  plateau = None
  if config.optim.get("plateau", None) and config.optim.plateau.get(
      "enabled", False):
    p = config.optim.plateau
    plateau = optim.Plateau(factor=p.factor, patience=p.patience,
                            min_lr=p.min_lr,
                            threshold=float(p.get("threshold", 1e-4)))
  monitor = plateau_monitor(config)
  # Training loss since the last plateau step, weighted by graphs (the
  # reference's epoch-mean training error); checkpointed for exact resume.
  epoch_loss = {"sum": 0.0, "graphs": 0}
  best_value = None
  position = None  # start of epoch 0 on every device
  resume_step = ckpt.latest_step()
  if resume_step is not None:
    ts, meta, resume_step = ckpt.restore(ts)
    first_shard = jax.process_index() * exp.num_local
    position = tuple(batching.DataPosition(int(e), int(c)) for e, c in
                     meta["data_positions"][first_shard:first_shard +
                                            exp.num_local])
    if len(meta["data_positions"]) != jax.device_count():
      raise ResumeError(
          f"checkpoint in {workdir} was written with "
          f"{len(meta['data_positions'])} devices, this run has "
          f"{jax.device_count()}: exact resume needs the same device count "
          f"(on CPU: the same --cpu_devices)")
    if plateau and meta.get("plateau"):
      plateau = optim.Plateau(**meta["plateau"])
    best_value = meta.get("best_value")
    ckpt.set_aside(ckpt.skipped)  # so that this run can write them again
    epoch_loss.update(meta.get("plateau_train_loss") or {})
    logging.info("resuming from step %d (data epoch %d, sample %d on device "
                 "0)", resume_step, position[0].epoch, position[0].cursor)
  # Accepted: from here on the run writes to its workdir.
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  exp.write_data_report()
  step_fn = parallel.make_train_step(
      exp.task, transformed, optimizer, exp.mesh,
      ema_decay=float(config.optim.get("ema_decay", 0.0)),
      policy=exp.policy)
  num_steps = int(tc.num_steps)
  log = logger_lib.MetricLogger(workdir, resume_step, num_steps)
  flag = _SignalFlag()
  step = int(resume_step or 0)
  first_step = step
  select = exp.task.selection_metric

  def save(which="latest"):
    positions = position or [batching.DataPosition()] * exp.num_local
    meta = _meta(exp, _gather_positions(positions), plateau, best_value,
                 budget, step)
    meta["plateau_train_loss"] = dict(epoch_loss)
    ckpt.save(step, ts, meta, which)

  val_names = exp.validation_splits()
  # train.select_split: 'average' (default: the mean over the validation
  # splits, as the paper's tables) or one split's name, e.g. 'val_id'.
  select_split = str(tc.get("select_split", "average") or "average")
  select_split = "val" if select_split == "average" else select_split
  if val_names and select_split not in val_names + ["val"]:
    raise ConfigError(f"train.select_split={select_split}", f"the "
                      f"validation splits are {val_names} (or 'average')")
  sign = -1.0 if exp.task.selection_higher_is_better else 1.0

  def run_eval():
    nonlocal best_value, ts
    eval_params = ts.ema_params if config.optim.get("ema_decay", 0) else (
        ts.params)
    per_split = exp.evaluate_splits(eval_params, ts.state, val_names, budget)
    if not per_split:
      return {}
    for name, m in per_split.items():
      log.write(step, name, m)
      logging.info("step %d %s: %s", step, name, _fmt(m))
    metrics = per_split["val"]
    value = per_split.get(select_split, {}).get(select)
    if value is not None:
      value = sign * float(value)  # minimised
    if value is not None and (best_value is None or value < best_value):
      best_value = float(value)
      save("best")
    if monitor == "val" and value is not None:
      step_plateau(value)
    return metrics

  def step_plateau(value):
    nonlocal ts
    if plateau is not None:
      ts = ts._replace(opt_state=optim.set_lr_scale(
          ts.opt_state, plateau.update(float(value), float(config.optim.lr))))

  def step_plateau_on_train():
    if monitor == "train" and epoch_loss["graphs"]:
      step_plateau(epoch_loss["sum"] / epoch_loss["graphs"])
    epoch_loss.update(sum=0.0, graphs=0)

  batches = batching.Prefetcher(stream.iterate(position),
                                int(config.batch.get("prefetch", 2)))
  window = {"graphs": 0, "t": time.time(), "sums": {}, "n": 0}
  val_metrics: Dict[str, Any] = {}
  try:
    while step < num_steps:
      batch = next(batches)
      if batch.skipped:
        for msg in batch.skipped:
          logging.warning("skipped oversized sample %s", msg)
      graph = parallel.shard_batch(batch.graph, exp.mesh)
      if step == first_step:
        parallel.compile_ahead(step_fn, ts, graph)
      ts, metrics = step_fn(ts, graph)
      metrics = jax.device_get(metrics)  # block: queued CPU collectives can deadlock XLA's rendezvous
      step += 1
      position = batch.position
      if not metrics["finite"]:
        msg = (f"non-finite loss or gradients at step {step} (loss "
               f"{metrics['loss']}); the update was not applied")
        if not tc.get("skip_nonfinite", False):
          kept = (f"last good checkpoint kept in {workdir}"
                  if ckpt.latest_step() is not None else
                  f"no checkpoint was written yet in {workdir}")
          raise NonFiniteError(msg + f"; {kept}. Set "
                               "train.skip_nonfinite=True to skip such steps.")
        logging.warning(msg)
      window["graphs"] += batch.num_graphs
      if metrics["finite"]:
        epoch_loss["sum"] += float(metrics["loss"]) * batch.num_graphs
        epoch_loss["graphs"] += batch.num_graphs
      window["n"] += 1
      for k, v in metrics.items():
        window["sums"][k] = window["sums"].get(k, 0.0) + float(v)
      for k, v in batching.utilisation(batch.graph).items():
        window["sums"][k] = window["sums"].get(k, 0.0) + v
      if step % int(tc.log_every) == 0 or step == num_steps:
        dt = time.time() - window["t"]
        vals = {k: v / window["n"] for k, v in window["sums"].items()}
        vals["graphs_per_sec"] = window["graphs"] * jax.process_count() / max(
            dt, 1e-9)
        vals["lr"] = optim.current_lr(config.optim, step, ts.opt_state)
        vals["epoch"] = position[0].epoch
        log.write(step, "train", vals)
        logging.info("step %d/%d loss %.5g | %.1f graphs/s | util n/e/g "
                     "%.2f/%.2f/%.2f | ETA %s", step, num_steps, vals["loss"],
                     vals["graphs_per_sec"], vals["util_nodes"],
                     vals["util_edges"], vals["util_graphs"], log.eta(step))
        window = {"graphs": 0, "t": time.time(), "sums": {}, "n": 0}
      if tc.get("eval_every", 0) and step % int(tc.eval_every) == 0:
        val_metrics = run_eval()
        step_plateau_on_train()
      if step % int(tc.checkpoint_every) == 0:
        save()
      if _any_process(flag.received is not None):
        save()
        logging.warning("preempted at step %d: checkpoint written; rerun the "
                        "same command to resume", step)
        raise Preempted(flag.received or signal.SIGTERM)
    if not tc.get("eval_every", 0) or step % int(tc.eval_every):
      val_metrics = run_eval()
    save()
  finally:
    batches.close()
    flag.restore()
    log.close()
    ckpt.close()
  if jax.process_index() == 0:
    from noisy_nodes import plots  # pylint: disable=g-import-not-at-top
    png = plots.plot_learning_curve(workdir)
    if png:
      logging.info("learning curve written to %s", png)
  if stream.skipped_total:
    logging.warning("%d oversized samples were skipped",
                    len(stream.skipped_total))
  return {k: v for k, v in val_metrics.items()}


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
