"""Dynamic batching: packing, padding, masks, budgets and exact resume."""
import jax
import jraph
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.data import batching
from noisy_nodes.data.structures import DataError


def _graph(n, e, value=1.0):
  rng = np.random.default_rng(n * 100 + e)
  return jraph.GraphsTuple(
      nodes={"x": np.full((n, 2), value, np.float32)},
      edges={"d": np.ones((e,), np.float32)},
      senders=rng.integers(0, n, e).astype(np.int32),
      receivers=rng.integers(0, n, e).astype(np.int32),
      n_node=np.array([n], np.int32), n_edge=np.array([e], np.int32),
      globals={"y": np.array([[value]], np.float32)})


def test_pad_graphs_shapes_masks_and_offsets():
  budget = batching.Budget(max_nodes=10, max_edges=12, max_graphs=3)
  g1, g2 = _graph(3, 4), _graph(5, 6, 2.0)
  b = batching.pad_graphs([g1, g2], budget)
  assert b.nodes["x"].shape == (11, 2)
  assert b.edges["d"].shape == (12,)
  assert b.n_node.tolist() == [3, 5, 0, 3]
  assert b.n_edge.tolist() == [4, 6, 0, 2]
  assert b.nodes["mask"].tolist() == [True] * 8 + [False] * 3
  assert b.edges["mask"].sum() == 10
  assert b.globals["mask"].tolist() == [True, True, False, False]
  np.testing.assert_array_equal(b.senders[:4], g1.senders)
  np.testing.assert_array_equal(b.senders[4:10], g2.senders + 3)
  # Padding edges join the first padding node to itself; padded values are 0.
  assert b.senders[10:].tolist() == [8, 8]
  assert b.receivers[10:].tolist() == [8, 8]
  assert np.all(b.nodes["x"][8:] == 0)
  # The padded batch is a valid jraph batch: sums of n_node/n_edge match.
  assert b.n_node.sum() == 11 and b.n_edge.sum() == 12


def test_greedy_packing_respects_every_budget():
  graphs = [_graph(int(n), int(e)) for n, e in
            zip(np.random.default_rng(0).integers(1, 9, 60),
                np.random.default_rng(1).integers(0, 30, 60))]
  budget = batching.Budget(max_nodes=20, max_edges=64, max_graphs=4)
  stream = batching.GraphStream(len(graphs), lambda i, r: graphs[i], budget,
                                seed=0, randomized=False)
  seen = 0
  it = stream.iterate()
  while True:
    b = next(it)
    m = b.graph.globals["mask"]
    assert m.sum() <= 4
    assert b.graph.nodes["mask"].sum() <= 20
    assert b.graph.edges["mask"].sum() <= 64
    seen += int(m.sum())
    if b.position.epoch == 1:
      break
  assert seen == 60  # one epoch covers every sample exactly once


def test_oversized_graph_error_names_sample_or_is_skipped():
  graphs = [_graph(3, 3), _graph(50, 3), _graph(2, 2)]
  budget = batching.Budget(max_nodes=10, max_edges=10, max_graphs=2)
  names = lambda i: f"sample-{i}"  # noqa: E731
  stream = batching.GraphStream(3, lambda i, r: graphs[i], budget, seed=0,
                                shuffle=False, names=names, randomized=False)
  with pytest.raises(DataError, match="sample-1.*50 nodes"):
    next(stream.iterate())
  stream = batching.GraphStream(3, lambda i, r: graphs[i], budget, seed=0,
                                shuffle=False, names=names, randomized=False,
                                skip_oversized=True)
  b = next(stream.iterate())
  assert b.num_graphs == 2 and len(b.skipped) == 1
  assert "sample-1" in b.skipped[0]


def test_stream_is_pure_function_of_seed_epoch_and_resumes_exactly():
  sizes = np.random.default_rng(3).integers(1, 7, 40)

  def featurize(i, rng):
    # Random featurisation (like Noisy Nodes): depends on the per-sample RNG.
    return _graph(int(sizes[i]), int(rng.integers(0, 9)), float(i))

  budget = batching.Budget(max_nodes=16, max_edges=32, max_graphs=4)
  make = lambda: batching.GraphStream(40, featurize, budget, seed=7,  # noqa
                                      devices=2, num_shards=2,
                                      randomized=True)
  straight = []
  it = make().iterate()
  for _ in range(12):
    straight.append(next(it))
  resumed = list(straight[:5])
  it2 = make().iterate(straight[4].position)
  for _ in range(7):
    resumed.append(next(it2))
  for a, b in zip(straight, resumed):
    assert a.position == b.position
    for x, y in zip(jraph.GraphsTuple.__iter__(a.graph),
                    jraph.GraphsTuple.__iter__(b.graph)):
      if isinstance(x, dict):
        for k in x:
          np.testing.assert_array_equal(x[k], y[k])
      else:
        np.testing.assert_array_equal(x, y)
  assert straight[0].graph.nodes["x"].shape[0] == 2  # device axis


