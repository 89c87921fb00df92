r"""Noisy Nodes GNS on OC20 (Godwin et al. 2022, §5.1, Table 9).

  python -m noisy_nodes.train --config=configs/oc20.py:demo --workdir=runs/oc20
  python -m noisy_nodes.train --config=configs/oc20.py --workdir=runs/oc20 \
      --config.data.path=/data/oc20/is2re/all          # the paper's setting

Variant string: comma-separated tokens, e.g. ``is2rs,10x10`` or ``demo``:

  (none)   IS2RE, Table 9: 1 x 50 (N block iterations x M steps), latent 512,
           3-layer MLPs, 512 Bessel functions, σ = 0.3, budget 1024/12800/10,
           Adam(0.9, 0.95), warm-up 5e5 steps 1e-5 -> 1e-4, cosine cycles of
           5e6, EMA 0.9999, position loss coefficient 1.0.
  NxM      block layout of Table 1/3: 10x10, 5x10, 50x1, 1x50 ...
  is2rs    IS2RS: predict relaxed positions; best checkpoint on ADwT.
  pos_only IS2RS without the energy loss (Table 3 "+ Pos only").
  no_noise the "No Noise" rows: σ = 0 and no frame sampling.  Under IS2RE
           there is then no node target (position loss 0); under IS2RS the
           relaxed-position target Δ stays (it is the task), only the noise
           goes.
  initial  IS2RE noise around the initial structure instead of a sampled
           trajectory frame (§5.1 "Source of Noise": frames vs initial).
  remat    rematerialise message-passing steps (deep models, less memory).
  demo     EMT data generated on first use (1,600/200/200 systems, ~5 min
           on 2 cores), a 2 x 3 GNS of width 64 sized for 2 CPU cores
           (~10 minutes end to end). ``demo,is2rs`` also scales σ to EMT's
           small relaxations (0.05 Å) and normalises the node target
           (``_demo_is2rs`` says why).
  tiny     a few EMT systems and a minimal model, for tests.

``PAPER_ROWS`` maps each row of the paper's OC20 ablations (Tables 1, 3) to
its variant (README "Noisy Nodes ablations"; tests/test_configs_noisy_nodes.py
pins σ, loss weights and depth of each).

Batch budgets (``batch.max_nodes/max_edges/max_graphs``) are PER DEVICE by
default, so the global batch grows with the device count; the paper does not
say which Table 9's "batch size" is. ``batch.budget='global'`` divides them
over the devices instead (``--cpu_devices=N`` on CPU always splits them).

Our choices where the paper is silent (not from the paper): the graph
cutoff 6 Å and k = 12 nearest neighbours (``data.cutoff``,
``data.max_neighbors``; the paper gives neither), the evaluation / checkpoint
step counts (``train.eval_every``, ``checkpoint_every``, ``log_every``),
the total step count 5.5e6 (one warm-up plus one cosine cycle; the paper
trains "up to 200 hours"), noising fixed atoms too (``noise_fixed_atoms``),
and everything under ``demo`` / ``tiny``.

With ``data.path`` empty the EMT demo data set (noisy_nodes.gns.oc20.emt) is
generated into ``data.cache_dir`` once and reused.
"""
import re

import ml_collections

from configs import parse_variant
from noisy_nodes.gns import model as gns

TOKENS = ("is2rs", "pos_only", "no_noise", "initial", "remat", "demo", "tiny")
BLOCKS = r"\d+x\d+"  # N x M: block iterations x message-passing steps

