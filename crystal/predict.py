r"""Predict properties of new structure files with a trained crystal run.

  python -m crystal.predict --workdir=runs/dg --structures a.cif POSCAR b.vasp \
      [--checkpoint=best] --out=preds.csv [--cpu_devices=2]

Reads every file with ``crystal.io.read_structure`` (CIF, POSCAR/CONTCAR,
extxyz, ASE json...) and predicts with ``noisy_nodes.load(workdir)``
(featurised with the run's settings: ``config.json`` plus the distance range
and target statistics stored in the checkpoint); writes one csv row per
file: id, file, prediction(s). Elements the run never saw in training get a
warning on stderr. Exit status 2 for bad input (unreadable file, missing
run).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Dict, List, Optional, Sequence

import noisy_nodes
from noisy_nodes import errors
from noisy_nodes.data.structures import DataError


def predict_files(workdir: str, files: Sequence[str], which: str = "best"
                  ) -> Dict[str, object]:
  """Predictions for ``files`` from the run in ``workdir``.

  Returns:
    {"ids": [n], "files": [n], "prediction": float64 [n, T]} in the order of
    ``files``.
  """
  from crystal import io as io_lib  # pylint: disable=g-import-not-at-top
  if not files:
    raise DataError("--structures", "no structure files given")
  predictor = noisy_nodes.load(workdir, which)
  structures = [io_lib.read_structure(p) for p in files]
  pred = predictor.predict(structures)["target"]
  return {"ids": [s.id for s in structures],
          "files": [s.info.get("source", "") for s in structures],
          "prediction": pred}


class _OneLineParser(argparse.ArgumentParser):
  """Flag errors as the other CLIs give them: one line, exit 2 (no usage
  block before it; ``--help`` still prints the usage)."""

  def error(self, message):
    self.exit(2, f"error: crystal.predict: {message} (see --help)\n")


def main(argv: Optional[List[str]] = None) -> int:
  p = _OneLineParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="trained run directory")
  p.add_argument("--structures", nargs="+", required=True,
                 help="structure files (CIF, POSCAR, extxyz, ASE json...)")
  p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
  p.add_argument("--out", required=True, help="output csv")
  p.add_argument("--cpu_devices", type=int, default=1,
                 help="XLA:CPU devices to spread the structures over (one "
                      "per core is fastest on a CPU-only host)")
  args = p.parse_args(argv)
  if args.cpu_devices < 1:
    p.error(f"--cpu_devices must be >= 1, got {args.cpu_devices}")
  if args.cpu_devices > 1:
    from noisy_nodes.engine import parallel  # pylint: disable=g-import-not-at-top
    parallel.set_cpu_devices(args.cpu_devices)
  from crystal import outputs  # pylint: disable=g-import-not-at-top
  from noisy_nodes import api  # pylint: disable=g-import-not-at-top
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", api.UnseenElementWarning)
      res = predict_files(args.workdir, args.structures, args.checkpoint)
  except Exception as e:  # pylint: disable=broad-except
    known = errors.describe(e)  # user faults: one line, exit 2
    if known is None:
      raise
    print(known[1], file=sys.stderr)
    return known[0]
  for w in caught:
    if issubclass(w.category, api.UnseenElementWarning):
      print(f"warning: {w.message}", file=sys.stderr)
    else:
      warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  outputs.write_predictions_csv(args.out, res["ids"], res["prediction"],
                                extra={"file": res["files"]})
  print(f"wrote {len(res['ids'])} predictions to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
