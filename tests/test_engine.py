"""The training engine: overfitting, exact resume, data parallel, CLI."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.engine import trainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import toy_config  # noqa: E402  pylint: disable=g-import-not-at-top


def _params(workdir, which="latest"):
  _, ts, meta, _, step = trainer.restore_run(workdir, which)
  return jax.device_get(ts), meta, step


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


@pytest.mark.parametrize("variant", ["", "noisy"])
def test_exact_resume_gives_identical_parameters(tmp_path, variant):
  """N steps straight == N/2 steps, restart from checkpoint, N/2 more.

  The noisy variant resumes with data.workers=2 (featurisation in worker
  processes) against a straight run featurising in the main process.
  """
  cfg = toy_config.get_config(variant)
  straight = str(tmp_path / "straight")
  trainer.train(cfg, straight)
  resumed = str(tmp_path / "resumed")
  half = toy_config.get_config(variant)
  half.train.num_steps = 10
  workers = 2 if variant == "noisy" else 0
  half.data.workers = workers
  trainer.train(half, resumed)
  rest = toy_config.get_config(variant)
  rest.data.workers = workers
  trainer.train(rest, resumed)  # resumes at step 10
  a, meta_a, step_a = _params(straight)
  b, meta_b, step_b = _params(resumed)
  assert step_a == step_b == 20
  assert meta_a["data_positions"] == meta_b["data_positions"]
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  # metrics.jsonl holds one consistent history (no duplicated steps).
  with open(os.path.join(resumed, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  train_steps = [r["step"] for r in rows if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps)) == [5, 10, 15, 20]


def test_overfits_tiny_dataset_through_the_cli(tmp_path):
  """python -m noisy_nodes.train drives a tiny model to ~zero train loss."""
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "noisy_nodes.train",
         f"--config={HERE}/toy_config.py", f"--workdir={workdir}",
         "--config.data.num_train=8", "--config.train.num_steps=300",
         "--config.train.log_every=50", "--config.train.eval_every=0",
         "--config.train.checkpoint_every=300", "--config.batch.shuffle=False"]
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  train = [r for r in rows if r["split"] == "train"]
  assert train[0]["loss"] > 0.3
  assert train[-1]["loss"] < 0.01, train[-1]
  for key in ("graphs_per_sec", "input_wait", "util_nodes", "lr", "step"):
    assert key in train[-1]
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  # Eval-only from the checkpoint reproduces the final validation metrics,
  # here over two CPU devices (trained on one).
  ev = subprocess.run([sys.executable, "-m", "noisy_nodes.evaluate",
                       f"--workdir={workdir}", "--checkpoint=latest",
                       "--cpu_devices=2"],
                      env=_env(), capture_output=True, text=True, timeout=300)
  assert ev.returncode == 0, ev.stderr[-3000:]
  metrics = json.loads(ev.stdout.strip().splitlines()[-1])
  final = [r for r in rows if r["split"] == "val"][-1]
  assert metrics["energy_mae"] == pytest.approx(final["energy_mae"], rel=1e-6)


_TWO_DEVICES = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {here!r})
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import numpy as np
    import noisy_nodes
    from noisy_nodes.data import batching
    from noisy_nodes.engine import optim, parallel, trainer
    import toy_config

    cfg = toy_config.get_config()
    # SGD: Adam's first step is ~sign(g), which turns float round-off in
    # (theoretically) zero gradients, e.g. biases before BatchNorm, into
    # lr-sized differences; SGD compares the gradients themselves.
    cfg.optim.optimizer = "sgd"
    cfg.optim.lr = 0.01
    exp = trainer.Experiment(cfg, "/tmp/unused")
    exp.task.setup(exp.splits["train"])
    graphs = exp.graphs("train")[:8]
    opt = optim.make_optimizer(cfg.optim)
    # The same global batch: 1 device holding all 8 graphs, or 2 x 4.
    big = batching.Budget(max_nodes=128, max_edges=2048, max_graphs=8)
    small = batching.Budget(max_nodes=64, max_edges=1024, max_graphs=4)
    one = batching.stack_device_batches([batching.pad_graphs(graphs, big)])
    two = batching.stack_device_batches(
        [batching.pad_graphs(graphs[:4], small),
         batching.pad_graphs(graphs[4:], small)])
    results = []
    for devices, batch in ((1, one), (2, two)):
      mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("batch",))
      host = exp.init_state(jax.tree_util.tree_map(lambda x: x[0], one), opt)
      ts = parallel.replicate(host, mesh)
      step = parallel.make_train_step(exp.task, exp.transformed(), opt, mesh)
      losses = []
      for _ in range(3):
        ts, m = step(ts, parallel.shard_batch(batch, mesh))
        losses.append(float(jax.device_get(m["loss"])))  # block every step
      results.append((losses, jax.device_get((ts.params, ts.state))))
    (l1, p1), (l2, p2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("OK", l1, l2)
""")


