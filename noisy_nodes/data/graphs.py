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
