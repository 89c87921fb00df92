"""Orbax checkpoints: every N steps (latest K kept) and the best by validation.

A checkpoint holds two items:
  * ``state``: the ``TrainState`` pytree (step, params, Haiku state, optimiser
    state, EMA parameters, RNG key) — restored against a target, so optax
    NamedTuples come back as NamedTuples (SPEC.md);
  * ``meta``: JSON — each process's data-stream position, the plateau
    controller, the best validation value, the task's statistics (target
    normalisation...), the batch budget and the atomic numbers of the
    training split (``train_elements``: prediction warns about others).
Orbax writes into a temporary directory and renames it when complete, so a
kill during a write never leaves a checkpoint that breaks restore: the partial
directory is ignored and the previous checkpoint is used.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Latest-N and best-1 orbax checkpoint managers under ``workdir``."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.workdir = os.path.abspath(workdir)
    opts = dict(enable_async_checkpointing=False, create=True,
                cleanup_tmp_directories=True)
    self.latest = ocp.CheckpointManager(
        os.path.join(self.workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **opts))
    self.best = ocp.CheckpointManager(
        os.path.join(self.workdir, "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts))

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in ("latest", "best"):
      raise ValueError(f"checkpoint must be 'latest' or 'best', got {which!r}")
    return self.latest if which == "latest" else self.best

  def latest_step(self, which: str = "latest") -> Optional[int]:
    return self._manager(which).latest_step()

  def save(self, step: int, state: Any, meta: Dict[str, Any],
           which: str = "latest") -> None:
    mngr = self._manager(which)
    if mngr.latest_step() == step:
      return
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()

  def restore(self, target: Any, which: str = "latest",
              step: Optional[int] = None) -> Tuple[Any, Dict[str, Any], int]:
    """Restores (state, meta, step); ``target`` gives structure and sharding."""
    mngr = self._manager(which)
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(
          f"no {which} checkpoint in {os.path.join(self.workdir, which if which == 'best' else 'checkpoints')}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract),
        meta=ocp.args.JsonRestore()))
    logging.info("restored %s checkpoint at step %d from %s", which, step,
                 self.workdir)
    return out["state"], out["meta"], step

  def restore_meta(self, which: str = "latest") -> Tuple[Dict[str, Any], int]:
    mngr = self._manager(which)
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint under {self.workdir}")
    out = mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return out["meta"], step

  def close(self):
    self.latest.close()
    self.best.close()
