r"""Vanilla vs CrysGNN-distilled vs fine-tuned students (paper §3, Table 1/3).

  python -m experiments.crysgnn_distill --out=runs/crysgnn_exp \
      [--teacher=runs/crysgnn_teacher] [--sizes=50,100,200] [--steps=300]

1. Teacher: ``--teacher`` (a crysgnn_pretrain workdir) or, when absent, a
   pre-training run with configs/crysgnn_pretrain.py:demo in OUT/teacher.
2. Labelled data generated here (``crystal.generators``, real EMT physics):
   ``--kind=surfaces`` adsorption energies of H/C/N/O on random binary fcc(111)
   alloy slabs (default) or ``pt_clusters`` energies per atom.
3. For every training-set size (nested seeded subsets of one training split;
   validation and test splits fixed) three students with the teacher's encoder
   architecture and inputs (CGCNN 5 x 64, CGCNN-92 features), so that
   fine-tuning is possible:
     vanilla    the "crystal" task (L_prop only, random init),
     distilled  crysgnn_distill with δ = 0.5 (eq. 3), random init,
     finetuned  crysgnn_distill with δ = 1 and ``init_from_teacher``.
   Selection on validation MAE; the table reports test MAE of the best
   checkpoint.
Writes OUT/results.json, OUT/results.md (table) and OUT/results.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Dict, List

import numpy as np

import noisy_nodes  # noqa: F401
from noisy_nodes.engine import trainer
from crystal.crysgnn.tasks import CrysGNNDistillTask
from crystal.tasks import CrystalPropertyTask

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("vanilla", "distilled", "finetuned")


class _TrainSubset:
  """Keeps the first ``data.train_size`` of a seeded permutation of the
  training split (nested across sizes); validation and test unchanged."""

  def load_splits(self):
    splits = super().load_splits()  # pylint: disable=no-member
    d = self.config.data  # pylint: disable=no-member
    m = int(d.train_size)
    train = splits["train"]
    if m > len(train):
      raise ValueError(f"train_size {m} > {len(train)} training structures")
    perm = np.random.default_rng(int(d.seed) + 1).permutation(len(train))
    splits["train"] = [train[i] for i in np.sort(perm[:m])]
    return splits


class SizedPropertyTask(_TrainSubset, CrystalPropertyTask):
  pass


class SizedDistillTask(_TrainSubset, CrysGNNDistillTask):
  pass


def _configs():
  import importlib.util  # pylint: disable=g-import-not-at-top
  out = {}
  for name in ("crysgnn_pretrain", "crysgnn_distill"):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(_ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out[name] = module
  return out


def student_config(variant: str, teacher: str, args, size: int):
  cfg = _configs()["crysgnn_distill"].get_config("finetune")
  cfg.teacher.workdir = teacher
  cfg.data.cache_dir = args.cache_dir or os.path.join(args.out, "data")
  cfg.data.generate.update(kind=args.kind, n=args.n_data, seed=0,
                           workers=args.workers)
  cfg.data.split = (0.6, 0.15, 0.25)
  cfg.data.train_size = size
  cfg.train.update(num_steps=args.steps, eval_every=max(args.steps // 10, 1),
                   log_every=max(args.steps // 10, 1),
                   checkpoint_every=args.steps)
  cfg.batch.update(max_nodes=640, max_edges=8448, max_graphs=16)
  module = sys.modules[__name__].__name__
  if variant == "vanilla":
    cfg.task = f"{module}:SizedPropertyTask"
  else:
    cfg.task = f"{module}:SizedDistillTask"
    cfg.init_from_teacher = variant == "finetuned"
    cfg.distill.delta = 1.0 if variant == "finetuned" else args.delta
  return cfg


def ensure_teacher(args) -> str:
  if args.teacher:
    return args.teacher
  workdir = os.path.join(args.out, "teacher")
  cfg = _configs()["crysgnn_pretrain"].get_config("demo")
  cfg.data.cache_dir = os.path.join(args.out, "corpus")
  cfg.train.num_steps = args.teacher_steps
  trainer.train(cfg, workdir)
  return workdir


def write_outputs(args, rows: List[Dict], teacher: str) -> None:
  sizes = sorted({r["size"] for r in rows})
  mae = {(r["variant"], r["size"], r["seed"]): r["test_mae"] for r in rows}
  seeds = sorted({r["seed"] for r in rows})

  def cell(v, m):
    vals = [mae[(v, m, s)] for s in seeds if (v, m, s) in mae]
    if not vals:
      return "—", np.nan
    mean = float(np.mean(vals))
    text = f"{mean:.4f}" + (f" ± {np.std(vals):.4f}" if len(vals) > 1 else "")
    return text, mean

  lines = [f"Test MAE ({args.kind}, eV) of CGCNN 5x64 students; teacher "
           f"{teacher}; {args.steps} steps per run; seeds {seeds}.", "",
           "| train size | " + " | ".join(VARIANTS) + " |",
           "|---:|" + "---:|" * len(VARIANTS)]
  curves = {v: [] for v in VARIANTS}
  for m in sizes:
    texts = []
    for v in VARIANTS:
      t, mean = cell(v, m)
      texts.append(t)
      curves[v].append(mean)
    lines.append(f"| {m} | " + " | ".join(texts) + " |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table)
  print(table)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for v in VARIANTS:
    ax.plot(sizes, curves[v], "o-", label=v)
  ax.set_xscale("log")
  ax.set_xlabel("training structures")
  ax.set_ylabel("test MAE (eV)")
  ax.set_title(f"CrysGNN distillation: {args.kind}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "results.png"), dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/crysgnn_exp")
  p.add_argument("--teacher", default="")
  p.add_argument("--teacher_steps", type=int, default=400)
  p.add_argument("--cache_dir", default="",
                 help="generated labelled data cache (default OUT/data)")
  p.add_argument("--kind", default="surfaces",
                 choices=("surfaces", "pt_clusters"))
  p.add_argument("--n_data", type=int, default=400)
  p.add_argument("--sizes", default="30,60,120,240")
  p.add_argument("--seeds", default="0")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--delta", type=float, default=0.5)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--variants", default=",".join(VARIANTS))
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  teacher = ensure_teacher(args)
  rows = []
  path = os.path.join(args.out, "results.json")
  for seed in map(int, args.seeds.split(",")):
    for size in map(int, args.sizes.split(",")):
      for variant in args.variants.split(","):
        cfg = student_config(variant, teacher, args, size)
        cfg.train.seed = seed
        workdir = os.path.join(args.out, f"{variant}_n{size}_s{seed}")
        val = trainer.train(cfg, workdir)
        test = trainer.evaluate(workdir, split="test", which="best")
        rows.append({"variant": variant, "size": size, "seed": seed,
                     "val_mae": val.get("mae"), "test_mae": test["mae"],
                     "test_r2": test["r2"], "best_step": test["step"]})
        logging.info("%s n=%d seed=%d: test MAE %.4f", variant, size, seed,
                     test["mae"])
        with open(path, "w") as f:
          json.dump({"rows": rows, "args": vars(args),
                     "seconds": time.time() - t0}, f, indent=1)
  write_outputs(args, rows, teacher)
  print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main()
