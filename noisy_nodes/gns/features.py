"""Geometric edge and graph features of the Noisy Nodes GNS (jnp, traceable).

Everything here runs inside the model on padded batches, so every function is
safe on padding rows (zero vectors, zero distances, all-zero cells) and has
finite gradients there.

* ``bessel_basis``: radial Bessel functions of the edge length (paper §3.2,
  DimeNet [32]) times a smooth polynomial envelope.
* ``unit_vectors``: d / |d| of the edge displacement (paper §3.2, the second
  part of e_k).
* ``cell_vector``: the 6 rotation- and translation-invariant numbers of a
  periodic cell (paper §5.1, "Additional Training Details").
* ``lattice_frame``: the rotation part of the cell matrix, used to express
  edge directions in the periodic basis (paper §5.1, A(GNN(A^-1 v))).
"""
from __future__ import annotations

import jax.numpy as jnp

# DimeNet's envelope exponent: p = envelope_exponent + 1 = 6.
ENVELOPE_P = 6


def polynomial_envelope(x: jnp.ndarray, p: int = ENVELOPE_P) -> jnp.ndarray:
  """Smooth cutoff u(x) for x = d / R (DimeNet, Klicpera et al. 2020, eq. 8).

  DimeNet's envelope is u_D(x) = 1/x + a x^(p-1) + b x^p + c x^(p+1) and it
  multiplies sin(n pi x) directly.  Our basis keeps the paper's 1/d factor
  (§3.2), so we use x * u_D(x):

    u(x) = 1 + a x^p + b x^(p+1) + c x^(p+2),
    a = -(p+1)(p+2)/2, b = p(p+2), c = -p(p+1)/2   (p=6: 1-28x^6+48x^7-21x^8)

  u(0) = 1, and u, u', u'' all vanish at x = 1, so features (and forces, if
  ever differentiated) go smoothly to zero at the cutoff.  u = 0 for x >= 1.

  Args:
    x: [...] reduced distances d / R.
  Returns:
    [...] envelope values in [0, 1].
  """
  a = -(p + 1) * (p + 2) / 2.0
  b = float(p * (p + 2))
  c = -p * (p + 1) / 2.0
  xp = x ** p
  u = 1.0 + a * xp + b * xp * x + c * xp * x * x
  return jnp.where(x < 1.0, u, 0.0)


def bessel_basis(distances: jnp.ndarray, num_basis: int, cutoff: float,
                 envelope: bool = True) -> jnp.ndarray:
  """Radial Bessel basis e_RBF,n(d) = sqrt(2/R) sin(n pi d / R) / d (§3.2).

  n = 1..num_basis.  At d = 0 the limit sqrt(2/R) n pi / R is used (padding
  edges have d = 0), with a double ``where`` so gradients stay finite.

  Args:
    distances: [E] edge lengths (Å).
    num_basis: number of basis functions c.
    cutoff: connectivity radius R (Å).
    envelope: multiply by ``polynomial_envelope(d / R)``.
  Returns:
    [E, num_basis] features; exactly zero for d >= R.
  """
  d = distances[..., None]
  n = jnp.arange(1, num_basis + 1, dtype=distances.dtype)
  freq = n * jnp.pi / cutoff
  norm = jnp.sqrt(2.0 / cutoff)
  small = d < 1e-6
  safe_d = jnp.where(small, 1.0, d)
  value = jnp.where(small, norm * freq, norm * jnp.sin(freq * safe_d) / safe_d)
  if envelope:
    value = value * polynomial_envelope(d / cutoff)
  # sin(n pi) is only ~1e-7 in float32: make the cutoff exact.
  return jnp.where(d < cutoff, value, 0.0)


def unit_vectors(vectors: jnp.ndarray, eps: float = 1e-9) -> jnp.ndarray:
  """d / |d| per row; zero rows (padding) map to zero with finite grads.

  Args:
    vectors: [E, 3].
  Returns:
    [E, 3].
  """
  sq = jnp.sum(vectors * vectors, axis=-1, keepdims=True)
  ok = sq > eps * eps
  inv = jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)
  return vectors * inv


def cell_vector(cell: jnp.ndarray) -> jnp.ndarray:
  """(a.b, b.c, a.c, |a|, |b|, |c|) of the lattice vectors (paper §5.1).

  The paper appends (alpha beta^T, beta gamma^T, alpha gamma^T, |alpha|,
  |beta|, |gamma|) in R^6 to the edge features, where alpha, beta, gamma are
  the vectors of the cell matrix (rows here).  The six numbers fix the Gram
  matrix of the cell, so they carry its angles and extents, and are
  invariant under any rotation/reflection of the cell and any translation.
  All-zero cells (molecules) give zeros.

  Args:
    cell: [..., 3, 3], rows a, b, c (Å).
  Returns:
    [..., 6] (Å^2 for the dot products, Å for the lengths).
  """
  a, b, c = cell[..., 0, :], cell[..., 1, :], cell[..., 2, :]
  dot = lambda u, v: jnp.sum(u * v, axis=-1)
  norm = lambda u: _safe_norm(u)
  return jnp.stack([dot(a, b), dot(b, c), dot(a, c), norm(a), norm(b),
                    norm(c)], axis=-1)


def lattice_frame(cell: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  """Orthonormal frame attached to a cell (identity for all-zero cells).

  The paper runs the GNN in the periodic basis, A(GNN(A^-1 v)) (§5.1).  We
  keep the rotation factor of that change of basis only: writing A^T = Q T
  (QR, T upper triangular), the rows of F = Q^T are Gram-Schmidt on a, b:

    e1 = a/|a|,  e2 = (b - (b.e1) e1)/|...|,  e3 = e1 x e2.

  F is a proper rotation, so rotating displacements by F keeps distances in
  Å (the Bessel cutoff keeps its meaning) while making directions invariant
  to a joint rotation R of positions and cell (F' = F R^T, so F' R d = F d).
  The shape factor T carries no more than the cell's Gram matrix, which the
  model receives through ``cell_vector``.

  Args:
    cell: [G, 3, 3] rows a, b, c.
  Returns:
    [G, 3, 3] rotation matrices F (rows e1, e2, e3); local = F @ d.
  """
  a, b = cell[..., 0, :], cell[..., 1, :]
  na = _safe_norm(a)[..., None]
  e1 = a / jnp.maximum(na, eps)
  bp = b - jnp.sum(b * e1, axis=-1, keepdims=True) * e1
  nb = _safe_norm(bp)[..., None]
  e2 = bp / jnp.maximum(nb, eps)
  e3 = jnp.cross(e1, e2)
  frame = jnp.stack([e1, e2, e3], axis=-2)
  valid = (na[..., 0] > eps) & (nb[..., 0] > eps)
  eye = jnp.broadcast_to(jnp.eye(3, dtype=cell.dtype), frame.shape)
  return jnp.where(valid[..., None, None], frame, eye)


def _safe_norm(v: jnp.ndarray) -> jnp.ndarray:
  sq = jnp.sum(v * v, axis=-1)
  ok = sq > 0
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)
