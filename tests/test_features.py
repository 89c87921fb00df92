"""Tests for noisy_nodes.gns.features (Bessel basis, cell vector, frames)."""
import jax
import jax.numpy as jnp
import numpy as np

import noisy_nodes  # noqa: F401
from noisy_nodes.gns import features


def _rotation(seed):
  q, r = np.linalg.qr(np.random.RandomState(seed).randn(3, 3))
  q = q * np.sign(np.diag(r))
  if np.linalg.det(q) < 0:
    q[:, 0] *= -1
  return q


def test_envelope_values():
  x = np.array([0.0, 0.25, 0.5, 0.9, 1.0, 1.3])
  u = np.asarray(features.polynomial_envelope(jnp.asarray(x)))
  expected = 1 - 28 * x**6 + 48 * x**7 - 21 * x**8
  expected[x >= 1] = 0
  np.testing.assert_allclose(u, expected, rtol=1e-4, atol=2e-6)
  assert u[0] == 1.0 and u[4] == 0.0
  # Smooth at the cutoff: u'(1) = u''(1) = 0 and u'''(1) = -336, so close to
  # x = 1: u'(1 - h) ~ -168 h^2 and u''(1 - h) ~ 336 h.
  h = 1e-2
  du = jax.grad(features.polynomial_envelope)(1.0 - h)
  d2u = jax.grad(jax.grad(features.polynomial_envelope))(1.0 - h)
  np.testing.assert_allclose(float(du), -168 * h**2, rtol=0.1)
  np.testing.assert_allclose(float(d2u), 336 * h, rtol=0.1)


def test_bessel_basis_matches_numpy_formula():
  cutoff, nb = 5.0, 8
  d = np.array([0.3, 1.0, 2.2, 3.7, 4.99, 5.0, 6.5])
  got = np.asarray(features.bessel_basis(jnp.asarray(d, jnp.float32), nb,
                                         cutoff))
  n = np.arange(1, nb + 1)
  x = d / cutoff
  env = np.where(x < 1, 1 - 28 * x**6 + 48 * x**7 - 21 * x**8, 0.0)
  ref = (np.sqrt(2 / cutoff) * np.sin(n * np.pi * d[:, None] / cutoff)
         / d[:, None]) * env[:, None]
  ref[d >= cutoff] = 0
  assert got.shape == (7, nb)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  # Exactly zero at and beyond the cutoff.
  assert np.all(got[5:] == 0.0)
  # Without the envelope the paper's raw formula is returned.
  raw = np.asarray(features.bessel_basis(jnp.asarray(d[:3], jnp.float32), nb,
                                         cutoff, envelope=False))
  ref_raw = (np.sqrt(2 / cutoff) * np.sin(n * np.pi * d[:3, None] / cutoff)
             / d[:3, None])
  np.testing.assert_allclose(raw, ref_raw, rtol=1e-5, atol=1e-6)


def test_bessel_basis_safe_at_zero():
  cutoff, nb = 4.0, 5
  f = lambda d: features.bessel_basis(d, nb, cutoff)
  at0 = np.asarray(f(jnp.zeros(1)))[0]
  limit = np.sqrt(2 / cutoff) * np.arange(1, nb + 1) * np.pi / cutoff
  np.testing.assert_allclose(at0, limit, rtol=1e-6)
  near0 = np.asarray(f(jnp.full(1, 1e-3)))[0]
  np.testing.assert_allclose(near0, limit, rtol=1e-3)
  g = jax.grad(lambda d: jnp.sum(f(d)))(jnp.zeros(2))
  assert np.all(np.isfinite(np.asarray(g)))


def test_unit_vectors():
  v = jnp.array([[3.0, 0.0, 4.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  u = np.asarray(features.unit_vectors(v))
  np.testing.assert_allclose(u[0], [0.6, 0.0, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(u[1], 0.0)
  np.testing.assert_allclose(np.linalg.norm(u[2]), 1.0, rtol=1e-6)
  g = jax.grad(lambda x: jnp.sum(features.unit_vectors(x)))(v)
  assert np.all(np.isfinite(np.asarray(g)))


def test_cell_vector_hand_computed():
  cell = np.array([[2.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
  cv = np.asarray(features.cell_vector(jnp.asarray(cell)))
  # a.b = 2, b.c = 2, a.c = 0, |a| = 2, |b| = sqrt 5, |c| = sqrt 10.
  np.testing.assert_allclose(cv, [2.0, 2.0, 0.0, 2.0, np.sqrt(5), np.sqrt(10)],
                             rtol=1e-6)
  np.testing.assert_array_equal(
      np.asarray(features.cell_vector(jnp.zeros((2, 3, 3)))), 0.0)


def test_cell_vector_rotation_invariant():
  rng = np.random.RandomState(1)
  cells = rng.randn(4, 3, 3) * 3
  cv = np.asarray(features.cell_vector(jnp.asarray(cells)))
  for seed in range(3):
    rot = _rotation(seed)
    rotated = cells @ rot.T  # every row vector rotated
    cv_r = np.asarray(features.cell_vector(jnp.asarray(rotated)))
    np.testing.assert_allclose(cv_r, cv, rtol=1e-5, atol=1e-5)
  # Not a trivial invariant: a sheared cell changes it.
  sheared = cells.copy()
  sheared[:, 1] += cells[:, 0]
  assert not np.allclose(np.asarray(features.cell_vector(
      jnp.asarray(sheared))), cv)


def test_lattice_frame():
  rng = np.random.RandomState(2)
  cells = rng.randn(3, 3, 3) * 4
  cells[2] = 0.0  # a molecule
  f = np.asarray(features.lattice_frame(jnp.asarray(cells)))
  for g in range(3):
    np.testing.assert_allclose(f[g] @ f[g].T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(f[g]), 1.0, atol=1e-5)
  np.testing.assert_array_equal(f[2], np.eye(3))
  # e1 along a, e2 in the (a, b) plane.
  np.testing.assert_allclose(f[0, 0], cells[0, 0] / np.linalg.norm(
      cells[0, 0]), rtol=1e-5)
  np.testing.assert_allclose(f[0, 2] @ cells[0, 1], 0.0, atol=1e-5)
  # Joint rotation: F' = F R^T, so directions in the frame are invariant.
  rot = _rotation(5)
  f_rot = np.asarray(features.lattice_frame(jnp.asarray(cells[:2] @ rot.T)))
  np.testing.assert_allclose(f_rot, f[:2] @ rot.T, atol=1e-5)
