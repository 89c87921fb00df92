r"""Train any model of the library: ``python -m noisy_nodes.train``.

  python -m noisy_nodes.train --config=configs/oc20.py:demo --workdir=runs/oc20
  python -m noisy_nodes.train --config=configs/deeper_gatgnn.py:demo \
      --workdir=runs/dg --config.data.path=my_folder --config.data.cv_folds=5
  (or --config.train.repeats=N: N training seeds, mean ± std of the test
  metrics, as the reference's Repeat mode)

``--config`` names a file of ``configs/`` (an importable package: its files
import ``configs.crystal_common`` and ``configs.parse_variant``; run from
the repository root, or anywhere once the package is installed:
``configs/NAME.py`` then resolves to the installed file), with the variant
after ``:`` (comma-separated tokens, one syntax for every config).

Resumes from the latest checkpoint in ``--workdir`` if there is one. Once a
run (each CV fold) finishes normally, the task's ``write_outputs`` hook leaves
its end-of-run files in the workdir (crystal tasks: per-sample predictions
csv, parity plot, metrics; off with ``train.write_outputs=False``). Multi-host
runs pass ``--coordinator_address/--num_processes/--process_id`` (or the
NN_* environment variables; see launch/). On a CPU-only host,
``--cpu_devices=N`` (e.g. the number of cores) splits each batch over N
data-parallel CPU devices: the same training, faster. Exit status: 0 done,
2 a user fault, in one line naming the file or flag (bad input, config value,
a checkpoint this run cannot resume, disk full: docs/faults.md), 3 non-finite
loss, 143 preempted / 130 Ctrl-C (checkpoint written: rerun to resume).
"""
import json
import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

import noisy_nodes  # noqa: F401  (jraph compatibility shim)
from noisy_nodes.engine import logger
from noisy_nodes.engine import parallel
from noisy_nodes.engine import runtime
from noisy_nodes.engine import trainer
from noisy_nodes import errors
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
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 1,
    "Split this process's CPU into N data-parallel devices (one thread "
    "each; faster than one multi-threaded device for message passing). "
    "The config's batch is split over them: batch.max_graphs (and "
    "max_nodes / max_edges when set) must divide by N, and each device gets "
    "1/N of it, so training is the same as on one device. CPU-only hosts.")
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


def _kept_checkpoint(workdir: str) -> str:
  """'best' when the run kept one (it had a validation split), else
  'latest' (the reference's CV keeps the last epoch's model)."""
  from noisy_nodes.engine import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(workdir)
  try:
    return "best" if ckpt.latest_step("best") is not None else "latest"
  finally:
    ckpt.close()


def run_cross_validation(config, workdir):
  """k-fold CV: one run per fold in workdir/fold_<k>, then a summary table
  (test split of each fold) printed and saved as cv_results.json."""
  def fold(cfg, k):
    cfg.data.fold = k
  return run_trials(config, workdir, int(config.data.cv_folds), "fold", fold,
                    "cv_results.json", "folds")


def run_repeats(config, workdir):
  """The reference's Repeat mode: ``train.repeats`` runs in
  workdir/repeat_<k> with training seeds ``train.seed + k`` (the same data
  split: the spread is the training's), then the mean ± std table of their
  test metrics, printed and saved as repeat_results.json."""
  seed = int(config.train.seed)

  def reseed(cfg, k):
    cfg.train.seed = seed + k
  return run_trials(config, workdir, int(config.train.repeats), "repeat",
                    reseed, "repeat_results.json", "repeats")


