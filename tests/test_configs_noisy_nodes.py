"""Every ablation row of the Noisy Nodes paper is a config variant (pinned).

Expected values are the paper's (Tables 1, 3, 5, 6, 9, 10): σ, whether
frames are sampled, the loss weights, the task and the depth N x M.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from configs import oc20 as oc20_config  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import qm9 as qm9_config  # noqa: E402  pylint: disable=g-import-not-at-top

from noisy_nodes.engine import trainer  # noqa: E402

# variant: (task, sigma, sample_frames, position weight, graph weight, N, M)
OC20 = {
    "no_noise,1x50": ("is2re", 0.0, False, 0.0, 1.0, 1, 50),
    "50x1": ("is2re", 0.3, True, 1.0, 1.0, 50, 1),
    "1x50": ("is2re", 0.3, True, 1.0, 1.0, 1, 50),
    "5x10": ("is2re", 0.3, True, 1.0, 1.0, 5, 10),
    "10x10": ("is2re", 0.3, True, 1.0, 1.0, 10, 10),
    "initial,1x50": ("is2re", 0.3, False, 1.0, 1.0, 1, 50),
    # IS2RS "No Noise": σ = 0, no frames, but the position target stays.
    "is2rs,no_noise,1x50": ("is2rs", 0.0, False, 1.0, 1.0, 1, 50),
    "is2rs,50x1": ("is2rs", 0.3, True, 1.0, 1.0, 50, 1),
    "is2rs,1x50": ("is2rs", 0.3, True, 1.0, 1.0, 1, 50),
    "is2rs,5x10": ("is2rs", 0.3, True, 1.0, 1.0, 5, 10),
    "pos_only,5x10": ("is2rs", 0.3, True, 1.0, 0.0, 5, 10),
    "pos_only,10x10": ("is2rs", 0.3, True, 1.0, 0.0, 10, 10),
}
# variant: (sigma, position weight, N, M)
QM9 = {
    "3x10": (0.02, 0.1, 3, 10),
    "no_noise,1x10": (0.0, 0.0, 1, 10),
    "noise_only,1x10": (0.02, 0.0, 1, 10),
    "1x10": (0.02, 0.1, 1, 10),
    "2x10": (0.02, 0.1, 2, 10),
}


def test_every_paper_row_is_a_pinned_variant():
  assert {r[-1] for r in oc20_config.PAPER_ROWS} == set(OC20)
  assert {r[-1] for r in qm9_config.PAPER_ROWS} == set(QM9)
  for variant, want in OC20.items():
    c = oc20_config.get_config(variant)
    got = (c.data.task, c.data.noise_sigma, c.data.sample_frames,
           c.loss.position_loss_weight, c.loss.graph_loss_weight,
           c.model.num_block_iterations, c.model.num_message_passing_steps)
    assert got == want, variant
    assert (c.model.latent_size, c.model.num_basis) == (512, 512)  # Table 9
    assert c.loss.position_loss_weight + c.loss.graph_loss_weight > 0
  for variant, want in QM9.items():
    c = qm9_config.get_config(variant)
    got = (c.data.noise_sigma, c.loss.position_loss_weight,
           c.model.num_block_iterations, c.model.num_message_passing_steps)
    assert got == want, variant
    assert (c.model.latent_size, c.model.mlp_hidden_size) == (512, 1024)
  # Token order does not matter; pos_only + no_noise still has a loss.
  c = oc20_config.get_config("no_noise,is2rs")
  assert (c.data.noise_sigma, c.loss.position_loss_weight) == (0.0, 1.0)
  c = oc20_config.get_config("pos_only,no_noise")
  assert c.loss.position_loss_weight == 1.0 and c.loss.graph_loss_weight == 0


def test_readme_lists_every_variant():
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  for variant in OC20:
    assert f"`configs/oc20.py:{variant}`" in readme, variant
  for variant in QM9:
    assert f"`configs/qm9.py:{variant}`" in readme, variant


def test_global_batch_budget_is_split_over_devices():
  c = oc20_config.get_config("tiny")
  c.batch.update(max_nodes=64, max_edges=512, max_graphs=4)
  assert trainer.per_device_batch(c) is c  # per device: unchanged
  c.batch.budget = "global"
  got = trainer.per_device_batch(c, count=2)
  assert (got.batch.max_nodes, got.batch.max_edges, got.batch.max_graphs,
          got.batch.budget) == (32, 256, 2, "per_device")
  assert c.batch.max_graphs == 4  # the caller's config is left alone
  with pytest.raises(ValueError, match="divide over 3 devices"):
    trainer.per_device_batch(c, count=3)
  c.batch.budget = "everything"
  with pytest.raises(ValueError, match="per_device. or .global"):
    trainer.per_device_batch(c)