def test_two_devices_equal_one_device_on_the_same_global_batch(tmp_path):
  script = tmp_path / "two.py"
  script.write_text(_TWO_DEVICES.format(here=HERE))
  out = subprocess.run([sys.executable, str(script)], env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "OK" in out.stdout


def test_bad_input_exits_with_clear_error(tmp_path):
  cmd = [sys.executable, "-m", "noisy_nodes.train",
         f"--config={HERE}/toy_config.py", f"--workdir={tmp_path}/r",
         "--config.batch.max_nodes=5", "--config.train.num_steps=2"]
  out = subprocess.run(cmd, env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 2
  assert "exceeds the batch budget" in out.stderr
  assert "ar" in out.stderr  # names the sample


def test_cpu_compiler_options_keep_results_and_can_be_turned_off(monkeypatch):
  """The engine's XLA:CPU options change kernels, not numbers."""
  from noisy_nodes.engine import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(local_only=True)
  opts = parallel.compiler_options(mesh)
  want = {"xla_cpu_experimental_ynn_fusion_type":
          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  if parallel._host_has_avx512():  # pylint: disable=protected-access
    want["xla_cpu_prefer_vector_width"] = 512
  assert opts == want
  monkeypatch.setenv("NN_XLA_DEFAULTS", "1")
  assert parallel.compiler_options(mesh) == {}

  def f(x, w):
    h = jax.nn.softplus(x @ w)
    return (h.reshape(-1, 4, 8) * w[:8, :8].sum(0)).sum(-1)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 32)).astype(np.float32)
  w = rng.normal(size=(32, 32)).astype(np.float32)
  np.testing.assert_allclose(jax.jit(f, compiler_options=opts)(x, w),
                             jax.jit(f)(x, w), rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1))
  for got, want in zip(jax.jit(grad, compiler_options=opts)(x, w),
                       jax.jit(grad)(x, w)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_plateau_steps_on_the_training_error(tmp_path, monkeypatch):
  """monitor='train' (the DeeperGATGNN reference): each evaluation feeds
  ReduceLROnPlateau the graph-weighted mean training loss of the steps since
  the previous one, never the validation metric, with the configured
  threshold."""
  from noisy_nodes.engine import optim  # pylint: disable=g-import-not-at-top
  seen = []
  update = optim.Plateau.update

  def record(self, value, base_lr):
    seen.append((value, self.threshold))
    return update(self, value, base_lr)
  monkeypatch.setattr(optim.Plateau, "update", record)
  c = toy_config.get_config()
  c.optim.plateau.update(enabled=True, monitor="train", threshold=2e-4)
  c.train.update(num_steps=8, log_every=1, eval_every=4, checkpoint_every=8)
  workdir = str(tmp_path / "run")
  trainer.train(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = [r for r in rows if r["split"] == "train"]
  val = [r for r in rows if r["split"] == "val"]
  graphs = np.array([r["util_graphs"] for r in train]) * c.batch.max_graphs
  loss = np.array([r["loss"] for r in train])
  want = [np.sum((loss * graphs)[k:k + 4]) / np.sum(graphs[k:k + 4])
          for k in (0, 4)]
  assert [t for _, t in seen] == [2e-4, 2e-4]
  np.testing.assert_allclose([v for v, _ in seen], want, rtol=1e-5)
  assert len(val) == 2         # not a validation metric
  assert all(all(abs(v - x) > 1e-9 for x in r.values()
                 if isinstance(x, float)) for (v, _), r in zip(seen, val))


def test_splits_over_the_cache_limit_stream_with_the_same_results(tmp_path):
  """data.cache_limit: a split larger than it is featurised on each pass
  (training stream and evaluation), never held, with the same metrics."""
  rows = {}
  for limit in (10 ** 6, 3):
    c = toy_config.get_config()
    c.data.cache_limit = limit
    c.train.update(num_steps=6, log_every=3, eval_every=3, checkpoint_every=6)
    workdir = str(tmp_path / f"run{limit}")
    trainer.train(c, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows[limit] = [{k: v for k, v in json.loads(line).items()
                      if k not in ("graphs_per_sec", "eval_seconds", "input_wait")}
                     for line in f]
  exp = trainer.Experiment(c, "")
  assert isinstance(exp.graphs("val"), trainer._LazyGraphs)  # pylint: disable=protected-access
  assert len(rows[3]) == len(rows[10 ** 6]) >= 4
  for a, b in zip(rows[3], rows[10 ** 6]):
    assert a.keys() == b.keys()
    for k in a:
      if isinstance(a[k], float):
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k
      else:
        assert a[k] == b[k], k


def test_train_again_at_or_past_num_steps_changes_nothing(tmp_path):
  """A chunked sweep calls ``train`` again with steps it already ran (a run
  preempted mid-chunk resumes past the next chunk's end): no evaluation, no
  plateau step, no checkpoint, no duplicate metrics row, and the return
  value is the run's last validation metrics. (Each such call used to log
  one more validation row at the restored step.)"""
  c = toy_config.get_config()
  c.train.update(num_steps=8, log_every=4, eval_every=3, checkpoint_every=8)
  workdir = str(tmp_path / "run")
  first = trainer.train(c, workdir)
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    before = f.read()
  val_steps = [json.loads(l)["step"] for l in before.splitlines()
               if json.loads(l)["split"] == "val"]
  assert val_steps == [3, 6, 8]   # the final evaluation at step 8
  for steps in (8, 4):
    c.train.num_steps = steps
    again = trainer.train(c, workdir)
    with open(path) as f:
      assert f.read() == before
    assert again.keys() == first.keys()
    for k in first:
      assert again[k] == pytest.approx(first[k])
  assert trainer.restore_run(workdir, "latest")[-1] == 8
