r"""Evaluate a saved run without training; prints one JSON line of metrics.

  python -m noisy_nodes.evaluate --workdir=runs/oc20 --split=val \
      --checkpoint=best [--cpu_devices=2]
  python -m noisy_nodes.evaluate --workdir=runs/oc20 --split=all \
      --data_path=/data/oc20/is2re/all/val_id/data.lmdb   # all of one file

  python -m noisy_nodes.evaluate --workdir=runs/oc20 --submission=is2re.npz
  python -m noisy_nodes.evaluate --workdir=runs/oc20 --analysis=mad

A wrapper over ``noisy_nodes.load(workdir, checkpoint).evaluate(split)``,
``noisy_nodes.api.write_submission`` and ``noisy_nodes.api.analyze`` (the
run's task's hooks ``Task.write_submission``, OC20's; ``Task.analyses``, the
GNS tasks' ``mad``).
"""
import json

from absl import app
from absl import flags

import noisy_nodes  # noqa: F401
from noisy_nodes import api
from noisy_nodes import errors
from noisy_nodes.engine import logger
from noisy_nodes.engine import parallel
from noisy_nodes.engine import runtime

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)
_SPLIT = flags.DEFINE_string(
    "split", "val", "Split: val (the average over fairchem's val_* splits "
    "when the data has them, each under per_split), a split's own name "
    "(val_id, test, train...), or all: every structure under --data_path "
    "(or data.path), never re-split.")
_CKPT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                          "Which checkpoint to evaluate.")
_DATA = flags.DEFINE_string("data_path", None,
                            "Evaluate on other data (overrides data.path).")
_SUBMISSION = flags.DEFINE_string(
    "submission", None, "Write the OC20 eval server's .npz here (IS2RE "
    "energies / IS2RS positions of the splits {prefix}_id, _ood_ads, "
    "_ood_cat, _ood_both; noisy_nodes.gns.oc20.submission) instead of metrics.")
_SUBMISSION_PREFIX = flags.DEFINE_string(
    "submission_prefix", "test", "Splits of the submission: test (the "
    "server's) or val (to check a file locally).")
_ANALYSIS = flags.DEFINE_string(
    "analysis", None, "An analysis of the run's task (Task.analyses) on "
    "--split; the GNS tasks' mad: MAD of node latents and residual updates "
    "after every message-passing step (Noisy Nodes §8.1, Fig. 3), written to "
    "DIR/mad_<split>.json and .png.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DIST = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                          "Initialise jax.distributed (auto: SLURM/TPU pod).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 1, "XLA:CPU devices to spread the evaluation batches over "
    "(one per core is fastest on a CPU-only host).")


def main(argv):
  del argv
  logger.quiet_library_logs()
  runtime.enable_compilation_cache()  # an eval-only run compiles its step
  if _CPU_DEVICES.value < 1:
    raise errors.ConfigError(f"--cpu_devices={_CPU_DEVICES.value}",
                             "must be >= 1")
  if _CPU_DEVICES.value > 1:
    parallel.set_cpu_devices(_CPU_DEVICES.value)
  parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value,
                                  _DIST.value)
  overrides = {"data.path": _DATA.value} if _DATA.value else None
  if _SUBMISSION.value:
    counts = errors.run_cli(lambda: api.write_submission(
        _WORKDIR.value, _SUBMISSION.value, _SUBMISSION_PREFIX.value,
        _CKPT.value, overrides))
    print(json.dumps({"submission": _SUBMISSION.value, "systems": counts}))
    return
  if _ANALYSIS.value:
    print(json.dumps(errors.run_cli(lambda: api.analyze(
        _WORKDIR.value, _ANALYSIS.value, _SPLIT.value, _CKPT.value,
        overrides))))
    return
  metrics = errors.run_cli(lambda: api.load(_WORKDIR.value, _CKPT.value)
                           .evaluate(_SPLIT.value, data_path=_DATA.value))
  print(json.dumps(metrics, default=float, sort_keys=True))

if __name__ == "__main__":
  errors.run_cli(lambda: app.run(main, flags_parser=errors.parse_flags))
