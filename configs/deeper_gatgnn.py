r"""DeeperGATGNN (Omee et al. 2021): 20 AGAT layers with DiffGroupNorm and
residual skips, dim 64, softplus, global attention pooling then Linear(64 -> 1)
(post_fc_count 0), AdamW 0.005, batch 100, plateau on the training error,
L1, 500 epochs: the reference exactly with no variant (731,426 parameters).

  python -m noisy_nodes.train --config=configs/deeper_gatgnn.py:demo --workdir=runs/deeper_gatgnn \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:improved``), every setting and every
deviation from the reference (each a named option): configs/crystal_common.py.
"""
from configs import crystal_common


def get_config(variant=""):
  return crystal_common.crystal_config("gatgnn", variant, deeper=True)
