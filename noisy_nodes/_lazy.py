"""Lazy re-exports for the package ``__init__``s (PEP 562).

A package lists its public names with the module each lives in; a name is
imported from there on first use, so ``import noisy_nodes`` (or ``crystal``)
stays light while ``noisy_nodes.load`` or ``noisy_nodes.pad_graphs`` work.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable, List, Mapping, Sequence, Tuple


def attach(package: str, modules: Mapping[str, Sequence[str]]
           ) -> Tuple[List[str], Callable[[str], object],
                      Callable[[], List[str]]]:
  """``(__all__, __getattr__, __dir__)`` for ``package``, whose public names
  are ``modules[module]`` for each module that defines (or re-exports) them.
  """
  names = {n: module for module, ns in modules.items() for n in ns}

  def __getattr__(name: str):
    module = names.get(name)
    if module is None:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    setattr(sys.modules[package], name, value)  # later lookups are plain
    return value

  def __dir__() -> List[str]:
    return sorted(set(vars(sys.modules[package])) | set(names))

  return sorted(names), __getattr__, __dir__