def run_trials(config, workdir, count, label, configure, out_name, key):
  """``count`` runs of ``config`` changed by ``configure(cfg, k)``, each in
  workdir/<label>_<k> with its outputs, then mean ± std of the test
  metrics of each run's kept checkpoint (best, or latest without a
  validation split)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = []
  for k in range(count):
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
      configure(cfg, k)
    run_dir = os.path.join(workdir, f"{label}_{k}")
    trainer.train(cfg, run_dir)
    write_outputs(cfg, run_dir)
    rows.append(noisy_nodes.load(run_dir, _kept_checkpoint(run_dir))
                .evaluate("test"))
  keys = [k_ for k_ in rows[0] if isinstance(rows[0][k_], float)
          and k_ != "eval_seconds"]
  width = max(4, len(label))
  lines = [f"{label:>{width}s}  " + "  ".join(f"{k_:>12s}" for k_ in keys)]
  for i, r in enumerate(rows):
    lines.append(f"{i:{width}d}  " + "  ".join(f"{r[k_]:12.5g}"
                                               for k_ in keys))
  summary = {}
  for k_ in keys:
    vals = np.array([r[k_] for r in rows])
    summary[k_] = {"mean": float(vals.mean()), "std": float(vals.std())}
  for name in ("mean", "std"):
    lines.append(f"{name:>{width}s}  " + "  ".join(
        f"{summary[k_][name]:12.5g}" for k_ in keys))
  table = "\n".join(lines)
  print(table)
  with open(os.path.join(workdir, out_name), "w") as f:
    json.dump({key: rows, "summary": summary}, f, indent=2)
  return summary


def baseline_table(metrics) -> str:
  """Each metric that has a ``baseline_*`` twin, model next to baseline.

  IS2RE: energy MAE / EwT against the training-mean predictor; IS2RS also
  ADwT / positions MAE against the unrelaxed positions ("do not move").
  """
  rows = [(k, metrics[k], metrics[f"baseline_{k}"]) for k in sorted(metrics)
          if f"baseline_{k}" in metrics]
  if not rows:
    return ""
  width = max(len(k) for k, _, _ in rows)
  lines = [f"{'validation':<{width}}  {'model':>10}  {'baseline':>10}"]
  lines += [f"{k:<{width}}  {v:>10.5g}  {b:>10.5g}" for k, v, b in rows]
  return "\n".join(lines)


def split_batch_over_cpu_devices(config, count: int) -> None:
  """Per-device batch budgets for ``--cpu_devices=count`` (same global batch).

  Raises ``app.UsageError`` if a budget does not divide by ``count``.
  """
  if count == 1:
    return
  batch = config.batch
  sizes = {k: int(batch.get(k, 0)) for k in ("max_graphs", "max_nodes",
                                              "max_edges")}
  for key, value in sizes.items():
    if value % count:
      raise app.UsageError(f"--cpu_devices={count} must divide "
                           f"batch.{key}={value} (each device gets 1/"
                           f"{count} of the batch)")
  with config.unlocked():
    for key, value in sizes.items():
      if key in batch:
        batch[key] = value // count


def installed_config_paths(argv):
  """``--config=configs/NAME.py[:variant]`` where no such file is under the
  working directory (run outside the repository): the file of the installed
  ``configs`` package instead. Other arguments are returned unchanged."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      out += [arg, _installed_config(argv[i + 1])]
      i += 2
      continue
    for prefix in ("--config=", "-config="):
      if arg.startswith(prefix):
        arg = prefix + _installed_config(arg[len(prefix):])
    out.append(arg)
    i += 1
  return out


def _installed_config(value: str) -> str:
  path, sep, variant = value.partition(":")
  norm = os.path.normpath(path)
  if os.path.exists(path) or not norm.startswith("configs" + os.sep):
    return value
  try:
    import configs  # pylint: disable=g-import-not-at-top
  except ImportError:
    return value
  installed = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)),
                           norm[len("configs" + os.sep):])
  return installed + sep + variant if os.path.exists(installed) else value


def main(argv):
  if len(argv) > 1:
    raise errors.ConfigError("command line", f"unexpected arguments "
                             f"{argv[1:]}")
  if errors.loaded_config(_CONFIG) is None or _WORKDIR.value is None:
    raise errors.ConfigError("--config and --workdir", "are required")
  logger.quiet_library_logs()
  config = _CONFIG.value
  if _AS_SCRIPT:  # only a process of our own may be restarted
    runtime.reexec_with_hugepages(bool(config.train.get("hugepages", False)))
  if _CPU_DEVICES.value < 1:
    raise errors.ConfigError(f"--cpu_devices={_CPU_DEVICES.value}",
                             "must be >= 1")
  if _CPU_DEVICES.value > 1:
    parallel.set_cpu_devices(_CPU_DEVICES.value)
  parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value,
                                  _DIST.value)
  if _CPU_DEVICES.value > 1:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() != "cpu":
      raise errors.ConfigError("--cpu_devices", f"is for CPU-only hosts; "
                               f"this one trains on {jax.default_backend()}")
    if config.batch.get("budget", "per_device") != "global":  # the trainer
      split_batch_over_cpu_devices(config, _CPU_DEVICES.value)  # splits it
    logging.info("%d CPU devices, %d graphs per device", _CPU_DEVICES.value,
                 int(config.batch.max_graphs))
  def run():
    if config.data.get("cv_folds", 0) and int(config.data.cv_folds) > 1:
      run_cross_validation(config, _WORKDIR.value)
    elif int(config.train.get("repeats", 0) or 0) > 1:
      run_repeats(config, _WORKDIR.value)
    else:
      metrics = trainer.train(config, _WORKDIR.value)
      print(json.dumps({"final_val": metrics}, default=float))
      print(baseline_table(metrics))
      write_outputs(config, _WORKDIR.value)
  errors.run_cli(run)  # user faults: one line, exit 2 (3: non-finite)

if __name__ == "__main__":
  _AS_SCRIPT = True
  errors.run_cli(lambda: app.run(
      main, flags_parser=lambda argv: errors.parse_flags(
          installed_config_paths(argv))))
