"""Very deep graph neural networks on atoms, in JAX.

The public API, flat (``import noisy_nodes as nn_lib; nn_lib.load(...)``):

  records     Structure, DataError, load_structures, save_structures
  data        Source, ListSource, Subset, Concat (random-access datasets);
              neighbor_list, structure_to_graph; Budget, estimate_budget,
              pad_graphs, GraphStream, register_edge_layout (batching)
  tasks       Task, resolve_task
  models      build_model(config.model) (every registered model)
  training    ``noisy_nodes.engine.train(config, workdir)`` (the CLI
              ``python -m noisy_nodes.train`` holds the name here)
  trained     load(workdir) -> Predictor; analyze, write_submission
  errors      ConfigError

The papers live in ``noisy_nodes.gns`` (Noisy Nodes: GNS, OC20, QM9) and
``crystal`` (DeeperGATGNN, CrysGNN). Names are imported on first use, so
``import noisy_nodes`` does not load the engine (Haiku, Optax, orbax).
"""
from noisy_nodes import _compat  # noqa: F401  (must run before jraph is used)
from noisy_nodes import _lazy
from noisy_nodes.data.structures import DataError, Structure

__all__, __getattr__, __dir__ = _lazy.attach(__name__, {
    __name__: ("DataError", "Structure"),
    "noisy_nodes.data": (  # the data layer's own list, flat here too
        "load_structures", "save_structures", "Source", "ListSource",
        "Subset", "Concat", "neighbor_list", "structure_to_graph", "Budget",
        "estimate_budget", "pad_graphs", "GraphStream",
        "register_edge_layout"),
    "noisy_nodes.tasks.base": ("Task", "resolve_task"),
    "noisy_nodes.models": ("build_model",),
    "noisy_nodes.api.predictor": ("load", "Predictor", "analyze",
                                  "write_submission"),
    "noisy_nodes.errors": ("ConfigError",),
})
