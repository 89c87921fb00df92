r"""Train the ``:tiny`` crystal demo, load it from Python, predict on ASE bulk.

  python examples/predict_crystals.py [--workdir=/tmp/nn_example] \
      [--config=configs/deeper_gatgnn.py:tiny]

Trains DeeperGATGNN on 40 EMT-labelled Pt10 clusters (seconds; the data are
generated once and cached), then uses the Python API (``noisy_nodes.load``)
the way a notebook would: predictions for ``ase.build.bulk`` structures,
the same structure as a pymatgen ``Structure``, embeddings, and the model as
an ASE calculator. A tiny model trained on clusters says little about bulk
metals: this shows the calls, not a result. Cu was never in the training
data, so its prediction comes with an ``UnseenElementWarning``.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ase.build  # noqa: E402  pylint: disable=g-import-not-at-top

import noisy_nodes  # noqa: E402  pylint: disable=g-import-not-at-top


def get_config(spec: str):
  """``path/to/config.py[:variant]`` -> ConfigDict (as ``noisy_nodes.train``)."""
  import configs  # pylint: disable=g-import-not-at-top
  return configs.load(spec)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="/tmp/nn_example_tiny_crystal")
  p.add_argument("--config",
                 default=os.path.join(ROOT, "configs", "deeper_gatgnn.py") +
                 ":tiny")
  args = p.parse_args(argv)
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(args.workdir, "best")):
    trainer.train(get_config(args.config), args.workdir)

  model = noisy_nodes.load(args.workdir)            # the best checkpoint
  print(model)
  # Conventional cells: the MatDeepLearn graph of the DeeperGATGNN configs
  # keeps one edge per atom pair (minimum image), so a one-atom primitive
  # cell would be a lone atom with its self loop, whatever its lattice.
  crystals = {
      "Pt fcc a=3.92": ase.build.bulk("Pt", "fcc", a=3.92, cubic=True),
      "Pt fcc a=4.10": ase.build.bulk("Pt", "fcc", a=4.10, cubic=True),
      "Pt bcc a=3.12": ase.build.bulk("Pt", "bcc", a=3.12, cubic=True),
      "Pt sc a=2.60 2x2x2": ase.build.bulk("Pt", "sc", a=2.60) * (2, 2, 2),
  }
  pred = model.predict(list(crystals.values()))["target"]   # [n, T]
  for name, value in zip(crystals, pred):
    print(f"{name:24s} {value[0]: .4f}")

  # The same crystal as a pymatgen Structure gives the same number.
  from pymatgen.io.ase import AseAtomsAdaptor  # pylint: disable=g-import-not-at-top
  pmg = AseAtomsAdaptor.get_structure(crystals["Pt fcc a=3.92"])
  print(f"{'(pymatgen Structure)':24s} {model.predict(pmg)['target'][0, 0]: .4f}")

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cu = model.predict(ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
                       )["target"]
  print(f"{'Cu fcc a=3.61':24s} {cu[0, 0]: .4f}   warning: "
        f"{caught[0].message if caught else 'none'}")

  emb = model.embed(crystals["Pt fcc a=3.92"])
  print("embedding of fcc Pt (4 atoms): node", emb["node_embedding"][0].shape,
        "graph", emb["graph_embedding"].shape)

  atoms = crystals["Pt fcc a=4.10"].copy()
  atoms.calc = model.as_ase_calculator()
  print(f"ASE calculator energy: {atoms.get_potential_energy(): .4f}")
  try:
    atoms.get_forces()
  except Exception as e:  # pylint: disable=broad-except
    print(f"forces: {type(e).__name__}: {e}")
  return pred


if __name__ == "__main__":
  main()
