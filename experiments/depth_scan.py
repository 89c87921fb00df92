r"""The DeeperGATGNN depth scan in miniature: GATGNN vs DeeperGATGNN.

  python -m experiments.depth_scan --out=runs/depth_scan \
      [--depths 5 10 20 30] [--n 400] [--steps 150] [--batch 50]

Paper (Omee et al. 2021, §3.3-3.4, Figs. 4 and 8): plain GATGNN degrades as
graph-convolution layers are added (over-smoothing), while DiffGroupNorm +
residual skips keep DeeperGATGNN trainable and accurate up to 30+ layers.

Here both models (``configs/gatgnn.py`` and ``configs/deeper_gatgnn.py``,
reference width 64, 4 heads, AdamW 0.005, plateau, L1) train through the
engine on the same generated EMT Pt-cluster dataset (``--n`` relaxed and
perturbed clusters of 5-12 atoms, target: energy per atom; made once and
cached), with a small fixed budget: ``--steps`` steps of ``--batch`` graphs,
evaluating every ``--eval_every`` steps and keeping the best validation
checkpoint. Each run's test split is predicted from its best checkpoint
(``crystal.outputs.write_outputs``: csv + parity plot per run).

Writes under ``--out``: ``depth_scan.md`` (table), ``depth_scan.png`` (test
MAE and training loss vs depth), ``results.json`` and one run directory per
model and depth. The whole scan takes ~10-15 minutes on 2 idle CPU cores with
the defaults; the budget is far below the paper's 500 epochs, so absolute
errors are not comparable with the paper, only the trend with depth.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import time
from typing import Dict, List

import numpy as np

import noisy_nodes  # noqa: F401  (jraph compatibility shim)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = (("GATGNN", "gatgnn"), ("DeeperGATGNN", "deeper_gatgnn"))


def load_config(name: str, variant: str = ""):
  spec = importlib.util.spec_from_file_location(
      f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def run_config(name: str, layers: int, args) -> "ml_collections.ConfigDict":
  c = load_config(name)
  c.data.cache_dir = os.path.join(args.out, "cache")
  c.data.generate.update(kind="pt_clusters", n=args.n, seed=args.seed,
                         min_atoms=args.min_atoms, max_atoms=args.max_atoms,
                         mode="both", workers=args.workers)
  c.data.split = tuple(args.split)
  c.model.num_layers = layers
  c.batch.max_graphs = args.batch
  c.train.update(epochs=0, num_steps=args.steps, log_every=args.eval_every,
                 eval_every=args.eval_every, checkpoint_every=args.steps,
                 seed=args.seed, skip_nonfinite=True)
  # Plateau patience in evaluations, scaled to the short budget.
  c.optim.plateau.patience = args.patience
  return c


def num_params(config) -> int:
  """Parameter count from shapes only (``jax.eval_shape``, no compile)."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from crystal import tasks  # pylint: disable=g-import-not-at-top
  from crystal.models import count_params  # pylint: disable=g-import-not-at-top
  from noisy_nodes import batching  # pylint: disable=g-import-not-at-top
  task = tasks.CrystalPropertyTask(config)
  g = task.featurize(task.load_splits()["train"][0], None, False)
  batch = batching.pad_graphs(
      [g], batching.Budget(int(g.n_node[0]), int(g.n_edge[0]), 1))
  init = hk.transform_with_state(task.model).init
  params, _ = jax.eval_shape(lambda b: init(jax.random.PRNGKey(0), b, True),
                             batch)
  return count_params(params)


def train_one(label: str, name: str, layers: int, args) -> Dict:
  from crystal import outputs  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(args.out, f"{name}_{layers}")
  config = run_config(name, layers, args)
  t0 = time.time()
  val = trainer.train(config, workdir)
  seconds = time.time() - t0
  out = outputs.write_outputs(workdir, splits=("test",))
  test = out["test"]["metrics"]
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_loss = [r["loss"] for r in rows if r["split"] == "train"]
  val_mae = [r["mae"] for r in rows if r["split"] == "val" and "mae" in r]
  return {"model": label, "layers": layers,
          "params": num_params(config),
          "best_val_mae": float(min(val_mae)) if val_mae else math.nan,
          "final_val_mae": float(val.get("mae", math.nan)),
          "test_mae": test["mae"], "test_mse": test["mse"],
          "test_r2": test["r2"], "best_step": test["step"],
          "final_train_loss": float(train_loss[-1]) if train_loss else
                              math.nan,
          "seconds": seconds, "workdir": workdir}


