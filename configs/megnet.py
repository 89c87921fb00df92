r"""MEGNet baseline, the reference exactly with no variant (MatDeepLearn
MEGNet_demo: dim 100, 4 MetaLayers with 2 Linear layers per φ, no skip inside
φ, zeros(3) global input, mean pool, AdamW 0.0005); ``:deeper`` gives
SUPER_MEGNet.

  python -m noisy_nodes.train --config=configs/megnet.py:demo --workdir=runs/megnet \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:deeper``, ``:improved``), every setting and
every deviation from the reference (each a named option): configs/crystal_common.py.
"""
from configs import crystal_common


def get_config(variant=""):
  return crystal_common.crystal_config("megnet", variant)
