"""DeeperGATGNN and the (deeper) baselines CGCNN, SchNet, MPNN, MEGNet.

Every model is a ``skeleton.CrystalModel`` (pre-FC -> scanned (conv -> norm
-> skip) -> pooling -> head, written once) called as
``model(graph, is_training) -> dict`` on a padded ``jraph.GraphsTuple``
(docs/design.md) with ``'graph'`` [G, T], ``'node_embedding'`` [N, dim] and
``'pooled'`` [G, F]. Each model file holds its convolution and
its reference preset (``PRESET``, ``DEEPER``, ``LEARNING_RATE``);
``deeper=True`` applies the DeeperGATGNN recipe (DiffGroupNorm + residual
skips) to any of them.
"""
# Import order matters: stack imports norms; skeleton imports stack; the
# models import skeleton.
from crystal.models import norms
from crystal.models import pooling
from crystal.models import stack
from crystal.models import skeleton
from crystal.models import cgcnn, gatgnn, megnet, mpnn, schnet
from crystal.models.norms import DiffGroupNorm
from crystal.models.stack import format_params
from crystal.models.gatgnn import AGATLayer, GATGNN
from crystal.models.cgcnn import CGCNN, CGConv
from crystal.models.schnet import SchNet, InteractionBlock
from crystal.models.mpnn import MPNN, NNConv
from crystal.models.megnet import MEGNet
from crystal.models.skeleton import CrystalModel

# What users import: the models, their layers, presets and the parameter
# table (the modules stay importable: ``from crystal.models import stack``).
__all__ = ["AGATLayer", "CGCNN", "CGConv", "CrystalModel", "DiffGroupNorm",
           "GATGNN", "InteractionBlock", "MEGNet", "MODELS", "MPNN",
           "NNConv", "SchNet", "build_model", "format_params",
           "learning_rate", "presets"]

MODELS = {"gatgnn": GATGNN, "cgcnn": CGCNN, "schnet": SchNet, "mpnn": MPNN,
          "megnet": MEGNet}
_MODULES = {"gatgnn": gatgnn, "cgcnn": cgcnn, "schnet": schnet,
            "mpnn": mpnn, "megnet": megnet}


def _module(name: str):
  try:
    return _MODULES[name.lower()]
  except KeyError:
    raise ValueError(f"unknown crystal model {name!r}; choose from "
                     f"{sorted(MODELS)}") from None


def build_model(name: str, **kwargs):
  """``build_model('cgcnn', deeper=True, num_layers=10)`` -> a module instance
  (call inside ``hk.transform_with_state``)."""
  _module(name)
  return MODELS[name.lower()](**kwargs)


def presets(name: str, deeper: bool = False) -> dict:
  """The reference's hyper-parameters (usccolumbia/deeperGATGNN's MatDeepLearn config.yml) for
  ``build_model(name, **...)``: plain or deeper. GATGNN: DEEP_GATGNN (20
  layers) when ``deeper``, GATGNN (5) otherwise."""
  module = _module(name)
  if module is gatgnn:
    return gatgnn.presets(deeper)
  return dict(module.PRESET, deeper=deeper, **(module.DEEPER if deeper
                                                else {}))


def learning_rate(name: str) -> float:
  """The reference's AdamW learning rate of ``name``."""
  return _module(name).LEARNING_RATE
