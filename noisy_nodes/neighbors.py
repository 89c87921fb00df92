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

Algorithm (no Python loop over atoms or pairs):
  1. Complete the cell: periodic rows are kept, non-periodic rows are replaced
     by an orthonormal basis of their complement (so molecules may have a zero
     cell, and slabs any vacuum vector). Periodic positions are wrapped into
     fractional [0, 1); the wrap is undone in the returned shifts.
  2. Number of images per periodic direction d is n_d = ceil(cutoff / h_d),
     h_d = 1 / |b_d| the distance between lattice planes (b_d the dual
     vector). A displacement shorter than the cutoff has fractional component
     at most cutoff / h_d along d, so images t_d in [-n_d, n_d] suffice; this
     handles cells much shorter than the cutoff. Images whose fractional
     coordinate lies farther than cutoff / h_d outside [0, 1) cannot reach
     any (wrapped) atom and are dropped.
  3. Cell list: image points are binned on a Cartesian grid of bins of side
     cutoff / 2 and sorted by bin id; each receiver looks at the 5 x 5 columns
     of bins around it, each column being a contiguous run of sorted ids
     (two ``searchsorted`` per column). Candidates are expanded with
     ``repeat``/``arange`` and filtered by distance. Cost and memory are
     O(N * neighbours), not O(N^2 * images).

Ties in ``max_neighbors`` and ``minimum_image`` are broken by (distance,
sender, shift lexicographic); distances are compared after rounding to
``TIE_RESOLUTION`` Å so that symmetry-equivalent neighbours that differ by
float round-off are treated as ties and the result is deterministic (e.g.
invariant to translating the whole structure).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from noisy_nodes.structures import DataError

