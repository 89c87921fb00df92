"""Very deep graph neural networks on atoms, in JAX.

Public API: structures (``Structure``), graph building, dynamic batching and
one training engine shared by the Noisy Nodes GNS, DeeperGATGNN (and
baselines) and CrysGNN models.
"""
from noisy_nodes import _compat  # noqa: F401  (must run before jraph is used)
from noisy_nodes.structures import DataError, Structure

__all__ = ["DataError", "Structure"]
