"""Run logging: ``metrics.jsonl``, TensorBoard event files and the console.

Only process 0 writes. On resume, lines of ``metrics.jsonl`` past the restored
step are dropped so that the file always describes one consistent run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Dict, Optional

import jax

# Libraries whose INFO lines drown the training log: orbax writes ~25 lines per
# checkpoint save (and absl routes them all through one "absl" logger, so they
# cannot be silenced by logger name), matplotlib announces its font cache.
_QUIET_PATHS = (os.sep + "orbax" + os.sep, os.sep + "matplotlib" + os.sep)


class _LibraryInfoFilter(logging.Filter):
  """Drops records below WARNING emitted from files under ``_QUIET_PATHS``."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    return not any(p in record.pathname for p in _QUIET_PATHS)


def quiet_library_logs() -> None:
  """Hides orbax/matplotlib INFO lines (warnings and errors still show).

  Set ``NN_LIBRARY_LOGS=1`` to keep them (debugging checkpointing).
  """
  if os.environ.get("NN_LIBRARY_LOGS", "") not in ("", "0"):
    return
  handlers = list(logging.getLogger().handlers)
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    handlers.append(absl_logging.get_absl_handler())
  except ImportError:
    pass
  for h in handlers:
    if not any(isinstance(f, _LibraryInfoFilter) for f in h.filters):
      h.addFilter(_LibraryInfoFilter())


def format_seconds(seconds: float) -> str:
  """H:MM:SS for progress lines ("?" when not finite)."""
  if seconds != seconds or seconds in (float("inf"), float("-inf")):
    return "?"
  secs = int(seconds)
  return f"{secs // 3600:d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


class MetricLogger:
  """Writes one JSON object per (step, split) and TensorBoard scalars."""

  def __init__(self, workdir: str, resume_step: Optional[int] = None,
               total_steps: Optional[int] = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.total_steps = total_steps
    self._tb = None
    self._t0 = time.time()
    self._step0 = resume_step or 0
    self.last: Dict[str, Dict[str, Any]] = {}  # split -> its latest row
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      keep = []
      with open(self.path) as f:
        for line in f:
          try:
            rec = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut by a crash
          if resume_step is not None and rec.get("step", 0) <= resume_step:
            keep.append(line if line.endswith("\n") else line + "\n")
            if isinstance(rec, dict) and "split" in rec:
              self.last[rec["split"]] = rec
      with open(self.path + ".tmp", "w") as f:
        f.writelines(keep)
      os.replace(self.path + ".tmp", self.path)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX not installed: no TensorBoard events")

  def write(self, step: int, split: str, values: Dict[str, Any]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step), "split": split}
    rec.update({k: _plain(v) for k, v in values.items()})
    self.last[split] = rec
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    if self._tb is not None:
      for k, v in rec.items():
        if k not in ("step", "split") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()

  def eta(self, step: int) -> str:
    if not self.total_steps or step <= self._step0:
      return "?"
    rate = (time.time() - self._t0) / (step - self._step0)
    return format_seconds(rate * (self.total_steps - step))

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _plain(v):
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  if isinstance(v, (bool, int)) and not isinstance(v, float):
    return v
  return f
