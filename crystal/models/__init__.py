"""DeeperGATGNN and the (deeper) baselines CGCNN, SchNet, MPNN, MEGNet.

Every model is a Haiku module called as ``model(graph, is_training) -> dict``
on a padded ``jraph.GraphsTuple`` (docs/design.md) with ``'graph'`` [G, T]
and ``'node_embedding'`` [N, dim]. ``deeper=True`` applies the DeeperGATGNN
recipe (DiffGroupNorm + residual skips, ``stack.py``) to any of them.
"""
# Import order matters: stack imports norms; the models import stack.
from crystal.models import norms
from crystal.models import pooling
from crystal.models import stack
from crystal.models.norms import DiffGroupNorm
from crystal.models.stack import count_params, format_params
from crystal.models.gatgnn import AGATLayer, GATGNN
from crystal.models.cgcnn import CGCNN, CGConv
from crystal.models.schnet import SchNet, InteractionBlock
from crystal.models.mpnn import MPNN, NNConv
from crystal.models.megnet import MEGNet

__all__ = ["AGATLayer", "CGCNN", "CGConv", "DiffGroupNorm", "GATGNN",
           "InteractionBlock", "LEARNING_RATES", "MEGNet", "MODELS", "MPNN",
           "NNConv", "PRESETS", "SchNet", "build_model", "count_params",
           "format_params", "norms", "pooling", "presets", "stack"]

MODELS = {"gatgnn": GATGNN, "cgcnn": CGCNN, "schnet": SchNet, "mpnn": MPNN,
          "megnet": MEGNet}


def build_model(name: str, **kwargs):
  """``build_model('cgcnn', deeper=True, num_layers=10)`` -> a module instance
  (call inside ``hk.transform_with_state``)."""
  try:
    cls = MODELS[name.lower()]
  except KeyError:
    raise ValueError(f"unknown crystal model {name!r}; choose from "
                     f"{sorted(MODELS)}") from None
  return cls(**kwargs)


def presets(name: str) -> dict:
  """Reference hyper-parameters (SPEC.md) for ``build_model(name, **...)``."""
  name = name.lower()
  if name == "gatgnn":
    return dict(dim=64, num_layers=20, heads=4, activation="softplus",
                dropout_rate=0.0, deeper=True)
  try:
    return dict(PRESETS[name])
  except KeyError:
    raise ValueError(f"no preset for {name!r}; choose from "
                     f"{sorted(PRESETS) + ['gatgnn']}") from None


# Baselines: dim 100, 4 convolutions, 3 post-pool layers (SPEC.md). The
# learning rates are for the optimiser config: CGCNN 0.002, MPNN 0.001,
# SchNet 0.0005, MEGNet 0.0005.
PRESETS = {
    "cgcnn": dict(dim=100, num_layers=4, post_fc_layers=3, pool="mean"),
    "schnet": dict(dim=100, num_layers=4, post_fc_layers=3, pool="max",
                   cutoff=8.0),
    "mpnn": dict(dim=100, num_layers=4, post_fc_layers=3, pool="mean"),
    "megnet": dict(dim=100, num_layers=4, post_fc_layers=3, pool="mean"),
}
LEARNING_RATES = {"gatgnn": 0.005, "cgcnn": 0.002, "mpnn": 0.001,
                  "schnet": 0.0005, "megnet": 0.0005}
