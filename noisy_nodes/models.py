"""One way to build a model: ``build_model(config.model)``.

Every model of the library is a Haiku module ``model(graph, is_training) ->
dict`` (docs/design.md). A model module registers itself here under a short
name, with its presets next to it (the paper's or reference's
hyper-parameters, defined once in the model's module):

  register("gns", GNS, presets=presets)            # noisy_nodes/gns/model.py

and any task builds any model from its config the same way:

  build_model(config.model, num_targets=T)   # inside hk.transform_with_state

``config.model.name`` is a registered name or ``package.module:Class``; the
other fields are the constructor's keyword arguments (the keyword arguments
of ``build_model`` add to or override them). The shared layer names no
model: a name is registered when its module is imported (``crystal.models``
registers the crystal models, ``crystal.crysgnn.encoder`` the original
CGCNN, ``noisy_nodes.gns.model`` the GNS), which the task that uses a model
does.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, Mapping, Optional

__all__ = ["build_model", "plain", "presets", "register", "registered"]


@dataclasses.dataclass(frozen=True)
class _Entry:
  factory: Callable[..., Any]
  presets: Optional[Callable[..., Dict[str, Any]]]


_REGISTRY: Dict[str, _Entry] = {}


def register(name: str, factory: Callable[..., Any],
             presets: Optional[Callable[..., Dict[str, Any]]] = None) -> None:
  """Makes ``config.model.name = name`` build ``factory(**fields)``.

  ``presets(**options) -> dict`` gives the model's reference settings
  (constructor keyword arguments); registering a name twice with another
  factory is an error.
  """
  key = name.lower()
  old = _REGISTRY.get(key)
  if old is not None and old.factory is not factory:
    raise ValueError(f"model name {name!r} is already registered for "
                     f"{old.factory!r}")
  _REGISTRY[key] = _Entry(factory, presets)


def registered() -> list:
  """The registered model names (those whose modules are imported)."""
  return sorted(_REGISTRY)


def plain(cfg) -> Dict[str, Any]:
  """ConfigDict / mapping / None -> plain dict (lists become tuples)."""
  if cfg is None:
    return {}
  items = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}


def _entry(name: str) -> _Entry:
  key = str(name).lower()
  if key in _REGISTRY:
    return _REGISTRY[key]
  if ":" in key:
    module, attr = str(name).split(":", 1)
    factory = getattr(importlib.import_module(module), attr)
    return _Entry(factory, getattr(factory, "presets", None))
  raise ValueError(f"unknown model {name!r}: use one of {registered()} (the "
                   "names registered by the imported model modules) or "
                   "'package.module:Class'")


def build_model(config: Optional[Mapping[str, Any]] = None, **overrides):
  """``config.model`` (+ ``overrides``) -> a module instance.

  ``name`` picks the model (module docstring); every other field is passed
  to its constructor. Call inside ``hk.transform_with_state``.
  """
  kwargs = {**plain(config), **overrides}
  if "name" not in kwargs:
    raise ValueError("config.model.name is missing: the model to build "
                     f"({registered()} or 'package.module:Class')")
  name = kwargs.pop("name")
  return _entry(name).factory(**kwargs)


def presets(name: str, **options) -> Dict[str, Any]:
  """The reference settings of model ``name`` (its module's ``presets``),
  with ``name`` first: a ``config.model`` that ``build_model`` builds."""
  entry = _entry(name)
  if entry.presets is None:
    raise ValueError(f"model {name!r} has no presets")
  return {"name": name, **entry.presets(**options)}
