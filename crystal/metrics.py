"""Regression metrics of the crystal property tasks (MAE, MSE, R^2).

Shared by ``crystal.tasks`` (evaluation) and ``crystal.outputs`` (parity
plots); a module of their own so neither imports the other.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


def r2_score(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """Coefficient of determination per column: 1 - SS_res / SS_tot, [T]."""
  ss_res = np.sum((true - pred) ** 2, axis=0)
  ss_tot = np.sum((true - true.mean(0)) ** 2, axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> Dict[str, float]:
  """MAE, MSE, R^2 (averaged over targets) and per-target MAE when T > 1.

  Args:
    true, pred: [n, T] in target units.
  """
  true = np.asarray(true, np.float64).reshape(len(true), -1)
  pred = np.asarray(pred, np.float64).reshape(len(pred), -1)
  err = pred - true
  out = {"mae": float(np.mean(np.abs(err))),
         "mse": float(np.mean(err ** 2)),
         "r2": float(np.mean(r2_score(true, pred)))}
  if true.shape[1] > 1:
    for t in range(true.shape[1]):
      out[f"mae_{t}"] = float(np.mean(np.abs(err[:, t])))
  return out
