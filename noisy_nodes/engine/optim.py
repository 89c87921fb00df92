"""Optimisers, learning-rate schedules, plateau control and parameter EMA.

* Noisy Nodes (Tables 9/10): Adam(β1 0.9, β2 0.95), linear warm-up from
  ``init_lr`` to ``lr`` over ``warmup_steps``, then cosine cycles of length
  ``cycle_steps`` (restarting at ``lr``), EMA of parameters with decay
  min(decay, (1 + t) / (10 + t)).
* DeeperGATGNN reference: AdamW(lr 0.005) with ReduceLROnPlateau(factor 0.8,
  patience 10, min 1e-5, threshold 2e-4) stepped once per epoch on the
  epoch's mean *training* error (``optim.plateau.monitor='train'``; the
  trainer can also watch the validation metric, ``'val'``).

The learning rate is ``schedule(step) * scale`` where ``scale`` is a scalar in
the optimiser state set by the host-side ``Plateau`` controller after each
evaluation; it is checkpointed with everything else, so resume is exact.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax


def make_schedule(cfg) -> optax.Schedule:
  """``cfg``: optim config (lr, schedule, warmup_steps, init_lr, cycle_steps,
  final_lr_fraction; decay_steps and decay_factor for 'piecewise')."""
  lr = float(cfg.lr)
  warmup = int(cfg.get("warmup_steps", 0))
  init_lr = float(cfg.get("init_lr", 0.0))
  kind = cfg.get("schedule", "constant")
  if kind == "constant":
    body = optax.constant_schedule(lr)
  elif kind == "cosine_cycles":
    cycle = int(cfg.cycle_steps)
    alpha = float(cfg.get("final_lr_fraction", 0.0))

    def body(step):
      # Cosine cycling: each cycle decays lr -> alpha*lr, then restarts.
      t = jnp.mod(step, cycle) / cycle
      return lr * (alpha + (1 - alpha) * 0.5 * (1 + jnp.cos(jnp.pi * t)))
  elif kind == "piecewise":
    # lr × decay_factor at each of decay_steps (torch MultiStepLR, gamma).
    factor = float(cfg.get("decay_factor", 0.1))
    body = optax.piecewise_constant_schedule(
        lr, {int(b): factor for b in cfg.get("decay_steps", ())})
  else:
    raise ValueError(f"unknown schedule {kind!r} "
                     "(constant|cosine_cycles|piecewise)")
  if warmup <= 0:
    return body
  ramp = optax.linear_schedule(init_lr, lr, warmup)
  return optax.join_schedules([ramp, body], [warmup])


def make_optimizer(cfg) -> optax.GradientTransformation:
  """Clipping + Adam/AdamW/SGD with ``learning_rate = schedule(step) * scale``."""
  schedule = make_schedule(cfg)
  name = cfg.get("optimizer", "adam")

  def build(lr_scale):
    if name == "adam":
      opt = optax.scale_by_adam(b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                                eps=cfg.get("eps", 1e-8))
      parts = [opt]
    elif name == "adamw":
      parts = [optax.scale_by_adam(b1=cfg.get("b1", 0.9),
                                   b2=cfg.get("b2", 0.999),
                                   eps=cfg.get("eps", 1e-8)),
               optax.add_decayed_weights(cfg.get("weight_decay", 0.01))]
    elif name == "sgd":
      parts = [optax.trace(decay=cfg.get("momentum", 0.0))]
    else:
      raise ValueError(f"unknown optimizer {name!r} (adam|adamw|sgd)")
    parts.append(optax.scale_by_schedule(lambda s: -schedule(s) * lr_scale))
    return optax.chain(*parts)

  clip = cfg.get("clip_norm", 0.0)
  opt = optax.inject_hyperparams(build)(lr_scale=1.0)
  if clip and clip > 0:
    return optax.chain(optax.clip_by_global_norm(clip), opt)
  return opt


def _hyperparams_state(opt_state):
  """Finds the InjectHyperparamsState (possibly inside a chain)."""
  if hasattr(opt_state, "hyperparams"):
    return opt_state
  for s in opt_state:
    if hasattr(s, "hyperparams"):
      return s
  raise ValueError("optimizer state has no injected hyperparameters")


def get_lr_scale(opt_state) -> jnp.ndarray:
  return _hyperparams_state(opt_state).hyperparams["lr_scale"]


def set_lr_scale(opt_state, scale: float):
  """Returns ``opt_state`` with the plateau scale replaced (host side)."""
  hp = _hyperparams_state(opt_state)
  old = hp.hyperparams["lr_scale"]
  value = np.asarray(scale, old.dtype)
  sharding = getattr(old, "sharding", None)
  if sharding is None:
    hp.hyperparams["lr_scale"] = jnp.asarray(value)
  else:
    # Every process computes the same scale (the plateau sees the same
    # all-reduced metric), so each builds its own shards of one global array.
    # device_put of a host value onto a multi-process sharding would not give
    # one shard per device, which orbax then refuses to save.
    hp.hyperparams["lr_scale"] = jax.make_array_from_callback(
        value.shape, sharding, lambda index: value[index])
  return opt_state


def current_lr(cfg, step: int, opt_state) -> float:
  """The learning rate used at ``step`` (reads only the scale off-device)."""
  scale = get_lr_scale(opt_state)
  if isinstance(scale, jax.Array) and not scale.is_fully_addressable:
    scale = scale.addressable_data(0)
  return float(make_schedule(cfg)(step)) * float(scale)


@dataclasses.dataclass
class Plateau:
  """ReduceLROnPlateau (PyTorch semantics, mode 'min', relative threshold).

  After ``patience`` evaluations without improving on the best value by more
  than ``threshold`` (relative), the scale is multiplied by ``factor``, never
  taking the learning rate under ``min_lr``. The trainer calls ``update`` with the
  monitored value (``trainer.plateau_monitor``).
  """
  factor: float = 0.8
  patience: int = 10
  min_lr: float = 1e-5
  threshold: float = 1e-4
  best: float = float("inf")
  num_bad: int = 0
  scale: float = 1.0

  def update(self, value: float, base_lr: float) -> float:
    if value < self.best * (1 - self.threshold):
      self.best, self.num_bad = value, 0
    else:
      self.num_bad += 1
    if self.num_bad > self.patience:
      self.scale = max(self.scale * self.factor, self.min_lr / base_lr)
      self.num_bad = 0
    return self.scale

  def state_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def ema_update(ema_params, params, step, decay: float):
  """EMA with warm-up decay min(decay, (1 + t) / (10 + t)) (Table 9)."""
  t = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p,
                                ema_params, params)
