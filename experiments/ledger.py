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
    if not name or "/" in name or name.startswith("."):
      raise ValueError(f"bad run name {name!r}")
    return os.path.join(self.path, name + ".json")

  def get(self, name: str) -> Optional[Dict[str, Any]]:
    """The row of run ``name``, or None if the ledger does not hold it.

    Raises:
      LedgerMismatch: the entry was made under other settings.
      ValueError: the entry is not a ledger file (names the file).
    """
    path = self._file(name)
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

  def put(self, name: str, row: Dict[str, Any]) -> None:
    """Records run ``name`` as finished (atomically)."""
    atomic.write_text(self._file(name), json.dumps(
        {"settings": self.settings, "row": _jsonable(row)}, indent=1) + "\n")

  def names(self) -> List[str]:
    return sorted(f[:-len(".json")] for f in os.listdir(self.path)
                  if f.endswith(".json") and not f.startswith("."))