# (table, row, block size) of the paper -> variant of this file.
PAPER_ROWS = (
    ("Table 1 (IS2RE)", "No Noise", "1x50", "no_noise,1x50"),
    ("Table 1 (IS2RE)", "Noisy Nodes", "50x1", "50x1"),
    ("Table 1 (IS2RE)", "Noisy Nodes", "1x50", "1x50"),
    ("Table 1 (IS2RE)", "Noisy Nodes", "5x10", "5x10"),
    ("Table 1 (IS2RE)", "Noisy Nodes", "10x10", "10x10"),
    ("Table 2 (IS2RE test)", "Noisy Nodes (best)", "10x10", "10x10"),
    ("§5.1 (IS2RE)", "noise around the initial structure", "1x50",
     "initial,1x50"),
    ("Table 3 (IS2RS)", "No Noise", "1x50", "is2rs,no_noise,1x50"),
    ("Table 3 (IS2RS)", "Noisy Nodes", "50x1", "is2rs,50x1"),
    ("Table 3 (IS2RS)", "Noisy Nodes", "1x50", "is2rs,1x50"),
    ("Table 3 (IS2RS)", "Noisy Nodes", "5x10", "is2rs,5x10"),
    ("Table 3 (IS2RS)", "+ Pos only", "5x10", "pos_only,5x10"),
    ("Table 3 (IS2RS)", "+ Pos only", "10x10", "pos_only,10x10"),
    ("Table 4 (IS2RS test)", "Noisy Nodes (Direct)", "10x10",
     "pos_only,10x10"),
)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  tokens = parse_variant(variant, TOKENS, patterns={"NxM": BLOCKS},
                         config="oc20")
  c = ml_collections.ConfigDict()
  c.task = "noisy_nodes.gns.oc20.task:OC20Task"
  c.data = dict(
      path="",              # file or folder (*.aselmdb, *.traj, *.db, data.lmdb)
      format="",            # inferred from the file names when empty
      task="is2re",         # is2re | is2rs
      target="energy_relaxed",
      cache_dir="~/.cache/noisy_nodes/oc20_emt",
      num_train=1600, num_val=200, num_test=200,  # EMT data (path empty)
      seed=0, gen_workers=2,  # processes generating the EMT set
      val_fraction=0.1, test_fraction=0.1, split_seed=0,  # single-file data
      cutoff=6.0, max_neighbors=12,
      noise_sigma=0.3,      # Table 9 (Å)
      sample_frames=True,   # §5.1: sample a trajectory frame, then add noise
      frames_path="",       # frames by sid: <sid>.traj folder or S2EF LMDBs
      noise_fixed_atoms=True,
      limit=0,              # read at most this many structures per split
      skip_invalid=False,   # skip (and list) bad inputs instead of exit 2
      whole=False,          # one split 'all' of everything (evaluate --split=all)
      workers=0,  # training featurisation processes (0: a thread)
      # Target mean/std from a seeded sample of at most this many training
      # systems (0: all; ours: the paper does not say; shards' metadata
      # is exact). Keeps the start-up of a raw 460K-system folder short.
      stats_sample=100_000,
  )
  # Table 9's GNS (the preset next to the model, noisy_nodes.gns.model).
  c.model = dict(name="gns", **gns.presets("oc20"))
  # normalize_position_target: node target in units of the RMS of the
  # training Δ - σ, like the energy (False: the paper's unnormalised Å).
  c.loss = dict(position_loss_weight=1.0, graph_loss_weight=1.0,
                normalize_position_target=False)
  c.batch = dict(max_nodes=1024, max_edges=12800, max_graphs=10, shuffle=True,
                 prefetch=4, skip_oversized=True, edge_margin=1.1,
                 budget="per_device")  # or "global": split over devices
  c.optim = dict(optimizer="adam", lr=1e-4, b1=0.9, b2=0.95,
                 schedule="cosine_cycles", warmup_steps=500_000, init_lr=1e-5,
                 cycle_steps=5_000_000, final_lr_fraction=0.0, clip_norm=0.0,
                 ema_decay=0.9999)
  c.train = dict(precision="auto",  # or fp32, bf16, tf32 (engine/precision.py)
                 num_steps=5_500_000, log_every=1000, eval_every=50_000,
                 checkpoint_every=10_000, seed=0, max_to_keep=3,
                 skip_nonfinite=True,
                 # Best checkpoint: 'average' over the validation splits
                 # (fairchem's val_id/ood_ads/ood_cat/ood_both) or one name.
                 select_split="average", select_metric="",  # "": task's
                 # 2 MiB pages for XLA:CPU buffers (engine/runtime.py): the
                 # width-512 step is ~15% faster on CPU.
                 hugepages=True)

  no_noise = False
  for tok in tokens:
    if re.fullmatch(BLOCKS, tok):
      n, m = tok.split("x")
      c.model.num_block_iterations = int(n)
      c.model.num_message_passing_steps = int(m)
    elif tok == "is2rs":
      c.data.task = "is2rs"
    elif tok == "pos_only":
      c.data.task = "is2rs"
      c.loss.graph_loss_weight = 0.0
    elif tok == "no_noise":
      c.data.noise_sigma = 0.0
      c.data.sample_frames = False
      no_noise = True
    elif tok == "initial":
      c.data.sample_frames = False
    elif tok == "remat":
      c.model.remat = True
    elif tok == "demo":
      _demo(c)
    elif tok == "tiny":
      _tiny(c)
  if "demo" in tokens and c.data.task == "is2rs":
    _demo_is2rs(c, no_noise)
  if no_noise and c.data.task == "is2re":
    # IS2RE without noise has no node target (the relaxed structure is not
    # an input perturbation any more); IS2RS keeps its position target Δ.
    c.loss.position_loss_weight = 0.0
  return c


