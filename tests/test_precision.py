"""train.precision: bf16 mixed precision against fp32 on each paper's model."""
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
import configs
from noisy_nodes.engine import optim
from noisy_nodes.engine import parallel
from noisy_nodes.engine import precision
from noisy_nodes.engine import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name, variant="tiny"):
  return configs.load(name, variant)


def _experiment(config, workdir):
  exp = trainer.Experiment(config, workdir)
  exp.task.setup(exp.splits["train"])
  it = exp.train_stream(exp.budget(), 0).iterate()
  return exp, [next(it).graph for _ in range(3)]


def _losses(exp, batches, name, steps):
  """Training losses of ``steps`` steps under ``train.precision=name`` on
  ``batches`` (cycled), from the same initialisation; the final state."""
  config = exp.config
  policy = precision.resolve(name)
  optimizer = optim.make_optimizer(config.optim)
  example = jax.tree_util.tree_map(lambda x: x[0], batches[0])
  ts = parallel.replicate(exp.init_state(example, optimizer), exp.mesh)
  step = parallel.make_train_step(
      exp.task, hk.transform_with_state(policy.wrap(exp.task.model)),
      optimizer, exp.mesh,
      ema_decay=float(config.optim.get("ema_decay", 0.0)), policy=policy)
  losses = []
  for i in range(steps):
    ts, metrics = step(ts, parallel.shard_batch(batches[i % len(batches)],
                                                exp.mesh))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(ts)


def _crystal(tmp_path):
  c = _config("deeper_gatgnn")
  c.data.cache_dir = str(tmp_path / "cache")
  return c


def _crysgnn(tmp_path):
  c = _config("crysgnn_pretrain")
  c.data.cache_dir = str(tmp_path / "cache")
  return c


def _oc20(tmp_path):
  from noisy_nodes.gns.oc20 import emt  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / "emt")
  emt.generate(6, seed=3, workers=0, out_dir=folder,
               split_sizes={"train": 4, "val": 1, "test": 1})
  c = _config("oc20")
  c.data.path = folder
  return c


def _qm9(tmp_path):
  pytest.importorskip("tblite")
  pytest.importorskip("rdkit")
  from noisy_nodes.gns.qm9 import xtb  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / "qm9raw")
  xtb.generate(folder, n=6, seed=0)
  c = _config("qm9")
  c.data.path = folder
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.num_val, c.data.num_test = 1, 1
  return c


# Tolerance on the mean training loss of the last 20 of 100 steps (bf16 vs
# fp32, same batches and initialisation), relative to the fp32 loss at step
# 0: bf16 rounds every activation to 8 significant bits, so the two runs
# drift apart but must learn the same amount.
TOLERANCE = 0.1


@pytest.mark.parametrize("make", [_crystal, _crysgnn, _oc20, _qm9],
                         ids=["deeper_gatgnn", "crysgnn_pretrain", "oc20",
                              "qm9"])
def test_bf16_trains_like_fp32_and_keeps_float32_state(make, tmp_path):
  exp, batches = _experiment(make(tmp_path), str(tmp_path / "run"))
  fp32, ts32 = _losses(exp, batches, "fp32", 100)
  bf16, ts16 = _losses(exp, batches, "bf16", 100)
  assert np.all(np.isfinite(bf16))
  # The forward pass agrees to bf16 rounding at the shared initialisation.
  assert abs(bf16[0] - fp32[0]) <= 0.03 * abs(fp32[0])
  # Both learn, by the same amount.
  assert fp32[-20:].mean() < fp32[0] and bf16[-20:].mean() < bf16[0]
  assert abs(bf16[-20:].mean() - fp32[-20:].mean()) <= TOLERANCE * fp32[0]
  # Master parameters, optimizer state, EMA and running statistics: float32,
  # the same tree as fp32 training (what the checkpoint holds).
  for a, b in zip(jax.tree_util.tree_leaves(ts16),
                  jax.tree_util.tree_leaves(ts32)):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.dtype != jnp.bfloat16
    assert np.all(np.isfinite(a))
  if make is _crystal:
    _check_checkpoint_moves_between_precisions(exp, ts16, tmp_path)


def _check_checkpoint_moves_between_precisions(exp, ts16, tmp_path):
  """A bf16 run's checkpoint restores into an fp32 run's state, and its
  predictions in bf16 and fp32 agree to bf16 rounding."""
  from noisy_nodes.engine import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(100, parallel.replicate(ts16, exp.mesh), {"step": 100})
  target = parallel.replicate(jax.tree_util.tree_map(np.zeros_like, ts16),
                              exp.mesh)
  restored, _, _ = ckpt.restore(target)
  ckpt.close()
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(restored)),
                  jax.tree_util.tree_leaves(ts16)):
    np.testing.assert_array_equal(a, b)
  budget = exp.budget()
  preds = {}
  for name in ("fp32", "bf16"):
    exp.policy, exp._eval_step = precision.resolve(name), None
    out = exp.predict(ts16.params, ts16.state, "val", budget)
    preds[name] = next(iter(out.values()))
  fp32, bf16 = np.stack(preds["fp32"]), np.stack(preds["bf16"])
  assert np.all(np.isfinite(bf16))
  np.testing.assert_allclose(bf16, fp32, atol=0.03 * np.abs(fp32).max())


