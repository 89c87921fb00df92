"""GATGNN's reverse edge pairs: the sample order and the batch layout.

``pair_reverse_edges`` orders a sample's edges in reverse pairs (featurised
with ``crystal.features.FeaturizerConfig.pair_edges``); ``paired_layout``,
registered with ``noisy_nodes.data.batching.register_edge_layout`` under the
``'reverse'`` edge key when this module is imported, keeps the pairs as two
halves of every padded batch, so that ``crystal.models.gatgnn`` reads the
reverse of an edge by swapping halves instead of a gather.
"""
from __future__ import annotations

import jraph
import numpy as np

from noisy_nodes.data import batching


def pair_reverse_edges(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
  """Orders the edges as k pairs (j -> i shift s, i -> j shift -s), then
  the edges that are their own reverse (zero-shift self loops).

  Message-passing layers that evaluate an edge function from each endpoint
  of an edge with a symmetric edge feature (GATGNN's u_i and u_j,
  ``crystal.models.gatgnn``) can then evaluate it once per directed edge and
  compute edge-feature products once per pair: u_j of an edge is u_i of its
  reverse. The result holds 2k + m edges: edge t < k is paired with edge
  t + k and the last m are their own reverse. An edge whose reverse is not
  in the graph (a ``max_neighbors`` cut keeps j among i's nearest but not i
  among j's) is paired with an appended *phantom* reverse, flagged in
  ``edges['phantom']``, that only provides its evaluation and that every
  model masks out of aggregations (``crystal.models.stack.read_graph``).

  Adds to ``edges``: ``reverse`` int32 (t <-> t + k for t < 2k, t for the
  rest) and ``phantom`` bool. Pairs get bitwise-equal distances (the real or
  lower-index edge's) and exactly negated vectors, so their edge features
  are identical. ``paired_layout`` keeps the pairing in batches.

  Args:
    graph: a single-graph sample of ``structure_to_graph`` (edges with
      ``vectors``, ``distances``, ``shifts``); other edge arrays are copied to
      phantoms from their partner.
  Returns:
    The reordered graph with the two arrays above.
  """
  senders = np.asarray(graph.senders, np.int64)
  receivers = np.asarray(graph.receivers, np.int64)
  shifts = np.asarray(graph.edges["shifts"], np.int64).reshape(-1, 3)
  e = senders.shape[0]
  n = int(graph.n_node[0])
  # Integer keys of (sender, receiver, shift) and of each edge's reverse;
  # shifts are small integers, offset to be non-negative.
  lo = int(min(shifts.min(initial=0), -shifts.max(initial=0)))
  span = int(max(shifts.max(initial=0), -shifts.min(initial=0))) - lo + 1

  def key(s, r, sh):
    k = s * n + r
    for c in range(3):
      k = k * span + (sh[:, c] - lo)
    return k

  fwd = key(senders, receivers, shifts)
  bwd = key(receivers, senders, -shifts)
  partner = np.full(e, -1, np.int64)
  if e:
    order = np.argsort(fwd, kind="stable")
    pos = np.minimum(np.searchsorted(fwd[order], bwd), e - 1)
    found = fwd[order][pos] == bwd
    partner[found] = order[pos][found]
  index = np.arange(e)
  # Pairs of two distinct real edges: the lower index leads. An unmatched
  # edge leads a pair with its phantom reverse.
  pair_first = index[partner > index]
  unmatched = index[partner < 0]
  own = index[partner == index]
  first = np.concatenate([pair_first, unmatched])
  k, m = first.shape[0], own.shape[0]
  edges = {}
  for name, value in graph.edges.items():
    value = np.asarray(value)
    second = np.concatenate([value[partner[pair_first]], value[unmatched]])
    if name in ("vectors", "shifts"):
      flip = np.concatenate([np.zeros(len(pair_first), bool),
                             np.ones(len(unmatched), bool)])
      second = np.where(flip.reshape((-1,) + (1,) * (value.ndim - 1)),
                        -second, second)
    edges[name] = np.concatenate([value[first], second, value[own]])
  # Bitwise-symmetric geometry: the second of a pair takes the first's.
  d, v = edges["distances"], edges["vectors"]
  edges["distances"] = np.concatenate([d[:k], d[:k], d[2 * k:]])
  edges["vectors"] = np.concatenate([v[:k], -v[:k], v[2 * k:]])
  edges["reverse"] = np.concatenate([np.arange(k, 2 * k), np.arange(k),
                                     np.arange(2 * k, 2 * k + m)]
                                    ).astype(np.int32)
  edges["phantom"] = np.concatenate([np.zeros(k + len(pair_first), bool),
                                     np.ones(len(unmatched), bool),
                                     np.zeros(m, bool)])
  s_first, r_first = senders[first], receivers[first]
  return graph._replace(
      edges=edges,
      senders=np.concatenate([s_first, r_first, senders[own]]
                             ).astype(np.int32),
      receivers=np.concatenate([r_first, s_first, receivers[own]]
                               ).astype(np.int32),
      n_edge=np.array([2 * k + m], np.int32))


_PAIR_KEYS = ("mask", "phantom", "reverse")


def paired_layout(graphs, edges, senders, receivers, tot_n, pad_e):
  """Reorders the edges of paired samples (``pair_reverse_edges``).

  A sample holds 2k + m edges: edge t < k paired with t + k, and m edges
  that are their own reverse (zero-shift self loops). In the batch the first
  edges of the pairs fill [0, K) and their partners [H, H + K), H = pad_e /
  2, so edge t's reverse is (t + H) mod 2H: the models swap the halves of an
  [E, ...] array instead of gathering it. The self loops follow, two with
  identical edge arrays (every zero-shift self loop of a featurised dataset)
  on rows t and t + H, each its own reverse (``edges['reverse'][t] == t``),
  so that the two rows of a pair still share their edge features; an odd
  one out gets a padding row as partner (there is one: an odd number of
  self loops makes the edge count odd, and the padded count is even).
  Edges of one graph are not contiguous; read their graph from
  ``receivers``.
  """
  if pad_e % 2:
    raise ValueError(f"the paired edge layout needs an even number of edge "
                     f"rows, got {pad_e}")
  half = pad_e // 2
  first, second, loops = [], [], []
  start = 0
  for g in graphs:
    e = int(g.n_edge[0])
    rev = np.asarray(g.edges["reverse"])
    m = int(np.sum(rev == np.arange(e)))
    k = (e - m) // 2
    want = np.concatenate([np.arange(k, 2 * k), np.arange(k),
                           np.arange(2 * k, e)])
    if (e - m) % 2 or not np.array_equal(rev, want):
      raise ValueError("edges['reverse'] is not the pairing of "
                       "pair_reverse_edges (edge t with t + k, "
                       "then edges that are their own reverse)")
    first.append(np.arange(start, start + k))
    second.append(np.arange(start + k, start + 2 * k))
    loops.append(np.arange(start + 2 * k, start + e))
    start += e
  empty = np.zeros(0, np.int64)
  first = np.concatenate(first) if first else empty
  second = np.concatenate(second) if second else empty
  loops = np.concatenate(loops) if loops else empty
  # Self loops in groups of identical edge arrays; two of a group share a
  # pair of rows, an odd one out is paired with padding (-1).
  loop_a, loop_b, groups = [empty], [empty], 0
  if loops.size:
    data = [np.ascontiguousarray(np.asarray(v)[loops].reshape(loops.size, -1))
            for key, v in sorted(edges.items()) if key not in _PAIR_KEYS]
    rows = (np.concatenate([d.view(np.uint8) for d in data], axis=1)
            if data else np.zeros((loops.size, 0), np.uint8))
    if np.all(rows == rows[:1]):
      group = np.zeros(loops.size, np.int64)   # the usual case: one group
    else:
      # Rows as opaque byte strings: a 1-D sort (np.unique over axis 0
      # lexsorts every byte column: docs/benchmarks.md).
      keys = rows.view(np.dtype((np.void, rows.shape[1]))).reshape(-1)
      _, group = np.unique(keys, return_inverse=True)
    group = group.reshape(-1)
    groups = int(group.max()) + 1
    for g_ in range(groups):
      members = loops[group == g_]
      if members.size % 2:
        members = np.concatenate([members, [-1]])
      loop_a.append(members[0::2])
      loop_b.append(members[1::2])
  loop_a, loop_b = np.concatenate(loop_a), np.concatenate(loop_b)
  top = np.concatenate([first, loop_a])
  num = top.shape[0]
  if num > half:
    raise ValueError(
        f"{loops.size} self loops in {groups} groups of "
        f"distinct edge features do not fit the paired layout of {pad_e} "
        "edge rows; featurise with pair_edges=False")
  order = np.full(pad_e, -1, np.int64)   # batch row -> row of the plain stack
  order[:num] = top
  order[half:half + num] = np.concatenate([second, loop_b])
  real = order >= 0
  out = {}
  for key, value in edges.items():
    arr = np.zeros_like(value)
    arr[real] = value[order[real]]
    out[key] = arr
  reverse = (np.arange(pad_e) + half) % pad_e
  for lo in (first.size, half + first.size):
    reverse[lo:lo + loop_a.size] = np.arange(lo, lo + loop_a.size)
  out["reverse"] = reverse.astype(np.int32)
  new_senders = np.full(pad_e, tot_n, np.int32)
  new_receivers = np.full(pad_e, tot_n, np.int32)
  new_senders[real] = senders[order[real]]
  new_receivers[real] = receivers[order[real]]
  return out, new_senders, new_receivers


batching.register_edge_layout("reverse", paired_layout)
