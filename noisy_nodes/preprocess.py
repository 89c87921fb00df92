"""Converts a task's data into random-access shards (``noisy_nodes/data/shards.py``).

  python -m noisy_nodes.preprocess --config=configs/oc20.py --out=DIR \\
      --config.data.path=/data/oc20/is2re/all --workers=8

reads every split the task's ``load_splits`` finds (any supported input: OC20
legacy ``data.lmdb`` folders, ``*.aselmdb``, ASE databases, crystal folders,
QM9, the generated demo sets), fits the task's statistics on the training
split once, and writes shards of ``--shard_size`` samples in ``--workers``
spawned processes, logging progress and an ETA. Rerunning the same command
skips finished shards (an interrupted run resumes); a different config is
refused. Then train with ``--config.data.path=DIR``: the budget, the target
statistics and the training elements come from the shards' metadata, so
nothing reads every sample before the first step.
"""
from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import os
import time
from typing import Any, Dict, List

from absl import app
from absl import flags
from ml_collections import config_flags

import noisy_nodes  # noqa: F401  (jraph compatibility shim)
from noisy_nodes import errors
from noisy_nodes.data import shards as shards_lib
from noisy_nodes.data.structures import DataError


def _define_flags():
  """The command's flags, defined only when it runs as a program: importing
  this module (tests, ``preprocess()`` from Python) beside
  ``noisy_nodes.train`` must not define ``--config`` twice."""
  return dict(
      config=config_flags.DEFINE_config_file(
          "config", None, "Config file, e.g. configs/oc20.py.",
          lock_config=True),
      out=flags.DEFINE_string("out", None, "Output folder of the shards."),
      workers=flags.DEFINE_integer("workers", 2, "Processes writing shards."),
      shard_size=flags.DEFINE_integer("shard_size", 5000,
                                      "Samples per shard."))

_W: Dict[str, Any] = {}


def _init(config_json: str, task_state, splits):
  os.environ["JAX_PLATFORMS"] = "cpu"
  import ml_collections  # pylint: disable=g-import-not-at-top
  from noisy_nodes.tasks import base as task_base  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads(config_json))
  task = task_base.resolve_task(config.task)(config)
  task.load_state_dict(task_state)
  _W.update(task=task, splits=splits)


def _write(split: str, path: str, start: int, stop: int, keep_graphs: bool):
  task, source = _W["task"], _W["splits"][split]
  t0 = time.time()
  structures = [source[i] for i in range(start, stop)]
  graphs = [task.featurize(s, None, False) for s in structures]
  if keep_graphs:  # the metadata's sizes and distances are kept by compact
    graphs = [task.compact_graph(g) for g in graphs]
  shards_lib.write_shard(path, structures, graphs, keep_graphs)
  return stop - start, time.time() - t0


def plan(splits, shard_size: int) -> Dict[str, List[Dict[str, Any]]]:
  """{split: [{'file', 'start', 'num'}]}: consecutive runs of samples."""
  out = {}
  for name, source in splits.items():
    n = len(source)
    out[name] = [{"file": f"{name}-{k:05d}.lmdb", "start": s,
                  "num": min(shard_size, n - s)}
                 for k, s in enumerate(range(0, n, shard_size))]
  return out