def test_bf16_policy_casts_matmuls_but_not_norms_or_readouts():
  from noisy_nodes import nn  # pylint: disable=g-import-not-at-top
  seen = {}

  def model(x):
    h = hk.Linear(8, name="dense")(x)
    seen["dense"] = h.dtype
    h = nn.MaskedBatchNorm(name="norm")(h, jnp.ones(4, bool), True)
    seen["norm_out"] = h.dtype
    seen["ln"] = hk.LayerNorm(-1, True, True)(h).dtype
    return nn.ReadoutLinear(1, name="out")(h)

  f = hk.transform_with_state(model)
  x = jnp.arange(12.0).reshape(4, 3)
  params, state = f.init(jax.random.PRNGKey(0), x)
  f16 = hk.transform_with_state(precision.resolve("bf16", "cpu").wrap(model))
  params16, state16 = f16.init(jax.random.PRNGKey(0), x)
  out, new_state = f16.apply(params16, state16, None, x)
  # Parameters are created float32 under the policy (the master copy).
  assert jax.tree_util.tree_map(lambda a: a.dtype, params16) == \
      jax.tree_util.tree_map(lambda a: a.dtype, params)
  assert seen == {"dense": jnp.bfloat16, "norm_out": jnp.bfloat16,
                  "ln": jnp.bfloat16}
  assert out.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in
             jax.tree_util.tree_leaves(new_state))
  ref, _ = f.apply(params, state, None, x)
  np.testing.assert_allclose(out, ref, rtol=0.05, atol=0.05)


def test_precision_names_and_backend_defaults():
  assert precision.resolve("fp32", "cpu").matmul_precision is None
  assert precision.resolve("fp32", "gpu").matmul_precision == "highest"
  assert precision.resolve("tf32", "gpu").matmul_precision == "tensorfloat32"
  assert precision.resolve("auto", "tpu").name == "bf16"

  class H200:
    compute_capability = "9.0"

  class V100:
    compute_capability = "7.0"
  assert precision.resolve("auto", "gpu", H200()).name == "bf16"
  assert precision.resolve("auto", "gpu", V100()).name == "fp32"
  assert precision.resolve("auto", "cpu").name == "fp32"
  with pytest.raises(ValueError, match="train.precision"):
    precision.resolve("fp16", "cpu")


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_accelerator_path_skips_cpu_machinery(platform, monkeypatch):
  """With the backend faked as GPU/TPU: bf16 by default, and none of the
  CPU-only machinery is built or set (AGAT kernels, XLA:CPU options, huge
  pages restart, malloc_trim after compiling)."""
  from crystal.models import agat_cpu  # pylint: disable=g-import-not-at-top
  from crystal.models import gatgnn  # pylint: disable=g-import-not-at-top
  from noisy_nodes.engine import runtime  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError(f"CPU-only machinery used on {platform}")
  monkeypatch.setattr(jax, "default_backend", lambda: platform)
  monkeypatch.setattr(agat_cpu, "_load", refuse)
  monkeypatch.setattr(agat_cpu, "_compile", refuse)
  monkeypatch.setattr(parallel, "_cpu_options_supported", refuse)
  monkeypatch.setattr(runtime, "release_free_memory", refuse)
  monkeypatch.setattr(os, "execve", refuse)
  monkeypatch.setattr(runtime, "hugepages_supported", lambda: True)
  monkeypatch.setenv("JAX_PLATFORMS", {"gpu": "cuda", "tpu": "tpu"}[platform])
  monkeypatch.delenv("NN_HUGEPAGES", raising=False)
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)

  class Device:  # what jax.devices()[0] would be
    compute_capability = "9.0"
  assert precision.resolve("auto", device=Device()).name == "bf16"
  assert precision.resolve("auto", device=Device()).matmul_precision == (
      "highest")
  assert not agat_cpu.available()
  layer_fused = hk.transform(
      lambda: gatgnn.AGATLayer(4).fused(True, True, jnp.float32))
  assert layer_fused.apply({}, None) is False  # the XLA path
  assert parallel.compiler_options() == {}
  runtime.reexec_with_hugepages(True)  # returns without restarting
  assert runtime.expected_platform() == platform
  assert not any(parallel.cpu_machinery().values())
  step = jax.jit(lambda x: x + 1)
  parallel.compile_ahead(step, jnp.float32(1))  # no malloc_trim
