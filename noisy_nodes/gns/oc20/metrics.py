"""OC20 evaluation metrics in numpy (IS2RE energy, IS2RS positions).

Definitions follow the OC20 paper (Chanussot et al. 2021, §4) and fairchem's
evaluator (``fairchem.core.modules.evaluator``):

* IS2RE: energy MAE (eV) and EwT, the fraction of systems whose absolute
  energy error is below 0.02 eV.
* IS2RS: ADwT (Average Distance within Threshold). For each system the mean,
  over its FREE atoms, of the minimum-image distance between predicted and
  DFT relaxed positions; then the fraction of (system, threshold) pairs with
  mean distance < threshold, thresholds ``np.arange(0.01, 0.5, 0.001)`` Å.
  Noisy Nodes (Godwin et al. 2022) Tables 3-4 report this number.

Minimum image: the Cartesian difference is taken to fractional coordinates,
wrapped to [-0.5, 0.5] along periodic axes (fairchem's ``min_diff``), and then
the 27 neighbouring images are also checked so the result is the true
minimum image even for skewed cells (identical to fairchem for orthogonal
cells, never larger for others).
"""
from __future__ import annotations

import itertools
from typing import Dict, Optional, Sequence

import numpy as np

EWT_THRESHOLD = 0.02  # eV
ADWT_THRESHOLDS = np.arange(0.01, 0.5, 0.001)  # Å, 490 thresholds

_IMAGES = np.array(list(itertools.product((-1, 0, 1), repeat=3)), np.float64)


def energy_mae(pred, target) -> float:
  """Mean absolute error (eV). pred, target: [S]."""
  pred, target = _pair(pred, target)
  return float(np.mean(np.abs(pred - target)))


def energy_within_threshold(pred, target,
                            threshold: float = EWT_THRESHOLD) -> float:
  """EwT: fraction of systems with |pred - target| < threshold. [S] -> ()."""
  pred, target = _pair(pred, target)
  return float(np.mean(np.abs(pred - target) < threshold))


def min_image_displacement(pred: np.ndarray, target: np.ndarray,
                           cell: np.ndarray, pbc) -> np.ndarray:
  """Shortest periodic image of ``pred - target``.

  Args:
    pred, target: [n, 3] Cartesian positions (Å).
    cell: [3, 3] lattice vectors as rows.
    pbc: [3] bool, periodic directions (non-periodic axes are not wrapped).
  Returns:
    [n, 3] displacement vectors d with |d| minimal over the periodic images.
  """
  diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  pbc = np.broadcast_to(np.asarray(pbc, bool), (3,))
  if not pbc.any():
    return diff
  cell = np.asarray(cell, np.float64).reshape(3, 3)
  frac = np.linalg.solve(cell.T, diff.T).T  # diff = frac @ cell
  frac[:, pbc] -= np.round(frac[:, pbc])
  images = _IMAGES * pbc  # no shifts along open axes
  images = np.unique(images, axis=0)
  # [n, K, 3] candidate displacements; pick the shortest per atom.
  cand = (frac[:, None, :] + images[None]) @ cell
  best = np.argmin(np.einsum("nki,nki->nk", cand, cand), axis=1)
  return cand[np.arange(len(cand)), best]


def mean_free_atom_distance(pred: np.ndarray, target: np.ndarray,
                            cell: np.ndarray, pbc,
                            fixed: Optional[np.ndarray] = None) -> float:
  """Mean min-image distance over free atoms (fixed == 0) of one system."""
  d = np.linalg.norm(min_image_displacement(pred, target, cell, pbc), axis=-1)
  if fixed is not None:
    free = np.asarray(fixed).reshape(-1) == 0
    if free.shape != d.shape:
      raise ValueError(f"fixed has {free.shape[0]} atoms, positions "
                       f"{d.shape[0]}")
    d = d[free]
  if d.size == 0:
    raise ValueError("system has no free atoms to score")
  return float(np.mean(d))


def system_distances(pred_positions: Sequence[np.ndarray],
                     target_positions: Sequence[np.ndarray],
                     cells: Sequence[np.ndarray], pbcs,
                     fixed: Optional[Sequence[np.ndarray]] = None
                     ) -> np.ndarray:
  """Per-system mean free-atom distance, [S]. Arguments are per system."""
  n = len(pred_positions)
  if not (len(target_positions) == n and len(cells) == n):
    raise ValueError("pred_positions, target_positions and cells must have "
                     "one entry per system")
  pbcs = _per_system(pbcs, n, (3,))
  fixed = [None] * n if fixed is None else fixed
  return np.array([
      mean_free_atom_distance(p, t, c, b, f)
      for p, t, c, b, f in zip(pred_positions, target_positions, cells, pbcs,
                               fixed)], np.float64)


def average_distance_within_threshold(
    pred_positions, target_positions, cells, pbcs, fixed=None,
    thresholds: np.ndarray = ADWT_THRESHOLDS) -> float:
  """ADwT (OC20 IS2RS), in [0, 1]; see the module docstring."""
  d = system_distances(pred_positions, target_positions, cells, pbcs, fixed)
  return float(np.mean(d[:, None] < np.asarray(thresholds)[None, :]))


def positions_mae(pred_positions, target_positions, cells=None, pbcs=None,
                  fixed=None) -> float:
  """Mean absolute error of (min-image) coordinates over free atoms (Å)."""
  errs = []
  n = len(pred_positions)
  cells = [np.zeros((3, 3))] * n if cells is None else cells
  pbcs = _per_system(False if pbcs is None else pbcs, n, (3,))
  for i in range(n):
    d = min_image_displacement(pred_positions[i], target_positions[i],
                               cells[i], pbcs[i])
    if fixed is not None:
      d = d[np.asarray(fixed[i]).reshape(-1) == 0]
    errs.append(np.abs(d).reshape(-1))
  return float(np.mean(np.concatenate(errs)))


def is2re_metrics(pred, target) -> Dict[str, float]:
  return {"energy_mae": energy_mae(pred, target),
          "energy_ewt": energy_within_threshold(pred, target)}


def is2rs_metrics(pred_positions, target_positions, cells, pbcs,
                  fixed=None) -> Dict[str, float]:
  return {
      "adwt": average_distance_within_threshold(
          pred_positions, target_positions, cells, pbcs, fixed),
      "positions_mae": positions_mae(pred_positions, target_positions, cells,
                                     pbcs, fixed),
  }


def _pair(pred, target):
  pred = np.asarray(pred, np.float64).reshape(-1)
  target = np.asarray(target, np.float64).reshape(-1)
  if pred.shape != target.shape or pred.size == 0:
    raise ValueError(f"pred {pred.shape} and target {target.shape} must be "
                     "equal, non-empty")
  return pred, target


def _per_system(x, n, shape):
  x = np.asarray(x, bool)
  if x.shape == shape or x.ndim == 0:
    return np.broadcast_to(x, (n,) + shape)
  return x.reshape((n,) + shape)
