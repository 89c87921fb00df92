"""DeeperGATGNN and the (deeper) baselines CGCNN, SchNet, MPNN, MEGNet.

Every model is a ``skeleton.CrystalModel`` (pre-FC -> scanned (conv -> norm
-> skip) -> pooling -> head, written once) called as
``model(graph, is_training) -> dict`` on a padded ``jraph.GraphsTuple``
(docs/design.md) with ``'graph'`` [G, T], ``'node_embedding'`` [N, dim] and
``'pooled'`` [G, F]. Each model file holds its convolution and
its reference preset (``PRESET``, ``DEEPER``, ``LEARNING_RATE``);
``deeper=True`` applies the DeeperGATGNN recipe (DiffGroupNorm + residual
skips) to any of them. Importing this package registers the five models
with ``noisy_nodes.models``: ``build_model(config.model)`` builds them
(``config.model.name`` 'gatgnn', 'cgcnn', 'schnet', 'mpnn' or 'megnet').
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

from noisy_nodes import models as _registry

# What users import: the models, their layers, presets and the parameter
# table (the modules stay importable: ``from crystal.models import stack``).
__all__ = ["AGATLayer", "CGCNN", "CGConv", "CrystalModel", "DiffGroupNorm",
           "GATGNN", "InteractionBlock", "MEGNet", "MODELS", "MPNN",
           "NNConv", "SchNet", "format_params",
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


def presets(name: str, deeper: bool = False) -> dict:
  """The reference's hyper-parameters (usccolumbia/deeperGATGNN's
  MatDeepLearn config.yml) of crystal model ``name``, the constructor's
  keyword arguments: plain or deeper. GATGNN: DEEP_GATGNN (20 layers) when
  ``deeper``, GATGNN (5) otherwise; the baselines: their module's ``PRESET``
  (+ ``DEEPER``)."""
  module = _module(name)
  if module is gatgnn:
    return gatgnn.presets(deeper)
  return dict(module.PRESET, deeper=deeper, **(module.DEEPER if deeper
                                                else {}))


def learning_rate(name: str) -> float:
  """The reference's AdamW learning rate of ``name``."""
  return _module(name).LEARNING_RATE


# ``noisy_nodes.models.build_model({'name': 'cgcnn', ...})`` builds these.
for _name, _cls in MODELS.items():
  _registry.register(_name, _cls,
                     presets=lambda deeper=False, _n=_name: presets(_n, deeper))
