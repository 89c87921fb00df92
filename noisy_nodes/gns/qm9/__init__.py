"""QM9: raw-file reader, atom references, the paper's split, an xTB
QM9-like generator (``noisy_nodes.gns.qm9.xtb``, needs tblite + RDKit) and the
benchmark metrics (std. MAE, logMAE)."""
from noisy_nodes.gns.qm9.metrics import mae, qm9_metrics, target_std
from noisy_nodes.gns.qm9.reader import (
    BENCHMARK_TARGETS, HARTREE_TO_EV, PROPERTY_NAMES, QM9_ATOM_REFS_U0_EV,
    QM9_ATOM_REFS_U0_HA, TARGET_UNITS, atom_reference_sum, element_counts,
    fit_atom_references, parse_qm9_text, read_qm9_dir, read_qm9_xyz,
    read_uncharacterized, split_indices, subtract_atom_references)

__all__ = [
    "BENCHMARK_TARGETS", "HARTREE_TO_EV", "PROPERTY_NAMES",
    "QM9_ATOM_REFS_U0_EV", "QM9_ATOM_REFS_U0_HA", "TARGET_UNITS",
    "atom_reference_sum", "element_counts", "fit_atom_references", "mae",
    "parse_qm9_text", "qm9_metrics", "read_qm9_dir", "read_qm9_xyz",
    "read_uncharacterized", "split_indices", "subtract_atom_references",
    "target_std",
]
