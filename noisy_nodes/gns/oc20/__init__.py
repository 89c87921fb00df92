"""OC20 data: readers of the real formats, an EMT generator, metrics.

Readers (``readers``, ``legacy_lmdb``) return lists of
``noisy_nodes.data.structures.Structure`` with ``node_arrays`` ``tags`` (0
sub-surface, 1 surface, 2 adsorbate), ``fixed`` (1 = fixed),
``positions_relaxed`` [n, 3] and, for trajectories, ``frames_positions``
[F, n, 3]; ``targets`` ``energy_relaxed`` / ``energy_initial``; ``info``
with ``sid``, ``source`` and ``energy_kind`` ('adsorption' or 'total').
The EMT generator lives in ``noisy_nodes.gns.oc20.emt`` (imported on demand).
"""
from noisy_nodes.gns.oc20 import metrics  # noqa: F401
from noisy_nodes.gns.oc20.legacy_lmdb import read_legacy_lmdb
from noisy_nodes.gns.oc20.readers import (read_ase_db, read_aselmdb,
                                      read_trajectory, write_aselmdb)

__all__ = ["metrics", "read_ase_db", "read_aselmdb", "read_legacy_lmdb",
           "read_trajectory", "write_aselmdb"]
