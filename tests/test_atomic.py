"""Cache files written by concurrent writers (noisy_nodes/data/atomic.py)."""
import os
import threading

import jraph
import numpy as np
import pytest

from crystal import datasets
from noisy_nodes.data import atomic


def _graph(i):
  return jraph.GraphsTuple(
      nodes={"x": np.full((3, 2), i, np.float32)},
      edges={"d": np.arange(4, dtype=np.float32)},
      senders=np.array([0, 1, 2, 0]), receivers=np.array([1, 2, 0, 2]),
      globals={"target": np.array([[float(i)]])},
      n_node=np.array([3]), n_edge=np.array([4]))


def test_concurrent_writers_of_one_cache_file(tmp_path):
  # Two sweep processes sharing a cache build the same featurised-graph file
  # at once; with a fixed temporary name one writer renamed the other's file
  # away (FileNotFoundError). Threads race the same way (same directory,
  # same target) and are deterministic enough to catch it every run.
  path = str(tmp_path / "graphs.npz")
  graphs = [_graph(i) for i in range(50)]
  errors = []

  def write():
    try:
      for _ in range(10):
        datasets.save_graphs(path, graphs, [str(i) for i in range(50)])
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=write) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  back, ids, _ = datasets.load_graphs(path)
  assert ids == [str(i) for i in range(50)]
  np.testing.assert_array_equal(back[7].nodes["x"], graphs[7].nodes["x"])
  assert os.listdir(tmp_path) == ["graphs.npz"]  # no temporary left behind


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "a.npz")
  atomic.savez(path, x=np.arange(3))
  with pytest.raises(RuntimeError):
    with atomic.replacing(path, suffix=".tmp.npz") as tmp:
      np.savez(tmp, x=np.arange(5))
      raise RuntimeError("writer died")
  np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))
  assert os.listdir(tmp_path) == ["a.npz"]
  atomic.write_text(str(tmp_path / "m.json"), "{}")
  assert (tmp_path / "m.json").read_text() == "{}"
  assert oct(os.stat(path).st_mode & 0o777) == "0o644"
