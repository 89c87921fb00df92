"""The ml_collections configs: ``python -m noisy_nodes.train
--config=configs/<name>.py[:variant]`` (or ``from configs import oc20``;
``get_config(variant)``).

One variant syntax for every config, parsed by ``parse_variant``: tokens
separated by commas, e.g. ``:demo``, ``:tiny,deeper``, ``:is2rs,10x10``;
each config's docstring lists its tokens. Paper settings with no variant.
``load('deeper_gatgnn:tiny')`` is what ``--config=configs/deeper_gatgnn.py:tiny``
gives, for scripts and tests.
"""
import importlib
import importlib.util
import os
import re
from typing import Iterable, List, Mapping


def parse_variant(variant: str, tokens: Iterable[str],
                  patterns: Mapping[str, str] = None,
                  config: str = "") -> List[str]:
  """``'a,b'`` -> ``['a', 'b']``: the variant's comma-separated tokens in
  order (blanks around them ignored).

  Each token is one of ``tokens`` or matches one of the regular expressions
  ``patterns`` whole (``{'NxM': r'\\d+x\\d+'}``: the name says it in the
  error); anything else is a ValueError naming ``config`` and the tokens it
  knows.
  """
  known, patterns = tuple(tokens), dict(patterns or {})
  out = [t.strip() for t in (variant or "").split(",") if t.strip()]
  for t in out:
    if t not in known and not any(re.fullmatch(p, t)
                                  for p in patterns.values()):
      allowed = ", ".join(known + tuple(patterns))
      raise ValueError(f"unknown {config + ' ' if config else ''}config "
                       f"variant token {t!r} in {variant!r}: use "
                       f"comma-separated tokens of {allowed}")
  return out


def load(spec: str, variant: str = None):
  """``'NAME[:variant]'``, ``'configs/NAME.py[:variant]'`` or any
  ``'path/to/file.py[:variant]'`` -> its ``get_config(variant)`` (a
  ``variant`` argument overrides the one in ``spec``)."""
  path, _, in_spec = spec.partition(":")
  return _module(path).get_config(in_spec if variant is None else variant)


def _module(path: str):
  """A file of this package is imported as ``configs.NAME`` (once); any
  other file is executed from its path."""
  here = os.path.dirname(os.path.abspath(__file__))
  name = os.path.splitext(os.path.basename(path))[0]
  ours = (not path.endswith(".py") or
          (os.path.exists(path) and os.path.samefile(
              os.path.dirname(os.path.abspath(path)), here)) or
          (not os.path.exists(path) and
           os.path.normpath(path) == os.path.join("configs", name + ".py")))
  if ours:
    return importlib.import_module(f"{__name__}.{name}")
  module_spec = importlib.util.spec_from_file_location(f"config_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module