def test_device_shards_do_not_depend_on_host_layout():
  """1 host x 2 devices sees exactly what 2 hosts x 1 device see."""
  graphs = [_graph(2 + i % 3, i % 5, float(i)) for i in range(30)]
  budget = batching.Budget(max_nodes=8, max_edges=16, max_graphs=3)
  f = lambda i, r: graphs[i]  # noqa: E731
  both = batching.GraphStream(30, f, budget, seed=2, devices=2, num_shards=2,
                              randomized=False).iterate()
  hosts = [batching.GraphStream(30, f, budget, seed=2, devices=1,
                                shard_index=h, num_shards=2,
                                randomized=False).iterate() for h in range(2)]
  for _ in range(8):
    b = next(both)
    for h in range(2):
      bh = next(hosts[h])
      np.testing.assert_array_equal(b.graph.globals["y"][h],
                                    bh.graph.globals["y"][0])
      assert b.position[h] == bh.position[0]


def test_host_shards_are_disjoint_and_cover_an_epoch():
  graphs = [_graph(2, 1, float(i)) for i in range(21)]
  budget = batching.Budget(max_nodes=8, max_edges=8, max_graphs=4)
  seen = []
  for shard in range(3):
    st = batching.GraphStream(21, lambda i, r: graphs[i], budget, seed=1,
                              shard_index=shard, num_shards=3,
                              randomized=False)
    it = st.iterate()
    while True:
      b = next(it)
      m = b.graph.globals["mask"]
      seen.extend(b.graph.globals["y"][m, 0].tolist())
      if b.position.epoch == 1:
        break
  assert sorted(seen) == list(range(21))


def test_estimate_budget_and_utilisation():
  n = np.random.default_rng(0).integers(20, 80, 500)
  e = n * 12
  budget = batching.estimate_budget(n, e, 10)
  assert budget.max_graphs == 10
  assert budget.max_nodes >= 10 * n.mean() and budget.max_nodes % 8 == 0
  assert budget.max_edges >= 10 * e.mean()
  b = batching.pad_graphs([_graph(4, 4)], batching.Budget(7, 8, 1))
  u = batching.utilisation(b)
  assert u == {"util_nodes": 0.5, "util_edges": 0.5, "util_graphs": 0.5}


def test_eval_batches_cover_all_in_order_with_device_padding():
  graphs = [_graph(3, 2, float(i)) for i in range(7)]
  budget = batching.Budget(max_nodes=6, max_edges=8, max_graphs=2)
  got = []
  for batch, idx in batching.eval_batches(graphs, budget, devices=2):
    assert batch.globals["y"].shape[0] == 2
    for d, ids in enumerate(idx):
      got.extend(ids)
      assert batch.globals["mask"][d].sum() == len(ids)
  assert got == list(range(7))


def test_worker_chunks_round_trip_to_the_same_batches():
  """concat_samples / split_samples (how data workers send a chunk): the
  views equal the samples and pad to the same batch; samples that cannot
  share arrays are sent as they are."""
  graphs = [_graph(n, e, float(n)) for n, e in ((3, 4), (1, 0), (5, 9),
                                                (2, 2))]
  chunk = batching.concat_samples(graphs)
  assert chunk.n_node.tolist() == [3, 1, 5, 2]
  assert chunk.nodes["x"].shape == (11, 2) and chunk.senders.shape == (15,)
  back = batching.split_samples(chunk)
  assert len(back) == 4
  for a, b in zip(graphs, back):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      assert x.dtype == y.dtype
      np.testing.assert_array_equal(x, y)
  budget = batching.Budget(max_nodes=16, max_edges=16, max_graphs=4)
  want, got = batching.pad_graphs(graphs, budget), batching.pad_graphs(
      back, budget)
  for x, y in zip(jax.tree_util.tree_leaves(want),
                  jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(x, y)
  # Other dtypes, keys or trailing shapes: None (the list is sent as it is).
  odd = _graph(2, 2)._replace(nodes={"x": np.zeros((2, 2), np.float64)})
  assert batching.concat_samples(graphs + [odd]) is None
  assert batching.concat_samples(
      graphs + [_graph(2, 2)._replace(edges={"e": np.ones(2, np.float32)})]
  ) is None
  assert batching.concat_samples([want]) is None   # not a single graph
  # One device's batch gets its leading axis as a view of the batch.
  stacked = batching.stack_device_batches([want])
  assert stacked.nodes["x"].shape == (1, 17, 2)
  assert np.shares_memory(stacked.nodes["x"], want.nodes["x"])
