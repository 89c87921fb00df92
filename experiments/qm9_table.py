r"""QM9 sweep -> the paper's Table 5: per-target MAE, std. MAE and logMAE.

  python experiments/qm9_table.py --sweep=runs/qm9 [--split=test] \
      [--checkpoint=best] [--out=runs/qm9/table.md]

``--sweep`` is a folder of finished single-target runs (one per target and
seed, as the paper trains them: ``python -m noisy_nodes.train
--config=configs/qm9.py:3x10 --config.data.target=U0 --workdir=runs/qm9/U0_s0``).
Each run is evaluated on ``--split`` with its best checkpoint
(``noisy_nodes.load``).  Per target the MAE is converted to the paper's unit
(meV for the energies, the rest as in the files) and averaged over seeds
(mean ± std when there are several).  Then, over the targets present
(Klicpera et al. / Noisy Nodes App. 8.3):

  std. MAE = 100 % x mean_m MAE_m / σ_m,   logMAE = mean_m log(MAE_m / σ_m)

with σ_m the std of target m over the run's TRAINING split (saved with
its checkpoint, ``sigma_m/<target>``).  Targets missing from the sweep are
listed; the aggregates are then over the targets present only.
"""
import argparse
import json
import os
import sys
from typing import Dict, List

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import noisy_nodes  # noqa: E402
from noisy_nodes.gns.qm9 import reader  # noqa: E402

# Target -> (paper unit, factor from our unit). Table 5's units.
PAPER_UNITS = {
    "mu": ("D", 1.0), "alpha": ("a0^3", 1.0), "homo": ("meV", 1000.0),
    "lumo": ("meV", 1000.0), "gap": ("meV", 1000.0), "r2": ("a0^2", 1.0),
    "zpve": ("meV", 1000.0), "U0": ("meV", 1000.0), "U": ("meV", 1000.0),
    "H": ("meV", 1000.0), "G": ("meV", 1000.0), "Cv": ("cal/mol K", 1.0)}


def sweep_runs(sweep: str) -> List[str]:
  """Run folders (a config.json and a best checkpoint) under ``sweep``."""
  out = []
  for root, _, files in os.walk(sweep):
    if "config.json" in files and os.path.isdir(os.path.join(root, "best")):
      out.append(root)
  return sorted(out)


def evaluate_runs(runs: List[str], split: str, checkpoint: str
                  ) -> Dict[str, List[Dict[str, float]]]:
  """target -> one {'mae', 'sigma_m', 'run'} per run (seed)."""
  by_target: Dict[str, List[Dict[str, float]]] = {}
  for run in runs:
    model = noisy_nodes.load(run, checkpoint)
    if model.config.task != "qm9":
      continue
    metrics = model.evaluate(split)
    for key, value in metrics.items():
      if key.startswith("mae/"):
        t = key[4:]
        by_target.setdefault(t, []).append(
            {"mae": float(value), "sigma_m": float(metrics[f"sigma_m/{t}"]),
             "run": run})
  return by_target


def table(by_target: Dict[str, List[Dict[str, float]]], split: str) -> str:
  order = [t for t in reader.BENCHMARK_TARGETS if t in by_target] + sorted(
      t for t in by_target if t not in reader.BENCHMARK_TARGETS)
  lines = [f"| target | unit | {split} MAE | σ_m (training split) | "
           "MAE / σ_m | runs |", "|---|---|---:|---:|---:|---:|"]
  ratios = []
  for t in order:
    unit, factor = PAPER_UNITS.get(t, (reader.TARGET_UNITS.get(t, ""), 1.0))
    maes = np.array([r["mae"] for r in by_target[t]]) * factor
    sigma = np.mean([r["sigma_m"] for r in by_target[t]]) * factor
    ratio = np.array([r["mae"] / r["sigma_m"] for r in by_target[t]])
    ratios.append(ratio.mean())
    spread = f" ± {maes.std():.3g}" if len(maes) > 1 else ""
    lines.append(f"| {t} | {unit} | {maes.mean():.4g}{spread} | {sigma:.4g} | "
                 f"{ratio.mean():.4g} | {len(maes)} |")
  ratios = np.array(ratios)
  missing = [t for t in reader.BENCHMARK_TARGETS if t not in by_target]
  lines += ["", f"std. MAE {100 * ratios.mean():.3f} %, logMAE "
            f"{np.mean(np.log(ratios)):.3f} over {len(ratios)} target(s)" +
            (f"; missing from the sweep: {', '.join(missing)}" if missing
             else "")]
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sweep", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--checkpoint", default="best")
  p.add_argument("--out", default="")
  args = p.parse_args()
  runs = sweep_runs(args.sweep)
  if not runs:
    sys.exit(f"error: no finished runs (config.json + best/) under "
             f"{args.sweep}")
  by_target = evaluate_runs(runs, args.split, args.checkpoint)
  if not by_target:
    sys.exit(f"error: no QM9 runs under {args.sweep}")
  text = table(by_target, args.split)
  out = args.out or os.path.join(args.sweep, f"qm9_table_{args.split}.md")
  with open(out, "w") as f:
    f.write(text)
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump(by_target, f, indent=2)
  print(text)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
