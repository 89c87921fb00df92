r"""The DeeperGATGNN depth claim, measured at convergence: GATGNN vs
DeeperGATGNN at 5 / 10 / 20 / 30 layers, several seeds, with the reference's
unnormalised targets and with normalised ones.

  python -m experiments.depth_scan --out=runs/depth_scan \
      [--depths 5 10 20 30] [--seeds 0 1 2] [--targets raw normalized] \
      [--n 4000] [--min_atoms 5] [--max_atoms 40] [--max_epochs 300]

Paper (Omee et al. 2022, §3.3-3.4, Figs. 4 and 8): plain GATGNN degrades as
layers are added (over-smoothing), while DiffGroupNorm + residual skips keep
DeeperGATGNN accurate up to 30+ layers. On a real DFT cluster set, 30-layer
plain GATGNN trained 100 epochs came out 1.7x worse than DeeperGATGNN
without target normalisation but on par with it with normalisation (one
seed each), so the effect may live in the optimisation of unnormalised
targets: this scan measures both.

Protocol. Both models are the reference configs (``configs/gatgnn.py``,
``configs/deeper_gatgnn.py``: width 64, 4 heads, AdamW 0.005, plateau on the
training error, L1, batch 100; ``--variant`` adds config variants such as
``improved``) on one generated EMT Pt-cluster set (``--n`` relaxed and
perturbed clusters of ``--min_atoms``-``--max_atoms`` atoms, target: EMT
energy per atom; made once and cached), split 0.8 / 0.1 / 0.1. Every run
trains in chunks of ``--chunk_epochs`` epochs (resuming its checkpoint)
until its validation MAE has flattened -- the best MAE of the last quarter
of its per-epoch evaluations improves on the best before it by less than
``--flat_tol`` (relative), after at least ``--min_epochs`` -- or until
``--max_epochs``; the table says which. Test metrics come from each run's
best-validation checkpoint. A run counts as flat only once its learning
rate has also sat at the plateau's floor (``min_lr``) for the whole last
quarter (``--no-lr_floor``: the curve alone): on this set the curve alone
stopped runs at 30-50 epochs, at rates far above the floor, and such a
pause is not convergence (GATGNN-10 on raw targets, seed 2: 0.0146 eV/atom
at 40 epochs by the curve alone, 0.0046 when flat at the floor, 190).
``--ledger=DIR`` keeps finished runs across machines (experiments/ledger.py).

Writes under ``--out``: ``depth_scan.md`` (mean ± std over seeds of the test
MAE per target mode, model and depth, with the epochs trained and how many
runs flattened), ``depth_scan.png`` (test MAE vs depth, error bars = std over
seeds), ``val_curves.png`` (every run's validation MAE per epoch: the
flattening), ``results.json`` and one run directory per run. The full scan
(2 x 2 x 4 x 3 = 48 runs) needs hours of a many-core machine or a GPU; a
tiny setting checks it end to end in about a minute:

  python -m experiments.depth_scan --out=/tmp/ds --n 60 --max_atoms 8 \
      --depths 1 2 --seeds 0 --chunk_epochs 2 --min_epochs 2 --max_epochs 4 \
      --dim 8 --batch 16
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np

import noisy_nodes  # noqa: F401  (jraph compatibility shim)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/
import configs  # noqa: E402  pylint: disable=g-import-not-at-top
MODELS = (("GATGNN", "gatgnn"), ("DeeperGATGNN", "deeper_gatgnn"))
TARGETS = ("raw", "normalized")


def load_config(name: str, variant: str = ""):
  return configs.load(name, variant)


def run_config(name: str, layers: int, seed: int, target: str, args):
  c = load_config(name, args.variant)
  c.data.cache_dir = os.path.join(args.out, "cache")
  c.data.generate.update(kind="pt_clusters", n=args.n, seed=args.data_seed,
                         min_atoms=args.min_atoms, max_atoms=args.max_atoms,
                         mode="both", workers=args.workers)
  c.data.split = tuple(args.split)
  c.data.normalize_targets = target == "normalized"
  c.model.num_layers = layers
  if args.dim:
    c.model.dim = args.dim
  c.batch.max_graphs = args.batch
  if args.patience:
    c.optim.plateau.patience = args.patience
  c.optim.plateau.monitor = args.monitor
  # Epoch-equivalents: one evaluation (and plateau step) per epoch.
  c.train.update(epochs=0, seed=seed, skip_nonfinite=True,
                 write_outputs=False)
  return c


def flattened(val: Sequence[float], tol: float, min_evals: int) -> bool:
  """Whether a validation curve has flattened: the best value of its last
  quarter improves on the best before it by less than ``tol`` (relative)."""
  m = len(val)
  if m < max(min_evals, 4):
    return False
  q = max(2, m // 4)
  before, last = min(val[:m - q]), min(val[m - q:])
  return last > before * (1.0 - tol)


def lr_floor_epoch(workdir: str, min_lr: float) -> float:
  """The first epoch whose training row logs the plateau's floor learning
  rate (``inf`` if never reached): before it the schedule is still running,
  and a pause in validation is not convergence."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return math.inf
  with open(path) as f:
    for line in f:
      r = json.loads(line) if line.strip() else {}
      if r.get("split") == "train" and "lr" in r and \
          float(r["lr"]) <= min_lr * (1 + 1e-3):
        return float(r.get("epoch", math.inf))
  return math.inf


