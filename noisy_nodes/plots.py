"""Plots every run writes (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def read_metrics(workdir: str) -> List[Dict]:
  rows = []
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return rows
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def plot_learning_curve(workdir: str, out_png: Optional[str] = None,
                        val_metrics: Optional[Sequence[str]] = None
                        ) -> Optional[str]:
  """Training loss and validation metrics against step, from metrics.jsonl.

  Returns the PNG path (default ``workdir/learning_curve.png``), or None when
  there is nothing to plot.
  """
  rows = read_metrics(workdir)
  train = [r for r in rows if r.get("split") == "train" and "loss" in r]
  val = [r for r in rows if r.get("split") == "val"]
  if not train and not val:
    return None
  if val_metrics is None:
    keys = sorted({k for r in val for k, v in r.items()
                   if isinstance(v, (int, float)) and k not in
                   ("step", "eval_seconds")})
    # Prefer error metrics; baselines are drawn as dashed lines.
    val_metrics = [k for k in keys if "mae" in k or "loss" in k][:4] or keys[:4]
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  if train:
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train],
                 label="train loss")
    axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_title("training loss")
  axes[0].legend()
  for k in val_metrics:
    pts = [(r["step"], r[k]) for r in val if k in r]
    if pts:
      x, y = np.array(pts).T
      style = "--" if "baseline" in k else "-o"
      axes[1].plot(x, y, style, label=k, markersize=3)
  axes[1].set_xlabel("step")
  axes[1].set_title("validation")
  axes[1].legend()
  fig.tight_layout()
  out_png = out_png or os.path.join(workdir, "learning_curve.png")
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png