# Distances closer than this (Å) are ties when ranking neighbours.
TIE_RESOLUTION = 1e-8
# Largest number of periodic image points we agree to build (memory guard).
MAX_IMAGE_POINTS = 20_000_000
# Bins have side cutoff / _BIN_DIVISIONS; each receiver scans
# (2 * _BIN_DIVISIONS + 1)^3 bins. 2 gives ~3.7 candidates per true edge.
_BIN_DIVISIONS = 2


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
    vectors = np.stack([positions[:, k][e[1]] - positions[:, k][e[0]]
                        for k in range(3)], axis=1) + e[2] @ cell
    dist = np.sqrt(vectors[:, 0] * vectors[:, 0] + vectors[:, 1] * vectors[:, 1]
                   + vectors[:, 2] * vectors[:, 2])
    keep = dist <= cutoff
    e = _take((*e, vectors, dist), keep)
    e = _take(e, _edge_order(*e))
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
  """Candidate edges (senders, receivers, shifts) with distance ~<= cutoff."""
  n = positions.shape[0]
  inv = np.linalg.inv(cell)
  frac = positions @ inv                                        # [N, 3]
  wrap = np.where(pbc, np.floor(frac), 0.0)                     # [N, 3]
  frac_w = frac - wrap
  pos_w = positions - wrap @ cell

  # Plane spacing h_d = 1 / |b_d| (b_d = column d of inv); reach in fractions.
  reach = cutoff * np.linalg.norm(inv, axis=0)                  # [3]
  n_img = np.where(pbc, np.ceil(reach), 0).astype(np.int64)
  n_images = int(np.prod(2 * n_img + 1))
  if n_images * n > MAX_IMAGE_POINTS:
    raise DataError(sample, f"cell too small for cutoff {cutoff} Å: "
                    f"{n_images} periodic images of {n} atoms would be "
                    f"needed (plane spacings "
                    f"{np.round(1 / np.linalg.norm(inv, axis=0), 4).tolist()}"
                    " Å)")
  if n_images == 1:
    img_atom = np.arange(n)
    img_shift = np.zeros((n, 3), np.int64)
    img_pos = pos_w.copy()
  else:
    grids = [np.arange(-k, k + 1) for k in n_img]
    t = np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3)
    img_frac = frac_w[None] + t[:, None]                        # [T, N, 3]
    tol = 1e-9
    ok = np.all((img_frac >= -reach - tol) & (img_frac <= 1 + reach + tol)
                | ~pbc, axis=-1)                                # [T, N]
    t_idx, img_atom = np.nonzero(ok)
    img_shift = t[t_idx]
    img_pos = pos_w[img_atom] + img_shift @ cell

  # Cell list over image points, padded by `m` empty bins on each side so
  # that neighbouring bin ids never wrap around the grid.
  m = _BIN_DIVISIONS
  lo = img_pos.min(axis=0)
  extent = img_pos.max(axis=0) - lo
  # Bins may be larger than cutoff / m (never smaller), which keeps bin ids in
  # int64 for absurdly spread-out inputs without affecting correctness.
  size = max(cutoff / m, float(extent.max()) / 1e5)
  dims = np.floor(extent / size).astype(np.int64) + 1 + 2 * m
  strides = np.array([dims[1] * dims[2], dims[2], 1], np.int64)
  img_bin = ((np.floor((img_pos - lo) / size).astype(np.int64) + m)
             @ strides)
  order = np.argsort(img_bin, kind="stable")
  sorted_bin = img_bin[order]

  rec_bin = (np.floor((pos_w - lo) / size).astype(np.int64) + m) @ strides
  d = np.arange(-m, m + 1)
  columns = (d[:, None] * strides[0] + d[None, :] * strides[1]).ravel()
  # One contiguous run of bins (z from -m to +m) per (receiver, column).
  centre = (rec_bin[:, None] + columns[None, :]).ravel()        # [N * C]
  start = np.searchsorted(sorted_bin, centre - m, "left")
  counts = np.searchsorted(sorted_bin, centre + m, "right") - start
  per_receiver = counts.reshape(n, columns.size).sum(axis=1)
  total = int(per_receiver.sum())
  first = np.cumsum(counts) - counts
  cand = np.repeat(start - first, counts) + np.arange(total)   # sorted index

  # Column by column: 1-D gathers are several times faster than gathering
  # [E, 3] rows, and a * a + b * b beats einsum for a length-3 axis.
  d2 = _sq_dist(pos_w, img_pos[order], cand, per_receiver)
  # Slack so that round-off between wrapped and given frames never drops an
  # edge; the exact test on the given positions is made by the caller.
  keep = np.nonzero(d2 <= (cutoff * (1 + 1e-9) + 1e-9) ** 2)[0]
  receivers = np.repeat(np.arange(n), per_receiver)[keep]
  cand = order[cand[keep]]                                      # image index
  senders = img_atom[cand]
  # x_i - (x_j^w + t cell) = x_i - x_j + (w_j - w_i - t) cell.
  wrap = wrap.astype(np.int64)
  shifts = [wrap[:, k][senders] - wrap[:, k][receivers] - img_shift[:, k][cand]
            for k in range(3)]
  not_self = (senders != receivers) | (shifts[0] != 0) | (shifts[1] != 0) | (
      shifts[2] != 0)
  shifts = np.stack([s[not_self] for s in shifts], axis=1)
  return senders[not_self], receivers[not_self], shifts


def _sq_dist(rec_pos, img_pos, cand, per_receiver):
  """|rec_pos[repeat(arange, per_receiver)] - img_pos[cand]|^2, [E]."""
  d2 = None
  for k in range(3):
    dk = np.repeat(rec_pos[:, k], per_receiver)
    dk -= img_pos[:, k][cand]
    dk *= dk
    d2 = dk if d2 is None else d2 + dk
  return d2


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
  instead of a 6-key lexsort, ~4x faster); otherwise lexsort.
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
  return np.argsort(packed, kind="stable")


def _rank_within(receivers, n):
  """0, 1, 2... within each run of equal (sorted) receivers."""
  counts = np.bincount(receivers, minlength=n)
  first = np.cumsum(counts) - counts
  return np.arange(receivers.size) - first[receivers]
