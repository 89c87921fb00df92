r"""The paper's central claim in miniature: validation error vs depth, with and
without Noisy Nodes (Godwin et al. 2022, Fig. 2 / Table 1), on EMT data.

  python experiments/noisy_nodes_depth.py --out=runs/depth \
      [--depths=1,2,4,8] [--steps=600] [--width=64]

For each depth (message-passing steps M, one block iteration) two IS2RE
models are trained with the engine (configs/oc20.py:demo, scaled down):
  * "no noise": clean initial structure in, energy loss only
    (configs/oc20.py ``no_noise``: σ = 0, no frame sampling, no node loss);
  * "Noisy Nodes": a trajectory frame + N(0, 0.3²) noise in, graph rebuilt
    from the noisy positions, energy loss + position loss to the relaxed
    structure (the paper's IS2RE recipe, §5.1).
Both use the same data, budget, optimiser, steps and seeds. The best
validation energy MAE (EMA parameters) of each run is reported in
``<out>/depth.md`` with the mean-predictor baseline, and plotted in
``<out>/depth.png``. The default budget (8 runs) takes about 15-20 minutes
on 2 CPU cores once the EMT demo set is cached.
"""
import argparse
import json
import logging
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import noisy_nodes  # noqa: E402,F401
from noisy_nodes.engine import trainer  # noqa: E402
import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = (("no noise", "demo,no_noise"), ("Noisy Nodes", "demo"))


def run_config(variant, depth, args):
  c = oc20_config.get_config(variant)
  c.data.num_train, c.data.num_val, c.data.num_test = (args.num_train,
                                                        args.num_val,
                                                        args.num_val)
  c.model.update(latent_size=args.width, num_message_passing_steps=depth,
                 num_block_iterations=1)
  c.optim.update(cycle_steps=max(args.steps - c.optim.warmup_steps, 1))
  c.train.update(num_steps=args.steps, log_every=max(args.steps // 10, 1),
                 eval_every=max(args.steps // 4, 1),
                 checkpoint_every=args.steps, seed=args.seed)
  return c


def _finished(workdir, steps):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return any(json.loads(l).get("step") == steps and json.loads(l).get(
        "split") == "val" for l in f)


def best_val(workdir, key="energy_mae"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  val = [r for r in rows if r["split"] == "val" and key in r]
  best = min(val, key=lambda r: r[key])
  return best[key], best["baseline_energy_mae"], val[-1][key]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/noisy_nodes_depth")
  p.add_argument("--depths", default="1,2,4,8")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--num_train", type=int, default=1600)
  p.add_argument("--num_val", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  os.makedirs(args.out, exist_ok=True)
  depths = [int(d) for d in args.depths.split(",")]
  results = {}
  t0 = time.time()
  for name, variant in VARIANTS:
    for depth in depths:
      workdir = os.path.join(args.out, f"{variant.replace(',', '_')}_d{depth}")
      if not _finished(workdir, args.steps):  # reruns resume/skip
        trainer.train(run_config(variant, depth, args), workdir)
      best, baseline, last = best_val(workdir)
      results[(name, depth)] = (best, last)
      print(f"{name:>12s}  depth {depth:3d}: best val MAE {best:.4f} eV "
            f"(last {last:.4f}; mean predictor {baseline:.4f}) "
            f"[{time.time() - t0:.0f} s]", flush=True)

  lines = [
      f"# Validation energy MAE (eV) vs message-passing steps, EMT IS2RE",
      "",
      f"{args.num_train} training / {args.num_val} validation systems, "
      f"width {args.width}, {args.steps} steps per run, seed {args.seed}; "
      f"best validation MAE (EMA parameters), last in brackets. Mean "
      f"predictor: {baseline:.4f} eV.",
      "",
      "| MP steps | " + " | ".join(n for n, _ in VARIANTS) + " |",
      "|---:|" + "---:|" * len(VARIANTS)]
  for depth in depths:
    cells = [f"{results[(n, depth)][0]:.4f} ({results[(n, depth)][1]:.4f})"
             for n, _ in VARIANTS]
    lines.append(f"| {depth} | " + " | ".join(cells) + " |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "depth.md"), "w") as f:
    f.write(table)
  print(table)

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, _ in VARIANTS:
    ax.plot(depths, [results[(name, d)][0] for d in depths], "o-", label=name)
  ax.axhline(baseline, color="gray", ls="--", label="mean predictor")
  ax.set_xscale("log", base=2)
  ax.set_xticks(depths)
  ax.set_xticklabels([str(d) for d in depths])
  ax.set_xlabel("message-passing steps")
  ax.set_ylabel("best validation energy MAE (eV)")
  ax.set_title("EMT IS2RE: depth with and without Noisy Nodes")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "depth.png"), dpi=120)
  print(f"wrote {args.out}/depth.md and depth.png in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
