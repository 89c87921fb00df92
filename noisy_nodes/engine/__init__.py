"""The shared training engine (one loop for every model and task).

``train(config, workdir)`` trains or resumes a run (``trainer``); the
modules hold data parallelism (``parallel``), optimisers and schedules
(``optim``), checkpoints, logging, precision policies and process settings.
"""
from noisy_nodes import _lazy

__all__, __getattr__, __dir__ = _lazy.attach(__name__, {
    "noisy_nodes.engine.trainer": ("train",)})
