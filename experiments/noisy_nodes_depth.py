r"""Validation error vs depth with and without Noisy Nodes, trained to
convergence (Godwin et al. 2022, Fig. 2 / Tables 1 and 3), on EMT data.

  python experiments/noisy_nodes_depth.py --out=runs/depth \
      [--task=is2rs] [--layouts=1x2,2x2,2x4,4x4,4x8] [--seeds=0,1,2] \
      [--chunk=1000] [--max_steps=20000] [--flat_tol=0.01]

Protocol.  For every block layout N x M (N block iterations of M steps, the
paper's depths), with and without Noisy Nodes, and every seed, one model is
trained with the engine from ``configs/oc20.py:demo`` (IS2RS: ``demo,is2rs``
against ``demo,is2rs,no_noise``, i.e. σ = 0 with the position target kept;
IS2RE: ``demo`` against ``demo,no_noise``).  The learning-rate schedule is
fixed by ``--max_steps`` (warm-up, then one cosine cycle of max_steps), so a
run can stop early without changing its schedule: it trains in chunks of
``--chunk`` steps (validation ``--evals_per_chunk`` times a chunk) and stops
once validation has FLATTENED: the best error of the last quarter of the
run improves on the best before it by less than ``--flat_tol`` (relative),
with at least 8 evaluations in that quarter.  A run that reaches max_steps
unflattened is reported as such (marked * in the table).

Reported in ``<out>/depth.md``: per layout and variant, mean ± std over
seeds of the best validation error (``positions_mae`` in Å for IS2RS,
``energy_mae`` in eV for IS2RE; ADwT too for IS2RS), the steps at which
each run was found flat, and the baseline (unrelaxed positions / mean
predictor).  ``<out>/depth.png``: error vs total message-passing steps
(mean ± std); ``<out>/curves.png``: every validation curve with its flat
window shaded.  Reruns skip finished runs and resume unfinished ones;
``--ledger=DIR`` keeps finished runs' records across machines (a sweep
longer than one sitting: commit DIR, rerun elsewhere, only the rest
trains).
"""
import argparse
import json
import logging
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

import noisy_nodes  # noqa: E402,F401
from noisy_nodes.engine import trainer  # noqa: E402
from configs import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top
from experiments import ledger as ledger_lib  # noqa: E402

VARIANTS = {"is2rs": (("no noise", "demo,is2rs,no_noise"),
                      ("Noisy Nodes", "demo,is2rs")),
            "is2re": (("no noise", "demo,no_noise"), ("Noisy Nodes", "demo"))}
METRIC = {"is2rs": "positions_mae", "is2re": "energy_mae"}


def run_config(variant, layout, seed, num_steps, args):
  n, m = layout
  c = oc20_config.get_config(variant)
  c.data.limit = args.limit
  c.model.update(latent_size=args.width, num_block_iterations=n,
                 num_message_passing_steps=m)
  c.optim.update(cycle_steps=max(args.max_steps - c.optim.warmup_steps, 1))
  every = max(args.chunk // args.evals_per_chunk, 1)
  c.train.update(num_steps=num_steps, log_every=every, eval_every=every,
                 checkpoint_every=args.chunk, seed=seed)
  return c


def val_curve(workdir, key):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(l) for l in f]
  by_step = {r["step"]: r for r in rows if r["split"] == "val" and key in r}
  return [by_step[s] for s in sorted(by_step)]


