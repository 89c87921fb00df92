"""Periodic neighbour search on the host (numpy, fully vectorised).

``neighbor_list`` returns every edge j -> i (sender j, receiver i) between an
atom i and a periodic image of atom j within the cutoff, with the contract of
docs/design.md:

  vectors = positions[receivers] - positions[senders] + shifts @ cell,
  distances = |vectors| <= cutoff  (inclusive),

where ``shifts`` are integer lattice translations that refer to the positions
as given (not wrapped into the cell). In ASE's notation
(``ase.neighborlist.neighbor_list('ijSD', atoms, cutoff)``, with
D = positions[j] - positions[i] + S @ cell) our (sender, receiver, shift) is
ASE's (i, j, S).

Algorithm:
  1. Complete the cell: periodic rows are kept, non-periodic rows are replaced
     by an orthonormal basis of their complement (so molecules may have a zero
     cell, and slabs any vacuum vector).
  2. The search is vesin's (https://github.com/Luthaf/vesin, a C++ cell list
     made for periodic atomistic systems; it handles cells shorter than the
     cutoff and positions outside the cell; speed: docs/benchmarks.md).
  3. On top of it, vectorised in numpy: vectors and distances recomputed from
     the given positions with the inclusive cutoff test, the deterministic
     (receiver, distance, sender, shift) order, minimum image, the k-nearest
     cap and self loops, which vesin does not provide.

Ties in ``max_neighbors`` and ``minimum_image`` are broken by (distance,
sender, shift lexicographic); distances are compared after rounding to
``TIE_RESOLUTION`` Å so that symmetry-equivalent neighbours that differ by
float round-off are treated as ties and the result is deterministic (e.g.
invariant to translating the whole structure).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import vesin

from noisy_nodes.data.structures import DataError

# Distances closer than this (Å) are ties when ranking neighbours.
TIE_RESOLUTION = 1e-8
# Largest number of periodic image points we agree to build (memory guard).
MAX_IMAGE_POINTS = 20_000_000


class NeighborList(NamedTuple):
  """Directed edges j -> i, sorted by receiver, then distance.

  Attributes:
    senders: int32 [E], index j of the (imaged) sender atom.
    receivers: int32 [E], index i of the receiver atom.
    shifts: int32 [E, 3], integer cell translations.
    vectors: float64 [E, 3], positions[receivers] - positions[senders]
      + shifts @ cell (Å).
    distances: float64 [E], |vectors| (Å).
  """
  senders: np.ndarray
  receivers: np.ndarray
  shifts: np.ndarray
  vectors: np.ndarray
  distances: np.ndarray


def neighbor_list(positions, cell, pbc, cutoff: float,
                  max_neighbors: Optional[int] = None,
                  self_loops: bool = False, minimum_image: bool = False,
                  sample: Optional[str] = None) -> NeighborList:
  """All edges j -> i with |x_i - x_j + s @ cell| <= cutoff.

  Args:
    positions: [N, 3] Cartesian positions (Å); need not lie inside the cell.
    cell: [3, 3] rows are lattice vectors; rows of non-periodic directions are
      ignored (zeros are fine for molecules).
    pbc: bool [3] (or a scalar), periodic flags per lattice row.
    cutoff: radius (Å), inclusive.
    max_neighbors: keep only the k nearest senders of each receiver (ties by
      distance, sender, shift). Self loops do not count towards k.
    self_loops: add one zero-shift i -> i edge of distance 0 per atom. Without
      it no zero-shift self edge is returned (periodic self images are).
    minimum_image: keep only the nearest image of each ordered pair (j, i),
      j != i (one edge per atom pair, the DeeperGATGNN/MatDeepLearn graph).
      Applied before ``max_neighbors``.
    sample: name used in ``DataError`` messages.

  Returns:
    A ``NeighborList`` sorted by (receiver, distance, sender, shift).

  Raises:
    DataError: non-finite positions, cutoff <= 0, a non-finite or singular
      cell on a periodic direction, or a cell so small for the cutoff that the
      images would not fit in memory.
  """
  sample = "<structure>" if sample is None else sample
  positions, cell, pbc, cutoff = _validate(positions, cell, pbc, cutoff,
                                           sample)
  n = positions.shape[0]
  if max_neighbors is not None and max_neighbors < 0:
    raise ValueError(f"max_neighbors must be >= 0, got {max_neighbors}")

  if n == 0:
    e = _empty()
  else:
    e = _search(positions, cell, pbc, cutoff, sample)
    # The inclusive cutoff and the edge order in one gather of the rows.
    keep = np.flatnonzero(e[4] <= cutoff)
    e = _take(e, keep[_edge_order(*_take(e, keep))])
    if minimum_image:
      pair = e[1].astype(np.int64) * n + e[0]
      _, first = np.unique(pair, return_index=True)
      e = _take(e, np.sort(first[e[0][first] != e[1][first]]))
    if max_neighbors is not None:
      e = _take(e, _rank_within(e[1], n) < max_neighbors)
    if self_loops:
      atoms = np.arange(n, dtype=e[0].dtype)
      loops = (atoms, atoms, np.zeros((n, 3), e[2].dtype), np.zeros((n, 3)),
               np.zeros(n))
      e = tuple(np.concatenate([a, b]) for a, b in zip(e, loops))
      e = _take(e, _edge_order(*e))
  senders, receivers, shifts, vectors, dist = e
  return NeighborList(senders=senders.astype(np.int32),
                      receivers=receivers.astype(np.int32),
                      shifts=shifts.astype(np.int32), vectors=vectors,
                      distances=dist)


# -- validation ----------------------------------------------------------------
def _validate(positions, cell, pbc, cutoff, sample):
  """Returns (positions [N,3], completed cell [3,3], pbc [3], cutoff)."""
  try:
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    cell = np.asarray(cell, np.float64).reshape(3, 3)
  except ValueError as e:
    raise DataError(sample, f"positions must be [N, 3] and cell [3, 3] "
                    f"({e})") from e
  pbc = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
  try:
    cutoff = float(cutoff)
  except (TypeError, ValueError):
    raise DataError(sample, f"cutoff {cutoff!r} is not a number") from None
  if not (np.isfinite(cutoff) and cutoff > 0):
    raise DataError(sample, f"cutoff must be a positive finite number, "
                    f"got {cutoff}")
  if not np.all(np.isfinite(positions)):
    bad = int(np.nonzero(~np.all(np.isfinite(positions), axis=1))[0][0])
    raise DataError(sample, f"non-finite (NaN or inf) position of atom {bad}")
  return positions, _complete_cell(cell, pbc, sample), pbc, cutoff


def _complete_cell(cell, pbc, sample):
  """Keeps periodic rows; non-periodic rows -> orthonormal complement.

  The complement is orthogonal to the periodic rows, which makes the dual
  vectors of the periodic directions as short as possible (fewest images).
  """
  periodic = cell[pbc]
  out = np.zeros((3, 3))
  if periodic.shape[0]:
    if not np.all(np.isfinite(periodic)):
      raise DataError(sample, "non-finite cell vector on a periodic direction")
    norms = np.linalg.norm(periodic, axis=1)
    # |det| of the normalised periodic rows: 1 when orthogonal, 0 if singular.
    unit = periodic / np.maximum(norms, 1e-300)[:, None]
    gram = np.linalg.det(unit @ unit.T)
    if norms.min() < 1e-8 or not gram > 1e-12:
      raise DataError(sample, "singular cell: periodic lattice vectors "
                      f"{np.round(periodic, 6).tolist()} are zero or "
                      "linearly dependent")
  if periodic.shape[0] < 3:
    # Right-singular vectors beyond the rank span the orthogonal complement.
    basis = np.linalg.svd(np.vstack([periodic, np.zeros((1, 3))]))[2]
    complement = basis[periodic.shape[0]:]
    out[~pbc] = complement[:int((~pbc).sum())]
  out[pbc] = periodic
  return out


# -- search --------------------------------------------------------------------
def _search(positions, cell, pbc, cutoff, sample):
  """Candidate edges (senders, receivers, shifts, vectors, distances) with
  distance ~<= cutoff.

  The search itself is vesin's (a cell list in C++). Its pair
  (i, j, S) has D = x_j - x_i + S @ cell, so our (sender, receiver, shift)
  is its (i, j, S), as with ASE. vesin handles cells shorter than the cutoff
  (several images per direction) and positions outside the cell; what it
  lacks (the inclusive cutoff, k-nearest caps with a deterministic tie-break,
  minimum image, self loops) is done by the caller on its output.
  """
  n = positions.shape[0]
  # Memory guard before handing the search to vesin: the number of periodic
  # images a cell this small needs (plane spacing h_d = 1 / |b_d|).
  inv = np.linalg.inv(cell)
  reach = cutoff * np.linalg.norm(inv, axis=0)                  # [3]
  n_img = np.where(pbc, np.ceil(reach), 0).astype(np.int64)
  n_images = int(np.prod(2 * n_img + 1))
  if n_images * n > MAX_IMAGE_POINTS:
    raise DataError(sample, f"cell too small for cutoff {cutoff} Å: "
                    f"{n_images} periodic images of {n} atoms would be "
                    f"needed (plane spacings "
                    f"{np.round(1 / np.linalg.norm(inv, axis=0), 4).tolist()}"
                    " Å)")
  # Slack so that vesin's round-off (or a strict '<') never drops an edge at
  # the cutoff; the exact inclusive test is made by the caller.
  search = vesin.NeighborList(cutoff=cutoff * (1 + 1e-9) + 1e-9,
                              full_list=True)
  # D = positions[j] - positions[i] + S @ cell is computed by vesin in
  # float64 from the positions as given: our vectors, exactly.
  i, j, shifts, vectors, dist = search.compute(
      points=positions, box=cell, periodic=[bool(p) for p in pbc],
      quantities="ijSDd", copy=False)
  # A zero-shift i -> i pair is no edge (self loops are added on request).
  edges = np.flatnonzero((i != j) | np.any(shifts != 0, axis=1))
  return (i.astype(np.int64)[edges], j.astype(np.int64)[edges],
          shifts.astype(np.int64)[edges], vectors[edges], dist[edges])


# -- helpers -------------------------------------------------------------------
def _empty():
  return (np.zeros(0, np.int64), np.zeros(0, np.int64),
          np.zeros((0, 3), np.int64), np.zeros((0, 3)), np.zeros(0))


def _take(arrays, index):
  """Same rows of every array (np.take/compress: faster than a[index])."""
  if index.dtype == bool:
    return tuple(np.compress(index, a, axis=0) for a in arrays)
  return tuple(np.take(a, index, axis=0) for a in arrays)


def _edge_order(senders, receivers, shifts, vectors, distances):
  """Permutation sorting by (receiver, rounded distance, sender, shift).

  When all keys fit in 63 bits they are packed into one int64 (one argsort
  instead of a 6-key lexsort); otherwise lexsort.
  """
  del vectors
  dq = np.rint(distances / TIE_RESOLUTION).astype(np.int64)
  if not distances.size:
    return np.zeros(0, np.int64)
  s_lo = shifts.min(axis=0)
  keys = [receivers, dq, senders] + [shifts[:, k] - s_lo[k] for k in range(3)]
  bits = [int(np.max(k)).bit_length() for k in keys]
  if sum(bits) > 63:
    return np.lexsort(keys[::-1])
  packed = np.zeros(distances.size, np.int64)
  for key, b in zip(keys, bits):
    packed = (packed << b) | key
  # The packed keys are distinct (one edge per (receiver, sender, shift)), so
  # the unstable sort (several times faster than a stable one on int64) is
  # deterministic.
  return np.argsort(packed)


def _rank_within(receivers, n):
  """0, 1, 2... within each run of equal (sorted) receivers."""
  counts = np.bincount(receivers, minlength=n)
  first = np.cumsum(counts) - counts
  return np.arange(receivers.size) - first[receivers]
