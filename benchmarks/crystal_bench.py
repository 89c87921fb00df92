"""DeeperGATGNN training / inference throughput and peak memory vs. depth.

Usage:
  python benchmarks/crystal_bench.py [--depths 5 20 30] [--n 1000]
      [--batch 100] [--epochs 3] [--repeats 3] [--remat on|off] [--devices D]
      [--kernels on|off] [--precision auto|fp32|bf16|tf32] [--profile DIR]
      [--flops on|off]
  python benchmarks/crystal_bench.py --quick    # seconds: every field printed

Runs on whatever backend JAX has. On GPU/TPU the batch stays on one device
(``--devices`` is for CPU), the kernels and XLA:CPU settings are off (the
engine skips them) and ``--precision auto`` is bf16 (fp32 on CPU). Besides
graphs/s and memory it prints the backend, device kind, precision, the
training step time, its FLOP/s (``cost_analysis`` of the step with the layer
stack unrolled: XLA counts a loop body once) as a fraction of a 2048 x 2048
matmul's rate at the same precision measured in the same process, and the
device's peak memory (``memory_stats()``; the process's peak RSS on CPU).
``--profile DIR`` writes a ``jax.profiler`` trace of one training epoch
(the first depth). On CPU with the fused AGAT kernels, XLA's count leaves
out the custom calls' FLOPs (the fraction is then a lower bound).

Data: ``n`` EMT Pt10 clusters (``crystal.generators.pt10_clusters``) with the
reference graph (8 Å, 12 nearest neighbours, minimum image, self loops):
10 nodes and 100 edges each, so a batch of 100 graphs holds 1,000 nodes and
10,000 edges (padded to 1,001 / 10,000 / 101 by ``noisy_nodes.data.batching``).
The edges are in reverse pairs as ``configs/deeper_gatgnn.py`` featurises
them (``data.graph.pair_edges``: the same model at half the edge work).
Model: the ``configs/deeper_gatgnn.py`` reference (dim 64, 4 heads,
DiffGroupNorm + skips) at each depth, through the engine's own pieces:
``CrystalPropertyTask.model``, ``parallel.make_train_step`` (AdamW, plateau
scale, L1) and ``parallel.make_eval_step``. Each batch of ``batch`` graphs
is split over ``devices`` XLA:CPU devices, by default one per core as the
training CLI's ``--cpu_devices`` (the same maths as one device: gradients
and norm statistics are reduced over devices; XLA:CPU runs scatter-adds and
small kernels on one thread, so one device per core keeps both cores busy).
Training steps run AGAT's edge block as the fused CPU kernels
(``crystal.models.agat_cpu``, built on first use) unless ``--kernels off``
(the XLA path, as on GPU/TPU); inference always takes the XLA path.

Each depth runs in a fresh subprocess so its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, Python,
XLA, data and buffers included) is its own; it is set by XLA's compilation
scratch, which the engine hands back to the OS after each compilation and
before the compiled step first runs (``engine.parallel.compile_ahead``;
this benchmark does the same), and
the resident memory after the timed runs is printed beside it. Timing: one warm-up epoch
(compilation), then ``repeats`` timed runs of ``epochs`` epochs over the
``n / batch`` pre-padded batches, blocking on every step's result; the best
run is reported (less sensitive to a busy shared machine) and the median
beside it.

Reference (usccolumbia/deeperGATGNN in PyTorch/PyG, measured on this project's
2-vCPU machine, 2 threads): 20 layers
~90 graphs/s training, ~260 inference, 3.0 GB; 30 layers ~63 / ~160, 4.4 GB.
Goal: >= 3x both at 20 layers, in under 1 GB.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

REFERENCE = {20: (90.0, 260.0, 3.0e3), 30: (63.0, 160.0, 4.4e3)}  # g/s, g/s, MB
GOAL_SPEEDUP, GOAL_MEMORY_MB = 3.0, 1000.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(depth: int, cache_dir: str, remat: bool = True):
  sys.path.insert(0, ROOT)
  import configs  # pylint: disable=g-import-not-at-top
  c = configs.load("deeper_gatgnn")
  c.model.num_layers = depth
  c.model.remat = remat
  c.data.cache_dir = cache_dir
  c.data.graph_cache = False
  return c


def _resident_mb() -> float:
  """Current resident memory (VmRSS) of this process, MB (0 if unknown)."""
  try:
    with open("/proc/self/status") as f:
      line = [l for l in f if l.startswith("VmRSS:")][0]
    return int(line.split()[1]) / 1024.0
  except (OSError, IndexError):
    return 0.0


def child(args) -> dict:
  """Measures one depth in this process; returns a JSON-able dict."""
  import haiku as hk  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import noisy_nodes  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from noisy_nodes.data import batching  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import optim, parallel, runtime  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data.structures import load_structures  # pylint: disable=g-import-not-at-top
  from crystal import tasks  # pylint: disable=g-import-not-at-top
  from crystal.models import agat_cpu  # pylint: disable=g-import-not-at-top
  from noisy_nodes.nn import count_params  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import precision  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import device_report  # pylint: disable=g-import-not-at-top
  policy = precision.resolve(args.precision)

  config = _config(args.depth, os.path.dirname(args.data), args.remat == "on")
  structures = load_structures(args.data)
  task = tasks.CrystalPropertyTask(config)
  task.featurizer = task.featurizer.fit(structures)
  task.num_targets = 1
  graphs = [task.featurize(s, None, True) for s in structures]
  ndev = jax.local_device_count()
  per_device = args.batch // ndev  # the global batch is split over devices
  nodes = max(int(g.n_node[0]) for g in graphs) * per_device
  edges = max(int(g.n_edge[0]) for g in graphs) * per_device
  budget = batching.Budget(nodes, edges, per_device)
  batches = [batching.stack_device_batches([batching.pad_graphs(
      graphs[j:j + per_device], budget)
      for j in range(i, i + args.batch, per_device)])
             for i in range(0, len(graphs), args.batch)]
  mesh = parallel.make_mesh(local_only=True)
  batches = [parallel.shard_batch(b, mesh) for b in batches]

  transformed = hk.transform_with_state(policy.wrap(task.model))
  example = jax.tree_util.tree_map(lambda x: x[0], batches[0])
  params, state = jax.jit(lambda b: transformed.init(
      jax.random.PRNGKey(0), b, True))(example)
  runtime.release_free_memory()  # after each compilation, as the trainer
  optimizer = optim.make_optimizer(config.optim)
  host = parallel.TrainState(
      step=np.zeros((), np.int32), params=jax.device_get(params),
      state=jax.device_get(state),
      opt_state=jax.device_get(optimizer.init(params)),
      ema_params=jax.device_get(params),
      rng=np.asarray(jax.random.key_data(jax.random.PRNGKey(1))))
  ts = parallel.replicate(host, mesh)
  train_step = parallel.make_train_step(task, transformed, optimizer, mesh,
                                        policy=policy)
  eval_step = parallel.make_eval_step(task, transformed, mesh, policy)
  eval_params = parallel.replicate(host.params, mesh)
  eval_state = parallel.replicate(host.state, mesh)

  def train_epochs(ts, k):
    for _ in range(k):
      for b in batches:
        ts, m = train_step(ts, b)
        jax.block_until_ready(m["loss"])
    return ts

  def infer_epochs(k):
    for _ in range(k):
      for b in batches:
        jax.block_until_ready(eval_step(eval_params, eval_state, b))

  flops = 0.0
  if args.flops == "on":  # a separate compilation with the stack unrolled
    orig = hk.layer_stack
    hk.layer_stack = lambda n, **kw: orig(n, **dict(kw, unroll=n))
    try:
      unrolled = parallel.make_train_step(task, transformed, optimizer, mesh,
                                          policy=policy)
      ca = unrolled.lower(ts, batches[0]).compile().cost_analysis()
      ca = ca[0] if isinstance(ca, (list, tuple)) else ca
      flops = float(ca["flops"]) * ndev  # the SPMD program is per device
    finally:
      hk.layer_stack = orig
      runtime.release_free_memory()
  t0 = time.perf_counter()
  # As the trainer: compile, hand the compiler's scratch back, then run.
  parallel.compile_ahead(train_step, ts, batches[0])
  ts, m = train_step(ts, batches[0])
  jax.block_until_ready(m["loss"])
  parallel.compile_ahead(eval_step, eval_params, eval_state, batches[0])
  jax.block_until_ready(eval_step(eval_params, eval_state, batches[0]))
  ts = train_epochs(ts, 1)
  infer_epochs(1)
  compile_s = time.perf_counter() - t0
  per = len(graphs) * args.epochs
  train_rates, infer_rates = [], []
  with device_report.profile(args.profile):
    ts = train_epochs(ts, 1 if args.profile else 0)
  for _ in range(args.repeats):   # interleave train and inference runs
    t = time.perf_counter()
    ts = train_epochs(ts, args.epochs)
    train_rates.append(per / (time.perf_counter() - t))
    t = time.perf_counter()
    infer_epochs(args.epochs)
    infer_rates.append(per / (time.perf_counter() - t))
  matmul = device_report.matmul_flops_per_s(policy, repeats=5)
  step_s = args.batch / float(np.median(train_rates))
  device_peak, what = device_report.peak_memory()
  return {
      "depth": args.depth, "params": count_params(host.params),
      "describe": device_report.describe(policy), "precision": policy.name,
      "step_ms": 1e3 * step_s, "step_flops": flops,
      "flops_fraction": flops / step_s / matmul if flops else 0.0,
      "matmul_gflops": matmul / 1e9,
      "device_peak_mb": device_peak / 2**20 if what.startswith("device")
                        else 0.0,
      "nodes_per_batch": int(sum(int(g.n_node[0]) for g in graphs[:args.batch])),
      "edges_per_batch": int(sum(int(g.n_edge[0]) for g in graphs[:args.batch])),
      "train_best": max(train_rates), "train_median": float(np.median(train_rates)),
      "infer_best": max(infer_rates), "infer_median": float(np.median(infer_rates)),
      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
      "rss_mb": _resident_mb(),
      "warmup_s": compile_s, "platform": str(jax.devices()[0].platform),
      "devices": ndev, "kernels": agat_cpu.available(),
  }


def _accelerator() -> bool:
  """Whether JAX will run on a GPU/TPU (decided without starting it)."""
  sys.path.insert(0, ROOT)
  from noisy_nodes.engine import runtime  # pylint: disable=g-import-not-at-top
  return runtime.expected_platform() != "cpu"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--depths", type=int, nargs="+", default=[5, 20, 30])
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--batch", type=int, default=100)
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--remat", choices=("on", "off"), default="on",
                 help="rematerialise each layer in the backward pass (the "
                      "config default) or keep every layer's activations")
  p.add_argument("--devices", type=int, default=0,
                 help="CPU devices to split each batch over (data parallel "
                      "through the engine's shard_map, same maths as one "
                      "device: gradients and norm statistics are reduced "
                      "over devices; the training CLI's --cpu_devices). "
                      "Default 0: one per core (os.cpu_count()) if that "
                      "divides the batch, else 1.")
  p.add_argument("--kernels", choices=("on", "off"), default="on",
                 help="train with the fused AGAT CPU kernels where they build "
                      "(default) or on the XLA path (NN_AGAT_KERNEL=0)")
  p.add_argument("--precision", default="auto",
                 choices=("auto", "fp32", "bf16", "tf32"),
                 help="train.precision (engine/precision.py; auto: bf16 on "
                      "TPU and bf16-capable GPUs, fp32 on CPU)")
  p.add_argument("--profile", default="",
                 help="write a jax.profiler trace of one training epoch of "
                      "the first depth here")
  p.add_argument("--flops", choices=("auto", "on", "off"), default="auto",
                 help="count the step's FLOPs (one more compilation, with "
                      "the layer stack unrolled; auto: on GPU/TPU and with "
                      "--quick, off for the CPU runs, whose kernels XLA "
                      "cannot count)")
  p.add_argument("--quick", action="store_true",
                 help="seconds-long check of every field: 100 clusters, "
                      "depth 2, batch 50, one epoch, one repeat")
  p.add_argument("--json", default="", help="also write the results here")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--depth", type=int, default=20, help=argparse.SUPPRESS)
  p.add_argument("--data", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.quick:
    args.depths, args.n, args.batch = [2], 100, 50
    args.epochs, args.repeats = 1, 1
  if not args.child:
    if args.flops == "auto":
      args.flops = "on" if args.quick or _accelerator() else "off"
    if args.devices == 0:
      args.devices = 1 if _accelerator() else 0
  if args.devices == 0:
    cores = os.cpu_count() or 1
    args.devices = cores if args.batch % cores == 0 else 1
  if args.child:
    print("RESULT " + json.dumps(child(args)), flush=True)
    return

  sys.path.insert(0, ROOT)
  from crystal import generators  # pylint: disable=g-import-not-at-top
  from noisy_nodes.data.structures import save_structures  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "pt10.npz")
    save_structures(data, generators.pt10_clusters(args.n, args.seed))
    if args.batch % args.devices:
      sys.exit(f"--batch={args.batch} must divide over --devices="
               f"{args.devices}")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    if args.kernels == "off":
      env["NN_AGAT_KERNEL"] = "0"
    if args.devices > 1:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count="
                          f"{args.devices}").strip()
    rows = []
    for depth in args.depths:
      cmd = [sys.executable, os.path.abspath(__file__), "--child",
             f"--depth={depth}", f"--data={data}", f"--batch={args.batch}",
             f"--epochs={args.epochs}", f"--repeats={args.repeats}",
             f"--remat={args.remat}", f"--precision={args.precision}",
             f"--flops={args.flops}",
             f"--profile={args.profile if depth == args.depths[0] else ''}"]
      res = subprocess.run(cmd, env=env, capture_output=True, text=True)
      line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
      if res.returncode or not line:
        sys.exit(f"depth {depth} failed:\n{res.stderr[-3000:]}")
      rows.append(json.loads(line[0][len("RESULT "):]))
      print(f"depth {depth}: done ({rows[-1]['warmup_s']:.1f} s warm-up)",
            flush=True)
  r0 = rows[0]
  print(f"\n{r0['describe']}")
  print(f"{args.n} Pt10 clusters, batch {args.batch} "
        f"({r0['nodes_per_batch']} nodes, {r0['edges_per_batch']} edges), "
        f"remat {args.remat}, {r0['devices']} {r0['platform']} device(s), "
        f"AGAT CPU kernels {'on' if r0['kernels'] else 'off'}, "
        f"os.cpu_count()={os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}")
  print(f"{'layers':>6} {'params':>9} {'train g/s':>16} {'infer g/s':>16} "
        f"{'peak MB':>8} {'now MB':>7} {'train x':>8} {'infer x':>8} "
        f"{'mem x':>6}")
  for r in rows:
    ref = REFERENCE.get(r["depth"])
    ratios = (f"{r['train_best'] / ref[0]:8.2f} {r['infer_best'] / ref[1]:8.2f}"
              f" {ref[2] / r['peak_mb']:6.2f}") if ref else (
                  f"{'n/a':>8} {'n/a':>8} {'n/a':>6}")
    print(f"{r['depth']:6d} {r['params']:9,d} "
          f"{r['train_best']:7.1f} ({r['train_median']:6.1f}) "
          f"{r['infer_best']:7.1f} ({r['infer_median']:6.1f}) "
          f"{r['peak_mb']:8.0f} {r['rss_mb']:7.0f} {ratios}")
  print(f"{'layers':>6} {'step ms':>8} {'GFLOP':>7} {'TFLOP/s':>8} "
        f"{r0['precision'] + ' mm TFLOP/s':>16} {'fraction':>8} "
        f"{'device peak MB':>14}")
  for r in rows:
    tflops = r["step_flops"] / (r["step_ms"] / 1e3) / 1e12
    counted = (f"{r['step_flops'] / 1e9:7.1f} {tflops:8.3f}" if tflops else
               f"{'n/a':>7} {'n/a':>8}")  # --flops off
    print(f"{r['depth']:6d} {r['step_ms']:8.1f} {counted} "
          f"{r['matmul_gflops'] / 1e3:16.3f} "
          f"{r['flops_fraction'] if tflops else float('nan'):8.2f} "
          + (f"{r['device_peak_mb']:14.0f}" if r["device_peak_mb"]
             else f"{'n/a (CPU)':>14}"))
  print("(best of repeats; median in parentheses; peak = the process's "
        "peak resident memory, now = resident after the timed runs; x = "
        "ratio to the PyTorch reference, memory as reference / peak)")
  at20 = [r for r in rows if r["depth"] == 20]
  if at20:
    r, ref = at20[0], REFERENCE[20]
    ok = (r["train_best"] >= GOAL_SPEEDUP * ref[0] and
          r["infer_best"] >= GOAL_SPEEDUP * ref[1] and
          r["peak_mb"] < GOAL_MEMORY_MB)
    print(f"goal at 20 layers (>= {GOAL_SPEEDUP:.0f}x training and inference, "
          f"< {GOAL_MEMORY_MB:.0f} MB): {'met' if ok else 'NOT met'}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
