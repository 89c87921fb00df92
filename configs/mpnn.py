r"""MPNN baseline, the reference exactly with no variant (MatDeepLearn
MPNN_demo: dim 100, 4 x [NNConv(mean, at PyG's edge_index[1]) -> BN -> ReLU
-> GRU], mean pool, AdamW 0.001); ``:deeper`` gives SUPER_MPNN.

  python -m noisy_nodes.train --config=configs/mpnn.py:demo --workdir=runs/mpnn \
      [--config.data.path=FOLDER] [--config.data.cv_folds=5]

Variants (``:demo``, ``:tiny``, ``:deeper``, ``:improved``), every setting and
every deviation from the reference (each a named option): configs/crystal_common.py.
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
  return _common().crystal_config("mpnn", variant)
