"""Seconds and peak RSS to build the OC20 task's sources and run its setup.

  python benchmarks/sources_bench.py [--n 20000] [--keep DIR]

writes a legacy ``data.lmdb`` folder (``train/`` of N 12-atom systems and a
``val_id/`` of 200, real torch_geometric pickle layout) in a temporary
directory, then in a fresh process times ``OC20Task.load_splits()`` and
``setup(train)`` and prints the peak RSS (above the imports too). Run it
with ``PYTHONPATH`` at another checkout to compare trees on the same files
(``--keep DIR`` keeps and reuses the folder).
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(root: str, n: int) -> None:
  from noisy_nodes.gns.oc20 import legacy_lmdb  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)

  def fields(i):
    pos = rng.uniform(0, 8, (12, 3))
    return {"sid": i, "atomic_numbers": np.array([29] * 10 + [8, 1],
                                                 np.float32),
            "pos": pos, "pos_relaxed": pos + 0.1,
            "cell": (np.eye(3) * 8.0)[None], "natoms": 12,
            "tags": np.array([0] * 5 + [1] * 5 + [2, 2]),
            "fixed": np.array([1] * 5 + [0] * 7),
            "y_init": float(i % 7), "y_relaxed": float(i % 5)}

  for split, m in (("train", n), ("val_id", 200)):
    os.makedirs(os.path.join(root, split), exist_ok=True)
    legacy_lmdb.write_legacy_lmdb_for_tests(
        os.path.join(root, split, "data.lmdb"), [fields(i) for i in range(m)])


def measure(root: str) -> None:
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import oc20  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns.oc20.task import OC20Task  # pylint: disable=g-import-not-at-top
  c = oc20.get_config("tiny")
  c.data.path = root
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  t0 = time.time()
  task = OC20Task(c)
  splits = task.load_splits()
  t1 = time.time()
  task.setup(splits["train"])
  t2 = time.time()
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(f"{len(splits['train'])} training systems: load_splits {t1 - t0:.2f} s"
        f", setup {t2 - t1:.2f} s, total {t2 - t0:.2f} s; peak RSS "
        f"{rss / 1024:.0f} MB ({(rss - rss0) / 1024:.0f} MB above the "
        "imports)")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=20000)
  p.add_argument("--keep", default="")
  p.add_argument("--measure", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.measure:
    return measure(args.measure)
  with tempfile.TemporaryDirectory() as tmp:
    root = args.keep or tmp
    if not os.path.exists(os.path.join(root, "train", "data.lmdb")):
      write(root, args.n)
    subprocess.run([sys.executable, __file__, "--measure", root], check=True)


if __name__ == "__main__":
  main()
