"""The data layer shared by every task: structures, neighbour lists, graphs
and dynamic batching (no model, no paper).

``structures``  the ``Structure`` record every reader produces and validation;
``sources``     random-access datasets (``Source``) read on demand;
``shards``      preprocessed shards (``python -m noisy_nodes.preprocess``);
``neighbors``   periodic radius / k-nearest neighbour lists (vesin search);
``graphs``      a structure -> single-graph ``jraph.GraphsTuple``;
``batching``    node/edge/graph budgets, padding and the resumable stream;
``workers``     ``data.workers`` featurisation processes;
``atomic``      cache files written atomically by concurrent processes.

The names below are imported on first use (``noisy_nodes.data.pad_graphs``).
"""
from noisy_nodes import _lazy

__all__, __getattr__, __dir__ = _lazy.attach(__name__, {
    "noisy_nodes.data.structures": (
        "DataError", "Structure", "load_structures", "save_structures"),
    "noisy_nodes.data.sources": ("Source", "ListSource", "Subset", "Concat"),
    "noisy_nodes.data.shards": ("ShardSource", "open_splits"),
    "noisy_nodes.data.neighbors": ("NeighborList", "neighbor_list"),
    "noisy_nodes.data.graphs": ("structure_to_graph",),
    "noisy_nodes.data.batching": (
        "Batch", "Budget", "DataPosition", "GraphStream", "estimate_budget",
        "eval_batches", "fitting_budget", "pad_graphs", "register_edge_layout"),
})