def flat_since(curve, key, tol, min_evals=8):
  """The step from which the curve's last quarter is flat, or None.

  Flat: min over the last quarter of the evaluations improves on the min
  over the first three quarters by less than ``tol`` (relative).
  """
  if len(curve) < 4 * min_evals // 3 + 1:
    return None
  q = len(curve) - max(len(curve) // 4, min_evals)
  before = min(r[key] for r in curve[:q])
  last = min(r[key] for r in curve[q:])
  if before - last < tol * before:
    return curve[q]["step"]
  return None


def train_until_flat(variant, layout, seed, args, key, ledger=None):
  """Trains (resuming) in chunks until flat or max_steps; the run's record
  (read back from ``ledger`` when it holds the run, added to it if not)."""
  tag = variant.replace(",", "_")
  name = f"{tag}_{layout[0]}x{layout[1]}_s{seed}"
  workdir = os.path.join(args.out, name)
  held = ledger.get(name) if ledger is not None else None
  if held is not None:
    return held
  while True:
    curve = val_curve(workdir, key)
    done = curve[-1]["step"] if curve else 0
    flat = flat_since(curve, key, args.flat_tol)
    if flat is not None or done >= args.max_steps:
      break
    target = min(done + args.chunk, args.max_steps)
    trainer.train(run_config(variant, layout, seed, target, args), workdir)
  best = min(curve, key=lambda r: r[key])
  out = {"workdir": workdir, "best": best[key], "steps": done,
         "flat_since": flat, "baseline": best.get(f"baseline_{key}"),
         "curve": [(r["step"], r[key]) for r in curve]}
  if "adwt" in best:
    out["adwt"] = max(r["adwt"] for r in curve)
    out["baseline_adwt"] = best.get("baseline_adwt")
  if ledger is not None:
    ledger.put(name, out)
  return out


def _mean_std(xs):
  xs = np.asarray(xs, np.float64)
  return f"{xs.mean():.4f} ± {xs.std():.4f}" if len(xs) > 1 else (
      f"{xs.mean():.4f}")


def write_report(results, layouts, variants, args, key):
  unit = "Å" if key == "positions_mae" else "eV"
  base = next(r["baseline"] for r in results.values())
  lines = [f"# {args.task.upper()} {key} ({unit}) vs depth, EMT, trained "
           "until validation is flat", "",
           f"width {args.width}, seeds {args.seeds}, chunks of {args.chunk} "
           f"steps up to {args.max_steps}; flat: best of the last quarter "
           f"within {args.flat_tol:.0%} of the best before it. Mean ± std over "
           f"seeds of the best validation {key}; * = a seed not flat at "
           f"max_steps. Baseline: {base:.4f} {unit}.", "",
           "| N x M | MP steps | " + " | ".join(
               n for n, _ in variants) + " | steps run (flat since) |",
           "|---|---:|" + "---:|" * len(variants) + "---|"]
  for layout in layouts:
    cells, steps = [], []
    for name, variant in variants:
      rs = [results[(variant, layout, s)] for s in args.seed_list]
      star = "*" if any(r["flat_since"] is None for r in rs) else ""
      cell = _mean_std([r["best"] for r in rs]) + star
      if "adwt" in rs[0]:
        cell += f" (ADwT {_mean_std([r['adwt'] for r in rs])})"
      cells.append(cell)
      steps.append(name + ": " + ", ".join(
          f"{r['steps']} ({r['flat_since']})" for r in rs))
    lines.append(f"| {layout[0]}x{layout[1]} | {layout[0] * layout[1]} | " +
                 " | ".join(cells) + " | " + "; ".join(steps) + " |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "depth.md"), "w") as f:
    f.write(text)
  with open(os.path.join(args.out, "depth.json"), "w") as f:
    json.dump({f"{v}|{l[0]}x{l[1]}|{s}": r
               for (v, l, s), r in results.items()}, f, indent=1)
  return text, base


def plot(results, layouts, variants, args, key, base):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  depth = [n * m for n, m in layouts]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name, variant in variants:
    best = np.array([[results[(variant, l, s)]["best"] for s in args.seed_list]
                     for l in layouts])
    ax.errorbar(depth, best.mean(1), yerr=best.std(1), fmt="o-", capsize=3,
                label=name)
  ax.axhline(base, color="gray", ls="--", label="baseline")
  ax.set_xscale("log", base=2)
  ax.set_xticks(depth)
  ax.set_xticklabels([f"{n}x{m}" for n, m in layouts])
  ax.set(xlabel="N x M message-passing steps", ylabel=f"best val {key}",
         title=f"EMT {args.task.upper()}: depth with/without Noisy Nodes")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "depth.png"), dpi=120)
  plt.close(fig)
  fig, axes = plt.subplots(1, len(layouts), figsize=(3.2 * len(layouts), 3),
                           squeeze=False, sharey=True)
  for ax, layout in zip(axes[0], layouts):
    for (name, variant), color in zip(variants, ("C0", "C1")):
      for s in args.seed_list:
        r = results[(variant, layout, s)]
        steps, vals = zip(*r["curve"])
        ax.plot(steps, vals, color=color, lw=1,
                label=name if s == args.seed_list[0] else None)
        if r["flat_since"] is not None:
          ax.axvspan(r["flat_since"], steps[-1], color=color, alpha=0.08)
    ax.set(title=f"{layout[0]}x{layout[1]}", xlabel="step")
  axes[0][0].set_ylabel(f"val {key}")
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "curves.png"), dpi=100)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/noisy_nodes_depth")
  p.add_argument("--task", default="is2rs", choices=sorted(VARIANTS))
  p.add_argument("--layouts", default="1x2,2x2,2x4,4x4,4x8")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--chunk", type=int, default=1000)
  p.add_argument("--evals_per_chunk", type=int, default=4)
  p.add_argument("--max_steps", type=int, default=20000)
  p.add_argument("--flat_tol", type=float, default=0.01)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--limit", type=int, default=0,
                 help="at most this many systems per split (0: all)")
  p.add_argument("--ledger", default="",
                 help="directory of finished runs' records, kept across "
                 "machines (experiments/ledger.py): runs it holds are not "
                 "trained again, new ones are added")
  args = p.parse_args()
  args.seed_list = [int(s) for s in args.seeds.split(",")]
  layouts = [tuple(int(x) for x in l.split("x"))
             for l in args.layouts.split(",")]
  logging.getLogger().setLevel(logging.WARNING)
  os.makedirs(args.out, exist_ok=True)
  key, variants = METRIC[args.task], VARIANTS[args.task]
  results, t0 = {}, time.time()
  ledger = ledger_lib.Ledger(args.ledger, {
      k: getattr(args, k) for k in ("task", "chunk", "evals_per_chunk",
                                    "max_steps", "flat_tol", "width",
                                    "limit")}) if args.ledger else None
  for layout in layouts:
    for name, variant in variants:
      for seed in args.seed_list:
        r = train_until_flat(variant, layout, seed, args, key, ledger)
        results[(variant, layout, seed)] = r
        print(f"{name:>12s} {layout[0]}x{layout[1]} seed {seed}: best "
              f"{key} {r['best']:.4f} after {r['steps']} steps (flat since "
              f"{r['flat_since']}) [{time.time() - t0:.0f} s]", flush=True)
  text, base = write_report(results, layouts, variants, args, key)
  plot(results, layouts, variants, args, key, base)
  print(text)
  print(f"wrote {args.out}/depth.md, depth.png, curves.png in "
        f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
  main()
