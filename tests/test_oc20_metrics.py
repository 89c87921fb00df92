"""Tests for noisy_nodes.gns.oc20.metrics against hand-computed values."""
import numpy as np
import pytest

from noisy_nodes.gns.oc20 import metrics


def test_energy_mae_and_ewt():
  pred = np.array([1.0, 2.0, 3.0, -1.0])
  target = np.array([1.01, 2.5, 3.0, -1.019])
  assert metrics.energy_mae(pred, target) == pytest.approx(
      (0.01 + 0.5 + 0.0 + 0.019) / 4)
  # |dE| = 0.01, 0.5, 0, 0.019 -> 3 of 4 below 0.02 eV.
  assert metrics.energy_within_threshold(pred, target) == pytest.approx(0.75)
  # The threshold is strict: |dE| == 0.03 with threshold 0.03 fails.
  assert metrics.energy_within_threshold([0.0], [0.03], 0.03 + 1e-12) == 1.0
  assert metrics.energy_within_threshold([0.0], [0.05]) == 0.0
  with pytest.raises(ValueError):
    metrics.energy_mae([1.0, 2.0], [1.0])


def test_min_image_wraps_across_boundary():
  cell = np.diag([10.0, 10.0, 20.0])
  pred = np.array([[9.9, 5.0, 5.0]])
  target = np.array([[0.1, 5.0, 5.0]])
  d = metrics.min_image_displacement(pred, target, cell, [True, True, False])
  np.testing.assert_allclose(d, [[-0.2, 0.0, 0.0]], atol=1e-12)
  # Along a non-periodic axis there is no wrapping.
  pred_z = np.array([[5.0, 5.0, 19.9]])
  target_z = np.array([[5.0, 5.0, 0.1]])
  d = metrics.min_image_displacement(pred_z, target_z, cell,
                                     [True, True, False])
  np.testing.assert_allclose(d, [[0.0, 0.0, 19.8]], atol=1e-12)


def test_min_image_skewed_cell_matches_brute_force():
  rng = np.random.RandomState(0)
  # A strongly skewed (60 degree) cell where fractional rounding alone is
  # not always the minimum image.
  cell = np.array([[4.0, 0.0, 0.0], [3.6, 1.5, 0.0], [0.0, 0.0, 30.0]])
  pbc = np.array([True, True, False])
  pred = rng.uniform(0, 5, (50, 3))
  target = rng.uniform(0, 5, (50, 3))
  d = metrics.min_image_displacement(pred, target, cell, pbc)
  shifts = np.array([[i, j, 0] for i in range(-4, 5) for j in range(-4, 5)])
  brute = pred[:, None] - target[:, None] + (shifts @ cell)[None]
  best = np.min(np.linalg.norm(brute, axis=-1), axis=1)
  np.testing.assert_allclose(np.linalg.norm(d, axis=-1), best, atol=1e-12)


def test_adwt_hand_computed():
  cell = np.diag([10.0, 10.0, 30.0])
  pbc = [True, True, False]
  target = [np.zeros((3, 3)), np.zeros((2, 3))]
  # System 0: free atoms are 0 and 1, displaced 0.1 (across the x boundary,
  # needing the wrap) and 0.301 -> mean 0.2005. Atom 2 is fixed with a huge
  # error that must be ignored. (Means sit between thresholds on purpose.)
  p0 = np.array([[9.9, 0.0, 0.0], [0.0, 0.301, 0.0], [0.0, 0.0, 5.0]])
  # System 1: all free, errors 0.05 and 0.151 -> mean 0.1005.
  p1 = np.array([[0.05, 0.0, 0.0], [0.0, 0.0, 0.151]])
  fixed = [np.array([0, 0, 1]), np.array([0, 0])]
  d = metrics.system_distances([p0, p1], target, [cell, cell], pbc, fixed)
  np.testing.assert_allclose(d, [0.2005, 0.1005], atol=1e-12)
  thr = metrics.ADWT_THRESHOLDS
  assert len(thr) == 490 and thr[0] == pytest.approx(0.01)
  adwt = metrics.average_distance_within_threshold(
      [p0, p1], target, [cell, cell], pbc, fixed)
  # By hand: thresholds above 0.2005 are 0.201..0.499 (299 values), above
  # 0.1005 are 0.101..0.499 (399 values), out of 2 x 490 pairs.
  assert adwt == pytest.approx((299 + 399) / 980)
  # Perfect prediction scores 1; everything 1 Å off scores 0.
  assert metrics.average_distance_within_threshold(
      target, target, [cell, cell], pbc) == 1.0
  far = [t + [0.0, 0.0, 1.0] for t in target]
  assert metrics.average_distance_within_threshold(
      far, target, [cell, cell], pbc) == 0.0


def test_positions_mae_free_atoms_only():
  cell = np.diag([5.0, 5.0, 5.0])
  t = np.zeros((2, 3))
  p = np.array([[4.9, 0.0, 0.0], [1.0, 1.0, 1.0]])
  assert metrics.positions_mae([p], [t], [cell], [True] * 3,
                               [np.array([0, 1])]) == pytest.approx(0.1 / 3)
  out = metrics.is2rs_metrics([p], [t], [cell], [True] * 3)
  assert out["positions_mae"] == pytest.approx((0.1 + 3.0) / 6)
