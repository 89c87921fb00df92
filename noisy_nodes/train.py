r"""Train any model of the library: ``python -m noisy_nodes.train``.

  python -m noisy_nodes.train --config=configs/oc20.py:demo --workdir=runs/oc20
  python -m noisy_nodes.train --config=configs/deeper_gatgnn.py:demo \
      --workdir=runs/dg --config.data.path=my_folder --config.data.cv_folds=5

Resumes from the latest checkpoint in ``--workdir`` if there is one. Once a
run (each CV fold) finishes normally, the task's ``write_outputs`` hook leaves
its end-of-run files in the workdir (crystal tasks: per-sample predictions
csv, parity plot, metrics; off with ``train.write_outputs=False``). Multi-host
runs pass ``--coordinator_address/--num_processes/--process_id`` (or the
NN_* environment variables; see launch/). Exit status: 0 done, 2 bad input
or a checkpoint this run cannot resume (other device count),
3 non-finite loss, 143 preempted (checkpoint written: rerun to resume).
"""
import json
import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

import noisy_nodes  # noqa: F401  (jraph compatibility shim)
from noisy_nodes.engine import logger
from noisy_nodes.engine import parallel
from noisy_nodes.engine import runtime
from noisy_nodes.engine import trainer
from noisy_nodes.structures import DataError
from noisy_nodes.tasks import base as task_base

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/oc20.py:demo.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DIST = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                          "Initialise jax.distributed (auto: SLURM/TPU pod).")
# True when run as ``python -m noisy_nodes.train`` (not imported): only then
# may main() restart the process (engine.runtime).
_AS_SCRIPT = False


def write_outputs(config, workdir):
  """``Task.write_outputs(workdir)`` after a run finished normally.

  Called on every process: the hook restores a checkpoint, which is
  collective across hosts; the task writes on process 0 only. Errors are
  raised, with a log line saying the run itself is complete.
  """
  if not config.train.get("write_outputs", True):
    return
  cls = task_base.resolve_task(config.task)
  if cls.write_outputs is task_base.Task.write_outputs:
    return  # no outputs: do not build the task (teachers, corpora...)
  try:
    cls(config).write_outputs(workdir)
  except Exception:
    logging.error("training finished and its checkpoints are in %s, but "
                  "writing the task's outputs failed", workdir)
    raise


def run_cross_validation(config, workdir):
  """k-fold CV: one run per fold in workdir/fold_<k>, then a summary table."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  k = int(config.data.cv_folds)
  rows = []
  for fold in range(k):
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      cfg.data.fold = fold
    fold_dir = os.path.join(workdir, f"fold_{fold}")
    trainer.train(cfg, fold_dir)
    write_outputs(cfg, fold_dir)
    rows.append(trainer.evaluate(fold_dir, split="test", which="best"))
  keys = [k_ for k_ in rows[0] if isinstance(rows[0][k_], float)
          and k_ != "eval_seconds"]
  lines = ["fold  " + "  ".join(f"{k_:>12s}" for k_ in keys)]
  for i, r in enumerate(rows):
    lines.append(f"{i:4d}  " + "  ".join(f"{r[k_]:12.5g}" for k_ in keys))
  summary = {}
  for k_ in keys:
    vals = np.array([r[k_] for r in rows])
    summary[k_] = {"mean": float(vals.mean()), "std": float(vals.std())}
  lines.append("mean  " + "  ".join(f"{summary[k_]['mean']:12.5g}"
                                    for k_ in keys))
  lines.append(" std  " + "  ".join(f"{summary[k_]['std']:12.5g}"
                                    for k_ in keys))
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(workdir, "cv_results.json"), "w") as f:
    json.dump({"folds": rows, "summary": summary}, f, indent=2)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  logger.quiet_library_logs()
  config = _CONFIG.value
  if _AS_SCRIPT:  # only a process of our own may be restarted
    runtime.reexec_with_hugepages(bool(config.train.get("hugepages", False)))
  parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value,
                                  _DIST.value)
  try:
    if config.data.get("cv_folds", 0) and int(config.data.cv_folds) > 1:
      run_cross_validation(config, _WORKDIR.value)
    else:
      metrics = trainer.train(config, _WORKDIR.value)
      print(json.dumps({"final_val": metrics}, default=float))
      write_outputs(config, _WORKDIR.value)
  except DataError as e:
    logging.error("bad input: %s", e)
    print(f"error: bad input: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.ResumeError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except trainer.NonFiniteError as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  _AS_SCRIPT = True
  app.run(main)
