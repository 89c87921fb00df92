"""Crystal property prediction: featurisation, dataset folders, generators.

``crystal.io`` reads structure files and labelled folders (MatDeepLearn,
CGCNN, ALIGNN layouts), ``crystal.features`` turns a ``Structure`` into a
single-graph ``jraph.GraphsTuple`` (DeeperGATGNN / CGCNN features),
``crystal.datasets`` caches featurised graphs and makes splits, and
``crystal.generators`` writes physics-labelled (EMT) dataset folders.
"""
import noisy_nodes  # noqa: F401  (jraph compatibility shim first)
