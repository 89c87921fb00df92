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

Storage: a crystal with n atoms gets ``node_arrays['connectivity']`` int32
[n, P]: row i = counts to atoms j = 0..n-1, then -1 (= ignore) up to P, the
static maximum crystal size of the batch. Being per-node, it rides along the
normal node batching/padding; ``losses.connectivity_target_block`` rebuilds
the per-crystal [G, P, P] blocks on device.
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


def connectivity_target(structure: Structure, max_atoms: int,
                        num_neighbors: int = NUM_NEIGHBORS,
                        cutoff: float = CUTOFF, cap: int = MAX_COUNT
                        ) -> np.ndarray:
  """[n, max_atoms] int32 counts padded with -1; DataError if n > max_atoms."""
  n = structure.num_atoms
  if n > max_atoms:
    raise DataError(structure.id, f"{n} atoms exceed the connectivity block "
                    f"size max_atoms={max_atoms}")
  out = np.full((n, max_atoms), IGNORE, np.int32)
  out[:, :n] = connectivity_counts(structure, num_neighbors, cutoff, cap)
  return out


def pretrain_labels(structure: Structure, max_atoms: int,
                    num_neighbors: int = NUM_NEIGHBORS, cutoff: float = CUTOFF
                    ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
  """Per-node and per-graph arrays a CrysGNN pre-training sample needs.

  Returns:
    (extra_nodes, extra_globals) to add to the featurised single graph:
    nodes ``connectivity`` int32 [n, P]; globals ``space_group`` int32 [1]
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
  nodes = {"connectivity": connectivity_target(structure, max_atoms,
                                               num_neighbors, cutoff)}
  glob = {"space_group": np.array([sg], np.int32),
          "crystal_system": np.array([cs], np.int32)}
  return nodes, glob
