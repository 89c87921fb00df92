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

  def __init__(self, config):
    self.config = config
    #: "sample: fault" lines of inputs skipped under data.skip_invalid; the
    #: engine writes them to DIR/data_report.json and logs their count.
    self.skipped: List[str] = []

  # -- data ------------------------------------------------------------------
  @abc.abstractmethod
  def load_splits(self) -> Dict[str, List[Structure]]:
    """Returns {'train': [...], 'val': [...], 'test': [...]} (test optional)."""

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


def resolve_task(name: str) -> Callable[..., Task]:
  """``config.task``: a registered short name or ``package.module:Class``."""
  registry = {
      "oc20": "noisy_nodes.gns.oc20.task:OC20Task",
      "qm9": "noisy_nodes.gns.qm9.task:QM9Task",
      "crystal": "crystal.tasks:CrystalPropertyTask",
      "crysgnn_pretrain": "crystal.crysgnn.tasks:CrysGNNPretrainTask",
      "crysgnn_distill": "crystal.crysgnn.tasks:CrysGNNDistillTask",
  }
  path = registry.get(name, name)
  if ":" not in path:
    raise ValueError(f"unknown task {name!r}: use one of {sorted(registry)} "
                     f"or 'package.module:Class'")
  module, cls = path.split(":")
  return getattr(importlib.import_module(module), cls)
