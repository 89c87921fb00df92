r"""CrysGNN's claim where it can hold: vanilla vs distilled vs fine-tuned
students on a bulk-crystal property of the pre-training corpus's space.

  python -m experiments.crysgnn_distill --out=runs/crysgnn_exp \
      [--corpus_n=20000] [--pretrain_alloys=5000] [--n_labelled=4000] \
      [--sizes=200,800,3200] [--seeds=0,1,2] [--epochs=1000] [--teacher=DIR]
  python -m experiments.crysgnn_distill --out=runs/crysgnn_tiny --tiny  # check

1. Pre-training corpus: ``--corpus_n`` generated crystals
   (``crystal.crysgnn.corpus``: pyxtal, prototypes, elements, known) plus
   ``--pretrain_alloys`` unlabelled bulk alloy crystals (``crystal.crysgnn.
   alloys``, indices disjoint from the labelled ones). Teacher:
   configs/crysgnn_pretrain.py with the reference's settings (original CGCNN 5
   × 64, Adam 0.03, batches of 128, 20 epochs of this corpus), or
   ``--teacher``.
2. Labelled data: ``--n_labelled`` bulk alloy crystals with their EMT
   formation energy (eV/atom), split 0.8 / 0.1 / 0.1 once; every training
   size is a nested seeded subset of the training split; validation and test
   fixed. A composition-only least-squares baseline is reported (the
   property is not a function of the composition).
3. Students, each × size × seed × mode:
     cgcnn      the reference's student (original CGCNN 3 × 64, CGCNN inputs,
                the teacher's graph);
     deeper     DeeperGATGNN 10 layers on its own reference graph (the
                teacher's graph rides along per atom);
   modes: vanilla (δ = 1, random init; trained as a plain property task,
   without running the teacher), distilled (δ = 0.5, eq. 3) and
   fine-tuned (δ = 1, the teacher's encoder as init; only for a student with
   the teacher's architecture, so the cgcnn student's fine-tuned row uses
   the teacher's 5-layer encoder without input bias plus the student head;
   none for DeeperGATGNN).
   Every run: configs/crysgnn_distill.py's reference optimiser (Adam 0.003,
   lr × 0.1 after ``--decay_epoch`` = 100, batches of 128), trained in
   chunks of ``--chunk_epochs`` (resuming) until its validation MAE is flat
   over the last quarter of the run (its best value there within
   ``--flat_tol`` of the best before it), after at least ``--min_epochs``
   and at most ``--epochs`` = 1000 epochs (the reference trains all 1000;
   stopping once flat is our saving, the schedule is the same); selection
   on validation MAE; test MAE of the best checkpoint; runs not flat at
   the cap are marked.
Writes OUT/results.json (every run), OUT/results.md (mean ± std table) and
OUT/results.png. Every finished run leaves ``result.json`` in its directory
and is not trained again: the sweep resumes, and after one
``--prepare_only`` call (data + teacher) several processes can share
``--out``: each claims the runs it trains (``claim.pid`` in the run's
directory) and skips those another live process holds, so the same command
started twice trains disjoint runs; the last to finish, or a rerun, writes
the table. ``--ledger=DIR`` also keeps every finished run's row in DIR
(experiments/ledger.py, with the settings and a digest of the teacher it
was trained under): a sweep longer than one sitting commits DIR and the
teacher, and a rerun on a fresh machine trains only the runs DIR lacks.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from typing import Dict, List

import numpy as np

import noisy_nodes  # noqa: F401
from noisy_nodes.engine import trainer
from crystal import generators
from crystal.crysgnn import alloys
from crystal.crysgnn.tasks import CrysGNNDistillTask
from crystal.tasks import CrystalPropertyTask
from experiments import ledger as ledger_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)  # configs/
MODES = ("vanilla", "distilled", "finetuned")
STUDENTS = ("cgcnn", "deeper")


class _Sized:
  """Keeps the first ``data.train_size`` of a seeded permutation of the
  training split (nested across sizes); validation and test unchanged."""

  def load_splits(self):
    splits = super().load_splits()
    d = self.config.data
    m = int(d.train_size)
    train = splits["train"]
    if m > len(train):
      raise ValueError(f"train_size {m} > {len(train)} training structures")
    perm = np.random.default_rng(int(d.subset_seed)).permutation(len(train))
    splits["train"] = [train[i] for i in np.sort(perm[:m])]
    return splits


class SizedDistillTask(_Sized, CrysGNNDistillTask):
  """Distilled and fine-tuned students on a training subset."""


class SizedPropertyTask(_Sized, CrystalPropertyTask):
  """Vanilla students: δ = 1 gives the KD term no weight, so the teacher is
  not run at all (same data, splits, student and optimiser)."""


def _config(name):
  return importlib.import_module(f"configs.{name}")


def student_config(student: str, mode: str, size: int, seed: int,
                   teacher: str, data: str, args):
  distill_cfg = _config("crysgnn_distill")
  cfg = distill_cfg.get_config("finetune" if mode == "finetuned" else "")
  task = "SizedPropertyTask" if mode == "vanilla" else "SizedDistillTask"
  # The importable module name (not "__main__" under ``python -m``), so a
  # saved run loads in any process (noisy_nodes.load).
  module = __spec__.name if __spec__ is not None else __name__
  cfg.task = f"{module}:{task}"
  cfg.teacher.workdir = teacher
  cfg.data.update(path=data, cache_dir=os.path.join(args.out, "cache"),
                  split=(0.8, 0.1, 0.1), seed=0)
  cfg.data.train_size = size
  cfg.data.subset_seed = seed
  if mode == "finetuned":
    # The teacher's encoder (its config.json) plus the student's readout.
    with open(os.path.join(teacher, "config.json")) as f:
      cfg.model = dict(json.load(f)["model"], head=True)
    cfg.batch.update(max_nodes=0, max_edges=0, max_graphs=128)
  if student == "deeper":
    lib = distill_cfg.get_config("library")
    cfg.model, cfg.data.graph = lib.model, lib.data.graph
    cfg.model.num_layers = args.deeper_layers
  cfg.batch.max_graphs = min(128, size)
  # The reference's schedule (lr x 0.1 at --decay_epoch) fixed by steps, so
  # training in chunks (run_one) does not change it.
  distill_cfg.set_epochs(cfg, size, args.epochs, args.decay_epoch)
  per_epoch = int(cfg.train.num_steps) // args.epochs
  cfg.train.update(seed=seed, log_every=per_epoch * args.eval_epochs,
                   eval_every=per_epoch * args.eval_epochs,
                   checkpoint_every=per_epoch * args.chunk_epochs)
  cfg.distill.delta = 0.5 if mode == "distilled" else 1.0
  cfg.init_from_teacher = mode == "finetuned"
  return cfg


def ensure_teacher(args, corpus_dir: str) -> str:
  if args.teacher:
    return args.teacher
  workdir = os.path.join(args.out, "teacher")
  pre = _config("crysgnn_pretrain")
  cfg = pre.get_config("tiny" if args.tiny else "")
  cfg.data.update(path=corpus_dir, cache_dir=os.path.join(args.out, "corpus"))
  cfg.data.corpus.update(extra=args.corpus_n, workers=args.workers)
  if not args.tiny:
    total = args.corpus_n + args.pretrain_alloys
    cfg.train.num_steps = pre.epochs_to_steps(
        args.teacher_epochs, int(total * (1 - cfg.data.val_fraction)))
    cfg.train.update(eval_every=max(1, cfg.train.num_steps // 20),
                     checkpoint_every=max(1, cfg.train.num_steps // 20))
  trainer.train(cfg, workdir)
  return workdir


def converged(workdir: str, tol: float) -> bool:
  """Validation MAE flat over the last quarter of the run."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    val = [r for r in map(json.loads, f) if r["split"] == "val"]
  if len(val) < 4:
    return False
  steps = np.array([r["step"] for r in val])
  mae = np.array([r["mae"] for r in val])
  last = steps >= steps[-1] * 0.75
  before = mae[~last].min() if (~last).any() else np.inf
  return bool(mae[last].min() >= before * (1 - tol))


