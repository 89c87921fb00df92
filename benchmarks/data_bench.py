"""Input pipeline at dataset scale (issue 15's acceptance figures).

Usage:
  python benchmarks/data_bench.py            # 500,000 vs 5,000 systems, 1,000 steps
  python benchmarks/data_bench.py --quick    # 20,000 vs 2,000 systems, 30 steps (< 2 min)
  python benchmarks/data_bench.py --only=oc20 --memory_only  # the RSS figure alone
  python benchmarks/data_bench.py --only=crysgnn [--quick]   # CrysGNN half only
  python benchmarks/data_bench.py --only=oc20 [--quick]      # OC20 half only
  python benchmarks/data_bench.py --rates_only   # K = 1 vs 2 workers only (20,000)
  python benchmarks/data_bench.py --device [--device_variant=demo]  # input wait on the accelerator

Without ``--only`` both halves run: OC20 (below), then CrysGNN pre-training
on a 200,000-crystal corpus (20,000 with --quick; benchmarks/crysgnn_data_bench.py
says what it writes and prints).

Writes an OC20-layout folder (``train/data.lmdb``, ``val_id/data.lmdb``) of
legacy LMDBs of real torch_geometric-format pickles (``legacy_lmdb.data_pickle``)
in a temporary directory it removes: EMT-size slabs, a 3x3x4 fcc(111) slab of
one of five metals with a two-atom adsorbate (38 atoms), positions jittered per
system, a relaxed structure 0.1 Å away and an energy drawn at random (a
throughput benchmark: nothing is learned from the labels). Then, for Noisy
Nodes at the demo width (``configs/oc20.py:demo``):

* seconds from process start to the first training batch and to the first
  training step (which includes compiling the step) on the raw LMDBs, then
  after ``noisy_nodes.preprocess``; goals <= 60 s raw, <= 10 s preprocessed.
  The runs share a fresh persistent compilation cache (``NN_COMPILATION_CACHE``
  in the temporary folder): the raw run compiles cold; the preprocessed run
  reuses its programs where the batch budget is the same, and is run a
  second time to show a restart's start-up with a warm cache;
* the training process's peak RSS after ``--steps`` steps on the big folder
  and on the small one (goal: <= 2 GB and within 1.25x);
* the input pipeline alone (featurise with noise + pack), systems/s with
  ``data.workers`` = 1 and 2 (goal >= 1.7x at K = 2 on an idle 2-core host);
* random reads of one record: raw legacy LMDB vs the shards.

Each training run is a fresh process (``_child``), so its RSS and start-up are
its own.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
METALS = ("Cu", "Pt", "Au", "Ag", "Ni")


def write_folder(path, n_train, n_val, seed=0):
  """OC20 IS2RE layout of legacy LMDBs with ``n_train`` / ``n_val`` systems."""
  import ase.build  # pylint: disable=g-import-not-at-top
  import lmdb  # pylint: disable=g-import-not-at-top
  from noisy_nodes.gns.oc20 import legacy_lmdb  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  templates = []
  for m in METALS:
    slab = ase.build.fcc111(m, size=(3, 3, 4), vacuum=8.0)
    ase.build.add_adsorbate(slab, "O", 1.8, "fcc")
    ase.build.add_adsorbate(slab, "C", 2.9, "fcc")
    templates.append(slab)
  for split, n in (("train", n_train), ("val_id", n_val)):
    os.makedirs(os.path.join(path, split))
    env = lmdb.open(os.path.join(path, split, "data.lmdb"), subdir=False,
                    map_size=1 << 40, meminit=False, lock=False, sync=False)
    txn = env.begin(write=True)
    for i in range(n):
      t = templates[i % len(templates)]
      k = len(t)
      pos = t.positions + rng.normal(0, 0.05, (k, 3))
      tags = np.where(np.arange(k) >= k - 2, 2, np.where(
          t.positions[:, 2] > np.sort(t.positions[:-2, 2])[-10], 1, 0))
      fields = {
          "pos": pos, "pos_relaxed": pos + rng.normal(0, 0.1, (k, 3)),
          "atomic_numbers": t.numbers.astype(np.float32),
          "cell": np.asarray(t.cell)[None].astype(np.float32),
          "tags": tags, "fixed": (tags == 0).astype(np.int64),
          "natoms": k, "sid": 1_000_000 + i,
          "y_relaxed": float(rng.normal(-1.5, 1.0)),
          "y_init": float(rng.normal(2.0, 1.0))}
      txn.put(str(i).encode("ascii"), legacy_lmdb.data_pickle(fields))
      if i % 5000 == 4999:
        txn.commit()
        txn = env.begin(write=True)
    import pickle  # pylint: disable=g-import-not-at-top
    txn.put(b"length", pickle.dumps(n, protocol=-1))
    txn.commit()
    env.sync()
    env.close()


def _config(path, steps, workers=0, variant="demo"):
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  import oc20 as oc20_config  # pylint: disable=g-import-not-at-top
  c = oc20_config.get_config(variant)
  c.data.path = path
  c.data.workers = workers
  c.train.update(num_steps=steps, log_every=max(1, steps // 3), eval_every=0,
                 checkpoint_every=10 ** 9, hugepages=False)
  return c


def _task_config(task, path, steps, workers, variant="demo"):
  if task == "crysgnn":
    from benchmarks import crysgnn_data_bench  # pylint: disable=g-import-not-at-top
    return crysgnn_data_bench.crysgnn_config(path, steps, workers)
  return _config(path, steps, workers, variant)


def peak_rss_mb() -> float:
  """This process's peak resident memory (MB) since it started.

  ``VmHWM`` of /proc/self/status, the high-water mark of this process
  image. Not ``getrusage``'s ``ru_maxrss``: Linux keeps it across fork and
  exec, so a child started by a 2.9 GB parent reports >= 2.9 GB whatever
  it uses (the first full run of this benchmark reported 2,902 / 2,287 MB
  for children whose own peak was ~0.6 GB).
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc


