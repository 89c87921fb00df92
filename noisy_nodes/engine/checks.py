"""Checks a run passes before it writes anything to its workdir.

One place for the config values every task shares (``check_config``) and for
the run directory (``check_workdir``), so that a rejected run leaves nothing
behind: the trainer validates config, then data, then resume compatibility,
and only then writes ``config.json`` (docs/faults.md). Each fault is a
``ConfigError`` naming the flag, e.g.
``--config.train.num_steps=-5: must be >= 1``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence, Tuple

from noisy_nodes.errors import ConfigError


def _epochs(config) -> bool:
  """Crystal configs may give the run length in epochs (crystal/tasks.py)."""
  return int(config.get("train", {}).get("epochs", 0) or 0) > 0


# (dotted key, valid(value, config), what it must be). A key a config does
# not have is not checked.
_RULES: Sequence[Tuple[str, Callable[[Any, Any], bool], str]] = (
    ("train.num_steps", lambda v, c: _epochs(c) or v >= 1, "must be >= 1"),
    ("train.epochs", lambda v, c: v >= 0, "must be >= 0"),
    ("train.log_every", lambda v, c: v >= 1, "must be >= 1"),
    ("train.checkpoint_every", lambda v, c: _epochs(c) or v >= 1,
     "must be >= 1"),
    ("train.eval_every", lambda v, c: _epochs(c) or v >= 0,
     "must be >= 0 (0: only at the end)"),
    ("train.max_to_keep", lambda v, c: v >= 1, "must be >= 1"),
    ("batch.max_graphs", lambda v, c: v >= 1, "must be >= 1"),
    ("batch.max_nodes", lambda v, c: v >= 0, "must be >= 0 (0: estimated)"),
    ("batch.max_edges", lambda v, c: v >= 0, "must be >= 0 (0: estimated)"),
    ("batch.prefetch", lambda v, c: v >= 1, "must be >= 1"),
    ("optim.lr", lambda v, c: math.isfinite(v) and v > 0,
     "must be a finite number > 0"),
    ("optim.ema_decay", lambda v, c: 0.0 <= v < 1.0, "must be in [0, 1)"),
    ("optim.clip_norm", lambda v, c: v >= 0, "must be >= 0 (0: off)"),
    ("optim.warmup_steps", lambda v, c: v >= 0, "must be >= 0"),
)


def _lookup(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "get") or part not in node:
      return None
    node = node[part]
  return node


def check_config(config) -> None:
  """Raises ``ConfigError`` for the first config value that cannot work."""
  for key, valid, must in _RULES:
    value = _lookup(config, key)
    if value is None or isinstance(value, bool):
      continue
    try:
      ok = valid(float(value), config)
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f"--config.{key}={value}", must)


def check_workdir(workdir: str) -> None:
  """A workdir must be a directory (or not exist yet) under a directory."""
  if not workdir:
    raise ConfigError("--workdir", "is required")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir}", "is a file, not a directory")
  parent = os.path.dirname(os.path.abspath(workdir))
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise ConfigError(f"--workdir={workdir}",
                      f"{parent} is a file, not a directory")


def check_split(split: str, available: Sequence[str], flag: str = "--split"
                ) -> None:
  """``split`` must be one of the run's splits."""
  if split not in available:
    raise ConfigError(f"{flag}={split}", f"unknown split; this run has "
                      f"{', '.join(sorted(available))}")
