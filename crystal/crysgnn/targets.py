"""Connectivity targets for CrysGNN's node-level decoder (paper §2.1.1).

For each ordered pair (i, j) of atoms of a crystal, the target is how often
atom j — counting every periodic image separately — is among the 12 nearest
neighbours of atom i within 8 Å, capped at 5, i.e. a class in 0..5
(kdmsit/crysgnn ``crysgnn/data.py``; the reference builds it from CGCNN's 12-NN
graph). Periodic images of i itself count towards (i, i): in a one-atom fcc
cell the atom is its own neighbour 12 times (capped to 5).

Neighbour selection is ``noisy_nodes.data.neighbors.neighbor_list(...,
max_neighbors=12)``: edges j -> i (receiver i), the 12 nearest senders of each
receiver, ties broken by (distance, sender, shift). The reference sorts
pymatgen's neighbours by distance only, so exactly tied 12th/13th neighbours
may be chosen differently; counts are otherwise identical.

Storage (linear in the crystal's size, no size cap): a row has at most
``num_neighbors`` (12) non-zero targets, so a crystal with n atoms gets
``node_arrays['connectivity_partner']`` int32 [n, 12] (the local indices j
with a non-zero count, ascending, -1 = empty slot) and
``node_arrays['connectivity_count']`` int32 [n, 12] (their counts 1..5, 0 in
empty slots); every other pair (i, j) of the crystal is class 0. Being
per-node, both ride along the normal node batching/padding; the heads
evaluate these pairs exactly and the class-0 rest by enumeration or sampling
(``heads.pair_slots``, ``losses.connectivity_terms``).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from noisy_nodes.data.neighbors import neighbor_list
from noisy_nodes.data.structures import DataError, Structure
from crystal.crysgnn import symmetry

NUM_NEIGHBORS = 12
CUTOFF = 8.0
MAX_COUNT = 5
IGNORE = -1


def connectivity_counts(structure: Structure, num_neighbors: int = NUM_NEIGHBORS,
                        cutoff: float = CUTOFF, cap: int = MAX_COUNT
                        ) -> np.ndarray:
  """[n, n] int32: counts[i, j] = min(cap, #images of j among i's k-NN)."""
  n = structure.num_atoms
  nl = neighbor_list(structure.positions, structure.cell, structure.pbc,
                     cutoff, max_neighbors=num_neighbors, sample=structure.id)
  counts = np.zeros((n, n), np.int64)
  np.add.at(counts, (nl.receivers, nl.senders), 1)
  return np.minimum(counts, cap).astype(np.int32)


def sparse_connectivity(counts: np.ndarray, slots: int = NUM_NEIGHBORS
                        ) -> Tuple[np.ndarray, np.ndarray]:
  """[n, n] counts -> (partner [n, slots] int32, count [n, slots] int32): the
  non-zero entries of each row, ascending j, padded with -1 / 0."""
  n = counts.shape[0]
  rows, cols = np.nonzero(counts)          # row-major: ascending j per row.
  rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
  if len(rows) and rank.max() >= slots:
    raise ValueError(f"a row has {int(rank.max()) + 1} non-zero targets, "
                     f"more than {slots} slots")
  partner = np.full((n, slots), IGNORE, np.int32)
  count = np.zeros((n, slots), np.int32)
  partner[rows, rank] = cols
  count[rows, rank] = counts[rows, cols]
  return partner, count


def connectivity_target(structure: Structure,
                        num_neighbors: int = NUM_NEIGHBORS,
                        cutoff: float = CUTOFF, cap: int = MAX_COUNT
                        ) -> Dict[str, np.ndarray]:
  """``connectivity_partner`` / ``connectivity_count`` [n, num_neighbors]
  (module docstring): the crystal's non-zero connectivity targets."""
  counts = connectivity_counts(structure, num_neighbors, cutoff, cap)
  partner, count = sparse_connectivity(counts, num_neighbors)
  return {"connectivity_partner": partner, "connectivity_count": count}


def pretrain_labels(structure: Structure,
                    num_neighbors: int = NUM_NEIGHBORS, cutoff: float = CUTOFF
                    ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """Per-node and per-graph arrays a CrysGNN pre-training sample needs.

  Returns:
    (extra_nodes, extra_globals) to add to the featurised single graph:
    nodes ``connectivity_partner`` / ``connectivity_count`` int32 [n, 12];
    globals ``space_group`` int32 [1]
    (1..230) and ``crystal_system`` int32 [1] (0..6). Symmetry labels come from
    ``structure.targets`` when present (the corpus stores them), otherwise
    they are detected with spglib.
  """
  if "space_group" in structure.targets and \
      "crystal_system" in structure.targets:
    sg = int(structure.targets["space_group"])
    cs = int(structure.targets["crystal_system"])
    if not 1 <= sg <= 230 or cs != symmetry.crystal_system_index(sg):
      raise DataError(structure.id, f"inconsistent symmetry labels: space "
                      f"group {sg}, crystal system {cs}")
  else:
    labels = symmetry.symmetry_labels(structure)
    sg, cs = labels["space_group"], labels["crystal_system"]
  nodes = connectivity_target(structure, num_neighbors, cutoff)
  glob = {"space_group": np.array([sg], np.int32),
          "crystal_system": np.array([cs], np.int32)}
  return nodes, glob
