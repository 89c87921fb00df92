r"""GATGNN (Louis et al. 2020) in the DeeperGATGNN framework: AGAT layers with
BatchNorm and no skips (5 layers by default; the depth scan varies it).

  python -m noisy_nodes.train --config=configs/gatgnn.py:demo --workdir=runs/gatgnn \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:improved``), every setting and every
deviation from the reference (each a named option): configs/crystal_common.py.
"""
import importlib.util
import os


def _common():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "crystal_common.py")
  spec = importlib.util.spec_from_file_location("crystal_common", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant=""):
  return _common().crystal_config("gatgnn", variant)
