"""Data-parallel scaling of the engine's training step over 1, 2, 4 ... devices.

Usage:
  python benchmarks/scaling_bench.py [--config configs/deeper_gatgnn.py:tiny]
      [--devices 1,2,4] [--per_device 8] [--steps 10] [--precision auto]
      [--set model.num_layers=20 ...]
  python benchmarks/scaling_bench.py --quick       # the tiny config, 1,2,4

Weak scaling: every device gets the same per-device batch (``--per_device``
graphs, the node/edge budget estimated by the engine), so D devices train
D times as many graphs per step; efficiency(D) = graphs/s(D) /
(D x graphs/s(1)). Each device count runs in its own process (on CPU with
that many XLA:CPU devices, ``--xla_force_host_platform_device_count``; on
GPU/TPU the first D devices), through the engine's own
``parallel.make_train_step`` (``jax.shard_map``; gradients psum-ed).

The step time is split into the gradient all-reduce and the rest: the
all-reduce is timed alone, as the same ``psum`` of a gradient-shaped tree
(every parameter's shape, float32) over the same mesh, and compute = step -
all-reduce (the norms' statistics reductions, a few hundred floats per
layer, stay in compute). On a pod this gives the share of communication.
Fake CPU devices share the host's cores: past the core count the compute
time grows with D and the efficiency says more about the CPU than about the
step; on accelerators each device has its own.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_config(spec: str, overrides):
  sys.path.insert(0, ROOT)
  import configs  # pylint: disable=g-import-not-at-top
  path, _, variant = spec.partition(":")
  config = configs.load(os.path.join(ROOT, path) if not os.path.isabs(path)
                        else path, variant)
  for item in overrides:
    key, _, value = item.partition("=")
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(
        node[leaf], str) else value
  return config


def _median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def child(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  import noisy_nodes  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from noisy_nodes import nn  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import optim, parallel, trainer  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import device_report  # pylint: disable=g-import-not-at-top

  config = _load_config(args.config, args.set)
  with config.unlocked():
    config.train.precision = args.precision
    config.batch.max_graphs = args.per_device
    config.batch.max_nodes = config.batch.max_edges = 0  # estimated
  devices = jax.devices()[:args.count]
  if len(devices) < args.count:
    raise SystemExit(f"only {len(devices)} devices")
  with tempfile.TemporaryDirectory() as workdir:
    exp = trainer.Experiment(config, workdir)
  exp.mesh = exp.local_mesh = jax.sharding.Mesh(np.array(devices),
                                                (parallel.AXIS,))
  exp.num_local = len(devices)
  exp.task.setup(exp.splits["train"])
  stream = exp.train_stream(exp.budget(), 0)
  it = stream.iterate()
  batches = [parallel.shard_batch(next(it).graph, exp.mesh)
             for _ in range(4)]
  optimizer = optim.make_optimizer(config.optim)
  example = jax.tree_util.tree_map(lambda x: np.asarray(x)[0],
                                   jax.device_get(batches[0]))
  host = exp.init_state(example, optimizer)
  ts = parallel.replicate(host, exp.mesh)
  step = parallel.make_train_step(exp.task, exp.transformed(), optimizer,
                                  exp.mesh, policy=exp.policy)
  parallel.compile_ahead(step, ts, batches[0])
  graphs = [int(np.sum(np.asarray(jax.device_get(b.globals["mask"]))))
            for b in batches]

  state = {"ts": ts, "i": 0}

  def one_step():
    b = batches[state["i"] % len(batches)]
    state["ts"], m = step(state["ts"], b)
    jax.block_until_ready(m["loss"])
    state["i"] += 1
  for _ in range(2):
    one_step()
  step_s = _median_time(one_step, args.steps)

  # The gradient all-reduce alone: psum of a float32 tree of the params'
  # shapes over the same mesh (what make_train_step reduces each step).
  grads = jax.tree_util.tree_map(
      lambda p: jnp.zeros((len(devices),) + p.shape, jnp.float32),
      host.params)
  grads = parallel.shard_batch(jax.device_get(grads), exp.mesh)
  allreduce = jax.jit(jax.shard_map(
      lambda g: jax.tree_util.tree_map(
          lambda x: jax.lax.psum(x, parallel.AXIS), g),
      mesh=exp.mesh, in_specs=P(parallel.AXIS), out_specs=P(parallel.AXIS),
      check_vma=False))
  jax.block_until_ready(allreduce(grads))
  reduce_s = _median_time(lambda: jax.block_until_ready(allreduce(grads)),
                          max(args.steps, 5))
  nbytes = sum(4 * int(np.prod(p.shape))
               for p in jax.tree_util.tree_leaves(host.params))
  return {"devices": len(devices), "step_s": step_s, "allreduce_s": reduce_s,
          "graphs_per_step": float(np.mean(graphs)),
          "grad_mb": nbytes / 2**20, "describe": device_report.describe(
              exp.policy), "model": exp.task.describe()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/deeper_gatgnn.py:tiny")
  p.add_argument("--set", action="append", default=[],
                 help="config override KEY=VALUE (e.g. model.num_layers=20)")
  p.add_argument("--devices", default="1,2,4")
  p.add_argument("--per_device", type=int, default=8,
                 help="graphs per device per step (fixed: weak scaling)")
  p.add_argument("--steps", type=int, default=10, help="timed steps")
  p.add_argument("--precision", default="auto",
                 choices=("auto", "fp32", "bf16", "tf32"))
  p.add_argument("--quick", action="store_true",
                 help="the tiny DeeperGATGNN on 1, 2, 4 devices, 5 steps")
  p.add_argument("--json", default="")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.quick:
    args.steps = 5
  if args.child:
    print("RESULT " + json.dumps(child(args)), flush=True)
    return
  sys.path.insert(0, ROOT)
  from noisy_nodes.engine import runtime  # pylint: disable=g-import-not-at-top
  on_cpu = runtime.expected_platform() == "cpu"
  rows = []
  for count in [int(x) for x in args.devices.split(",")]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get("PYTHONPATH", ""))
    if on_cpu:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          " --xla_force_host_platform_device_count="
                          f"{count}").strip()
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           f"--count={count}", f"--config={args.config}",
           f"--per_device={args.per_device}", f"--steps={args.steps}",
           f"--precision={args.precision}"] + [f"--set={s}" for s in args.set]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    if res.returncode or not line:
      sys.exit(f"{count} devices failed:\n{res.stderr[-3000:]}")
    rows.append(json.loads(line[0][len("RESULT "):]))
  base = rows[0]["graphs_per_step"] / rows[0]["step_s"] / rows[0]["devices"]
  print(f"{rows[0]['describe']}; {rows[0]['model']}; {args.per_device} graphs "
        f"per device; gradient {rows[0]['grad_mb']:.2f} MB float32"
        + (f"; {os.cpu_count()} CPU cores shared by the fake devices"
           if on_cpu else ""))
  print(f"{'devices':>7} {'step ms':>8} {'all-reduce ms':>13} "
        f"{'compute ms':>10} {'comm share':>10} {'graphs/s':>9} "
        f"{'efficiency':>10}")
  for r in rows:
    rate = r["graphs_per_step"] / r["step_s"]
    compute = max(r["step_s"] - r["allreduce_s"], 0.0)
    print(f"{r['devices']:7d} {1e3 * r['step_s']:8.1f} "
          f"{1e3 * r['allreduce_s']:13.2f} {1e3 * compute:10.1f} "
          f"{r['allreduce_s'] / r['step_s']:10.2f} {rate:9.1f} "
          f"{rate / (r['devices'] * base):10.2f}")
  print("(efficiency = graphs/s / (devices x graphs/s per device at "
        f"{rows[0]['devices']} device); all-reduce timed alone on the same "
        "mesh; compute = step - all-reduce)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
