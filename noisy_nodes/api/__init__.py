"""Trained runs from Python: ``load(workdir)`` -> ``Predictor``.

  import noisy_nodes, ase.build
  model = noisy_nodes.load("runs/dg")            # best checkpoint
  model.predict([ase.build.bulk("Cu"), ...])     # {'target': [n, T]}
  model.embed(structures)                        # node / graph embeddings
  atoms.calc = model.as_ase_calculator()         # energy, no forces
  noisy_nodes.api.analyze("runs/oc20", "mad")    # a task's analysis hook

``predictor.py`` restores a run without its training data and predicts;
``inputs.py`` converts ASE / pymatgen inputs; ``calculator.py`` is the ASE
calculator. The command lines ``noisy_nodes.evaluate`` and
``crystal.predict`` are wrappers over this API.
"""
from noisy_nodes.api.predictor import (Predictor, UnseenElementWarning,
                                       analyze, load, task_class,
                                       write_submission)

__all__ = ["Predictor", "UnseenElementWarning", "analyze", "load",
           "task_class", "write_submission"]