def _child(args):
  """One training run: prints JSON timings and peak RSS (at the last
  step's log line, and at the end: after the final validation)."""
  t0 = time.time()
  import logging  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data import batching  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  marks = {}
  orig = batching.GraphStream.iterate

  def iterate(self, start=None):
    for b in orig(self, start):
      marks.setdefault("first_batch_s", time.time() - t0)
      yield b
  batching.GraphStream.iterate = iterate

  class Steps(logging.Handler):
    def emit(self, record):
      msg = record.getMessage()
      if msg.startswith("step ") and "loss" in msg:
        marks.setdefault("first_step_s", time.time() - t0)
        if msg.startswith(f"step {args.steps}/"):
          marks["rss_last_step_mb"] = peak_rss_mb()
  logging.getLogger().addHandler(Steps())
  logging.getLogger().setLevel(logging.INFO)
  cfg = _task_config(args.task, args.child, args.steps, args.workers,
                     args.variant)
  cfg.train.log_every = args.log_every
  workdir = tempfile.mkdtemp(prefix="data_bench_run_")
  try:
    trainer.train(cfg, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
    marks["windows"] = [
        {k: r[k] for k in ("step", "input_wait", "graphs_per_sec") if k in r}
        for r in rows if r.get("split") == "train"]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  import jax  # pylint: disable=g-import-not-at-top
  marks["device"] = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
  marks["peak_rss_mb"] = peak_rss_mb()
  marks["total_s"] = time.time() - t0
  print("RESULT " + json.dumps(marks))


def run_child(path, steps, workers=0, task="oc20", variant="demo",
              log_every=1, platform="cpu"):
  """One training run in a fresh process (``_child``); ``platform``: the
  JAX platform it may use ('' = whatever JAX finds: the accelerator)."""
  cmd = [sys.executable, os.path.abspath(__file__), "--child", path,
         "--steps", str(steps), "--workers", str(workers), "--task", task,
         "--variant", variant, "--log_every", str(log_every)]
  env = dict(os.environ,
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             NN_COMPILATION_CACHE=os.path.join(os.path.dirname(path), "xla"))
  if platform:
    env["JAX_PLATFORMS"] = platform
  else:
    env.pop("JAX_PLATFORMS", None)
  out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       check=False)
  for line in out.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  raise RuntimeError(f"training run failed:\n{out.stderr[-3000:]}")


def pipeline_rate(cfg, batches):
  """The training stream of ``cfg`` alone (featurise + pack): {rate:
  samples/s, setup_s: splits + task statistics + budget, startup_s: the
  stream's (its workers')}."""
  from noisy_nodes.engine import trainer  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  exp = trainer.Experiment(cfg, "")
  exp.setup_task()
  budget = exp.budget()
  setup = time.time() - t0
  t0 = time.time()
  stream = exp.train_stream(budget, seed=0)
  startup = time.time() - t0
  it = stream.iterate()
  try:
    for _ in range(3):  # warm-up: worker start-up and first chunks
      next(it)
    t0, n = time.time(), 0
    for _ in range(batches):
      n += next(it).num_graphs
    return {"rate": n / (time.time() - t0), "setup_s": setup,
            "startup_s": startup}
  finally:
    stream.close()


