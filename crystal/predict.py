r"""Predict properties of new structure files with a trained crystal run.

  python -m crystal.predict --workdir=runs/dg --structures a.cif POSCAR b.vasp \
      [--checkpoint=best] --out=preds.csv [--cpu_devices=2]

Reads every file with ``crystal.io.read_structure`` (CIF, POSCAR/CONTCAR,
extxyz, ASE json...), featurises it with the run's settings (``config.json``
plus the distance range and target statistics stored in the checkpoint), and
writes one csv row per file: id, file, prediction(s). Exit status 2 for bad
input (unreadable file, missing run).
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

import noisy_nodes  # noqa: F401  (jraph compatibility shim)
from noisy_nodes import batching
from noisy_nodes.structures import DataError


def predict_files(workdir: str, files: Sequence[str], which: str = "best"
                  ) -> Dict[str, object]:
  """Predictions for ``files`` from the run in ``workdir``.

  Returns:
    {"ids": [n], "files": [n], "prediction": float64 [n, T]} in the order of
    ``files``.
  """
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  if not files:
    raise DataError("--structures", "no structure files given")
  exp, ts, _, budget, _ = trainer.restore_run(
      workdir, which, overrides={"data.predict_files": list(files)},
      example_split="example")
  graphs = exp.graphs("predict")
  # Structures larger than the training batches get a larger budget (one
  # more compilation) instead of an error.
  n_max = max(int(g.n_node[0]) for g in graphs)
  e_max = max(int(g.n_edge[0]) for g in graphs)
  if not budget.fits(n_max, e_max):
    budget = batching.Budget(max(budget.max_nodes, n_max),
                             max(budget.max_edges, e_max), budget.max_graphs)
  params = ts.ema_params if exp.config.optim.get("ema_decay", 0) else (
      ts.params)
  preds = exp.predict(params, ts.state, "predict", budget)
  pred = np.stack([np.atleast_1d(p) for p in preds["target"]]).astype(
      np.float64)
  structures = exp.splits["predict"]
  return {"ids": [s.id for s in structures],
          "files": [s.info.get("source", "") for s in structures],
          "prediction": pred}


def main(argv: Optional[List[str]] = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
  try:
    res = predict_files(args.workdir, args.structures, args.checkpoint)
  except (DataError, FileNotFoundError) as e:
    print(f"error: bad input: {e}", file=sys.stderr)
    return 2
  outputs.write_predictions_csv(args.out, res["ids"], res["prediction"],
                                extra={"file": res["files"]})
  print(f"wrote {len(res['ids'])} predictions to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
