"""noisy_nodes.preprocess shards (issue 15 point 3): resumable, metadata, and
training from them sees the same batches as training from the raw data."""
import json
import os
import sys

import jax
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes import preprocess
from noisy_nodes.data import shards
from noisy_nodes.data.structures import DataError
from noisy_nodes.engine import trainer
from noisy_nodes.gns.oc20 import emt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "configs"))
import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top
import toy_config  # noqa: E402  pylint: disable=g-import-not-at-top
from batch_checks import assert_same_batches  # noqa: E402  pylint: disable=g-import-not-at-top


def _batches(config, workdir, n=4):
  exp = trainer.Experiment(config, workdir)
  exp.setup_task()
  budget = exp.budget()
  stream = exp.train_stream(budget, seed=3)
  it = stream.iterate()
  try:
    return exp, budget, [next(it) for _ in range(n)]
  finally:
    stream.close()


def test_oc20_shards_resume_and_train_like_the_raw_data(tmp_path):
  raw = str(tmp_path / "emt")
  emt.generate(8, seed=4, workers=0, out_dir=raw,
               split_sizes={"train": 6, "val": 1, "test": 1})
  config = oc20_config.get_config("tiny")
  config.data.path = raw
  out = str(tmp_path / "shards")
  manifest = preprocess.preprocess(config, out, workers=2, shard_size=2)
  assert manifest["complete"] and manifest["stores"] == "structures"
  assert {k: len(v["shards"]) for k, v in manifest["splits"].items()} == {
      "train": 3, "val": 1, "test": 1}
  # Interrupted while writing train-00001: its files are redone, the
  # finished shards are skipped.
  done = {f: os.path.getmtime(os.path.join(out, f)) for f in os.listdir(out)
          if f.endswith(".meta.npz")}
  os.remove(os.path.join(out, "train-00001.meta.npz"))
  preprocess.preprocess(config, out, workers=2, shard_size=2)
  for f, t in done.items():
    if f != "train-00001.meta.npz":
      assert os.path.getmtime(os.path.join(out, f)) == t, f
  assert os.path.exists(os.path.join(out, "train-00001.meta.npz"))

  # Metadata: sizes, targets and ids without reading a record.
  splits, _ = shards.open_splits(out)
  exp_raw, budget_raw, want = _batches(config, str(tmp_path / "a"))
  train_raw = exp_raw.splits["train"]
  meta = splits["train"].meta
  assert meta["n_atoms"].tolist() == [s.num_atoms for s in train_raw]
  np.testing.assert_array_equal(
      meta["t/energy_relaxed"][:, -1],
      [float(np.reshape(s.targets["energy_relaxed"], -1)[-1])
       for s in train_raw])
  assert [splits["train"].name(i) for i in range(6)] == [s.id for s in
                                                         train_raw]
  assert np.all(meta["d_max"] <= config.data.cutoff)

  shard_config = oc20_config.get_config("tiny")
  shard_config.data.path = out
  exp, budget, got = _batches(shard_config, str(tmp_path / "b"))
  assert budget == budget_raw
  assert exp.task.state_dict() == exp_raw.task.state_dict()
  assert exp.train_elements() == exp_raw.train_elements()
  assert_same_batches(want, got)
  # A config that featurises otherwise is refused, never trained on stale
  # shards.
  shard_config.data.cutoff = 5.0
  with pytest.raises(DataError, match="data.cutoff: 4.0 in the shards, 5.0"):
    trainer.Experiment(shard_config, str(tmp_path / "c"))


def test_static_graphs_are_stored_for_deterministic_tasks(tmp_path):
  config = toy_config.get_config()
  out = str(tmp_path / "shards")
  manifest = preprocess.preprocess(config, out, workers=0, shard_size=10)
  assert manifest["stores"] == "structures+graphs"
  _, _, want = _batches(config, str(tmp_path / "a"))
  shard_config = toy_config.get_config()
  shard_config.data.path = out
  exp, _, got = _batches(shard_config, str(tmp_path / "b"))
  assert_same_batches(want, got)
  src = exp.splits["val"]
  g = exp.task.featurize(src[2], None, False)
  for u, v in zip(jax.tree_util.tree_leaves(g),
                  jax.tree_util.tree_leaves(src.graph(2))):
    np.testing.assert_array_equal(u, v)
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f)["task_state"] == exp.task.state_dict()


@pytest.mark.parametrize("variant", ["cgcnn:tiny", "deeper_gatgnn:tiny"])
def test_crystal_shards_store_compact_graphs_and_train_like_the_raw(
    tmp_path, variant):
  """Crystal shards hold the graphs without their Gaussian edge features
  (Task.compact_graph); read back they are expanded bit for bit, and the
  training batches equal those from the raw folder."""
  import configs  # pylint: disable=g-import-not-at-top
  from crystal import generators  # pylint: disable=g-import-not-at-top
  from crystal.io import write_matdeeplearn_folder  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / "pt")
  write_matdeeplearn_folder(folder, generators.pt10_clusters(12, seed=5))

  def config(path):
    c = configs.load(variant)
    c.data.update(path=path, cache_dir=str(tmp_path / "cache"))
    return c
  out = str(tmp_path / "shards")
  manifest = preprocess.preprocess(config(folder), out, workers=0,
                                   shard_size=5)
  assert manifest["stores"] == "structures+graphs"
  _, _, want = _batches(config(folder), str(tmp_path / "a"))
  exp, _, got = _batches(config(out), str(tmp_path / "b"))
  assert_same_batches(want, got)
  src = exp.splits["train"]
  stored = src.graph(1)
  assert "features" not in stored.edges
  full = exp.task.featurize(src[1], None, False)
  back = exp.task.expand_graph(stored)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(
      full)
  for u, v in zip(jax.tree_util.tree_leaves(full),
                  jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(u, v)
  # What the compaction saves: the Gaussians are most of a crystal record.
  full_bytes = sum(np.asarray(x).nbytes
                   for x in jax.tree_util.tree_leaves(full))
  kept = sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(stored))
  assert kept < 0.6 * full_bytes