def write_outputs(args, rows: List[Dict], baseline: Dict) -> str:
  sizes = sorted({r["size"] for r in rows})
  seeds = sorted({r["seed"] for r in rows})
  lines = [f"Test MAE (meV/atom) of EMT formation energies of bulk alloy "
           f"crystals, mean ± std over seeds {seeds}; every run trained "
           f"until its validation MAE was flat over its last quarter "
           f"(within {args.flat_tol:.0%}), after at least {args.min_epochs} "
           f"and at most {args.epochs} epochs (* = some run not flat at "
           f"the cap). Mean predictor "
           f"{1e3 * baseline['mean']:.1f}, composition least squares "
           f"{1e3 * baseline['composition']:.1f}.", "",
           "| student | train size | " + " | ".join(MODES) + " |",
           "|---|---:|" + "---:|" * len(MODES)]
  curves = {}
  for st in STUDENTS:
    for m in sizes:
      cells = []
      for mode in MODES:
        sel = [r for r in rows if (r["student"], r["size"], r["mode"]) ==
               (st, m, mode)]
        if not sel:
          cells.append("—")
          continue
        v = 1e3 * np.array([r["test_mae"] for r in sel])
        mark = "" if all(r["converged"] for r in sel) else "*"
        cells.append(f"{v.mean():.1f} ± {v.std():.1f}{mark}")
        curves.setdefault((st, mode), []).append((m, v.mean(), v.std()))
      if any(c != "—" for c in cells):
        lines.append(f"| {st} | {m} | " + " | ".join(cells) + " |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(STUDENTS), figsize=(9, 3.5), sharey=True)
  for ax, st in zip(np.atleast_1d(axes), STUDENTS):
    for mode in MODES:
      pts = curves.get((st, mode))
      if pts:
        x, y, e = map(np.array, zip(*pts))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=mode)
    ax.axhline(1e3 * baseline["composition"], color="grey", ls="--",
               label="composition only")
    ax.set_xscale("log")
    ax.set_xlabel("training crystals")
    ax.set_title(st)
  np.atleast_1d(axes)[0].set_ylabel("test MAE (meV/atom)")
  np.atleast_1d(axes)[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "results.png"), dpi=120)
  plt.close(fig)
  return table


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="runs/crysgnn_exp")
  p.add_argument("--teacher", default="")
  p.add_argument("--corpus_n", type=int, default=20000)
  p.add_argument("--pretrain_alloys", type=int, default=5000)
  p.add_argument("--teacher_epochs", type=int, default=20)
  p.add_argument("--n_labelled", type=int, default=4000)
  p.add_argument("--sizes", default="200,800,3200")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--epochs", type=int, default=1000,
                 help="at most this many epochs per student (the "
                 "reference's 1000)")
  p.add_argument("--decay_epoch", type=int, default=100,
                 help="lr x 0.1 after this epoch (the reference's 100)")
  p.add_argument("--chunk_epochs", type=int, default=50,
                 help="flatness is checked every this many epochs")
  p.add_argument("--min_epochs", type=int, default=200,
                 help="no student stops before this epoch")
  p.add_argument("--eval_epochs", type=int, default=5,
                 help="validation every this many epochs")
  p.add_argument("--deeper_layers", type=int, default=10)
  p.add_argument("--students", default=",".join(STUDENTS))
  p.add_argument("--modes", default=",".join(MODES))
  p.add_argument("--flat_tol", type=float, default=0.02)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--ledger", default="",
                 help="directory of finished runs' rows, kept across "
                 "machines (experiments/ledger.py): runs it holds are not "
                 "trained again, new ones are added")
  p.add_argument("--prepare_only", action="store_true",
                 help="make the data and pre-train the teacher, print the "
                 "baselines, train no student (run once before several "
                 "processes share --out)")
  p.add_argument("--tiny", action="store_true",
                 help="end-to-end check in a few minutes (meaningless "
                      "numbers): tiny corpus, teacher and students")
  args = p.parse_args(argv)
  if args.tiny:
    args.corpus_n, args.pretrain_alloys, args.n_labelled = 16, 16, 60
    args.sizes, args.seeds, args.epochs = "24", "0", 4
    args.decay_epoch = args.chunk_epochs = args.min_epochs = 2
    args.eval_epochs = 1
    args.deeper_layers = 2
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  # Labelled crystals 0..n-1; pre-training alloys after them (disjoint).
  data = os.path.join(args.out, "labelled")
  if not os.path.exists(os.path.join(data, "targets.csv")):
    generators.write_dataset(data, alloys.alloy_crystals(args.n_labelled))
  corpus_dir = os.path.join(args.out, "pretrain_alloys")
  if not args.teacher and not os.path.exists(
      os.path.join(corpus_dir, "targets.csv")):
    # One structure file each (the corpus reads files; targets.csv is
    # skipped, so the teacher never sees a label).
    generators.write_dataset(corpus_dir, alloys.alloy_crystals(
        args.pretrain_alloys, start=args.n_labelled))
  teacher = ensure_teacher(args, corpus_dir)
  sizes = list(map(int, args.sizes.split(",")))
  baseline = _baselines(student_config("cgcnn", "vanilla", sizes[0], 0,
                                       teacher, data, args))
  if args.prepare_only:
    print(json.dumps({"teacher": teacher, "baseline": baseline,
                      "teacher_digest": teacher_digest(teacher)}))
    return
  ledger = ledger_lib.Ledger(args.ledger, {
      k: getattr(args, k) for k in (
          "corpus_n", "pretrain_alloys", "teacher_epochs", "n_labelled",
          "epochs", "decay_epoch", "chunk_epochs", "min_epochs",
          "eval_epochs", "deeper_layers", "flat_tol")} | {
              "teacher_digest": teacher_digest(teacher)}) if args.ledger \
      else None
  rows, path, elsewhere = [], os.path.join(args.out, "results.json"), []
  for seed in map(int, args.seeds.split(",")):
    for size in sizes:
      for student in args.students.split(","):
        for mode in args.modes.split(","):
          if mode == "finetuned" and student != "cgcnn":
            continue          # no teacher-shaped DeeperGATGNN encoder.
          name = f"{student}_{mode}_n{size}_s{seed}"
          workdir = os.path.join(args.out, name)
          held = ledger.get(name) if ledger is not None else None
          if held is not None:
            rows.append(held)
            continue
          if not os.path.exists(os.path.join(workdir, "result.json")) and \
              not claim(workdir):
            elsewhere.append(workdir)   # another process is training it.
            continue
          rows.append(run_one(student, mode, size, seed, teacher, data,
                              workdir, args))
          if ledger is not None:
            ledger.put(name, rows[-1])
          logging.info("%s %s n=%d seed=%d: test MAE %.4f", student, mode,
                       size, seed, rows[-1]["test_mae"])
  # Runs that other processes finished meanwhile are read back, so the last
  # process to finish writes the whole table.
  for workdir in list(elsewhere):
    done = os.path.join(workdir, "result.json")
    row = ledger.get(os.path.basename(workdir)) if ledger else None
    if row is None and os.path.exists(done):
      with open(done) as f:
        row = json.load(f)
      if ledger is not None:
        ledger.put(os.path.basename(workdir), row)
    if row is not None:
      rows.append(row)
      elsewhere.remove(workdir)
  if elsewhere:
    # A partial table must not overwrite a full one: the last process to
    # finish (or a rerun of the same command) writes it.
    print(f"{len(elsewhere)} runs are being trained by other processes "
          f"({', '.join(map(os.path.basename, elsewhere))}); rerun this "
          f"command once they finish to write the table.")
    return
  with open(path, "w") as f:
    json.dump({"rows": rows, "baseline": baseline, "args": vars(args),
               "teacher": teacher, "seconds": time.time() - t0}, f, indent=1)
  print(write_outputs(args, rows, baseline))
  print(f"done in {time.time() - t0:.0f} s")