def worker_scaling(make_config, batches, rounds=3):
  """Training-stream rates at K = 1 and K = 2 workers, measured alternately
  ``rounds`` times (K=1, K=2, K=1, K=2, ...) so that a drift of the host's
  speed hits both: {k1, k2: mean rates, ratios: K=2 / K=1 per round,
  startup1, startup2}."""
  k1, k2 = [], []
  for _ in range(rounds):
    k1.append(pipeline_rate(make_config(1), batches))
    k2.append(pipeline_rate(make_config(2), batches))
  return {"k1": float(np.mean([r["rate"] for r in k1])),
          "k2": float(np.mean([r["rate"] for r in k2])),
          "ratios": [b["rate"] / a["rate"] for a, b in zip(k1, k2)],
          "rounds": [(a["rate"], b["rate"]) for a, b in zip(k1, k2)],
          "startup1": k1[0]["startup_s"], "startup2": k2[0]["startup_s"],
          "setup1": k1[0]["setup_s"]}


def scaling_line(what, unit, r, batches):
  ratios = ", ".join(f"{b:.0f}/{a:.0f} = {b / a:.2f}"
                     for a, b in r["rounds"])
  return (f"{what}: {r['k1']:.0f} {unit}/s at K=1, {r['k2']:.0f} at K=2 "
          f"({r['k2'] / r['k1']:.2f}x; per round {ratios}; {batches} batches"
          f" per rate; goal >= 1.7x on an idle 2-core host; "
          f"{os.cpu_count()} cores here); worker start-up "
          f"{r['startup1']:.1f}s (K=1), {r['startup2']:.1f}s (K=2)")


def read_rate(source, count=2000, seed=0):
  idx = np.random.default_rng(seed).integers(0, len(source), count)
  source[int(idx[0])]
  t0 = time.time()
  for i in idx:
    source[int(i)]
  return count / (time.time() - t0)


