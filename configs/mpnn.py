r"""MPNN baseline, the reference exactly with no variant (MatDeepLearn
MPNN_demo: dim 100, 4 x [NNConv(mean, at PyG's edge_index[1]) -> BN -> ReLU
-> GRU], mean pool, AdamW 0.001); ``:deeper`` gives SUPER_MPNN.

  python -m noisy_nodes.train --config=configs/mpnn.py:demo --workdir=runs/mpnn \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:deeper``, ``:improved``), every setting and
every deviation from the reference (each a named option): configs/crystal_common.py.
"""
from configs import crystal_common


def get_config(variant=""):
  return crystal_common.crystal_config("mpnn", variant)
