"""Neighbour-search throughput on OC20-size slabs: ours, vesin's and ASE's.

Usage:
  python benchmarks/neighbors_bench.py [--repeats 20] [--cutoff 6.0]

Systems: fcc(111) metal slabs (50-200 atoms, EMT metals, 3-5 layers, 7-10 Å
of vacuum) with an O / C / N / H adsorbate, like OC20 adsorbate+catalyst
systems, built with ase.build (fixed seed). For each repeat and system the three
searches (the library's ``neighbor_list``, vesin's search alone, which it
builds on, and ASE's) run back to back in rotating order (interleaved, so
machine load hits all alike), each call timed with perf_counter. All must
return the same edge count. Prints per-system medians, edges/s for both, the median of the
per-call speed-up ratios and the goal (>= 5x); best-of-repeats numbers are
printed too, as they are less sensitive to a busy machine.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase.build  # noqa: E402
from ase.neighborlist import neighbor_list as ase_neighbor_list  # noqa: E402
import numpy as np  # noqa: E402
import vesin  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from noisy_nodes.data.neighbors import neighbor_list  # noqa: E402

GOAL = 5.0
METALS = ("Cu", "Pt", "Au", "Ag", "Ni", "Pd", "Al")
ADSORBATES = ("O", "C", "N", "H")


def make_systems(seed=0):
  """OC20-like slabs: (name, ase.Atoms) with 50 to 200 atoms."""
  rng = np.random.default_rng(seed)
  systems = []
  for size in [(4, 4, 3), (3, 4, 5), (4, 5, 4), (5, 5, 4), (5, 6, 4),
               (6, 6, 4), (5, 5, 6), (4, 4, 6), (7, 7, 4), (5, 8, 5)]:
    metal = METALS[rng.integers(len(METALS))]
    slab = ase.build.fcc111(metal, size=size, vacuum=rng.uniform(7, 10))
    ads = ADSORBATES[rng.integers(len(ADSORBATES))]
    site = ("ontop", "bridge", "fcc", "hcp")[rng.integers(4)]
    ase.build.add_adsorbate(slab, ads, rng.uniform(1.0, 2.0), site)
    slab.rattle(0.05, seed=int(rng.integers(1 << 30)))
    if len(slab) <= 201:
      systems.append((f"{metal}{size}+{ads}", slab))
  return systems


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--cutoff", type=float, default=6.0)
  args = parser.parse_args()
  systems = make_systems()
  cell = {name: np.asarray(a.cell) for name, a in systems}
  raw = vesin.NeighborList(cutoff=args.cutoff, full_list=True)

  searches = {
      # The library's full search: vesin plus the inclusive cutoff, the
      # deterministic edge order and vectors from the given positions.
      "ours": lambda name, atoms: len(neighbor_list(
          atoms.positions, cell[name], atoms.pbc, args.cutoff).senders),
      # vesin's search alone (what the library builds on).
      "vesin": lambda name, atoms: len(raw.compute(
          points=atoms.positions, box=cell[name],
          periodic=[bool(p) for p in atoms.pbc], quantities="i")[0]),
      "ASE": lambda name, atoms: len(ase_neighbor_list(
          "i", atoms, args.cutoff)),
  }
  for name, atoms in systems:  # warm up, and check all agree
    counts = {k: f(name, atoms) for k, f in searches.items()}
    if len(set(counts.values())) != 1:
      raise AssertionError(f"{name}: edge counts differ: {counts}")
  times = {k: {name: [] for name, _ in systems} for k in searches}
  edges = {}
  order = list(searches)
  for rep in range(args.repeats):
    for name, atoms in systems:
      # Rotate which search runs first so none always gets warm caches.
      for k in order[rep % 3:] + order[:rep % 3]:
        t = time.perf_counter()
        edges[name] = searches[k](name, atoms)
        times[k][name].append(time.perf_counter() - t)

  print(f"cutoff {args.cutoff} Å, {args.repeats} interleaved repeats, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ['OMP_NUM_THREADS']}")
  print(f"{'system':<22}{'atoms':>6}{'edges':>8}{'ours ms':>10}"
        f"{'vesin ms':>10}{'ASE ms':>10}{'vs ASE':>9}")
  ratios = []
  for name, atoms in systems:
    m = {k: np.median(times[k][name]) for k in searches}
    ratios.extend(np.array(times["ASE"][name]) / np.array(times["ours"][name]))
    print(f"{name:<22}{len(atoms):>6}{edges[name]:>8}{m['ours'] * 1e3:>10.2f}"
          f"{m['vesin'] * 1e3:>10.2f}{m['ASE'] * 1e3:>10.2f}"
          f"{m['ASE'] / m['ours']:>8.1f}x")
  total_edges = sum(edges.values())
  for stat, f in (("median", np.median), (f"best-of-{args.repeats}", min)):
    rates = {k: total_edges / sum(f(v) for v in times[k].values())
             for k in searches}
    print(f"edges/s ({stat} times): "
          + ", ".join(f"{k} {r:.3g}" for k, r in rates.items())
          + f"; ours / vesin alone {rates['ours'] / rates['vesin']:.2f}")
  ratio = float(np.median(ratios))
  print(f"median speed-up over ASE {ratio:.1f}x (goal >= {GOAL:.0f}x): "
        f"{'met' if ratio >= GOAL else 'NOT met'}")


if __name__ == "__main__":
  main()
