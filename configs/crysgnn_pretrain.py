r"""CrysGNN pre-training (Das et al. 2022, §2.1; kdmsit/crysgnn).

  python -m noisy_nodes.train --config=configs/crysgnn_pretrain.py:demo \
      --workdir=runs/crysgnn_teacher

No variant: kdmsit/crysgnn's settings (``crysgnn/pretrain.py``, ``model.py``):
  * encoder: the original CGCNN (``crystal.crysgnn.encoder.OriginalCGCNN``):
    Linear(92 -> 64) without bias or activation, 5 convolutions z -> Linear ->
    BN -> σ(filter)·softplus(core), summed over i's 12 nearest -> BN ->
    softplus(h + ·); no readout head;
  * inputs: CGCNN's 92-d atom features, 12 nearest neighbours within 8 Å, 41
    Gaussians 0..8 Å (width 0.2);
  * losses: the four terms weighted 0.25 each, NT-Xent temperature 0.07 with
    crystal-system positives, no projection head (node embeddings are
    L2-normalised per crystal as in the code);
  * Adam lr 0.03 (β 0.9 / 0.999, no weight decay), constant, no gradient
    clipping; batches of 128 crystals; 20 epochs.
Deviations of the default, each with the switch that restores the reference:
  * data: a generated corpus of ``data.corpus.n = 50000`` crystals
    (``crystal.crysgnn.corpus``; the reference pre-trains on 800K Materials
    Project + OQMD crystals): give yours with ``--config.data.path``;
  * 20 epochs are ``train.num_steps`` = 20 × ceil(train size / 128) for the
    default corpus (the engine counts steps): with another corpus size set
    ``--config.train.num_steps`` (``epochs_to_steps`` below);
  * a held-out ``data.val_fraction = 0.05`` for model selection (the
    reference trains on everything and keeps the lowest training loss):
    ``--config.data.val_fraction`` small;
  * no crystal is dropped for its size (the reference has no cap either),
    but the connectivity loss over all n^2 ordered atom pairs is evaluated
    exactly only for crystals up to ``loss.background_pairs = 48`` atoms;
    in larger ones each atom's 12 neighbour pairs (its non-zero targets) are
    exact and its class-0 pairs a systematic sample of 48 partners, each
    counting n/48 times: an unbiased estimate with the exact normaliser
    (``crystal.crysgnn.heads.pair_slots``), so memory is linear in the
    batch's atoms, not quadratic in its largest crystal. Set
    ``background_pairs`` to the largest crystal's size for the reference's
    exact loss everywhere;
  * generated crystals have at most ``data.corpus.max_atoms = 100`` atoms
    (a choice of the synthetic distribution; files of ``data.path`` are
    kept whatever their size);
  * batches are dynamic: up to 128 crystals under node/edge budgets estimated
    to hold 128 typical ones (fixed shapes for XLA; the reference's batches
    are exactly 128);
  * the teacher's BatchNorm statistics are used in eval mode at distillation
    (the reference leaves the teacher in training mode).

Variants: "library" (this project's earlier choices: the MatDeepLearn-style
CGConv encoder ``crystal.models.cgcnn`` with BN in the gate, residual-stream
BN and a softplus input layer with bias; Adam 1e-3 with clipping at 10;
node-capped batches of up to 64; 50K steps), "demo" (a 600-crystal corpus,
batches of 32, Adam 3e-3, 400 steps: a few minutes on 2 CPU cores), "tiny"
(tests; Adam 1e-3). ``--config.data.path`` takes a
corpus manifest or structure files/folders (comma-separated); the run's
checkpoints are the teacher of configs/crysgnn_distill.py.
"""
import math
import os

import ml_collections

from configs import parse_variant
from crystal.crysgnn import encoder

BATCH = 128


