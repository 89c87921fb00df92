r"""Evaluate a saved run without training; prints one JSON line of metrics.

  python -m noisy_nodes.evaluate --workdir=runs/oc20 --split=val \
      --checkpoint=best [--cpu_devices=2]
  python -m noisy_nodes.evaluate --workdir=runs/oc20 --split=all \
      --data_path=/data/oc20/is2re/all/val_id/data.lmdb   # all of one file

A wrapper over ``noisy_nodes.load(workdir, checkpoint).evaluate(split)``.
"""
import json

from absl import app
from absl import flags

import noisy_nodes  # noqa: F401
from noisy_nodes import api
from noisy_nodes import errors
from noisy_nodes.engine import logger
from noisy_nodes.engine import parallel

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
  if _CPU_DEVICES.value < 1:
    raise errors.ConfigError(f"--cpu_devices={_CPU_DEVICES.value}",
                             "must be >= 1")
  if _CPU_DEVICES.value > 1:
    parallel.set_cpu_devices(_CPU_DEVICES.value)
  parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value,
                                  _DIST.value)
  metrics = errors.run_cli(lambda: api.load(_WORKDIR.value, _CKPT.value)
                           .evaluate(_SPLIT.value, data_path=_DATA.value))
  print(json.dumps(metrics, default=float, sort_keys=True))

if __name__ == "__main__":
  errors.run_cli(lambda: app.run(main, flags_parser=errors.parse_flags))