def preprocess(config, out: str, workers: int = 2, shard_size: int = 5000
               ) -> Dict[str, Any]:
  """Writes (or completes) the shards of ``config``'s data in ``out``."""
  from noisy_nodes.tasks import base as task_base  # pylint: disable=g-import-not-at-top
  if shard_size < 1 or workers < 0:
    raise errors.ConfigError("--shard_size/--workers", "must be >= 1 / >= 0")
  out = os.path.expanduser(out)
  if shards_lib.is_shard_dir(str(config.data.get("path", ""))):
    raise errors.ConfigError("data.path", "is already a preprocessed folder")
  os.makedirs(out, exist_ok=True)
  manifest_path = os.path.join(out, shards_lib.MANIFEST)
  fp = shards_lib.fingerprint(config)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      old = json.load(f)
    if old.get("fingerprint") != fp:
      raise DataError(out, "holds shards of another config "
                      f"({shards_lib._diff(old.get('fingerprint'), fp)}); "  # pylint: disable=protected-access
                      "use a new --out")
  t0 = time.time()
  if config.data.get("stats_sample", 0):
    # Preprocessing reads every record anyway: exact statistics.
    config = config.copy_and_resolve_references()
    config.data.stats_sample = 0
  task = task_base.resolve_task(config.task)(config)
  splits = task.load_splits()
  if not splits.get("train"):
    raise DataError(str(config.data.get("path", "dataset")),
                    "empty training split: nothing to preprocess")
  task.setup(splits["train"])
  state = task.state_dict()
  keep_graphs = not task.randomized_features
  layout = plan(splits, shard_size)
  manifest = {"version": shards_lib.FORMAT_VERSION, "complete": False,
              "fingerprint": fp, "config": json.loads(
                  config.to_json_best_effort()),
              "task_state": state, "randomized": bool(
                  task.randomized_features),
              "stores": "structures" if not keep_graphs else
                        "structures+graphs",
              "skipped": list(task.skipped),
              "splits": {k: {"num": len(splits[k]), "shards": v}
                         for k, v in layout.items()}}
  with open(manifest_path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1, default=float)
  os.replace(manifest_path + ".tmp", manifest_path)
  logging.info("read %s and fitted the task in %.1fs",
               {k: len(v) for k, v in splits.items()}, time.time() - t0)
  jobs = [(name, os.path.join(out, sh["file"]), sh["start"],
           sh["start"] + sh["num"]) for name, shs in layout.items()
          for sh in shs]
  todo = [j for j in jobs if not os.path.exists(shards_lib.meta_path(j[1]))]
  total = sum(j[3] - j[2] for j in todo)
  logging.info("%d of %d shards to write (%d samples; %d done before) with "
               "%d workers", len(todo), len(jobs), total, len(jobs) - len(todo),
               workers)
  done, t1 = 0, time.time()

  def progress(count):
    nonlocal done
    done += count
    rate = done / max(time.time() - t1, 1e-9)
    logging.info("preprocess: %d/%d samples (%.0f/s), ETA %.0fs", done,
                 total, rate, (total - done) / max(rate, 1e-9))

  if workers == 0 or len(todo) <= 1:
    _init(config.to_json_best_effort(), state, splits)
    for job in todo:
      progress(_write(*job, keep_graphs)[0])
  else:
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init, initargs=(config.to_json_best_effort(), state,
                                     splits)) as pool:
      futures = [pool.submit(_write, *job, keep_graphs) for job in todo]
      for fut in concurrent.futures.as_completed(futures):
        progress(fut.result()[0])
  manifest["complete"] = True
  manifest["seconds"] = time.time() - t0
  with open(manifest_path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1, default=float)
  os.replace(manifest_path + ".tmp", manifest_path)
  logging.info("shards of %d samples in %s (%.1fs)",
               sum(len(v) for v in splits.values()), out, time.time() - t0)
  return manifest


def main(argv, cli):
  if len(argv) > 1:
    raise errors.ConfigError("command line", f"unexpected arguments "
                             f"{argv[1:]}")
  if errors.loaded_config(cli["config"]) is None or not cli["out"].value:
    raise errors.ConfigError("--config and --out", "are required")
  errors.run_cli(lambda: preprocess(cli["config"].value, cli["out"].value,
                                    cli["workers"].value,
                                    cli["shard_size"].value))


if __name__ == "__main__":
  _CLI = _define_flags()
  errors.run_cli(lambda: app.run(lambda argv: main(argv, _CLI),
                                 flags_parser=errors.parse_flags))
