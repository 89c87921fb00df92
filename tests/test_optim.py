"""Schedules, plateau control and EMA against hand computations."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import noisy_nodes  # noqa: F401
from noisy_nodes.engine import optim


def _cfg(**kw):
  base = dict(optimizer="adam", lr=1e-4, b1=0.9, b2=0.95, schedule="constant",
              warmup_steps=0, init_lr=0.0, clip_norm=0.0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_warmup_then_cosine_cycles_table9_shape():
  cfg = _cfg(schedule="cosine_cycles", warmup_steps=100, init_lr=1e-5,
             cycle_steps=1000)
  s = optim.make_schedule(cfg)
  assert float(s(0)) == pytest.approx(1e-5)
  assert float(s(50)) == pytest.approx(1e-5 + 0.5 * (1e-4 - 1e-5))
  assert float(s(100)) == pytest.approx(1e-4)
  # Half a cycle after warm-up: cos(pi/2) -> lr / 2.
  assert float(s(600)) == pytest.approx(5e-5, rel=1e-5)
  # Cycles restart at the peak.
  assert float(s(1100)) == pytest.approx(1e-4)
  assert float(s(1099)) < 1e-8 + 1e-10


def test_piecewise_multistep_decay():
  # torch MultiStepLR(milestones=[100, 250], gamma=0.1) over steps.
  s = optim.make_schedule(_cfg(schedule="piecewise", lr=3e-3,
                               decay_steps=(100, 250), decay_factor=0.1))
  for step, lr in ((0, 3e-3), (99, 3e-3), (100, 3e-4), (249, 3e-4),
                   (250, 3e-5), (10**6, 3e-5)):
    assert float(s(step)) == pytest.approx(lr, rel=1e-6), step


def test_lr_scale_multiplies_updates():
  cfg = _cfg(optimizer="sgd", lr=0.1)
  opt = optim.make_optimizer(cfg)
  params = {"w": jnp.ones(2)}
  state = opt.init(params)
  u1, _ = opt.update({"w": jnp.ones(2)}, state, params)
  state = optim.set_lr_scale(state, 0.25)
  u2, _ = opt.update({"w": jnp.ones(2)}, state, params)
  np.testing.assert_allclose(u1["w"], -0.1)
  np.testing.assert_allclose(u2["w"], -0.025)
  assert optim.current_lr(cfg, 3, state) == pytest.approx(0.025)


def test_clipping_and_adamw_decay():
  cfg = _cfg(optimizer="adamw", lr=0.01, weight_decay=0.5, clip_norm=1.0,
             b2=0.999)
  opt = optim.make_optimizer(cfg)
  params = {"w": jnp.full(4, 2.0)}
  u, _ = opt.update({"w": jnp.full(4, 100.0)}, opt.init(params), params)
  # First Adam step is ~sign(g) = 1; decoupled decay adds 0.5 * w = 1.
  np.testing.assert_allclose(u["w"], -0.01 * (1.0 + 1.0), rtol=1e-4)


def test_plateau_matches_pytorch_semantics():
  p = optim.Plateau(factor=0.8, patience=2, min_lr=1e-5)
  scales = [p.update(v, 1e-3) for v in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95,
                                        0.95, 0.95, 0.95]]
  # Improves twice, then 3 bad evaluations (> patience) -> x0.8, and again.
  assert scales == pytest.approx([1, 1, 1, 1, 0.8, 0.8, 0.8, 0.64, 0.64])
  p = optim.Plateau(factor=0.1, patience=0, min_lr=1e-4)
  for v in [1.0] + [2.0] * 5:
    p.update(v, 1e-3)
  assert p.scale == pytest.approx(0.1)  # floored at min_lr / base_lr


def test_ema_warmup_decay():
  ema = {"w": jnp.zeros(())}
  params = {"w": jnp.ones(())}
  out = optim.ema_update(ema, params, jnp.array(0), 0.9999)
  d0 = 1.0 / 10.0  # min(0.9999, (1 + 0) / (10 + 0))
  assert float(out["w"]) == pytest.approx(1 - d0)
  out = optim.ema_update(ema, params, jnp.array(10 ** 6), 0.9999)
  assert float(out["w"]) == pytest.approx(1 - 0.9999, rel=1e-3)
