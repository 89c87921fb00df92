r"""CrysGNN pre-training (Das et al. 2022, §2.1; SPEC.md "CrysGNN reference").

  python -m noisy_nodes.train --config=configs/crysgnn_pretrain.py:demo \
      --workdir=runs/crysgnn_teacher

Variants: "" (reference: CGCNN encoder 5 x 64, 48-atom corpus crystals, loss
weights 0.25 each, Adam 1e-3), "demo" (a 600-crystal generated corpus, a few
minutes on 2 CPU cores), "tiny" (tests). ``--config.data.path`` takes a corpus
manifest or structure files/folders (comma-separated); the run's checkpoints
are the teacher of configs/crysgnn_distill.py.
"""
import os

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "crysgnn_pretrain"
  c.data = dict(
      path="",
      cache_dir=os.path.expanduser("~/.cache/noisy_nodes/crysgnn"),
      # Generated corpus (crystal.crysgnn.corpus) when path is empty; with a
      # path, ``extra`` generated crystals are added to the user's.
      corpus=dict(n=50000, extra=0, seed=0, workers=2, timeout_s=20.0,
                  mix=(0.7, 0.15, 0.05, 0.1)),
      max_atoms=48,           # P: connectivity block size; larger are dropped.
      val_fraction=0.05,
      seed=0,
      contrastive_chunk=256,  # validation NT-Xent over chunks of this many.
      graph=dict(cutoff=8.0, max_neighbors=12, num_gaussians=41,
                 gaussian_stop=8.0, gaussian_width=0.2),
  )
  # Reference encoder: Linear(92 -> 64) + 5 gated CGCNN convolutions with BN
  # in the gate, summed messages, softplus.
  c.model = dict(name="cgcnn", dim=64, num_layers=5, post_fc_layers=0,
                 activation="softplus", aggregation="sum", gate_norm=True)
  c.loss = dict(weights=dict(feature=0.25, connectivity=0.25,
                             space_group=0.25, contrastive=0.25),
                temperature=0.07)
  c.batch = dict(max_nodes=1024, max_edges=12288, max_graphs=64, shuffle=True,
                 prefetch=2, skip_oversized=False)
  c.optim = dict(optimizer="adam", lr=1e-3, b1=0.9, b2=0.999,
                 weight_decay=0.0, schedule="constant", warmup_steps=0,
                 init_lr=0.0, clip_norm=10.0, ema_decay=0.0)
  c.train = dict(num_steps=50000, log_every=100, eval_every=2000,
                 checkpoint_every=2000, seed=0, max_to_keep=3,
                 skip_nonfinite=False)
  if variant == "demo":
    c.data.corpus.n = 600
    c.data.max_atoms = 24
    c.data.val_fraction = 0.1
    c.batch.update(max_nodes=384, max_edges=4608, max_graphs=32)
    c.optim.lr = 2e-3
    c.train.update(num_steps=400, log_every=50, eval_every=100,
                   checkpoint_every=100)
  elif variant == "tiny":
    c.data.corpus.update(n=24, workers=1)
    c.data.max_atoms = 12
    c.data.val_fraction = 0.25
    c.model.update(dim=16, num_layers=2)
    c.batch.update(max_nodes=96, max_edges=1152, max_graphs=8)
    c.train.update(num_steps=6, log_every=3, eval_every=3,
                   checkpoint_every=3)
  elif variant:
    raise ValueError(f"unknown variant {variant!r}: '', 'demo' or 'tiny'")
  return c
