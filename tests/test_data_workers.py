"""data.workers=K: featurisation in worker processes (issue 15 point 4).

Same batches for every K (and a stream resumed mid-epoch with workers), and
faults that stop the run with an error naming the sample: a worker killed
mid-epoch, a record that does not decode. Exact resume of a training run with
K = 2: tests/test_engine.py::test_exact_resume_gives_identical_parameters.
"""
import os
import signal
import sys
import time

import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.data import batching
from noisy_nodes.data import workers
from noisy_nodes.data.structures import DataError
from noisy_nodes.engine import trainer
from noisy_nodes.gns.oc20 import emt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "configs"))
import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top
import toy_config  # noqa: E402  pylint: disable=g-import-not-at-top
from batch_checks import assert_same_batches  # noqa: E402  pylint: disable=g-import-not-at-top
import toy_task  # noqa: E402  pylint: disable=g-import-not-at-top


def _take(stream, n, start=None):
  it = stream.iterate(start)
  try:
    return [next(it) for _ in range(n)]
  finally:
    stream.close()


def test_same_batches_for_every_worker_count(tmp_path):
  """oc20.py:tiny (noisy, neighbours rebuilt): K = 0, 2 give the same
  batches over three epochs; K = 1 resumed mid-stream continues them."""
  folder = str(tmp_path / "emt")
  emt.generate(8, seed=5, workers=0, out_dir=folder,
               split_sizes={"train": 6, "val": 1, "test": 1})
  config = oc20_config.get_config("tiny")
  config.data.path = folder
  exp = trainer.Experiment(config, str(tmp_path / "run"))
  exp.setup_task()
  budget = exp.budget()
  runs = {}
  for k in (0, 2):
    config.data.workers = k
    runs[k] = _take(exp.train_stream(budget, seed=7), 6)
  assert runs[0][-1].position[0].epoch >= 2  # crossed epochs
  assert_same_batches(runs[0], runs[2])
  # K = 1, resumed from batch 3's position, continues them exactly.
  config.data.workers = 1
  resumed = _take(exp.train_stream(budget, seed=7), 3, runs[0][2].position)
  assert_same_batches(runs[0][3:], resumed)


def _toy_stream(bad=(), k=1):
  cfg = toy_config.get_config("noisy")
  task = toy_task.ToyTask(cfg)
  source = toy_task.FaultySource(toy_task.make_clusters(30, 1), bad=bad)
  task.setup(source.structures)
  pool = workers.FeaturizePool(toy_task.ToyTask, cfg, task.state_dict(),
                               source, 0, True, k,
                               names=lambda i: f"ar{i}")
  return batching.GraphStream(
      len(source), None, batching.Budget(64, 1024, 8), seed=0, pool=pool,
      chunk=2, names=lambda i: f"ar{i}"), pool


def test_killed_worker_stops_the_run_with_an_error_naming_it():
  stream, pool = _toy_stream(k=2)
  it = stream.iterate()
  try:
    next(it)
    os.kill(pool.pids[0], signal.SIGKILL)
    t0 = time.time()
    with pytest.raises(workers.WorkerError,
                       match=r"pid \d+ \(killed by SIGKILL\) died while "
                       r"featurising training samples ar\d+"):
      for _ in range(100):  # endless stream: must fail, never hang
        next(it)
    assert time.time() - t0 < 10
  finally:
    stream.close()


def test_bad_record_in_a_worker_names_the_sample():
  stream, _ = _toy_stream(bad=[17])
  try:
    with pytest.raises(DataError, match=r"toy.lmdb\[key 17\]: corrupt record"
                       r".*training sample 17, in a data worker"):
      _take(stream, 20)
  finally:
    stream.close()


def test_a_worker_sends_its_chunk_as_one_array_per_key():
  """The compact form (batching.concat_samples) that keeps the main
  process's share small enough for K = 2 to scale on two cores."""
  cfg = toy_config.get_config("noisy")
  task = toy_task.ToyTask(cfg)
  source = toy_task.FaultySource(toy_task.make_clusters(6, 1), bad=())
  task.setup(source.structures)
  saved = dict(workers._WORKER)
  try:
    workers._init(toy_task.ToyTask, cfg.to_json_best_effort(),
                  task.state_dict(), source, 0, True)
    kind, chunk = workers._featurize([(0, 1), (0, 4), (1, 2)])
    assert kind == "packed" and chunk.n_node.shape == (3,)
    want = [task.featurize(source[i], batching.sample_rng(0, e, i), True)
            for e, i in ((0, 1), (0, 4), (1, 2))]
    budget = batching.Budget(64, 1024, 8)
    assert_same_batches(
        [batching.Batch(batching.pad_graphs(want, budget), None, 3)],
        [batching.Batch(batching.pad_graphs(
            batching.split_samples(chunk), budget), None, 3)])
  finally:
    workers._WORKER.clear()
    workers._WORKER.update(saved)
