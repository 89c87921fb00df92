"""Config of the engine tests' toy task (tests/toy_task.py)."""
import ml_collections


def get_config(variant=""):
  c = ml_collections.ConfigDict()
  c.task = "toy_task:ToyTask"
  c.data = dict(num_train=24, num_val=8, seed=0, noise=0.0, path="",
                skip_invalid=False, nan_target_ids="", workers=0)
  c.model = dict(width=32)
  c.batch = dict(max_nodes=64, max_edges=1024, max_graphs=8, shuffle=True,
                 prefetch=2, skip_oversized=False)
  c.optim = dict(optimizer="adam", lr=3e-3, b1=0.9, b2=0.999, schedule="constant",
                 warmup_steps=0, init_lr=0.0, clip_norm=10.0, ema_decay=0.0,
                 plateau=dict(enabled=False, factor=0.5, patience=0,
                              min_lr=1e-5))
  c.train = dict(num_steps=20, log_every=5, eval_every=10, checkpoint_every=10,
                 seed=0, max_to_keep=3, skip_nonfinite=False)
  if variant == "noisy":
    c.data.noise = 0.05
    c.optim.ema_decay = 0.99
  return c
