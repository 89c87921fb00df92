"""One ``Structure`` -> one single-graph ``jraph.GraphsTuple`` (numpy).

The sample layout is that of docs/design.md ("Graphs and batches"):

  nodes    atomic_numbers int32 [n], positions float32 [n, 3]
  edges    vectors float32 [e, 3], distances float32 [e], shifts int32 [e, 3]
  senders, receivers int32 [e]; n_node, n_edge int32 [1]
  globals  cell float32 [1, 3, 3], pbc bool [1, 3]

with edges j -> i from ``noisy_nodes.data.neighbors.neighbor_list`` (vectors
x_i - x_j + shift @ cell, sorted by receiver). Tasks add their own arrays
through ``extra_nodes`` / ``extra_globals``; ``noisy_nodes.data.batching`` then
packs such samples and adds masks.

Vectors and distances are computed in float64 and only then cast to float32,
so that edges of atoms far from the origin (large cells, unwrapped
trajectories) keep their precision.
"""
from __future__ import annotations

from typing import Mapping, Optional

import noisy_nodes  # noqa: F401  (jraph compatibility shim first)
import jraph
import numpy as np

from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.data.structures import DataError, Structure

RESERVED_NODES = ("atomic_numbers", "positions")
RESERVED_GLOBALS = ("cell", "pbc")


def structure_to_graph(structure: Structure, cutoff: float,
                       max_neighbors: Optional[int] = None,
                       positions: Optional[np.ndarray] = None,
                       self_loops: bool = False, minimum_image: bool = False,
                       sample: Optional[str] = None,
                       extra_nodes: Optional[Mapping[str, np.ndarray]] = None,
                       extra_globals: Optional[Mapping[str, np.ndarray]] = None
                       ) -> jraph.GraphsTuple:
  """Builds the single-graph sample of ``structure``.

  Args:
    structure: the host record (its cell and pbc define the periodicity).
    cutoff: neighbour radius (Å), inclusive.
    max_neighbors: keep the k nearest senders per receiver (see
      ``neighbor_list``; ties by distance, sender, shift).
    positions: [n, 3] positions that replace ``structure.positions`` for the
      graph and the node feature (e.g. noisy inputs for Noisy Nodes).
    self_loops: add one zero-shift i -> i edge per atom.
    minimum_image: one edge per ordered atom pair (nearest image).
    sample: name for error messages (default ``structure.id``).
    extra_nodes: name -> [n, ...] arrays added to ``nodes``.
    extra_globals: name -> [1, ...] arrays added to ``globals`` (a scalar
      becomes [1]).

  Returns:
    A ``jraph.GraphsTuple`` of numpy arrays holding one graph.

  Raises:
    DataError: bad positions or cell, or extra arrays of the wrong size.
  """
  sample = structure.id if sample is None else sample
  n = structure.num_atoms
  if positions is None:
    positions = structure.positions
  positions = np.asarray(positions, np.float64)
  if positions.shape != (n, 3):
    raise DataError(sample, f"positions have shape {positions.shape}, "
                    f"expected ({n}, 3)")
  nl = neighbor_list(positions, structure.cell, structure.pbc, cutoff,
                     max_neighbors=max_neighbors, self_loops=self_loops,
                     minimum_image=minimum_image, sample=sample)

  nodes = {"atomic_numbers": structure.atomic_numbers.astype(np.int32),
           "positions": positions.astype(np.float32)}
  for key, value in (extra_nodes or {}).items():
    value = np.asarray(value)
    if key in RESERVED_NODES:
      raise ValueError(f"extra node array {key!r} would replace a built-in "
                       "feature")
    if value.ndim == 0 or value.shape[0] != n:
      raise DataError(sample, f"node array {key!r} has shape {value.shape}, "
                      f"expected {n} atoms on axis 0")
    nodes[key] = value

  # Non-periodic cell rows are kept as given (0 for molecules); the models
  # read pbc to know which rows are meaningful.
  cell = np.where(np.isfinite(structure.cell), structure.cell, 0.0)
  globals_ = {"cell": cell.astype(np.float32)[None],
              "pbc": np.asarray(structure.pbc, bool).reshape(1, 3)}
  for key, value in (extra_globals or {}).items():
    value = np.asarray(value)
    if key in RESERVED_GLOBALS:
      raise ValueError(f"extra global {key!r} would replace a built-in one")
    if value.ndim == 0:
      value = value[None]
    if value.shape[0] != 1:
      raise DataError(sample, f"global {key!r} has shape {value.shape}; "
                      "per-graph arrays need a leading axis of size 1")
    globals_[key] = value

  n_edge = nl.senders.shape[0]
  return jraph.GraphsTuple(
      nodes=nodes,
      edges={"vectors": nl.vectors.astype(np.float32),
             "distances": nl.distances.astype(np.float32),
             "shifts": nl.shifts},
      senders=nl.senders, receivers=nl.receivers,
      n_node=np.array([n], np.int32), n_edge=np.array([n_edge], np.int32),
      globals=globals_)


