r"""GATGNN (Louis et al. 2020) in the DeeperGATGNN framework: AGAT layers with
BatchNorm and no skips (5 layers by default; the depth scan varies it).

  python -m noisy_nodes.train --config=configs/gatgnn.py:demo --workdir=runs/gatgnn \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:improved``), every setting and every
deviation from the reference (each a named option): configs/crystal_common.py.
"""
from configs import crystal_common


def get_config(variant=""):
  return crystal_common.crystal_config("gatgnn", variant)
