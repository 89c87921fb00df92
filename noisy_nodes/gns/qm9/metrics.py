"""QM9 metrics: per-target MAE, std. MAE and logMAE (Noisy Nodes App. 8.3).

Following Klicpera et al. (DimeNet), with targets m = 1..M, N molecules and
sigma_m the standard deviation of the ground truth of target m:

  std. MAE = 1/M sum_m  1/N sum_i |f_m(X_i) - t_im| / sigma_m
  logMAE   = 1/M sum_m  log( 1/N sum_i |f_m(X_i) - t_im| / sigma_m )

Both are invariant to the unit of each target (MAE and sigma share it).
Table 5 of the paper prints std. MAE in percent (0.88 %) and logMAE as the
plain natural-log mean (-5.60); ``std_mae`` here is a fraction (x100 for %).
Per-target MAEs are in the units of the targets (``reader.TARGET_UNITS``;
multiply eV by 1000 to compare with the paper's meV).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import numpy as np


def mae(pred, target) -> float:
  """Mean absolute error over entries where the target is finite."""
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  if pred.shape != target.shape:
    raise ValueError(f"prediction shape {pred.shape} != target shape "
                     f"{target.shape}")
  ok = np.isfinite(target)
  if not ok.any():
    return float("nan")
  return float(np.mean(np.abs(pred[ok] - target[ok])))


def target_std(target) -> float:
  """Population standard deviation (ddof=0) over finite entries."""
  t = np.asarray(target, np.float64)
  t = t[np.isfinite(t)]
  return float(np.std(t)) if t.size else float("nan")


def qm9_metrics(preds: Mapping[str, np.ndarray],
                targets: Mapping[str, np.ndarray],
                stds: Optional[Mapping[str, float]] = None
                ) -> Dict[str, float]:
  """Per-target MAE, standardised MAE, std. MAE and logMAE.

  Args:
    preds: target name -> predictions [N].
    targets: target name -> ground truth [N] (same keys as ``preds``); NaN
      entries (unavailable labels) are ignored.
    stds: target name -> sigma_m; by default the std of ``targets[name]``
      (the paper's sigma_m is the std of the ground truth). Pass the
      training-set stds to compare runs on different test sets.

  Returns:
    {'mae/<name>', 'std_mae/<name>' for each target, 'std_mae' (mean over
    targets, fraction), 'log_mae' (mean of natural logs), 'num_targets'}.
  """
  if set(preds) != set(targets):
    raise ValueError(f"prediction keys {sorted(preds)} != target keys "
                     f"{sorted(targets)}")
  if not preds:
    raise ValueError("no targets given")
  out: Dict[str, float] = {}
  standardised = []
  for name in sorted(targets):
    m = mae(preds[name], targets[name])
    sigma = float(stds[name]) if stds is not None else target_std(
        targets[name])
    if not sigma > 0:
      raise ValueError(f"target {name!r}: standard deviation {sigma} must be "
                       "positive")
    out[f"mae/{name}"] = m
    out[f"std_mae/{name}"] = m / sigma
    standardised.append(m / sigma)
  s = np.array(standardised)
  out["std_mae"] = float(np.mean(s))
  with np.errstate(divide="ignore"):
    out["log_mae"] = float(np.mean(np.log(s)))
  out["num_targets"] = float(len(s))
  return out