def mean_baseline(args) -> Dict[str, float]:
  """MAE of predicting the training mean (what "learned nothing" scores)."""
  from crystal import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.CrystalPropertyTask(run_config("gatgnn", 5, args))
  splits = task.load_splits()
  mean = np.mean([s.targets["target"][0] for s in splits["train"]])
  test = np.array([s.targets["target"][0] for s in splits["test"]])
  return {"test_mae": float(np.mean(np.abs(test - mean))),
          "test_std": float(test.std()), "n_train": len(splits["train"]),
          "n_val": len(splits["val"]), "n_test": len(splits["test"])}


def write_table(path: str, rows: List[Dict], base: Dict, args) -> str:
  lines = [
      f"# Depth scan: GATGNN vs DeeperGATGNN on {args.n} EMT Pt clusters "
      f"({args.min_atoms}-{args.max_atoms} atoms)", "",
      f"{base['n_train']}/{base['n_val']}/{base['n_test']} train/val/test; "
      f"{args.steps} steps of {args.batch} graphs "
      f"(~{args.steps * args.batch / base['n_train']:.0f} epochs), AdamW "
      f"0.005, plateau, L1; test metrics from the best-validation checkpoint."
      f" Target: EMT energy per atom (eV/atom); predicting the training mean "
      f"gives test MAE {base['test_mae']:.4f} (test std "
      f"{base['test_std']:.4f}).", "",
      "| model | layers | params | best val MAE | test MAE | test R² | "
      "final train L1 | time (s) |",
      "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(
        f"| {r['model']} | {r['layers']} | {r['params']:,} | "
        f"{r['best_val_mae']:.4f} | {r['test_mae']:.4f} | "
        f"{r['test_r2']:.3f} | {r['final_train_loss']:.4f} | "
        f"{r['seconds']:.0f} |")
  text = "\n".join(lines) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


def plot(path: str, rows: List[Dict], base: Dict) -> None:
  from noisy_nodes import plots  # pylint: disable=g-import-not-at-top
  plt = plots._pyplot()  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for label, _ in MODELS:
    rs = sorted([r for r in rows if r["model"] == label],
                key=lambda r: r["layers"])
    if not rs:
      continue
    x = [r["layers"] for r in rs]
    axes[0].plot(x, [r["test_mae"] for r in rs], "-o", label=label)
    axes[1].plot(x, [r["final_train_loss"] for r in rs], "-o", label=label)
  axes[0].axhline(base["test_mae"], color="gray", ls="--",
                  label="predict training mean")
  axes[0].set_ylabel("test MAE (eV/atom)")
  axes[1].set_ylabel("final training L1 (eV/atom)")
  for ax in axes:
    ax.set_xlabel("graph convolution layers")
    ax.legend()
  fig.suptitle("GATGNN vs DeeperGATGNN depth scan (EMT Pt clusters)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20, 30])
  p.add_argument("--models", nargs="+", default=[m[1] for m in MODELS],
                 choices=[m[1] for m in MODELS])
  p.add_argument("--n", type=int, default=400)
  p.add_argument("--min_atoms", type=int, default=5)
  p.add_argument("--max_atoms", type=int, default=12)
  p.add_argument("--split", type=float, nargs=3, default=[0.7, 0.1, 0.2])
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch", type=int, default=50)
  p.add_argument("--eval_every", type=int, default=10)
  p.add_argument("--patience", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=2)
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  os.makedirs(args.out, exist_ok=True)
  base = mean_baseline(args)   # also generates and caches the dataset
  rows = []
  labels = dict((m[1], m[0]) for m in MODELS)
  for layers in args.depths:
    for name in args.models:
      r = train_one(labels[name], name, layers, args)
      rows.append(r)
      print(f"{r['model']:>12s} {layers:3d} layers: test MAE "
            f"{r['test_mae']:.4f}  R² {r['test_r2']:.3f}  "
            f"({r['seconds']:.0f} s)", flush=True)
      with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"baseline": base, "runs": rows, "args": vars(args)}, f,
                  indent=2)
  rows.sort(key=lambda r: (r["model"], r["layers"]))
  print(write_table(os.path.join(args.out, "depth_scan.md"), rows, base,
                    args))
  plot(os.path.join(args.out, "depth_scan.png"), rows, base)
  print(f"wrote {args.out}/depth_scan.md, depth_scan.png, results.json")


if __name__ == "__main__":
  main()