def teacher_digest(teacher: str) -> str:
  """A digest of the teacher's config and best checkpoint: ledger rows of
  students distilled from another teacher must not mix into one table."""
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  paths = [os.path.join(teacher, "config.json")]
  for root, _, files in os.walk(os.path.join(teacher, "best")):
    paths += [os.path.join(root, f) for f in files]
  for path in sorted(paths):
    h.update(os.path.relpath(path, teacher).encode())
    with open(path, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def claim(workdir: str) -> bool:
  """Claims an unfinished run for this process (``workdir/claim.pid``):
  False while another live process holds it, so processes sharing ``--out``
  split the runs between them. A dead holder's claim is taken over (its run
  resumes from its checkpoint)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "claim.pid")
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
  except FileExistsError:
    try:
      with open(path) as f:
        pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
      pid = 0
    if pid == os.getpid():
      return True
    if pid > 0:
      try:
        os.kill(pid, 0)
        return False            # alive: someone else's run.
      except ProcessLookupError:
        pass
      except PermissionError:
        return False
    with open(path, "w") as f:  # stale: take it over.
      f.write(str(os.getpid()))
    return True
  with os.fdopen(fd, "w") as f:
    f.write(str(os.getpid()))
  return True


def run_one(student, mode, size, seed, teacher, data, workdir, args) -> Dict:
  """Trains one student run (resuming its checkpoint) and scores its best
  checkpoint on the test split; a finished run's ``result.json`` is read
  back instead, so the sweep resumes and several processes (e.g. one per
  ``--seeds`` value) can share ``--out`` once ``--prepare_only`` has made
  the data and the teacher."""
  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  cfg = student_config(student, mode, size, seed, teacher, data, args)
  per_epoch = int(cfg.train.num_steps) // args.epochs
  epochs, t0 = 0, time.time()
  while True:   # chunks (resuming) until flat, at most --epochs.
    epochs = min(epochs + args.chunk_epochs, args.epochs)
    cfg.train.num_steps = epochs * per_epoch
    trainer.train(cfg, workdir)
    flat = epochs >= args.min_epochs and converged(workdir, args.flat_tol)
    if flat or epochs >= args.epochs:
      break
  test = noisy_nodes.load(workdir, "best").evaluate("test")
  row = {"student": student, "mode": mode, "size": size, "seed": seed,
         "test_mae": test["mae"], "best_step": test["step"],
         "steps": int(cfg.train.num_steps), "epochs": epochs,
         "converged": bool(flat), "seconds": time.time() - t0}
  with open(done + ".tmp", "w") as f:
    json.dump(row, f, indent=1)
  os.replace(done + ".tmp", done)
  return row


def _baselines(cfg) -> Dict[str, float]:
  """Mean predictor and composition least squares on the full training
  split, scored on the test split."""
  splits = CrystalPropertyTask(cfg).load_splits()
  y = np.array([float(np.ravel(s.targets["target"])[0])
                for s in splits["train"]])
  t = np.array([float(np.ravel(s.targets["target"])[0])
                for s in splits["test"]])
  return {"mean": float(np.mean(np.abs(t - y.mean()))),
          "composition": alloys.composition_baseline(splits["train"],
                                                     splits["test"])}


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  main()