def _curve(workdir: str, key: str = "mae") -> List[float]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  by_step = {r["step"]: float(r[key]) for r in rows
             if r["split"] == "val" and key in r}   # one row per step
  return [by_step[s] for s in sorted(by_step)]


def train_until_flat(config, workdir: str, n_train: int, args) -> Dict:
  """Trains in chunks (resuming) until the validation MAE flattens."""
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  per_epoch = max(1, math.ceil(n_train / int(config.batch.max_graphs)))
  # A resumed run starts from the chunk it reached, not with one call per
  # chunk already done; a run stopped on a chunk's end re-checks that chunk.
  done, k = len(_curve(workdir)), args.chunk_epochs
  epochs, t0 = (done - done % k if done % k else max(0, done - k)), time.time()
  while True:
    epochs = min(epochs + args.chunk_epochs, args.max_epochs)
    config.train.update(num_steps=epochs * per_epoch, eval_every=per_epoch,
                        log_every=per_epoch,
                        checkpoint_every=args.chunk_epochs * per_epoch)
    trainer.train(config, workdir)
    val = _curve(workdir)
    flat = epochs >= args.min_epochs and flattened(val, args.flat_tol,
                                                   args.min_epochs)
    if flat and args.lr_floor:
      # Flat only once the whole last quarter ran at the floor learning
      # rate: a plateau at a high rate is a pause, not convergence.
      floor = lr_floor_epoch(workdir, float(config.optim.plateau.min_lr))
      flat = floor <= len(val) - max(2, len(val) // 4)
    if flat or epochs >= args.max_epochs:
      return {"epochs": epochs, "flattened": bool(flat), "val_curve": val,
              "seconds": time.time() - t0}


def train_one(label, name, layers, seed, target, n_train, args) -> Dict:
  """Trains one run to flatness and evaluates it; a finished run's
  ``result.json`` is read back instead, so that a scan resumes and several
  processes (e.g. one per ``--targets`` value, one per core) can share
  ``--out``."""
  run_name = f"{target}_{name}_{layers}_seed{seed}"
  workdir = os.path.join(args.out, run_name)
  done = os.path.join(workdir, "result.json")
  held = args.ledger_obj.get(run_name) if args.ledger_obj else None
  if held is not None:
    return held
  if os.path.exists(done):
    with open(done) as f:
      row = json.load(f)
    if args.ledger_obj is not None:
      args.ledger_obj.put(run_name, row)
    return row
  config = run_config(name, layers, seed, target, args)
  run = train_until_flat(config, workdir, n_train, args)
  which = "best" if run["val_curve"] else "latest"
  test = noisy_nodes.load(workdir, which).evaluate("test")
  row = {"model": label, "layers": layers, "seed": seed, "target": target,
         "test_mae": float(test["mae"]), "test_r2": float(test["r2"]),
         "best_val_mae": float(min(run["val_curve"])) if run["val_curve"]
                         else math.nan,
         **run, "workdir": workdir}
  with open(done + ".tmp", "w") as f:
    json.dump(row, f, indent=2)
  os.replace(done + ".tmp", done)
  if args.ledger_obj is not None:
    args.ledger_obj.put(run_name, row)
  return row


def mean_baseline(args) -> Dict[str, float]:
  """MAE of predicting the training mean (what "learned nothing" scores)."""
  from crystal import tasks  # pylint: disable=g-import-not-at-top
  task = tasks.CrystalPropertyTask(run_config("gatgnn", 5, 0, "raw", args))
  splits = task.load_splits()
  mean = np.mean([s.targets["target"][0] for s in splits["train"]])
  test = np.array([s.targets["target"][0] for s in splits["test"]])
  return {"test_mae": float(np.mean(np.abs(test - mean))),
          "test_std": float(test.std()), "n_train": len(splits["train"]),
          "n_val": len(splits["val"]), "n_test": len(splits["test"])}


def summarise(rows: List[Dict]) -> List[Dict]:
  """Mean ± std over seeds per (target, model, layers)."""
  groups: Dict[tuple, List[Dict]] = {}
  for r in rows:
    groups.setdefault((r["target"], r["model"], r["layers"]), []).append(r)
  out = []
  for (target, model, layers), rs in sorted(groups.items()):
    mae = np.array([r["test_mae"] for r in rs])
    out.append({"target": target, "model": model, "layers": layers,
                "seeds": len(rs), "test_mae_mean": float(mae.mean()),
                "test_mae_std": float(mae.std()),
                "epochs_mean": float(np.mean([r["epochs"] for r in rs])),
                "flattened": sum(r["flattened"] for r in rs)})
  return out


def write_table(path: str, summary: List[Dict], base: Dict, args) -> str:
  rule = ("with the learning rate at the plateau's floor for that whole "
          "quarter" if args.lr_floor else "by the curve alone")
  lines = [
      f"# Depth scan: GATGNN vs DeeperGATGNN on {args.n} EMT Pt clusters "
      f"({args.min_atoms}-{args.max_atoms} atoms)", "",
      f"{base['n_train']}/{base['n_val']}/{base['n_test']} train/val/test; "
      f"reference configs{' :' + args.variant if args.variant else ''}, "
      f"width {args.dim or 64}, batch {args.batch}, plateau patience "
      f"{args.patience or 10} epochs on the "
      f"{'training error' if args.monitor == 'train' else 'validation MAE'}"
      f"; each run trained until its validation MAE "
      f"flattened (last quarter within {args.flat_tol:.0%} of the best "
      f"before it, "
      f"{rule}; at most {args.max_epochs} epochs); test MAE from the "
      f"best-validation checkpoint, mean ± std over seeds. Target: EMT "
      f"energy per atom (eV/atom); the training mean scores test MAE "
      f"{base['test_mae']:.4f}.", "",
      "| targets | model | layers | test MAE (mean ± std) | seeds | "
      "epochs (mean) | flattened |",
      "|---|---|---:|---:|---:|---:|---:|"]
  for s in summary:
    lines.append(
        f"| {s['target']} | {s['model']} | {s['layers']} | "
        f"{s['test_mae_mean']:.4f} ± {s['test_mae_std']:.4f} | "
        f"{s['seeds']} | {s['epochs_mean']:.0f} | "
        f"{s['flattened']}/{s['seeds']} |")
  text = "\n".join(lines) + "\n"
  with open(path, "w") as f:
    f.write(text)
  return text


def plot(out: str, summary: List[Dict], rows: List[Dict], base: Dict):
  from noisy_nodes import plots  # pylint: disable=g-import-not-at-top
  plt = plots._pyplot()  # pylint: disable=protected-access
  targets = sorted({s["target"] for s in summary})
  fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4),
                           squeeze=False)
  for ax, target in zip(axes[0], targets):
    for label, _ in MODELS:
      ss = sorted([s for s in summary if s["target"] == target and
                   s["model"] == label], key=lambda s: s["layers"])
      if ss:
        ax.errorbar([s["layers"] for s in ss],
                    [s["test_mae_mean"] for s in ss],
                    yerr=[s["test_mae_std"] for s in ss], fmt="-o",
                    capsize=3, label=label)
    ax.axhline(base["test_mae"], color="gray", ls="--",
               label="predict training mean")
    ax.set_title(f"{target} targets")
    ax.set_xlabel("graph convolution layers")
    ax.set_ylabel("test MAE (eV/atom)")
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "depth_scan.png"), dpi=110)
  plt.close(fig)
  fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4),
                           squeeze=False)
  for ax, target in zip(axes[0], targets):
    for r in rows:
      if r["target"] == target and r["val_curve"]:
        ax.plot(np.arange(1, len(r["val_curve"]) + 1), r["val_curve"],
                "-" if r["model"] == "DeeperGATGNN" else "--", lw=1,
                label=f"{r['model']} {r['layers']} s{r['seed']}")
    ax.set_yscale("log")
    ax.set_title(f"validation MAE, {target} targets")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "val_curves.png"), dpi=110)
  plt.close(fig)


