"""Very deep graph neural networks on atoms, in JAX.

Public API: structures (``Structure``), graph building, dynamic batching and
one training engine shared by the Noisy Nodes GNS, DeeperGATGNN (and
baselines) and CrysGNN models; ``load(workdir)`` gives a trained run as a
``Predictor`` (``noisy_nodes.api``).
"""
from noisy_nodes import _compat  # noqa: F401  (must run before jraph is used)
from noisy_nodes.data.structures import DataError, Structure

__all__ = ["DataError", "Predictor", "Structure", "load"]


def __getattr__(name):
  # ``load`` and ``Predictor`` import the engine (JAX, Haiku, orbax): only
  # on first use, so ``import noisy_nodes`` stays light for every module.
  if name in ("load", "Predictor"):
    from noisy_nodes import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'noisy_nodes' has no attribute {name!r}")
