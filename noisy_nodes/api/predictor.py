"""``load(workdir)`` -> ``Predictor``: a trained run as a Python object.

A run directory holds everything prediction needs: ``config.json`` (the
resolved config) and orbax checkpoints whose metadata carries the task's
fitted statistics (target mean/std, QM9 atom references, the crystal
featuriser's distance range) and the per-device batch budget. ``load``
rebuilds the task from them without the training data, so new structures
are featurised exactly as the validation set was during training (same
featuriser, cutoff, neighbour limit, units, normalisation), packed into the
run's budget (a structure larger than it gets a larger budget, and one more
compilation) and spread over this process's devices, in the run's
``train.precision``. Parameters are the EMA ones when the run kept an EMA
(as evaluation during training), restored through ``engine.checkpoint`` on
the first call (the first batch gives the restore target its shapes).

Outputs are numpy, in the units of the training targets:

  OC20     ``energy`` [n] (eV; adsorption or total energies as trained);
           IS2RS also ``node_positions``: [n_i, 3] relaxed positions (Å)
  QM9      one [n] array per target name (``U0``, ``gap``...; eV for
           energies, after the per-element reference for U0/U/H/G)
  crystal  ``target`` [n, T], one column per target (also CrysGNN students)

Per-node outputs (keys ``node_*``) are lists of [n_i, ...] arrays.
``embed`` gives ``node_embedding`` ([n_i, D] per item) and
``graph_embedding`` [n, D] (the model's crystal embedding where it has one,
e.g. a CrysGNN teacher; otherwise the mean over atoms).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from noisy_nodes.data import batching
from noisy_nodes import errors
from noisy_nodes import nn as nn_lib
from noisy_nodes.api import inputs as inputs_lib
from noisy_nodes.engine import checks
from noisy_nodes.engine import parallel
from noisy_nodes.engine import precision
from noisy_nodes.engine import trainer
from noisy_nodes.data.structures import DataError, Structure
from noisy_nodes.tasks import base as task_base

class UnseenElementWarning(UserWarning):
  """A structure holds an element absent from the run's training split."""


def load(workdir: str, checkpoint: str = "best",
         overrides: Optional[Dict[str, Any]] = None) -> "Predictor":
  """The run in ``workdir`` as a ``Predictor``.

  Args:
    workdir: a run directory of ``noisy_nodes.train`` (any task).
    checkpoint: "best" (by validation) or "latest".
    overrides: dotted config keys to change, e.g. {"data.path": ...} (for
      ``evaluate`` on other data); the model and featurisation settings
      should stay the run's.
  Raises:
    DataError: no ``config.json`` in ``workdir``.
    FileNotFoundError: no such checkpoint.
  """
  return Predictor(workdir, checkpoint, overrides)


def task_class(workdir: str) -> type:
  """The ``Task`` class of the run in ``workdir`` (its hooks; builds none)."""
  return task_base.resolve_task(trainer.read_config(workdir).task)


