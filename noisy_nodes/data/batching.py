"""Dynamic batching: greedy packing into node/edge/graph budgets, then padding.

Graphs of atoms vary in size, so a fixed number of graphs per batch wastes
padding (or overflows). As in DeepMind's OGB/PCQM4M code, we pack graphs
greedily in epoch order until the next one would exceed any of the budgets
``max_nodes``, ``max_edges`` or ``max_graphs``, then pad the batch to exactly
one fixed shape per budget so the training step compiles once:

  n_node  = max_nodes + 1     (at least one padding node)
  n_edge  = max_edges
  n_graph = max_graphs + 1    (the last graph is the padding graph)

Padding follows jraph: padding nodes belong to the last graph, padding edges
join the first padding node to itself, padded values are zero.  Boolean masks
``nodes['mask']``, ``edges['mask']`` and ``globals['mask']`` mark real data.

Epoch order is a pure function of (seed, epoch), and the stream can restart at
any batch boundary (``DataPosition``), so resuming a run reproduces exactly
the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import queue
import threading
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import jraph
import numpy as np

from noisy_nodes.data.structures import DataError


@dataclasses.dataclass(frozen=True)
class Budget:
  """Per-device batch budget (real data; padding is added on top)."""
  max_nodes: int
  max_edges: int
  max_graphs: int

  @property
  def padded_sizes(self):
    # An even edge count: an edge layout (``register_edge_layout``) may
    # split the rows in two equal halves.
    return (self.max_nodes + 1, self.max_edges + self.max_edges % 2,
            self.max_graphs + 1)

  def fits(self, n_node: int, n_edge: int) -> bool:
    return n_node <= self.max_nodes and n_edge <= self.max_edges


def fitting_budget(budget: Budget, graphs: Sequence[jraph.GraphsTuple]
                   ) -> Budget:
  """``budget``, enlarged to hold the largest of ``graphs`` if needed.

  For evaluation and prediction, which must give every structure a row (a
  larger budget costs one more compilation, not an error).
  """
  n_max = max(int(g.n_node[0]) for g in graphs)
  e_max = max(int(g.n_edge[0]) for g in graphs)
  if budget.fits(n_max, e_max):
    return budget
  return Budget(max(budget.max_nodes, n_max), max(budget.max_edges, e_max),
                budget.max_graphs)


def estimate_budget(n_nodes: Sequence[int], n_edges: Sequence[int],
                    graphs_per_batch: int) -> Budget:
  """A budget that holds ``graphs_per_batch`` typical graphs.

  Node and edge budgets are set at mean + 3 standard deviations of the total
  over ``graphs_per_batch`` random graphs (plus one largest graph, so that
  every graph fits), so few batches are cut short by the node/edge budget.
  """
  n_nodes = np.asarray(n_nodes, np.float64)
  n_edges = np.asarray(n_edges, np.float64)
  k = graphs_per_batch

  def cap(x):
    total = k * x.mean() + 3.0 * math.sqrt(k) * x.std()
    return int(math.ceil(max(total, x.max())))

  # Round up to multiples of 8/64 for friendlier shapes on accelerators.
  nodes = int(math.ceil(cap(n_nodes) / 8.0) * 8)
  edges = int(math.ceil(max(cap(n_edges), 1) / 64.0) * 64)
  return Budget(max_nodes=nodes, max_edges=edges, max_graphs=k)


#: pad_graphs' hook for a model's order of edge rows in a batch:
#: ``layout(graphs, edges, senders, receivers, tot_n, pad_e)`` gets the
#: stacked, padded edge arrays of the samples ``graphs`` (``tot_n`` real
#: nodes, ``pad_e`` rows, padding edges on node ``tot_n``) and returns them
#: reordered as ``(edges, senders, receivers)``.
EdgeLayout = Callable[..., Tuple[Dict[str, np.ndarray], np.ndarray,
                                 np.ndarray]]
_EDGE_LAYOUTS: Dict[str, EdgeLayout] = {}


def register_edge_layout(key: str, layout: EdgeLayout) -> None:
  """Plugs a model's layout of edge rows into ``pad_graphs``.

  The batches of samples that carry ``edges[key]`` are laid out by
  ``layout`` (see ``EdgeLayout``); all others keep the samples' order. The
  module that adds ``key`` to its samples registers the layout on import
  (``crystal.edge_pairs``: GATGNN's reverse pairs under ``'reverse'``), so
  this shared batcher names no model.
  """
  _EDGE_LAYOUTS[key] = layout


def pad_graphs(graphs: Sequence[jraph.GraphsTuple],
               budget: Budget) -> jraph.GraphsTuple:
  """Concatenates single-graph samples and pads them to the budget's shape.

  Args:
    graphs: samples, each with ``n_node`` and ``n_edge`` of shape [1] and
      dict features (see docs/design.md). All must share the same keys.
    budget: the batch budget; the graphs must fit (checked by the caller).

  Returns:
    A GraphsTuple with n_node [max_graphs+1], nodes [max_nodes+1, ...], edges
    [max_edges, ...] and boolean ``mask`` entries in nodes, edges and globals.
  """
  pad_n, pad_e, pad_g = budget.padded_sizes
  n_node = np.array([int(g.n_node[0]) for g in graphs], np.int32)
  n_edge = np.array([int(g.n_edge[0]) for g in graphs], np.int32)
  tot_n, tot_e, num_g = int(n_node.sum()), int(n_edge.sum()), len(graphs)
  if tot_n > budget.max_nodes or tot_e > budget.max_edges or (
      num_g > budget.max_graphs):
    raise ValueError(f"batch of {num_g} graphs ({tot_n} nodes, {tot_e} edges)"
                     f" exceeds the budget {budget}")
  offsets = np.concatenate([[0], np.cumsum(n_node)[:-1]]).astype(np.int32)
  edge_offsets = np.repeat(offsets, n_edge)
  senders = np.full(pad_e, tot_n, np.int32)
  receivers = np.full(pad_e, tot_n, np.int32)
  if tot_e:
    np.concatenate([g.senders for g in graphs], out=senders[:tot_e],
                   casting="unsafe")
    np.concatenate([g.receivers for g in graphs], out=receivers[:tot_e],
                   casting="unsafe")
    senders[:tot_e] += edge_offsets
    receivers[:tot_e] += edge_offsets

  def stack(dicts, total, pad):
    out = {}
    for key in dicts[0]:
      parts = [d[key] for d in dicts]
      first = np.asarray(parts[0])
      arr = np.empty((pad,) + first.shape[1:], first.dtype)
      if total:   # one copy, straight into the batch
        np.concatenate(parts, out=arr[:total], casting="unsafe")
      arr[total:] = 0
      out[key] = arr
    mask = np.zeros(pad, bool)
    mask[:total] = True
    out["mask"] = mask
    return out

  nodes = stack([g.nodes for g in graphs], tot_n, pad_n)
  edges = stack([g.edges for g in graphs], tot_e, pad_e)
  for key, layout in _EDGE_LAYOUTS.items():
    if key in edges:
      edges, senders, receivers = layout(graphs, edges, senders, receivers,
                                         tot_n, pad_e)
      break
  globals_ = stack([g.globals for g in graphs], num_g, pad_g)
  full_n_node = np.zeros(pad_g, np.int32)
  full_n_node[:num_g] = n_node
  full_n_node[-1] = pad_n - tot_n
  full_n_edge = np.zeros(pad_g, np.int32)
  full_n_edge[:num_g] = n_edge
  full_n_edge[-1] = pad_e - tot_e
  return jraph.GraphsTuple(nodes=nodes, edges=edges, globals=globals_,
                           senders=senders, receivers=receivers,
                           n_node=full_n_node, n_edge=full_n_edge)


def stack_device_batches(batches: Sequence[jraph.GraphsTuple]):
  """[D] padded batches -> one GraphsTuple whose arrays lead with axis D.

  One device's batch gets the axis as a view (``x[None]``), not a copy.
  """
  return jraph.GraphsTuple(*[
      _stack_tree([getattr(b, f) for b in batches])
      for f in jraph.GraphsTuple._fields])


def _stack_tree(items):
  if isinstance(items[0], dict):
    return {k: _stack_tree([it[k] for it in items]) for k in items[0]}
  if len(items) == 1:
    return np.asarray(items[0])[None]
  return np.stack(items)


_FEATURE_FIELDS = ("nodes", "edges", "globals")


def _signature(g: jraph.GraphsTuple):
  """What must agree for samples to be sent back to back: keys, dtypes and
  trailing shapes of every array."""
  sig = [(np.asarray(g.n_node).shape, np.asarray(g.n_edge).shape,
          np.asarray(g.senders).dtype.str, np.asarray(g.receivers).dtype.str)]
  for field in _FEATURE_FIELDS:
    d = getattr(g, field)
    if not isinstance(d, dict):
      return None
    for k in sorted(d):
      v = d[k]
      if not isinstance(v, np.ndarray) or v.ndim == 0:
        return None
      sig.append((field, k, v.dtype.str, v.shape[1:]))
  return tuple(sig)


def concat_samples(graphs: Sequence[jraph.GraphsTuple]
                   ) -> Optional[jraph.GraphsTuple]:
  """[c] single-graph samples -> one GraphsTuple holding them back to back.

  The compact form in which a data worker sends its chunk of samples to the
  main process: one array per feature key instead of one per key and sample,
  so pickling and unpickling the chunk costs ~c times fewer array headers
  (docs/benchmarks.md: the main process's share is what limits the speed-up
  of K = 2 workers on two cores). ``n_node`` / ``n_edge`` are [c];
  ``senders`` / ``receivers`` stay local to each sample (not offset), so
  ``split_samples`` gives back views equal to the inputs.

  Returns None (send the list as it is) unless every sample has n_node and
  n_edge of shape [1], numpy arrays of the same keys, dtypes and trailing
  shapes.
  """
  if not graphs:
    return None
  sig = _signature(graphs[0])
  if sig is None or sig[0][:2] != ((1,), (1,)):
    return None
  for g in graphs[1:]:
    if _signature(g) != sig:
      return None

  def cat(field):
    return {k: np.concatenate([getattr(g, field)[k] for g in graphs])
            for k in getattr(graphs[0], field)}

  return jraph.GraphsTuple(
      nodes=cat("nodes"), edges=cat("edges"), globals=cat("globals"),
      senders=np.concatenate([g.senders for g in graphs]),
      receivers=np.concatenate([g.receivers for g in graphs]),
      n_node=np.concatenate([g.n_node for g in graphs]),
      n_edge=np.concatenate([g.n_edge for g in graphs]))


def split_samples(chunk: jraph.GraphsTuple) -> List[jraph.GraphsTuple]:
  """Inverse of ``concat_samples``: the samples as views into ``chunk``."""
  n_node = np.asarray(chunk.n_node)
  c = n_node.shape[0]
  # Python-int bounds and basic slices: np.split costs ~10x more per view.
  node_at = [0] + np.cumsum(n_node).tolist()
  edge_at = [0] + np.cumsum(np.asarray(chunk.n_edge)).tolist()
  nodes, edges, globals_ = chunk.nodes, chunk.edges, chunk.globals
  senders, receivers, n_edge = chunk.senders, chunk.receivers, chunk.n_edge
  out = []
  for i in range(c):
    a, b, e, f = node_at[i], node_at[i + 1], edge_at[i], edge_at[i + 1]
    out.append(jraph.GraphsTuple(
        nodes={k: v[a:b] for k, v in nodes.items()},
        edges={k: v[e:f] for k, v in edges.items()},
        globals={k: v[i:i + 1] for k, v in globals_.items()},
        senders=senders[e:f], receivers=receivers[e:f],
        n_node=n_node[i:i + 1], n_edge=n_edge[i:i + 1]))
  return out


def utilisation(batch: jraph.GraphsTuple) -> Dict[str, float]:
  """Fraction of node, edge and graph slots holding real data."""
  return {f"util_{k}": float(np.mean(getattr(batch, f)["mask"]))
          for k, f in (("nodes", "nodes"), ("edges", "edges"),
                       ("graphs", "globals"))}


@dataclasses.dataclass(frozen=True)
class DataPosition:
  """Where a host's stream stands: ``cursor`` samples into ``epoch``."""
  epoch: int = 0
  cursor: int = 0


def epoch_permutation(num: int, seed: int, epoch: int,
                      shuffle: bool = True) -> np.ndarray:
  """The sample order of one epoch: a pure function of (seed, epoch)."""
  if not shuffle:
    return np.arange(num)
  return np.random.default_rng([seed, epoch]).permutation(num)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
  """Per-sample RNG (noise, frame choice): a pure function of its inputs."""
  return np.random.default_rng([seed, epoch, index, 0x5EED])


@dataclasses.dataclass
class Batch:
  graph: jraph.GraphsTuple      # padded, or [D, ...] stacked per device
  position: Any                 # DataPosition after this batch (a tuple of
                                # them, one per device, when stacked)
  num_graphs: int               # real graphs in the batch
  skipped: List[str] = dataclasses.field(default_factory=list)


class GraphStream:
  """An endless, resumable stream of padded batches.

  The data are split into ``num_shards`` shards, one per global device: shard
  k holds every ``num_shards``-th sample of each epoch's global permutation.
  Each shard is packed on its own, so which graphs a device sees does not
  depend on how devices are spread over hosts (2 processes x 1 device see
  exactly what 1 process x 2 devices sees), and each host reads only its
  devices' shards. With ``devices=None`` the stream yields unstacked batches
  of shard ``shard_index``; with ``devices=D`` it stacks the batches of shards
  ``shard_index .. shard_index + D - 1`` on a leading axis.
  """

  def __init__(self, num: int, featurize: Callable[[int, Optional[
      np.random.Generator]], jraph.GraphsTuple], budget: Budget, *,
               seed: int, shuffle: bool = True, devices: Optional[int] = None,
               shard_index: int = 0, num_shards: int = 1,
               skip_oversized: bool = False, names: Optional[Callable[
                   [int], str]] = None, randomized: bool = True,
               pool=None, chunk: int = 4, ahead: int = 0):
    if num == 0:
      raise DataError("dataset", "empty dataset: no samples to train on")
    if shard_index + (devices or 1) > num_shards:
      raise ValueError(f"shards {shard_index}..{shard_index + (devices or 1)}"
                       f" exceed num_shards={num_shards}")
    self.num = num
    self.featurize = featurize
    self.budget = budget
    self.seed = seed
    self.shuffle = shuffle
    self.devices = devices
    self.shard_index = shard_index
    self.num_shards = num_shards
    self.skip_oversized = skip_oversized
    self.names = names or str
    self.randomized = randomized
    # data.workers: a ``workers.FeaturizePool`` featurising ``chunk``
    # samples per task, ``ahead`` tasks in flight per shard (bounded).
    self.pool = pool
    self.chunk = max(1, int(chunk))
    self.ahead = int(ahead) or 4 * (pool.workers if pool else 1)
    self.skipped_total: List[str] = []

  def close(self):
    """Stops the worker processes (``data.workers``), if any."""
    if self.pool is not None:
      self.pool.close()

  def _order(self, epoch: int, shard: int) -> np.ndarray:
    perm = epoch_permutation(self.num, self.seed, epoch, self.shuffle)
    return perm[shard::self.num_shards]

  def _positions(self, start: DataPosition, shard: int):
    """(epoch, cursor, index) of the shard's samples from ``start`` on, with
    (epoch, None, None) after each epoch's last sample (endless)."""
    epoch, cursor = start.epoch, start.cursor
    while True:
      order = self._order(epoch, shard)
      if len(order) == 0:
        raise DataError("dataset", f"{self.num} samples cannot feed shard "
                        f"{shard} of {self.num_shards}: need at least one "
                        f"sample per device")
      for i in range(cursor, len(order)):
        yield epoch, i, int(order[i])
      yield epoch, None, None
      epoch, cursor = epoch + 1, 0

  def _samples(self, start: DataPosition, shard: int):
    """``_positions`` with each sample's graph: (epoch, cursor, index, g)."""
    if self.pool is None:
      for epoch, i, idx in self._positions(start, shard):
        if idx is None:
          yield epoch, None, None, None
          continue
        rng = sample_rng(self.seed, epoch, idx) if self.randomized else None
        yield epoch, i, idx, self.featurize(idx, rng)
      return
    # Worker processes: chunks of consecutive samples submitted ``ahead``
    # chunks in advance and consumed in order (a bounded queue).
    positions = self._positions(start, shard)
    inflight = collections.deque()

    def submit():
      chunk = []
      while len(chunk) < self.chunk:
        item = next(positions)
        chunk.append(item)
        if item[2] is None:
          break
      work = [(e, idx) for e, _, idx in chunk if idx is not None]
      inflight.append((chunk, work, self.pool.submit(work) if work else None))

    try:
      while True:
        while len(inflight) < self.ahead:
          submit()
        chunk, work, future = inflight.popleft()
        graphs = iter(self.pool.result(future, work) if work else ())
        for epoch, i, idx in chunk:
          yield epoch, i, idx, (None if idx is None else next(graphs))
    finally:
      for _, _, future in inflight:
        if future is not None:
          future.cancel()

  def _single_batches(self, start: DataPosition, shard: int):
    """Yields (padded batch, position after it, n_graphs, skipped)."""
    pending: List[jraph.GraphsTuple] = []
    skipped: List[str] = []
    n_tot = e_tot = 0
    for epoch, i, idx, g in self._samples(start, shard):
      if idx is None:  # the epoch's end
        next_pos = DataPosition(epoch + 1, 0)
        if pending:
          yield (pad_graphs(pending, self.budget), next_pos, len(pending),
                 skipped)
        elif skipped:
          self.skipped_total.extend(skipped)
        pending, skipped, n_tot, e_tot = [], [], 0, 0
        continue
      n, e = int(g.n_node[0]), int(g.n_edge[0])
      if not self.budget.fits(n, e):
        fault = (f"graph with {n} nodes and {e} edges exceeds the batch "
                 f"budget (max_nodes={self.budget.max_nodes}, max_edges="
                 f"{self.budget.max_edges}); raise the budget or set "
                 f"batch.skip_oversized=True")
        if not self.skip_oversized:
          raise DataError(self.names(idx), fault)
        skipped.append(f"{self.names(idx)}: {fault}")
        continue
      if pending and (n_tot + n > self.budget.max_nodes or
                      e_tot + e > self.budget.max_edges or
                      len(pending) >= self.budget.max_graphs):
        yield (pad_graphs(pending, self.budget), DataPosition(epoch, i),
               len(pending), skipped)
        pending, skipped, n_tot, e_tot = [], [], 0, 0
      pending.append(g)
      n_tot += n
      e_tot += e

  def iterate(self, start=None) -> Iterator[Batch]:
    """Batches from ``start`` (a DataPosition, or one per device)."""
    if self.devices is None:
      it = self._single_batches(start or DataPosition(), self.shard_index)
      while True:
        g, pos, count, skipped = next(it)
        self.skipped_total.extend(skipped)
        yield Batch(g, pos, count, skipped)
    starts = start or [DataPosition()] * self.devices
    if len(starts) != self.devices:
      raise ValueError(f"{len(starts)} start positions for {self.devices} "
                       f"devices")
    its = [self._single_batches(p, self.shard_index + d)
           for d, p in enumerate(starts)]
    while True:
      parts = [next(it) for it in its]
      skipped = [s for p in parts for s in p[3]]
      self.skipped_total.extend(skipped)
      yield Batch(stack_device_batches([p[0] for p in parts]),
                  tuple(p[1] for p in parts), sum(p[2] for p in parts),
                  skipped)


def eval_batches(graphs: Sequence[jraph.GraphsTuple], budget: Budget,
                 devices: Optional[int] = None,
                 names: Optional[Sequence[str]] = None):
  """One ordered pass over ``graphs`` (no shuffling), padded to ``budget``.

  Yields (graph batch, list of sample indices per device batch). When
  ``devices`` is set, the last step is completed with all-padding batches.
  Streams: ``graphs`` is read in order and at most one step's batches are
  held, so a lazily featurised split is never in memory whole.
  """
  def singles():
    pending, idx = [], []
    n_tot = e_tot = 0
    for i, g in enumerate(graphs):
      n, e = int(g.n_node[0]), int(g.n_edge[0])
      if not budget.fits(n, e):
        name = names[i] if names is not None else str(i)
        raise DataError(name, f"graph with {n} nodes and {e} edges exceeds "
                        f"the batch budget {budget}")
      if pending and (n_tot + n > budget.max_nodes or e_tot + e >
                      budget.max_edges or len(pending) >= budget.max_graphs):
        yield pad_graphs(pending, budget), idx
        pending, idx, n_tot, e_tot = [], [], 0, 0
      pending.append(g)
      idx.append(i)
      n_tot += n
      e_tot += e
    if pending:
      yield pad_graphs(pending, budget), idx

  if devices is None:
    yield from singles()
    return
  chunk = []
  for single in singles():
    chunk.append(single)
    if len(chunk) == devices:
      yield stack_device_batches([c[0] for c in chunk]), [c[1] for c in chunk]
      chunk = []
  if chunk:
    empty = _empty_like(chunk[0][0])
    chunk += [(empty, [])] * (devices - len(chunk))
    yield stack_device_batches([c[0] for c in chunk]), [c[1] for c in chunk]


def _empty_like(batch: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """An all-padding batch with the same shapes (for ragged last steps)."""
  def zero(tree):
    return {k: np.zeros_like(v) for k, v in tree.items()}
  n_node = np.zeros_like(batch.n_node)
  n_node[-1] = batch.nodes["mask"].shape[0]
  n_edge = np.zeros_like(batch.n_edge)
  n_edge[-1] = batch.senders.shape[0]
  return batch._replace(nodes=zero(batch.nodes), edges=zero(batch.edges),
                        globals=zero(batch.globals), n_node=n_node,
                        n_edge=n_edge, senders=np.zeros_like(batch.senders),
                        receivers=np.zeros_like(batch.receivers))


class Prefetcher:
  """Runs an iterator in a background thread, ``size`` items ahead.

  Host-side featurisation (neighbour lists, noise) then overlaps with the
  device step. Exceptions are re-raised in the consumer.
  """

  def __init__(self, iterator, size: int = 2):
    self._queue: "queue.Queue" = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(iterator,),
                                    daemon=True)
    self._thread.start()

  def _run(self, iterator):
    try:
      for item in iterator:
        while not self._stop.is_set():
          try:
            self._queue.put(("item", item), timeout=0.1)
            break
          except queue.Full:
            continue
        if self._stop.is_set():
          return
    except BaseException as e:  # pylint: disable=broad-except
      if not self._stop.is_set():  # after close(): nobody reads (a closed
        self._queue.put(("error", e))  # worker pool cancels its futures)
      return
    self._queue.put(("end", None))

  def __iter__(self):
    return self

  def __next__(self):
    kind, value = self._queue.get()
    if kind == "error":
      raise value
    if kind == "end":
      raise StopIteration
    return value

  def close(self):
    self._stop.set()
    logging.debug("prefetcher closed")