def pair_reverse_edges(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """Orders the edges as k pairs (j -> i shift s, i -> j shift -s), then
  the edges that are their own reverse (zero-shift self loops).

  Message-passing layers that evaluate an edge function from each endpoint
  of an edge with a symmetric edge feature (GATGNN's u_i and u_j,
  ``crystal.models.gatgnn``) can then evaluate it once per directed edge and
  compute edge-feature products once per pair: u_j of an edge is u_i of its
  reverse. The result holds 2k + m edges: edge t < k is paired with edge
  t + k and the last m are their own reverse. An edge whose reverse is not
  in the graph (a ``max_neighbors`` cut keeps j among i's nearest but not i
  among j's) is paired with an appended *phantom* reverse, flagged in
  ``edges['phantom']``, that only provides its evaluation and that every
  model masks out of aggregations (``crystal.models.stack.read_graph``).

  Adds to ``edges``: ``reverse`` int32 (t <-> t + k for t < 2k, t for the
  rest) and ``phantom`` bool. Pairs get bitwise-equal distances (the real or
  lower-index edge's) and exactly negated vectors, so their edge features
  are identical. ``noisy_nodes.data.batching.pad_graphs`` keeps the pairing in
  batches.

  Args:
    graph: a single-graph sample of ``structure_to_graph`` (edges with
      ``vectors``, ``distances``, ``shifts``); other edge arrays are copied to
      phantoms from their partner.
  Returns:
    The reordered graph with the two arrays above.
  """
  senders = np.asarray(graph.senders, np.int64)
  receivers = np.asarray(graph.receivers, np.int64)
  shifts = np.asarray(graph.edges["shifts"], np.int64).reshape(-1, 3)
  e = senders.shape[0]
  n = int(graph.n_node[0])
  # Integer keys of (sender, receiver, shift) and of each edge's reverse;
  # shifts are small integers, offset to be non-negative.
  lo = int(min(shifts.min(initial=0), -shifts.max(initial=0)))
  span = int(max(shifts.max(initial=0), -shifts.min(initial=0))) - lo + 1

  def key(s, r, sh):
    k = s * n + r
    for c in range(3):
      k = k * span + (sh[:, c] - lo)
    return k

  fwd = key(senders, receivers, shifts)
  bwd = key(receivers, senders, -shifts)
  partner = np.full(e, -1, np.int64)
  if e:
    order = np.argsort(fwd, kind="stable")
    pos = np.minimum(np.searchsorted(fwd[order], bwd), e - 1)
    found = fwd[order][pos] == bwd
    partner[found] = order[pos][found]
  index = np.arange(e)
  # Pairs of two distinct real edges: the lower index leads. An unmatched
  # edge leads a pair with its phantom reverse.
  pair_first = index[partner > index]
  unmatched = index[partner < 0]
  own = index[partner == index]
  first = np.concatenate([pair_first, unmatched])
  k, m = first.shape[0], own.shape[0]
  edges = {}
  for name, value in graph.edges.items():
    value = np.asarray(value)
    second = np.concatenate([value[partner[pair_first]], value[unmatched]])
    if name in ("vectors", "shifts"):
      flip = np.concatenate([np.zeros(len(pair_first), bool),
                             np.ones(len(unmatched), bool)])
      second = np.where(flip.reshape((-1,) + (1,) * (value.ndim - 1)),
                        -second, second)
    edges[name] = np.concatenate([value[first], second, value[own]])
  # Bitwise-symmetric geometry: the second of a pair takes the first's.
  d, v = edges["distances"], edges["vectors"]
  edges["distances"] = np.concatenate([d[:k], d[:k], d[2 * k:]])
  edges["vectors"] = np.concatenate([v[:k], -v[:k], v[2 * k:]])
  edges["reverse"] = np.concatenate([np.arange(k, 2 * k), np.arange(k),
                                     np.arange(2 * k, 2 * k + m)]
                                    ).astype(np.int32)
  edges["phantom"] = np.concatenate([np.zeros(k + len(pair_first), bool),
                                     np.ones(len(unmatched), bool),
                                     np.zeros(m, bool)])
  s_first, r_first = senders[first], receivers[first]
  return graph._replace(
      edges=edges,
      senders=np.concatenate([s_first, r_first, senders[own]]
                             ).astype(np.int32),
      receivers=np.concatenate([r_first, s_first, receivers[own]]
                               ).astype(np.int32),
      n_edge=np.array([2 * k + m], np.int32))