def _demo(c):
  """EMT data, a 2 x 3 GNS of width 64: ~10 minutes on 2 CPU cores."""
  c.data.num_train, c.data.num_val, c.data.num_test = 1600, 200, 200
  c.data.cutoff = 5.0
  c.model.update(latent_size=64, mlp_layers=2, num_message_passing_steps=3,
                 num_block_iterations=2, num_basis=32)
  c.batch.update(max_nodes=0, max_edges=0, max_graphs=8)  # estimated
  c.optim.update(lr=1e-3, warmup_steps=100, init_lr=1e-5, cycle_steps=1900,
                 final_lr_fraction=0.02, clip_norm=1.0, ema_decay=0.995)
  c.train.update(num_steps=2000, log_every=100, eval_every=500,
                 checkpoint_every=500, hugepages=False)


def _demo_is2rs(c, no_noise):
  """IS2RS on EMT: noise and node target sized to EMT's relaxations (ours).

  EMT relaxations move free atoms by 0.14 Å RMS per coordinate (adsorbates
  0.45 Å); OC20's σ = 0.3 Å buries that signal under twice as much
  noise, and the unnormalised node MSE (Å²) is then a tenth of the
  normalised energy MSE: the model learned to denoise and to predict the
  energy, and ended below the "do not move" baseline (ADwT 0.756 vs 0.764).
  σ = 0.05 Å keeps noisy inputs near the relaxation scale, and the node
  target is normalised like the energy (``normalize_position_target``).
  """
  if not no_noise:
    c.data.noise_sigma = 0.05
  c.loss.normalize_position_target = True


def _tiny(c):
  """A few EMT systems (generated in-process) and a minimal model."""
  c.data.num_train, c.data.num_val, c.data.num_test = 12, 4, 4
  c.data.gen_workers = 0
  c.data.cutoff = 4.0
  c.data.max_neighbors = 8
  c.model.update(latent_size=16, mlp_layers=2, num_message_passing_steps=2,
                 num_block_iterations=2, num_basis=8)
  c.batch.update(max_nodes=0, max_edges=0, max_graphs=4, prefetch=1)
  c.optim.update(lr=1e-3, warmup_steps=2, init_lr=1e-5, cycle_steps=10,
                 final_lr_fraction=0.1, clip_norm=1.0, ema_decay=0.9)
  c.train.update(num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  c.train.hugepages = False
