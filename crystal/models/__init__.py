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

MODELS = {"gatgnn": GATGNN}


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
  return dict(PRESETS[name])


PRESETS = {}