def _args_json(args) -> Dict:
  return {k: v for k, v in vars(args).items() if k != "ledger_obj"}


# The arguments that define a run: a ledger entry made under other values
# of these is refused (experiments/ledger.py).
RUN_SETTINGS = ("variant", "n", "min_atoms", "max_atoms", "data_seed", "split",
                "batch", "dim", "chunk_epochs", "min_epochs", "max_epochs",
                "flat_tol", "monitor", "patience", "lr_floor")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--depths", type=int, nargs="+", default=[5, 10, 20, 30])
  p.add_argument("--models", nargs="+", default=[m[1] for m in MODELS],
                 choices=[m[1] for m in MODELS])
  p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--targets", nargs="+", default=list(TARGETS),
                 choices=TARGETS)
  p.add_argument("--variant", default="", help="config variant tokens")
  p.add_argument("--n", type=int, default=4000)
  p.add_argument("--min_atoms", type=int, default=5)
  p.add_argument("--max_atoms", type=int, default=40)
  p.add_argument("--data_seed", type=int, default=0)
  p.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1])
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--dim", type=int, default=0, help="0: the reference's 64")
  p.add_argument("--chunk_epochs", type=int, default=25)
  p.add_argument("--min_epochs", type=int, default=50)
  p.add_argument("--max_epochs", type=int, default=500)
  p.add_argument("--flat_tol", type=float, default=0.01)
  p.add_argument("--lr_floor", action=argparse.BooleanOptionalAction,
                 default=True,
                 help="a run is flat only once its learning rate has sat at "
                 "the plateau's floor (optim.plateau.min_lr) for the whole "
                 "last quarter (default): with --no-lr_floor a pause at a "
                 "high rate can pass for convergence")
  p.add_argument("--ledger", default="",
                 help="directory of finished runs' rows kept across "
                 "machines (experiments/ledger.py)")
  p.add_argument("--report_only", action="store_true",
                 help="train nothing: the table and plots of every run "
                 "--ledger holds (a scan still in progress)")
  p.add_argument("--monitor", default="train", choices=("train", "val"),
                 help="what the plateau watches: the reference's epoch "
                 "training error, or the validation MAE (the configs' :demo "
                 "setting; with ~1,000 training graphs the training error "
                 "keeps improving, so a plateau on it hardly fires)")
  p.add_argument("--patience", type=int, default=0,
                 help="plateau patience in epochs (0: the reference's 10, "
                 "made for 500 epochs; within a budget of ~100 epochs at lr "
                 "0.005 it fires at most a few times and the validation MAE "
                 "keeps jumping by several x from epoch to epoch)")
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--prepare_only", action="store_true",
                 help="generate and cache the dataset, print the mean "
                 "predictor's MAE, train nothing (run once before starting "
                 "several processes on one --out)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  os.makedirs(args.out, exist_ok=True)
  args.ledger_obj = None
  if args.ledger:
    from experiments import ledger  # pylint: disable=g-import-not-at-top
    args.ledger_obj = ledger.Ledger(
        args.ledger, {k: getattr(args, k) for k in RUN_SETTINGS})
  # The baseline needs the generated dataset (minutes to make); a ledger
  # keeps it so that --report_only on a fresh machine needs neither.
  base = args.ledger_obj and args.ledger_obj.get_fact("mean_baseline")
  if not base or not args.report_only:
    base = mean_baseline(args)   # also generates and caches the dataset
    if args.ledger_obj is not None:
      args.ledger_obj.put_fact("mean_baseline", base)
  if args.prepare_only:
    print(json.dumps(base))
    return
  if args.report_only:
    if args.ledger_obj is None:
      raise SystemExit("--report_only reads the runs of --ledger")
    rows = [args.ledger_obj.get(n) for n in args.ledger_obj.names()]
    report(args, rows, base)
    return
  rows = []
  labels = dict((m[1], m[0]) for m in MODELS)
  # Seed-major: a scan stopped early has every (target, model, depth) cell at
  # the seeds it reached, rather than all seeds of a few cells.
  for seed in args.seeds:
    for target in args.targets:
      for layers in args.depths:
        for name in args.models:
          r = train_one(labels[name], name, layers, seed, target,
                        base["n_train"], args)
          rows.append(r)
          print(f"{target:>10s} {r['model']:>12s} {layers:3d} layers seed "
                f"{seed}: test MAE {r['test_mae']:.4f} after {r['epochs']} "
                f"epochs ({'flat' if r['flattened'] else 'NOT flat'}, "
                f"{r['seconds']:.0f} s)", flush=True)
          with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"baseline": base, "runs": rows,
                       "args": _args_json(args)}, f, indent=2)
  report(args, rows, base)


def report(args, rows: List[Dict], base: Dict) -> None:
  """Writes the table, plots and results.json of ``rows`` under --out."""
  summary = summarise(rows)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"baseline": base, "runs": rows, "summary": summary,
               "args": _args_json(args)}, f, indent=2)
  print(write_table(os.path.join(args.out, "depth_scan.md"), summary, base,
                    args))
  plot(args.out, summary, rows, base)
  print(f"wrote {args.out}/depth_scan.md, depth_scan.png, val_curves.png, "
        "results.json")


if __name__ == "__main__":
  main()
