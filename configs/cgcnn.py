r"""CGCNN baseline, the reference exactly with no variant (MatDeepLearn
CGCNN_demo: dim 100, 4 CGConv aggregated at PyG's edge_index[1], BatchNorm,
mean pool, 3 post-pool layers of 150, AdamW 0.002, 250 epochs); ``:deeper``
gives SUPER_CGCNN (10 layers, DGN + skips).

  python -m noisy_nodes.train --config=configs/cgcnn.py:demo --workdir=runs/cgcnn \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:deeper``, ``:improved``), every setting and
every deviation from the reference (each a named option): configs/crystal_common.py.
"""
from configs import crystal_common


def get_config(variant=""):
  return crystal_common.crystal_config("cgcnn", variant)
