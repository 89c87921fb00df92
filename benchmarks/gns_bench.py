"""Noisy Nodes GNS at the paper's OC20 width on OC20-like (EMT) batches.

Usage:
  python benchmarks/gns_bench.py [--max_nodes 1024 --max_edges 12800
      --max_graphs 10] [--steps 10] [--timed 3] [--data train.aselmdb]
      [--precision auto|fp32|bf16|tf32] [--profile DIR]
  python benchmarks/gns_bench.py --quick     # seconds: small data and model

Runs on whatever backend JAX has (CPU, GPU, TPU); prints the backend,
device kind and ``train.precision`` policy (``auto``: bf16 on TPU and
bf16-capable GPUs, fp32 on CPU), and ``--profile DIR`` writes a
``jax.profiler`` trace of the timed steps.

Model: latent 512, 3-layer MLPs, 512 Bessel functions (Table 9), 1 block
iteration of ``--steps`` message-passing steps. Data: EMT adsorbate+slab
relaxations (``noisy_nodes.gns.oc20.emt``; the demo cache when present, else
``--n`` generated here), featurised as in training (Noisy Nodes σ = 0.3,
graph rebuilt from the noisy positions, cutoff 6 Å, 12 nearest neighbours).

Measures, in one process:
  1. FLOP/s of the jitted training step (loss, gradients, Adam update).
     FLOPs come from ``jit(...).lower(...).compile().cost_analysis()`` of
     the same step with the scans fully unrolled (XLA counts a while-loop
     body once); time is the median of ``--timed`` runs of the scanned
     step. Reported as a fraction of a 2048x2048 matmul's FLOP/s at the
     same precision (bf16 operands under bf16) measured in the same process
     right after each timed step (the median of the pairs' ratios; goal
     >= 50 % on CPU, >= 40 % of the bf16 rate on GPU), with graphs/s and
     the peak device memory (``memory_stats()``; peak RSS on CPU).
  2. Compile time of the training step at 10, 50 and 100 message-passing
     steps (goal: 100 <= 1.5x 10; depth is scanned).
  3. Node/edge padding utilisation of the dynamic batches over one epoch
     (goal >= 75 %), for the given budget and for the budget the engine
     estimates from the data (``batch.max_nodes=0``).
  4. Peak memory of 100-step training steps (10 x 10 and 1 x 100) with and
     without remat from ``compiled.memory_analysis()`` (arguments + outputs
     + temporaries - donated aliases; goal <= 8 GB with remat).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import device_report  # noqa: E402
import noisy_nodes  # noqa: E402,F401
from noisy_nodes import nn  # noqa: E402
from noisy_nodes.data import batching  # noqa: E402
from noisy_nodes.engine import parallel  # noqa: E402
from noisy_nodes.engine import precision  # noqa: E402
from noisy_nodes.engine import runtime  # noqa: E402
from noisy_nodes.gns.oc20.task import OC20Task  # noqa: E402

DEMO_TRAIN = os.path.expanduser(
    "~/.cache/noisy_nodes/oc20_emt/emt_v1_s0_1600_200_200/train.aselmdb")


LATENT = 512  # the paper's OC20 width (--quick: 64)
POLICY = precision.Policy("fp32")  # set by main() from --precision


def make_task(steps, remat=False, iterations=1):
  c = ml_collections.ConfigDict()
  c.data = dict(task="is2re", target="energy_relaxed", cutoff=6.0,
                max_neighbors=12, noise_sigma=0.3, sample_frames=True,
                noise_fixed_atoms=True)
  c.model = dict(latent_size=LATENT, mlp_layers=3,
                 num_message_passing_steps=steps,
                 num_block_iterations=iterations, num_basis=LATENT,
                 remat=remat)
  c.loss = dict(position_loss_weight=1.0, graph_loss_weight=1.0)
  return OC20Task(c)


def load_structures(args):
  from noisy_nodes.gns.oc20 import emt, readers  # pylint: disable=g-import-not-at-top
  path = args.data or (DEMO_TRAIN if os.path.exists(DEMO_TRAIN) else "")
  if path:
    return readers.read_aselmdb(path)[:args.n], path
  return emt.generate_structures(args.n, seed=0, workers=2), "generated"


def train_step_fn(task, optimizer):
  model = hk.transform_with_state(POLICY.wrap(task.model))

  @POLICY.step_scope()
  def step(params, state, opt_state, batch):
    def loss_fn(p):
      out, new_state = model.apply(p, state, None, batch, True)
      value, weight, _ = task.loss(precision.to_float32(out), batch)
      return value / jnp.maximum(weight, 1.0), new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  return model, step


def compiled_step(task, batch, unroll=False, donate=False):
  """(compiled step, init args, compile seconds)."""
  optimizer = optax.adam(1e-4, b1=0.9, b2=0.95)
  model, step = train_step_fn(task, optimizer)
  orig_stack, orig_scan = hk.layer_stack, hk.scan
  if unroll:  # for counting FLOPs only
    hk.layer_stack = lambda n, **kw: orig_stack(n, **dict(kw, unroll=n))
    hk.scan = lambda f, init, xs, length=None, **kw: orig_scan(
        f, init, xs, length=length, **dict(kw, unroll=length or 1))
  try:
    params, state = jax.jit(lambda k, b: model.init(k, b, True))(
        jax.random.PRNGKey(0), batch)
    opt_state = optimizer.init(params)
    t0 = time.perf_counter()
    # A real training loop donates params/state/optimiser state, so their
    # updated copies reuse the input buffers (counted once in memory).
    jitted = jax.jit(step, donate_argnums=(0, 1, 2) if donate else (),
                     compiler_options=parallel.compiler_options())
    compiled = jitted.lower(params, state, opt_state, batch).compile()
    seconds = time.perf_counter() - t0
  finally:
    hk.layer_stack, hk.scan = orig_stack, orig_scan
  return compiled, (params, state, opt_state, batch), seconds


def flops_of(compiled):
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return float(ca["flops"])


def matmul_flops_per_s(n=2048, repeats=7):
  return device_report.matmul_flops_per_s(POLICY, n, repeats)


def epoch_utilisation(task, structures, budget):
  stream = batching.GraphStream(
      len(structures), lambda i, rng: task.featurize(structures[i], rng, True),
      budget, seed=0, skip_oversized=True)
  util = {"util_nodes": [], "util_edges": [], "util_graphs": []}
  for b in stream.iterate():
    for k, v in batching.utilisation(b.graph).items():
      util[k].append(v)
    if b.position.epoch > 0:
      break
  return {k: float(np.mean(v)) for k, v in util.items()}, len(util[
      "util_nodes"])


def main():
  global LATENT, POLICY
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--max_nodes", type=int, default=1024)
  p.add_argument("--max_edges", type=int, default=12800)
  p.add_argument("--max_graphs", type=int, default=10)
  p.add_argument("--steps", type=int, default=10,
                 help="message-passing steps of the timed model")
  p.add_argument("--timed", type=int, default=3, help="timed train steps")
  p.add_argument("--n", type=int, default=400, help="EMT systems to use")
  p.add_argument("--data", default="", help="an .aselmdb of EMT systems")
  p.add_argument("--depths", default="10,50,100")
  p.add_argument("--sections", default="flops,compile,util,memory",
                 help="comma-separated subset of flops,compile,util,memory")
  p.add_argument("--hugepages", choices=("on", "off"), default="on",
                 help="restart with glibc.malloc.hugetlb=1 as "
                      "configs/oc20.py's training does (engine/runtime.py; "
                      "CPU only)")
  p.add_argument("--precision", default="auto",
                 choices=("auto",) + precision.PRECISIONS,
                 help="train.precision of the model (engine/precision.py)")
  p.add_argument("--profile", default="",
                 help="write a jax.profiler trace of the timed steps here")
  p.add_argument("--quick", action="store_true",
                 help="seconds-long check of every printed field: 24 "
                      "systems, latent 64, 2 MP steps, flops section only")
  args = p.parse_args()
  if args.quick:
    LATENT = 64
    args.n, args.steps, args.timed = min(args.n, 24), 2, 2
    args.max_nodes, args.max_edges = 256, 3200
    if args.sections == p.get_default("sections"):
      args.sections = "flops"
  runtime.reexec_with_hugepages(args.hugepages == "on" and not args.quick)
  POLICY = precision.resolve(args.precision)

  t_start = time.time()
  structures, source = load_structures(args)
  budget = batching.Budget(args.max_nodes, args.max_edges, args.max_graphs)
  task = make_task(args.steps)
  task.setup(structures)
  rng = np.random.default_rng(0)
  graphs = [task.featurize(s, rng, True) for s in structures]
  first, total_n, total_e = [], 0, 0
  for g in graphs:  # fill one batch greedily, as the stream does
    n, e = int(g.n_node[0]), int(g.n_edge[0])
    if (total_n + n > budget.max_nodes or total_e + e > budget.max_edges or
        len(first) >= budget.max_graphs):
      break
    first.append(g)
    total_n, total_e = total_n + n, total_e + e
  batch = batching.pad_graphs(first, budget)
  print(f"data: {len(structures)} EMT systems ({source}); budget {budget}; "
        f"timed batch {len(first)} graphs, {total_n} nodes, {total_e} edges; "
        f"{device_report.describe(POLICY)}, "
        f"{os.cpu_count()} cores; huge pages "
        f"{'on' if runtime.hugepages_active() else 'off'}; latent {LATENT}")

  rows = []
  sections = set(args.sections.split(","))
  if "flops" in sections:
    rows += flops_rows(task, batch, args)
  if "compile" in sections:
    rows += compile_rows(batch, args)
  if "util" in sections:
    rows += util_rows(task, structures, graphs, budget, args)
  if "memory" in sections:
    rows += memory_rows(batch)
  width = max(len(r[0]) for r in rows)
  print(f"\n{'measure':<{width}}  {'value':>14}  goal")
  for name, value, goal in rows:
    print(f"{name:<{width}}  {value:>14}  {goal}")
  print(f"\ntotal {time.time() - t_start:.0f} s")


def flops_rows(task, batch, args):
  rows = []
  # 1. FLOP/s of the training step vs a dense matmul.
  unrolled, _, _ = compiled_step(task, batch, unroll=True)
  flops = flops_of(unrolled)
  del unrolled
  compiled, init, _ = compiled_step(task, batch)
  params, state, opt_state, b = init
  out = compiled(params, state, opt_state, b)
  jax.block_until_ready(out)
  # Interleaved: a shared VM's speed drifts by 2x over minutes, so each step
  # timing is paired with a matmul timing taken right after it.
  times, mms, ratios = [], [], []
  with device_report.profile(args.profile):
    for _ in range(args.timed):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(params, state, opt_state, b))
      times.append(time.perf_counter() - t0)
      mms.append(matmul_flops_per_s(repeats=5))
      ratios.append(flops / times[-1] / mms[-1])
  step_s, mm = statistics.median(times), statistics.median(mms)
  graphs = int(np.sum(np.asarray(b.globals["mask"])))
  peak, what = device_report.peak_memory()
  rows.append(("train step (%d MP steps), s" % args.steps, f"{step_s:.3f}",
               ""))
  rows.append((f"train graphs/s ({graphs} graphs per step)",
               f"{graphs / step_s:.1f}", ""))
  rows.append((f"peak memory ({what})", f"{peak / 2**30:.2f} GiB", ""))
  rows.append(("train step FLOPs (cost_analysis)", f"{flops / 1e9:.1f} G", ""))
  rows.append(("train step FLOP/s", f"{flops / step_s / 1e9:.1f} G", ""))
  rows.append((f"2048 {POLICY.name} matmul FLOP/s", f"{mm / 1e9:.1f} G", ""))
  rows.append(("step FLOP/s / matmul FLOP/s (median of pairs)",
               f"{statistics.median(ratios):.2f}",
               ">= 0.5" if jax.default_backend() == "cpu" else ">= 0.4"))
  del compiled
  return rows


def compile_rows(batch, args):
  rows = []
  # 2. Compile time vs depth.
  compile_s = {}
  for depth in [int(x) for x in args.depths.split(",")]:
    _, _, sec = compiled_step(make_task(depth), batch)
    compile_s[depth] = sec
    rows.append((f"compile, {depth} MP steps, s", f"{sec:.1f}", ""))
  depths = sorted(compile_s)
  ratio = compile_s[depths[-1]] / compile_s[depths[0]]
  rows.append((f"compile {depths[-1]} / {depths[0]} steps", f"{ratio:.2f}",
               "<= 1.5"))
  return rows


def util_rows(task, structures, graphs, budget, args):
  rows = []
  # 3. Padding utilisation over one epoch.
  for name, bud in (("given", budget), ("estimated", batching.estimate_budget(
      [int(g.n_node[0]) for g in graphs], [int(g.n_edge[0]) for g in graphs],
      args.max_graphs))):
    util, nb = epoch_utilisation(task, structures, bud)
    rows.append((f"util nodes/edges/graphs, {name} budget "
                 f"{bud.max_nodes}/{bud.max_edges}/{bud.max_graphs} "
                 f"({nb} batches)",
                 f"{util['util_nodes']:.2f}/{util['util_edges']:.2f}/"
                 f"{util['util_graphs']:.2f}", ">= 0.75"))
  return rows


def memory_rows(batch):
  rows = []
  # 4. Peak memory of 100-step models: the paper's 10 x 10 (shared block,
  # 24M parameters) and 1 x 100 (100 unshared steps, 240M parameters, whose
  # parameters + Adam state alone take ~3 GB), with and without remat.
  for (n, m_steps), remat in (((10, 10), True), ((10, 10), False),
                              ((1, 100), True)):
    compiled, init, _ = compiled_step(make_task(m_steps, remat, n), batch,
                                      donate=True)
    nparams = nn.count_params(init[0])
    m = compiled.memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes +
            m.temp_size_in_bytes - m.alias_size_in_bytes)
    rows.append((f"memory, {n}x{m_steps} MP steps ({nparams / 1e6:.0f}M "
                 f"params), remat={remat}", f"{peak / 2**30:.2f} GiB",
                 "<= 8 GB" if remat else ""))
    del compiled, init
  return rows


if __name__ == "__main__":
  main()
