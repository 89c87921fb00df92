"""A ledger of finished runs that outlives the run directories.

A sweep of dozens of runs that each train for tens of minutes does not fit in
one sitting on a small machine, and its run directories (checkpoints,
gigabytes) are scratch. ``--ledger=DIR`` keeps one small JSON file per
*finished* run (``DIR/<run name>.json``: the run's result row and the
settings it was trained under) in a directory meant to be committed beside
the experiment's results: a later sitting, on a fresh machine, skips every
run the ledger holds and trains only the rest, and the table is always
written from the ledger's rows plus the new ones.

The settings guard the table's consistency: a ledger entry made under other
settings (say ``--epochs=300`` when the sweep now asks for 1000) is an error
that names the file and the differing settings, never a silent mix of two
protocols in one table. Delete the entry (or use another ledger) to retrain.

Besides runs, a ledger keeps *facts* of the sweep that every run shares and
that are costly to recompute (``_<key>.json``, e.g. the mean predictor's
MAE, which needs the generated dataset): a report made from the ledger
alone then needs neither the dataset nor the run directories.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from noisy_nodes.data import atomic


class LedgerMismatch(ValueError):
  """A ledger entry was made under other settings than the sweep's."""


def _jsonable(v: Any) -> Any:
  return json.loads(json.dumps(v, default=str))


class Ledger:
  """Finished runs' rows under ``path`` (one ``<name>.json`` per run).

  ``settings``: the sweep's settings every entry must have been made under
  (e.g. the epochs, data sizes and teacher); compared after a JSON round
  trip, so tuples and lists are equal.
  """

  def __init__(self, path: str, settings: Dict[str, Any]):
    self.path = path
    self.settings = _jsonable(settings)
    os.makedirs(path, exist_ok=True)

  def _file(self, name: str) -> str:
    if not name or "/" in name or name.startswith((".", "_")):
      raise ValueError(f"bad run name {name!r}")
    return os.path.join(self.path, name + ".json")

  def _read(self, path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        entry = json.load(f)
      settings, row = entry["settings"], entry["row"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{path}: not a ledger entry ({e})") from e
    diff = sorted(k for k in set(settings) | set(self.settings)
                  if settings.get(k) != self.settings.get(k))
    if diff:
      raise LedgerMismatch(
          f"{path}: made under other settings than this sweep's: " +
          ", ".join(f"{k}={settings.get(k)!r} (now {self.settings.get(k)!r})"
                    for k in diff) +
          "; delete it to retrain the run, or use another --ledger")
    return row

  def _write(self, path: str, row: Dict[str, Any]) -> None:
    atomic.write_text(path, json.dumps(
        {"settings": self.settings, "row": _jsonable(row)}, indent=1) + "\n")

  def get(self, name: str) -> Optional[Dict[str, Any]]:
    """The row of run ``name``, or None if the ledger does not hold it.

    Raises:
      LedgerMismatch: the entry was made under other settings.
      ValueError: the entry is not a ledger file (names the file).
    """
    return self._read(self._file(name))

  def put(self, name: str, row: Dict[str, Any]) -> None:
    """Records run ``name`` as finished (atomically)."""
    self._write(self._file(name), row)

  def _fact_file(self, key: str) -> str:
    if not key.isidentifier():
      raise ValueError(f"bad fact name {key!r}")
    return os.path.join(self.path, f"_{key}.json")

  def get_fact(self, key: str) -> Optional[Dict[str, Any]]:
    """The sweep-wide fact ``key``, or None (same settings check as runs)."""
    return self._read(self._fact_file(key))

  def put_fact(self, key: str, value: Dict[str, Any]) -> None:
    """Records the sweep-wide fact ``key`` (not a run: `names` skips it)."""
    self._write(self._fact_file(key), value)

  def names(self) -> List[str]:
    return sorted(f[:-len(".json")] for f in os.listdir(self.path)
                  if f.endswith(".json") and not f.startswith((".", "_")))
