r"""SchNet baseline, the reference exactly with no variant (MatDeepLearn
SchNet_demo: dim 100, 150 filters, 4 interaction blocks aggregated at PyG's
edge_index[1], cosine cutoff 8 Å, max pool, AdamW 0.0005); ``:deeper`` gives
SUPER_SchNet.

  python -m noisy_nodes.train --config=configs/schnet.py:demo --workdir=runs/schnet \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:deeper``, ``:improved``), every setting and
every deviation from the reference (each a named option): configs/crystal_common.py.
"""
from configs import crystal_common


def get_config(variant=""):
  return crystal_common.crystal_config("schnet", variant)
