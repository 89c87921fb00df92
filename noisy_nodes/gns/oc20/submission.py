"""The OC20 evaluation server's submission file (IS2RE, IS2RS).

fairchem (``scripts/make_submission_file.py``) joins one results file per
split into one ``.npz``, each key prefixed by the split, for split in
``SPLITS`` = id, ood_ads, ood_cat, ood_both:

  IS2RE  ``{split}_ids``  [S] system ids (str), ``{split}_energy`` [S] eV.
  IS2RS  ``{split}_ids``  [S], ``{split}_pos`` [sum n_s, 3] relaxed positions
         of all atoms of all systems concatenated (Å), ``{split}_chunk_idx``
         [S - 1] = cumsum(n_s)[:-1], the split points of ``np.split`` (what
         fairchem's relaxation writer saves from the systems' atom counts).
Systems are in sorted id order (string order), as fairchem's results writer
leaves them (``np.unique(ids, return_index=True)`` before saving).

``write_submission`` / ``read_submission`` are plain numpy;
``submission_from_run`` predicts the four test splits (``test_id``, ...) of a
saved run with its best checkpoint.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

SPLITS = ("id", "ood_ads", "ood_cat", "ood_both")


def write_submission(path: str, kind: str,
                     per_split: Mapping[str, Mapping[str, Sequence]]) -> None:
  """Writes the server's file.

  Args:
    path: output ``.npz``.
    kind: 'is2re' or 'is2rs'.
    per_split: split (one of ``SPLITS``) -> {'ids': [S] ids, and 'energy':
      [S] (IS2RE) or 'positions': list of [n_s, 3] arrays (IS2RS)}.
  """
  if kind not in ("is2re", "is2rs"):
    raise ValueError(f"kind must be is2re or is2rs, got {kind!r}")
  missing = [s for s in SPLITS if s not in per_split]
  if missing:
    raise ValueError(f"the submission needs all of {SPLITS}; missing "
                     f"{missing}")
  out: Dict[str, np.ndarray] = {}
  for split in SPLITS:
    item = per_split[split]
    ids = np.array([str(i) for i in item["ids"]])
    if len(np.unique(ids)) != len(ids):
      raise ValueError(f"{split}: repeated system ids")
    order = np.argsort(ids, kind="stable")
    out[f"{split}_ids"] = ids[order]
    if kind == "is2re":
      energy = np.asarray(item["energy"], np.float64).reshape(-1)
      if energy.shape != ids.shape:
        raise ValueError(f"{split}: {energy.size} energies for {ids.size} ids")
      out[f"{split}_energy"] = energy[order]
    else:
      pos = [np.asarray(p, np.float64).reshape(-1, 3)
             for p in item["positions"]]
      if len(pos) != len(ids):
        raise ValueError(f"{split}: {len(pos)} systems for {ids.size} ids")
      pos = [pos[i] for i in order]
      out[f"{split}_pos"] = (np.concatenate(pos) if pos
                             else np.zeros((0, 3)))
      out[f"{split}_chunk_idx"] = np.cumsum([len(p) for p in pos])[:-1]
  np.savez_compressed(path, **out)


def read_submission(path: str) -> Dict[str, Dict[str, object]]:
  """The inverse of ``write_submission``: split -> {'ids', 'energy' or
  'positions' (list of [n_s, 3])}."""
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  out: Dict[str, Dict[str, object]] = {}
  for split in SPLITS:
    item: Dict[str, object] = {"ids": data[f"{split}_ids"]}
    if f"{split}_energy" in data:
      item["energy"] = data[f"{split}_energy"]
    else:
      item["positions"] = np.split(data[f"{split}_pos"],
                                   data[f"{split}_chunk_idx"])
    out[split] = item
  return out


def submission_from_run(workdir: str, path: str, prefix: str = "test",
                        which: str = "best",
                        overrides: Optional[Dict[str, object]] = None
                        ) -> Dict[str, int]:
  """Predicts splits ``{prefix}_{id,ood_ads,ood_cat,ood_both}`` of a run.

  The run's data (or ``overrides['data.path']``) must hold those four splits
  in fairchem's layout (``test_id/data.lmdb``, ...); ``prefix='val'`` writes
  the validation splits in the same layout (to check a file locally).
  Returns {split: number of systems}.
  """
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data.structures import DataError  # pylint: disable=g-import-not-at-top
  names = {s: f"{prefix}_{s}" for s in SPLITS}
  exp, ts, _, budget, _ = trainer.restore_run(
      workdir, which, overrides, example_split=names["id"])
  missing = [n for n in names.values() if not exp.splits.get(n)]
  if missing:
    raise DataError(exp.config.data.get("path", "") or workdir,
                    f"no (or empty) splits {missing} for the submission; "
                    f"the data has {sorted(exp.splits)}")
  kind = getattr(exp.task, "kind", "")
  params = ts.ema_params if exp.config.optim.get("ema_decay", 0) else (
      ts.params)
  per_split = {}
  for split, name in names.items():
    preds = exp.predict(params, ts.state, name, budget)
    item = {"ids": [s.id for s in exp.splits[name]]}
    if kind == "is2rs":
      item["positions"] = preds["node_positions"]
    else:
      item["energy"] = np.asarray(preds["energy"], np.float64)
    per_split[split] = item
  write_submission(path, kind, per_split)
  return {s: len(v["ids"]) for s, v in per_split.items()}