def epochs_to_steps(epochs: int, train_size: int, batch: int = BATCH) -> int:
  """Optimiser steps of ``epochs`` passes over ``train_size`` samples."""
  return int(epochs * math.ceil(train_size / batch))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  tokens = parse_variant(variant, ("library", "demo", "tiny"),
                         config="crysgnn_pretrain")
  c = ml_collections.ConfigDict()
  c.task = "crystal.crysgnn.tasks:CrysGNNPretrainTask"
  c.data = dict(
      path="",
      # A structure file of data.path that cannot be read or validated is an
      # error naming it; True skips it and lists it in data_report.json.
      skip_invalid=False,
      cache_dir=os.path.expanduser("~/.cache/noisy_nodes/crysgnn"),
      # Generated corpus (crystal.crysgnn.corpus) when path is empty; with a
      # path, ``extra`` generated crystals are added to the user's.
      corpus=dict(n=50000, extra=0, seed=0, workers=2, timeout_s=20.0,
                  mix=(0.7, 0.15, 0.05, 0.1),
                  max_atoms=100),  # size bound of GENERATED crystals only.
      val_fraction=0.05,
      seed=0,
      contrastive_chunk=256,  # validation NT-Xent over chunks of this many.
      workers=0,  # training featurisation processes (0: a thread)
      graph=dict(cutoff=8.0, max_neighbors=12, num_gaussians=41,
                 gaussian_stop=8.0, gaussian_width=0.2),
  )
  # The reference encoder (the preset next to it, crystal.crysgnn.encoder),
  # teacher of configs/crysgnn_distill.py.
  c.model = dict(name="original_cgcnn", **encoder.presets("teacher"))
  c.loss = dict(weights=dict(feature=0.25, connectivity=0.25,
                             space_group=0.25, contrastive=0.25),
                temperature=0.07,
                # M: class-0 pair slots per atom; crystals up to M atoms get
                # the exact all-pairs L_CR, larger ones an unbiased sample.
                background_pairs=48)
  c.batch = dict(max_nodes=0, max_edges=0, max_graphs=BATCH, shuffle=True,
                 prefetch=2, skip_oversized=False)
  c.optim = dict(optimizer="adam", lr=0.03, b1=0.9, b2=0.999,
                 weight_decay=0.0, schedule="constant", warmup_steps=0,
                 init_lr=0.0, clip_norm=0.0, ema_decay=0.0)
  train_size = round(c.data.corpus.n * (1 - c.data.val_fraction))
  steps = epochs_to_steps(20, train_size)
  c.train = dict(precision="auto",  # or fp32, bf16, tf32 (engine/precision.py)
                 num_steps=steps, log_every=100, eval_every=steps // 20,
                 checkpoint_every=steps // 20, seed=0, max_to_keep=3,
                 skip_nonfinite=False)
  for variant in tokens:
    _apply(c, variant)
  return c


def _apply(c, variant):
  """One variant token (module docstring)."""
  if variant == "library":
    c.model = dict(name="cgcnn", dim=64, num_layers=5, post_fc_layers=0,
                   activation="softplus", aggregation="sum", gate_norm=True,
                   aggregate_at="center")   # summed over i's own neighbours
    c.batch.update(max_nodes=1024, max_edges=12288, max_graphs=64)
    c.optim.update(lr=1e-3, clip_norm=10.0)
    c.train.update(num_steps=50000, eval_every=2000, checkpoint_every=2000)
  elif variant == "demo":
    c.data.corpus.update(n=600, max_atoms=24)
    c.data.val_fraction = 0.1
    c.batch.update(max_graphs=32)
    c.optim.lr = 3e-3
    c.train.update(num_steps=400, log_every=50, eval_every=100,
                   checkpoint_every=100)
  elif variant == "tiny":
    c.data.corpus.update(n=24, workers=1, max_atoms=12)
    c.loss.background_pairs = 8  # sampled pairs above 8 atoms (tests)
    c.data.val_fraction = 0.25
    c.model.update(dim=16, num_layers=2)
    c.batch.update(max_nodes=96, max_edges=1152, max_graphs=8)
    c.optim.lr = 1e-3
    c.train.update(num_steps=6, log_every=3, eval_every=3,
                   checkpoint_every=3)
