"""The Task interface: what the one training engine needs from a paper setting.

A task binds a config to data, featurisation, a Haiku model and a loss:

  structures --featurize(s, rng, training)--> single-graph GraphsTuple
  padded batch --model(graph, is_training)--> outputs dict
  (outputs, batch) --loss--> (loss_sum, weight, metric_sums)
  (outputs, batch) --predict--> per-graph / per-node predictions (host units)
  (structures, predictions) --metrics--> {name: float}

Everything the engine does (batching, sharding, optimisation, EMA,
checkpoints, logging, evaluation) is shared; tasks never loop.
"""
from __future__ import annotations

import abc
import importlib
import importlib.metadata
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax.numpy as jnp
import jraph
import numpy as np

from noisy_nodes.data.structures import Structure

Outputs = Dict[str, jnp.ndarray]


class Task(abc.ABC):
  """Base class of every task. Subclasses are named in ``config.task``."""

  #: Metric used for best-checkpoint selection and the plateau schedule.
  selection_metric: str = "loss"
  #: Whether a larger selection metric is better (ADwT, EwT).
  selection_higher_is_better: bool = False
  #: True when training featurisation depends on the RNG (noise, frame
  #: sampling); otherwise training graphs are featurised once and cached.
  randomized_features: bool = False
  #: Keys of ``predict`` that ``noisy_nodes.Predictor.predict`` returns
  #: (None: all of them); the others are terms of the task's metrics.
  prediction_keys: Optional[Tuple[str, ...]] = None
  #: Analyses of a saved run of this task (``python -m noisy_nodes.evaluate
  #: --analysis=NAME``): NAME -> ``fn(workdir, split, which, overrides)``
  #: returning a JSON-able summary (the GNS tasks: ``mad``).
  analyses: Mapping[str, Callable[..., Any]] = {}

  def __init__(self, config):
    self.config = config
    #: "sample: fault" lines of inputs skipped under data.skip_invalid; the
    #: engine writes them to DIR/data_report.json and logs their count.
    self.skipped: List[str] = []
    #: More of what the data held, merged into DIR/data_report.json (e.g.
    #: OC20's systems without trajectory frames).
    self.data_report: Dict[str, Any] = {}

  # -- data ------------------------------------------------------------------
  @abc.abstractmethod
  def load_splits(self) -> Dict[str, Sequence[Structure]]:
    """{'train': ..., 'val': ..., 'test': ...} (test optional): each a
    ``noisy_nodes.data.sources.Source`` read on demand (or a list)."""

  def link_splits(self, splits: Mapping[str, Sequence[Structure]]) -> None:
    """Joins what the task reads beside the samples (OC20's trajectory
    frames) to splits that did not come from ``load_splits`` (preprocessed
    shards); ``load_splits`` calls it too. Default: nothing."""
    del splits

  def setup(self, train: Sequence[Structure]) -> None:
    """Fits statistics on the training split (target mean/std...)."""

  def state_dict(self) -> Dict[str, Any]:
    """JSON-able statistics needed to rebuild the task without data."""
    return {}

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    del state

  def check_input(self, structure: Structure) -> Structure:
    """Raises ``DataError`` for a structure this task's data reader would
    reject (``noisy_nodes.Predictor`` checks new inputs with it)."""
    return structure.validate()

  def compact_graph(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """What ``noisy_nodes.preprocess`` stores of a deterministic graph.

    Default: all of it. A task may drop fields that ``expand_graph``
    recomputes exactly from what is kept (the crystal tasks drop the
    Gaussian edge expansion: two thirds of a crystal graph's bytes).
    """
    return graph

  def expand_graph(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """The inverse of ``compact_graph``, applied to each graph read from
    shards: ``expand_graph(compact_graph(g))`` equals ``g`` bit for bit."""
    return graph

  @abc.abstractmethod
  def featurize(self, structure: Structure, rng: Optional[np.random.Generator],
                training: bool) -> jraph.GraphsTuple:
    """One structure -> single-graph sample (docs/design.md)."""

  # -- model and loss ----------------------------------------------------------
  @abc.abstractmethod
  def model(self, graph: jraph.GraphsTuple, is_training: bool) -> Outputs:
    """Haiku function body (called inside ``hk.transform_with_state``)."""

  @abc.abstractmethod
  def loss(self, outputs: Outputs, graph: jraph.GraphsTuple
           ) -> Tuple[jnp.ndarray, jnp.ndarray, Dict[str, jnp.ndarray]]:
    """(sum of per-example losses, sum of weights, metric sums).

    Sums run over real (unpadded) examples only; the engine divides by the
    weight summed over every device.  Metric sums are divided the same way.
    """

  @abc.abstractmethod
  def predict(self, outputs: Outputs, graph: jraph.GraphsTuple
              ) -> Dict[str, jnp.ndarray]:
    """Predictions in target units: [G, ...] per graph or [N, ...] per node.

    Keys starting with ``node_`` are per node; everything else per graph.
    """

  @abc.abstractmethod
  def metrics(self, structures: Sequence[Structure],
              predictions: Dict[str, List[np.ndarray]]) -> Dict[str, float]:
    """Host-side metrics; ``predictions[k][i]`` belongs to ``structures[i]``."""

  # -- optional hooks --------------------------------------------------------
  def init_params(self, params, state):
    """Hook to modify freshly initialised params (fine-tuning from a teacher)."""
    return params, state

  def describe(self) -> str:
    return type(self).__name__

  @classmethod
  def write_submission(cls, workdir: str, path: str, prefix: str, which: str,
                       overrides: Optional[Mapping[str, Any]]
                       ) -> Dict[str, int]:
    """Writes a benchmark server's file of a saved run's predictions to
    ``path`` (``python -m noisy_nodes.evaluate --submission``); returns
    {split: number of samples}. Only tasks of a benchmark with a server."""
    del workdir, path, prefix, which, overrides
    from noisy_nodes.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError("--submission", f"task {cls.__name__} has no "
                      "submission format")

  def write_outputs(self, workdir: str) -> None:
    """Hook for what a finished run leaves in ``workdir`` (default: nothing).

    The training CLI (``noisy_nodes.train``, every CV fold too) calls it on a
    fresh task built from the run's config, once training has finished
    normally and its final checkpoint is saved: never after preemption
    (exit 143) or an error. It runs on every process, because restoring a
    checkpoint is collective (orbax barriers) across hosts; implementations
    write files on process 0 only (``jax.process_index() == 0``).
    """
    del workdir


#: The entry-point group of task short names (``setup.py``): a package built
#: on this library registers its tasks there, so that the shared layer names
#: none of them and a run directory's ``config.task = "oc20"`` still resolves.
ENTRY_POINT_GROUP = "noisy_nodes.tasks"


def registered_tasks() -> Dict[str, str]:
  """{short name: "package.module:Class"} of the installed distributions."""
  return {ep.name: ep.value for ep in
          importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve_task(name: str) -> Callable[..., Task]:
  """``config.task``: ``package.module:Class`` or a registered short name."""
  path = name
  if ":" not in name:
    registry = registered_tasks()
    if name not in registry:
      raise ValueError(
          f"unknown task {name!r}: name it 'package.module:Class' or one of "
          f"the short names {sorted(registry)} (entry points "
          f"{ENTRY_POINT_GROUP!r} of the installed packages: reinstall with "
          f"`pip install -e .` after adding one)")
    path = registry[name]
  module, _, cls = path.partition(":")
  return getattr(importlib.import_module(module), cls)
