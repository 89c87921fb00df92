"""The DeeperGATGNN and CrysGNN papers on the shared layer: crystal
featurisation, dataset folders, generators, the models, the tasks.

``crystal.io`` reads structure files and labelled folders (MatDeepLearn,
CGCNN, ALIGNN layouts), ``crystal.features`` turns a ``Structure`` into a
single-graph ``jraph.GraphsTuple`` (DeeperGATGNN / CGCNN features),
``crystal.datasets`` caches featurised graphs and makes splits,
``crystal.generators`` writes physics-labelled (EMT) dataset folders,
``crystal.models`` holds DeeperGATGNN and the baselines, ``crystal.crysgnn``
CrysGNN pre-training and distillation.

Public names (imported on first use): ``read_structure``,
``read_dataset_folder``; ``CrystalFeaturizer``, ``FeaturizerConfig``; the
models ``GATGNN``, ``CGCNN``, ``SchNet``, ``MPNN``, ``MEGNet``; the tasks
``CrystalPropertyTask``, ``CrysGNNPretrainTask``, ``CrysGNNDistillTask``.
"""
import noisy_nodes  # noqa: F401  (jraph compatibility shim first)
from noisy_nodes import _lazy

__all__, __getattr__, __dir__ = _lazy.attach(__name__, {
    "crystal.io": ("read_structure", "read_dataset_folder"),
    "crystal.features": ("CrystalFeaturizer", "FeaturizerConfig"),
    "crystal.models": ("GATGNN", "CGCNN", "SchNet", "MPNN", "MEGNet"),
    "crystal.tasks": ("CrystalPropertyTask",),
    "crystal.crysgnn.tasks": ("CrysGNNPretrainTask", "CrysGNNDistillTask"),
})