def oc20_main(args):
  """The OC20 half (module docstring)."""
  big = args.big or (20_000 if args.quick or args.rates_only else 500_000)
  small = args.small or (2_000 if args.quick else 5_000)
  steps = args.steps or (30 if args.quick else 1000)
  tmp = tempfile.mkdtemp(prefix="data_bench_")
  try:
    t0 = time.time()
    raw_big, raw_small = os.path.join(tmp, "big"), os.path.join(tmp, "small")
    write_folder(raw_big, big, 200)
    if not args.rates_only:
      write_folder(raw_small, small, 200, seed=1)
    print(f"wrote {big:,} + {0 if args.rates_only else small:,} training "
          f"systems (legacy LMDB) in "
          f"{time.time() - t0:.0f}s", flush=True)
    if args.rates_only:
      from noisy_nodes import preprocess  # pylint: disable=g-import-not-at-top
      shards = os.path.join(tmp, "shards")
      preprocess.preprocess(_config(raw_big, 1), shards, workers=2,
                            shard_size=max(1000, big // 40))
      batches = args.batches or (150 if args.quick else 600)
      r = worker_scaling(lambda k: _config(shards, 1, k), batches)
      print(scaling_line(f"input pipeline with noise ({big:,} preprocessed "
                         "systems)", "systems", r, batches))
      return
    if args.memory_only:
      raw, ref = run_child(raw_big, steps), run_child(raw_small, steps)
      print(f"peak RSS (VmHWM) after {steps} steps on the raw LMDBs: "
            f"{raw['peak_rss_mb']:.0f} MB with {big:,} systems, "
            f"{ref['peak_rss_mb']:.0f} MB with {small:,} "
            f"({raw['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x; goal <= 2048 "
            f"MB and <= 1.25x); at the last step {raw['rss_last_step_mb']:.0f}"
            f" / {ref['rss_last_step_mb']:.0f} MB; first step "
            f"{raw['first_step_s']:.1f} / {ref['first_step_s']:.1f} s")
      return
    from noisy_nodes import preprocess  # pylint: disable=g-import-not-at-top
    shards = os.path.join(tmp, "shards")
    t0 = time.time()
    preprocess.preprocess(_config(raw_big, 1), shards, workers=2,
                          shard_size=max(1000, big // 40))
    pre_s = time.time() - t0
    print(f"noisy_nodes.preprocess of {big:,} systems, 2 workers: "
          f"{pre_s:.0f}s ({big / pre_s:.0f} systems/s)", flush=True)
    from noisy_nodes.data import shards as shards_lib  # pylint: disable=g-import-not-at-top
    from noisy_nodes.gns.oc20 import task as oc20_task  # pylint: disable=g-import-not-at-top
    splits, _ = shards_lib.open_splits(shards)
    legacy = oc20_task.open_path(os.path.join(raw_big, "train"))
    print(f"random reads of one system: shards {read_rate(splits['train']):.0f}"
          f" records/s, raw legacy LMDB {read_rate(legacy):.0f} records/s",
          flush=True)
    raw = run_child(raw_big, steps)
    pre = run_child(shards, steps)
    warm = run_child(shards, max(steps // 10, 3))
    ref = run_child(raw_small, steps)
    print(f"first batch / first step (s), raw LMDBs:   "
          f"{raw['first_batch_s']:.1f} / {raw['first_step_s']:.1f}  "
          f"(goal <= 60; compiles cold)")
    print(f"first batch / first step (s), preprocessed: "
          f"{pre['first_batch_s']:.1f} / {pre['first_step_s']:.1f}, "
          f"restarted: {warm['first_batch_s']:.1f} / "
          f"{warm['first_step_s']:.1f}  (goal <= 10; persistent compilation "
          f"cache)")
    ratio = raw["peak_rss_mb"] / ref["peak_rss_mb"]
    print(f"peak RSS after {steps} steps: {raw['peak_rss_mb']:.0f} MB with "
          f"{big:,} systems, {ref['peak_rss_mb']:.0f} MB with {small:,} "
          f"({ratio:.2f}x; goal <= 2048 MB and <= 1.25x); preprocessed "
          f"{pre['peak_rss_mb']:.0f} MB")
    batches = args.batches or (150 if args.quick else 600)
    r = worker_scaling(lambda k: _config(shards, 1, k), batches)
    print(scaling_line("input pipeline with noise", "systems", r, batches))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def device_main(args):
  """``--device``: the fraction of the training loop's time spent waiting for
  the host's next batch (``input_wait``, logged by the trainer) at
  ``--device_variant`` of configs/oc20.py (default: the paper's width), with
  K = 1 data worker and with one per core, on whatever accelerator JAX
  finds, from preprocessed shards of ``--big`` systems (default 20,000)."""
  big = args.big or 20_000
  steps = args.steps or 200
  tmp = tempfile.mkdtemp(prefix="data_bench_device_")
  try:
    raw = os.path.join(tmp, "raw")
    write_folder(raw, big, 200)
    from noisy_nodes import preprocess  # pylint: disable=g-import-not-at-top
    shards = os.path.join(tmp, "shards")
    preprocess.preprocess(_config(raw, 1), shards,
                          workers=max(1, os.cpu_count() or 1),
                          shard_size=max(1000, big // 40))
    log_every = max(1, steps // 10)
    variant = args.device_variant
    for k in sorted({1, max(1, os.cpu_count() or 1)}):
      r = run_child(shards, steps, workers=k, variant=variant,
                    log_every=log_every, platform="")
      later = [w for w in r["windows"][1:] if "input_wait" in w]  # no compile
      wait = float(np.mean([w["input_wait"] for w in later])) if later else 0
      rate = float(np.mean([w["graphs_per_sec"] for w in later])) if later \
          else 0
      print(f"configs/oc20.py:{variant or '(paper width)'} on {r['device']}, "
            f"data.workers={k}: the loop waits for the host {wait:.1%} of its "
            f"time ({rate:.0f} systems/s; steps {log_every + 1}-{steps}, "
            f"{len(later)} windows)", flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--quick", action="store_true")
  p.add_argument("--big", type=int, default=0)
  p.add_argument("--small", type=int, default=0)
  p.add_argument("--steps", type=int, default=0)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--child", default="")
  p.add_argument("--memory_only", action="store_true",
                 help="OC20: only the peak RSS of the raw big/small runs")
  p.add_argument("--rates_only", action="store_true",
                 help="only the input pipeline's K = 1 vs K = 2 rates (on "
                 "--big systems, default 20,000), alternated 3 times")
  p.add_argument("--batches", type=int, default=0,
                 help="batches per rate (default 600; 150 with --quick)")
  p.add_argument("--device", action="store_true",
                 help="the fraction of step time the accelerator waits for "
                 "the host, K = 1 and one worker per core (device_main)")
  p.add_argument("--device_variant", default="",
                 help="configs/oc20.py variant for --device ('' = paper "
                 "width; 'demo' to try it on a CPU)")
  p.add_argument("--variant", default="demo", help=argparse.SUPPRESS)
  p.add_argument("--log_every", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--task", default="oc20", choices=("oc20", "crysgnn"))
  p.add_argument("--only", default="", choices=("", "oc20", "crysgnn"))
  args = p.parse_args()
  if args.child:
    return _child(args)
  if args.device:
    return device_main(args)
  if args.only != "crysgnn":
    oc20_main(args)
  if args.only != "oc20":
    from benchmarks import crysgnn_data_bench  # pylint: disable=g-import-not-at-top
    crysgnn_data_bench.main(
        (["--quick"] if args.quick else []) +
        (["--rates_only"] if args.rates_only else []) +
        ([f"--batches={args.batches}"] if args.batches else []) +
        ([f"--steps={args.steps}"] if args.steps else []))


if __name__ == "__main__":
  main()