def analyze(workdir: str, name: str, split: str = "val",
            checkpoint: str = "best",
            overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Runs the analysis ``name`` of the run's task (``Task.analyses``, e.g.
  the GNS's ``mad``) on ``split``; returns its JSON-able summary."""
  task = task_class(workdir)
  if name not in task.analyses:
    raise errors.ConfigError(f"--analysis={name}", f"task {task.__name__} "
                             f"has the analyses {sorted(task.analyses)}")
  return task.analyses[name](workdir, split, checkpoint, overrides)


def write_submission(workdir: str, path: str, prefix: str = "test",
                     checkpoint: str = "best",
                     overrides: Optional[Dict[str, Any]] = None
                     ) -> Dict[str, int]:
  """The benchmark server's file of the run's predictions (the task's
  ``Task.write_submission``: OC20); returns {split: number of samples}."""
  return task_class(workdir).write_submission(workdir, path, prefix,
                                              checkpoint, overrides)


class _EmbeddingHead:
  """``make_eval_step``'s task for ``Predictor.embed``."""

  @staticmethod
  def predict(outputs, graph):
    if "node_embedding" not in outputs:
      raise ValueError(f"the model's outputs {sorted(outputs)} have no "
                       "'node_embedding'")
    h = outputs["node_embedding"]                                 # [N, D]
    g = outputs.get("crystal_embedding")
    if g is None:  # mean over each graph's real atoms
      num_nodes, num_graphs = h.shape[0], graph.n_node.shape[0]
      gidx = nn_lib.node_graph_index(graph.n_node, num_nodes)
      mask = graph.nodes["mask"].astype(h.dtype)[:, None]
      total = jax.ops.segment_sum(h * mask, gidx, num_graphs)
      count = jax.ops.segment_sum(mask, gidx, num_graphs)
      g = total / jnp.maximum(count, 1.0)
    return {"node_embedding": h, "graph_embedding": g}


class Predictor:
  """A trained run: ``predict``, ``embed``, ``evaluate``, ASE calculator."""

  def __init__(self, workdir: str, checkpoint: str = "best",
               overrides: Optional[Dict[str, Any]] = None):
    if checkpoint not in ("best", "latest"):
      raise ValueError(f"checkpoint must be 'best' or 'latest', got "
                       f"{checkpoint!r}")
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    self.checkpoint = checkpoint
    self._overrides = dict(overrides or {})
    self.config = trainer.read_config(self.workdir, self._overrides)
    #: The checkpoint's metadata and step (restored without its arrays).
    self.meta, self.step = trainer.restore_meta(self.workdir, checkpoint)
    self.task: task_base.Task = task_base.resolve_task(self.config.task)(
        self.config)
    self.task.load_state_dict(self.meta["task_state"])
    #: Per-device batch budget the run trained with.
    self.budget = batching.Budget(*self.meta["budget"])
    zs = self.meta.get("train_elements")
    #: Atomic numbers of the training split (None: an older checkpoint).
    self.train_elements = None if zs is None else frozenset(map(int, zs))
    # The run's train.precision, as evaluation during training used it.
    self._policy = precision.from_config(self.config)
    self._transformed = trainer.transformed_model(self.task, self._policy)
    self._local_mesh = parallel.make_mesh(local_only=True)
    self._devices = jax.local_device_count()
    self._params = self._state = None
    self._steps: Dict[str, Any] = {}
    self._compiled = set()

  def __repr__(self):
    return (f"Predictor({self.task.describe()}, {self.workdir}, "
            f"{self.checkpoint} checkpoint at step {self.step})")

  # -- public ------------------------------------------------------------------
  def predict(self, items) -> Dict[str, Any]:
    """Predictions for ``items`` (one structure or a sequence; module doc).

    Raises:
      DataError: an item training would reject (e.g. no atoms, NaN
        coordinates, overlapping atoms or a huge cell for crystal runs),
        naming the item.
      ValueError: the run predicts no property (a CrysGNN teacher: embed).
    """
    keys = self.task.prediction_keys
    if keys is not None and not keys:
      raise ValueError(f"{self.task.describe()} ({self.config.task}) "
                       "predicts no property: use Predictor.embed")
    structures = self._inputs(items)
    # Labels play no part in a prediction; dropping them keeps labelled and
    # unlabelled inputs batchable together.
    raw = self._run("predict", [dataclasses.replace(s, targets={})
                                for s in structures])
    keys = sorted(raw) if keys is None else keys
    return {k: _collect(k, raw[k]) for k in keys}

  def embed(self, items) -> Dict[str, Any]:
    """{'node_embedding': [[n_i, D]], 'graph_embedding': [n, D]}."""
    raw = self._run("embed", self._inputs(items))
    return {k: _collect(k, v) for k, v in raw.items()}

  def dataset(self, split: str = "val", data_path: Optional[str] = None,
              overrides: Optional[Dict[str, Any]] = None) -> List[Structure]:
    """A split of the run's data, read as training read it.

    ``data_path`` (or ``overrides``) point the run's reader at other data.
    """
    splits = self._splits(split, data_path, overrides)
    checks.check_split(split, splits)  # "--split=bogus: unknown split..."
    if not splits[split]:
      raise DataError(split, f"split {split!r} is empty")
    return splits[split]

  def evaluate(self, split: str = "val", data_path: Optional[str] = None,
               overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The task's metrics on a split of the run's data (``dataset``), as
    evaluation during training computes them, plus step/split/checkpoint.

    ``'val'`` on data with several validation splits (fairchem's ``val_id``,
    ``val_ood_*``) is their unweighted average, each split's metrics under
    ``'per_split'``; ``'all'`` is every structure under the data path.
    """
    splits = self._splits(split, data_path, overrides)
    names = sorted(k for k in splits if k.startswith("val_"))
    if not (split == "val" and "val" not in splits and names):
      checks.check_split(split, splits)  # "--split=bogus: unknown split..."
      names = [split]
    empty = [n for n in names if not splits[n]]
    if empty:
      raise DataError(split, f"split(s) {empty} are empty")
    per_split = {n: self._metrics(splits[n]) for n in names}
    metrics = per_split[split] if len(names) == 1 and split in per_split else (
        dict(trainer.average_metrics(per_split), per_split=per_split))
    metrics.update(step=self.step, split=split, checkpoint=self.checkpoint)
    return metrics

  def _metrics(self, structures: Sequence[Structure]) -> Dict[str, Any]:
    t0 = time.time()
    preds = self._run("predict", structures)
    metrics = self.task.metrics(structures, preds)
    metrics["eval_seconds"] = time.time() - t0
    metrics["num_structures"] = len(structures)
    return metrics

  def _splits(self, split: str, data_path: Optional[str],
              overrides: Optional[Dict[str, Any]]
              ) -> Dict[str, List[Structure]]:
    ov = dict(self._overrides, **(overrides or {}))
    if data_path:
      ov["data.path"] = data_path
    if split == "all":  # the whole file or folder, never re-split
      ov["data.whole"] = True
    config = trainer.read_config(self.workdir, ov)
    data_task = task_base.resolve_task(config.task)(config)
    splits = data_task.load_splits()
    if data_task.skipped:
      logging.warning("%d invalid inputs were skipped (data.skip_invalid)",
                      len(data_task.skipped))
    return splits

  def as_ase_calculator(self, energy_key: Optional[str] = None):
    """An ``ase.calculators.calculator.Calculator`` over ``predict``
    (``noisy_nodes.api.calculator``): energy only, no forces."""
    from noisy_nodes.api import calculator  # pylint: disable=g-import-not-at-top
    return calculator.PredictorCalculator(self, energy_key)

  # -- internals ---------------------------------------------------------------
  def _inputs(self, items) -> List[Structure]:
    structures = inputs_lib.to_structures(inputs_lib.as_list(items))
    if not structures:
      raise ValueError("no structures given")
    for s in structures:
      self.task.check_input(s)
    self._warn_unseen(structures)
    return structures

  def _warn_unseen(self, structures: Sequence[Structure]) -> None:
    """One ``UnseenElementWarning`` naming the structures and elements."""
    if self.train_elements is None:
      return
    unseen = []
    for s in structures:
      new = sorted(set(map(int, np.unique(s.atomic_numbers))) -
                   self.train_elements)
      if new:
        unseen.append(f"{s.id} ({', '.join(_symbol(z) for z in new)})")
    if unseen:
      more = f" and {len(unseen) - 5} more" if len(unseen) > 5 else ""
      msg = (f"{len(unseen)} of {len(structures)} structures hold elements "
             f"never seen in training ({self.workdir}), so their predictions "
             f"are extrapolations: {', '.join(unseen[:5])}{more}")
      logging.warning("%s", msg)
      warnings.warn(msg, UnseenElementWarning, stacklevel=4)

  def _budget_for(self, graphs) -> batching.Budget:
    return batching.fitting_budget(self.budget, graphs)

  def _restore(self, graphs, budget: batching.Budget) -> None:
    smallest = min(graphs, key=lambda g: int(g.n_node[0]))
    example = batching.pad_graphs([smallest], budget)
    ts, _, _ = trainer.restore_train_state(
        self.workdir, self.checkpoint, self.task, self._transformed,
        self.config, example, parallel.make_mesh())
    ema = float(self.config.optim.get("ema_decay", 0) or 0)
    self._params = parallel.to_host(ts.ema_params if ema else ts.params)
    self._state = parallel.to_host(ts.state)

  def _run(self, head: str, structures: Sequence[Structure]):
    graphs = [self.task.featurize(s, None, False) for s in structures]
    budget = self._budget_for(graphs)
    if self._params is None:
      self._restore(graphs, budget)
    if head not in self._steps:
      task = self.task if head == "predict" else _EmbeddingHead()
      self._steps[head] = parallel.make_eval_step(
          task, self._transformed, self._local_mesh, self._policy)
    first = head not in self._compiled
    self._compiled.add(head)
    return trainer.predict_graphs(self._steps[head], self._params,
                                  self._state, graphs, budget, self._devices,
                                  [s.id for s in structures],
                                  compile_first=first)


def _collect(key: str, values: List[np.ndarray]):
  if key.startswith("node_"):
    return [np.asarray(v, np.float64) for v in values]
  return np.stack([np.asarray(v, np.float64) for v in values])


def _symbol(z: int) -> str:
  from ase.data import chemical_symbols  # pylint: disable=g-import-not-at-top
  return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
