"""What a finished crystal run leaves behind: predictions, parity, curves.

``write_outputs(workdir)`` restores a run (``noisy_nodes.engine.trainer.
restore_run``, best checkpoint by default), predicts its validation and test
splits and writes, per split:

  predictions_<split>.csv   id, target(s), prediction(s), absolute error(s)
  parity_<split>.png        predicted vs. true with MAE / R^2
  metrics_<split>.json      the task's metrics (MAE, MSE, R^2) and the MAE
                            of the training mean (``mean_predictor_mae``)

plus ``learning_curve.png`` from ``metrics.jsonl``. Plots use matplotlib's
Agg backend (no display needed).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from typing import Dict, Optional, Sequence

import jax
import numpy as np

from noisy_nodes import plots
from crystal.metrics import regression_metrics
from noisy_nodes.data.structures import DataError


def plot_learning_curve(workdir: str, out_png: Optional[str] = None
                        ) -> Optional[str]:
  """Training loss and validation metrics against step (``metrics.jsonl``).

  Works for any run of the engine (``noisy_nodes.plots``); returns the PNG
  path, or None when the run has logged nothing yet.
  """
  return plots.plot_learning_curve(workdir, out_png)


def write_predictions_csv(path: str, ids: Sequence[str],
                          pred: np.ndarray, true: Optional[np.ndarray] = None,
                          extra: Optional[Dict[str, Sequence]] = None
                          ) -> str:
  """One row per sample.

  Args:
    path: output csv.
    ids: [n] sample ids.
    pred: [n] or [n, T] predictions (target units).
    true: optional [n] or [n, T] targets; adds target and abs_error columns.
    extra: more columns, name -> [n] values (e.g. the source file).
  Columns for T = 1: id, [extra...], [target], prediction, [abs_error];
  for T > 1 each gets a ``_<t>`` suffix.
  """
  pred = np.asarray(pred, np.float64).reshape(len(ids), -1)
  t = pred.shape[1]
  sfx = [""] if t == 1 else [f"_{i}" for i in range(t)]
  header = ["id"] + list(extra or {})
  if true is not None:
    true = np.asarray(true, np.float64).reshape(len(ids), -1)
    header += [f"target{s}" for s in sfx]
  header += [f"prediction{s}" for s in sfx]
  if true is not None:
    header += [f"abs_error{s}" for s in sfx]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for i, sid in enumerate(ids):
      row = [sid] + [v[i] for v in (extra or {}).values()]
      if true is not None:
        row += [repr(float(x)) for x in true[i]]
      row += [repr(float(x)) for x in pred[i]]
      if true is not None:
        row += [repr(float(x)) for x in np.abs(pred[i] - true[i])]
      w.writerow(row)
  return path


def plot_parity(path: str, true: np.ndarray, pred: np.ndarray,
                title: str = "", unit: str = "") -> str:
  """Predicted vs. true scatter with the y = x line, one panel per target.

  Args:
    true, pred: [n] or [n, T].
  """
  true = np.asarray(true, np.float64).reshape(len(true), -1)
  pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
  t = true.shape[1]
  plt = plots._pyplot()  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, t, figsize=(4.6 * t, 4.4), squeeze=False)
  for k, ax in enumerate(axes[0]):
    x, y = true[:, k], pred[:, k]
    m = regression_metrics(x[:, None], y[:, None])
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1)
    ax.scatter(x, y, s=10, alpha=0.6)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    u = f" ({unit})" if unit else ""
    ax.set_xlabel(f"true{u}")
    ax.set_ylabel(f"predicted{u}")
    name = title + (f" [target {k}]" if t > 1 else "")
    ax.set_title(f"{name}\nMAE {m['mae']:.4g}  R² {m['r2']:.3f}  n={len(x)}")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_outputs(workdir: str, splits: Sequence[str] = ("val", "test"),
                  which: str = "best", out_dir: Optional[str] = None
                  ) -> Dict[str, Dict]:
  """Predicts ``splits`` of a saved run and writes csv / png / json files.

  Args:
    workdir: the run directory (config.json + checkpoints).
    splits: splits to predict; empty ones are skipped.
    which: "best" or "latest" checkpoint.
    out_dir: where to write (default: ``workdir``).
  Returns:
    {split: {"metrics": {...}, "csv": path, "parity": path}} and
    "learning_curve": {"png": path}; {} on processes other than 0.
  Multi-host: call on every process (the restore is collective); only
  process 0 predicts and writes.
  """
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  out_dir = out_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  # restore_run needs one non-empty split to shape its example batch.
  exp = ts = budget = step = None
  last_error = None
  for example in list(splits) + ["train"]:
    try:
      exp, ts, _, budget, step = trainer.restore_run(workdir, which,
                                                     example_split=example)
      break
    except DataError as e:
      if "is empty" not in e.fault:
        raise
      last_error = e
  if exp is None:
    raise last_error
  # Every process restores (orbax synchronises the hosts); one writes.
  if jax.process_index() != 0:
    return {}
  params = ts.ema_params if saved["optim"].get("ema_decay", 0) else ts.params
  result: Dict[str, Dict] = {}
  train = exp.splits.get("train") or []
  train_mean = (np.mean([np.atleast_1d(s.targets["target"]) for s in train],
                        axis=0) if train else None)
  for split in splits:
    structures = exp.splits.get(split) or []
    if not structures:
      continue
    preds = exp.predict(params, ts.state, split, budget)
    pred = np.stack([np.atleast_1d(p) for p in preds["target"]])
    true = np.stack([np.atleast_1d(s.targets["target"]) for s in structures])
    metrics = exp.task.metrics(structures, preds)
    metrics.update(step=int(step), checkpoint=which, n=len(structures))
    if train_mean is not None:
      # The baseline every model must beat: predict the training mean.
      metrics["mean_predictor_mae"] = float(np.mean(np.abs(true -
                                                           train_mean)))
    ids = [s.id for s in structures]
    csv_path = write_predictions_csv(
        os.path.join(out_dir, f"predictions_{split}.csv"), ids, pred, true)
    png = plot_parity(os.path.join(out_dir, f"parity_{split}.png"), true,
                      pred, title=f"{exp.task.describe()} — {split}")
    with open(os.path.join(out_dir, f"metrics_{split}.json"), "w") as f:
      json.dump(metrics, f, indent=2)
    result[split] = {"metrics": metrics, "csv": csv_path, "parity": png}
    logging.info("%s: %s", split, metrics)
  curve = plot_learning_curve(workdir,
                              os.path.join(out_dir, "learning_curve.png"))
  result["learning_curve"] = {"png": curve}
  return result
