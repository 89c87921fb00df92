"""Orbax checkpoints: every N steps (latest K kept) and the best by validation.

A checkpoint holds two items:
  * ``state``: the ``TrainState`` pytree (step, params, Haiku state, optimiser
    state, EMA parameters, RNG key) — restored against a target, so optax
    NamedTuples come back as NamedTuples (without a target orbax returns
    dicts);
  * ``meta``: JSON — each process's data-stream position, the plateau
    controller, the best validation value, the task's statistics (target
    normalisation...), the batch budget and the atomic numbers of the
    training split (``train_elements``: prediction warns about others).
Orbax writes into a temporary directory and renames it when complete, so a
kill during a write never leaves a checkpoint that breaks restore: the partial
directory is ignored and the previous checkpoint is used.

Integrity: ``meta`` also holds a CRC-32 of every leaf of ``state`` and the
state's signature (leaf paths, shapes, dtypes). ``restore`` checks the
signature before reading any array (another model or config: ``ResumeError``)
and the checksums after (a bit flip or a truncated file: corrupt). A corrupt
or unreadable checkpoint is skipped with a warning naming it, and the newest
intact one is used; none intact is a ``CheckpointError``.
"""
from __future__ import annotations

import logging
import os
import shutil
import zlib
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from noisy_nodes.errors import CheckpointError, ResumeError


def _host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def _leaves(tree) -> List[Tuple[str, Any]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def signature(tree) -> List[str]:
  """'path shape dtype' of every leaf: what a restore target must match."""
  return [f"{p} {tuple(np.shape(x))} {np.dtype(x.dtype).name}"
          for p, x in _leaves(tree)]


def checksums(tree) -> Dict[str, int]:
  """CRC-32 of every leaf's bytes (host copy), keyed by leaf path."""
  return {p: zlib.crc32(np.ascontiguousarray(_host(x)).tobytes())
          for p, x in _leaves(tree)}


def check_finite(tree, where: str) -> None:
  """``CheckpointError`` if a float leaf of ``tree`` holds NaN or inf."""
  for p, x in _leaves(tree):
    x = _host(x)
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
      raise CheckpointError(f"{where}: parameters are not finite (NaN/inf in "
                            f"{p}): refusing to use them")


class _Corrupt(Exception):
  pass


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

  def directory(self, which: str = "latest") -> str:
    return os.path.join(self.workdir,
                        "best" if which == "best" else "checkpoints")

  def save(self, step: int, state: Any, meta: Dict[str, Any],
           which: str = "latest") -> None:
    mngr = self._manager(which)
    if mngr.latest_step() == step:
      return
    meta = dict(meta, checksums=checksums(state), signature=signature(state))
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    mngr.wait_until_finished()

  def _steps(self, which: str, step: Optional[int]) -> List[int]:
    mngr = self._manager(which)
    steps = [step] if step is not None else sorted(mngr.all_steps(),
                                                   reverse=True)
    if not steps:
      raise FileNotFoundError(f"no {which} checkpoint in "
                              f"{self.directory(which)}")
    return steps

  def _meta(self, which: str, step: int) -> Dict[str, Any]:
    try:
      return self._manager(which).restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise _Corrupt(f"unreadable meta ({_short(e)})") from e

  def _check_signature(self, which, step, meta, target) -> None:
    saved = meta.get("signature")
    if saved is None:
      return  # written before checkpoints carried one
    ours = signature(target)
    if saved == ours:
      return
    diff = next((f"{a!r} here, {b!r} in the checkpoint" for a, b in
                 zip(ours, saved) if a != b),
                f"{len(ours)} arrays here, {len(saved)} in the checkpoint")
    raise ResumeError(
        f"checkpoint {self.directory(which)}/{step} holds another model or "
        f"config than this run ({diff}): use another --workdir, or the "
        f"config in {os.path.join(self.workdir, 'config.json')}")

  def restore(self, target: Any, which: str = "latest",
              step: Optional[int] = None) -> Tuple[Any, Dict[str, Any], int]:
    """Restores (state, meta, step) of the newest intact checkpoint.

    ``target`` gives structure and sharding. Corrupt or unreadable
    checkpoints are skipped with a warning (listed in ``self.skipped``).

    Raises:
      ResumeError: the checkpoint holds another model (signature).
      CheckpointError: no intact checkpoint.
      FileNotFoundError: no checkpoint at all.
    """
    mngr = self._manager(which)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    self.skipped: List[int] = []
    faults = []
    for s in self._steps(which, step):
      try:
        meta = self._meta(which, s)
        self._check_signature(which, s, meta, target)
        try:
          state = mngr.restore(s, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:  # pylint: disable=broad-except
          raise _Corrupt(f"unreadable ({_short(e)})") from e
        saved = meta.get("checksums")
        if saved is not None:
          bad = [p for p, c in checksums(state).items() if saved.get(p) != c]
          if bad:
            raise _Corrupt(f"checksum mismatch in {bad[0]}"
                           + (f" and {len(bad) - 1} more arrays"
                              if len(bad) > 1 else ""))
      except _Corrupt as e:
        faults.append(f"{self.directory(which)}/{s}: {e}")
        self.skipped.append(s)
        continue
      if faults:
        logging.warning("skipped corrupt checkpoint(s): %s; using step %d",
                        "; ".join(faults), s)
      logging.info("restored %s checkpoint at step %d from %s", which, s,
                   self.workdir)
      return state, meta, s
    raise CheckpointError(f"no intact {which} checkpoint: "
                          + "; ".join(faults))

  def restore_meta(self, which: str = "latest") -> Tuple[Dict[str, Any], int]:
    """(meta, step) of the newest checkpoint whose meta is readable."""
    faults = []
    for s in self._steps(which, None):
      try:
        return self._meta(which, s), s
      except _Corrupt as e:
        faults.append(f"{self.directory(which)}/{s}: {e}")
    raise CheckpointError(f"no intact {which} checkpoint: "
                          + "; ".join(faults))

  def set_aside(self, steps: List[int], which: str = "latest") -> None:
    """Moves corrupt checkpoints to DIR/corrupt/ (kept for inspection) so
    that this run can write those steps again. Process 0 moves."""
    if not steps:
      return
    if jax.process_index() == 0:
      dest = os.path.join(self.workdir, "corrupt")
      os.makedirs(dest, exist_ok=True)
      for s in steps:
        src = os.path.join(self.directory(which), str(s))
        target = os.path.join(dest, f"{os.path.basename(self.directory(which))}_{s}")
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(src, target)
        logging.warning("moved corrupt checkpoint %s to %s", src, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("checkpoint_set_aside")
    self._manager(which).reload()

  def close(self):
    self.latest.close()
    self.best.close()


def _short(e: BaseException) -> str:
  """An exception as one short line (tensorstore errors span pages)."""
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:200]}"
