"""Neighbour-search throughput on OC20-size slabs: ours vs ASE.

Usage:
  python benchmarks/neighbors_bench.py [--repeats 20] [--cutoff 6.0]

Systems: fcc(111) metal slabs (50-200 atoms, EMT metals, 3-5 layers, 7-10 Å
of vacuum) with an O / C / N / H adsorbate, like OC20 adsorbate+catalyst
systems, built with ase.build (fixed seed). For each repeat and system the two
searches run back to back in alternating order (interleaved, so machine load
hits both alike), each call timed with perf_counter. Both must return the same
edge count. Prints per-system medians, edges/s for both, the median of the
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from noisy_nodes.neighbors import neighbor_list  # noqa: E402

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

  def ours(name, atoms):
    return len(neighbor_list(atoms.positions, cell[name], atoms.pbc,
                             args.cutoff).senders)

  def theirs(atoms):
    return len(ase_neighbor_list("i", atoms, args.cutoff))

  for name, atoms in systems:  # warm up, and check both agree
    if ours(name, atoms) != theirs(atoms):
      raise AssertionError(f"{name}: edge counts differ")
  t_ours = {name: [] for name, _ in systems}
  t_ase = {name: [] for name, _ in systems}
  edges = {}
  for rep in range(args.repeats):
    for name, atoms in systems:
      # Alternate which search runs first so neither always gets warm caches.
      for which in (("ours", "ase") if rep % 2 == 0 else ("ase", "ours")):
        if which == "ours":
          t = time.perf_counter()
          edges[name] = ours(name, atoms)
          t_ours[name].append(time.perf_counter() - t)
        else:
          t = time.perf_counter()
          theirs(atoms)
          t_ase[name].append(time.perf_counter() - t)

  print(f"cutoff {args.cutoff} Å, {args.repeats} interleaved repeats, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS="
        f"{os.environ['OMP_NUM_THREADS']}")
  print(f"{'system':<22}{'atoms':>6}{'edges':>8}{'ours ms':>10}"
        f"{'ASE ms':>10}{'speed-up':>10}")
  ratios = []
  for name, atoms in systems:
    mo, ma = np.median(t_ours[name]), np.median(t_ase[name])
    ratios.extend(np.array(t_ase[name]) / np.array(t_ours[name]))
    print(f"{name:<22}{len(atoms):>6}{edges[name]:>8}{mo * 1e3:>10.2f}"
          f"{ma * 1e3:>10.2f}{ma / mo:>9.1f}x")
  total_edges = sum(edges.values())
  sum_ours = sum(np.median(v) for v in t_ours.values())
  sum_ase = sum(np.median(v) for v in t_ase.values())
  ratio = float(np.median(ratios))
  print(f"edges/s: ours {total_edges / sum_ours:.3g}, "
        f"ASE {total_edges / sum_ase:.3g}")
  best = float(np.median([min(t_ase[k]) / min(t_ours[k]) for k in t_ase]))
  print(f"best-of-{args.repeats} times: ours "
        f"{total_edges / sum(min(v) for v in t_ours.values()):.3g} edges/s, "
        f"ASE {total_edges / sum(min(v) for v in t_ase.values()):.3g} "
        f"edges/s, median speed-up {best:.1f}x")
  print(f"median speed-up {ratio:.1f}x (goal >= {GOAL:.0f}x): "
        f"{'met' if ratio >= GOAL else 'NOT met'}")


if __name__ == "__main__":
  main()
