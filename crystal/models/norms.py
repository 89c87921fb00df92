"""Differentiable Group Normalisation (DGN; Zhou et al. 2020).

DeeperGATGNN (Omee et al. 2021, §2.2, equations 3-6) puts DGN after every
graph convolution to fight over-smoothing. Nodes are softly assigned to G
clusters, each cluster is batch-normalised on its own, and a small multiple
of the normalised clusters is added back to the input:

  S = softmax(H U)                      (3)   U: [F, G], no bias
  H_g = S[:, g] ∘ H                     (4)   row-wise scaling
  H~_g = γ_g (H_g - μ_g) / σ_g + β_g    (5)   BatchNorm per (group, feature)
  H~ = H + λ Σ_g H~_g                   (6)

The BatchNorm of (5) is one ``MaskedBatchNorm`` over the [N, G·F] matrix, so
it keeps running statistics (PyTorch momentum 0.1), ignores padding rows and
reduces across data-parallel replicas like every other norm in the library.
"""
from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from noisy_nodes import nn as nn_lib


class DiffGroupNorm(hk.Module):
  """DGN over the real rows of a padded batch.

  Call with ``x`` [N, F], ``mask`` [N] bool, ``is_training``; returns [N, F].
  Padding rows come back unchanged (their normalised part is zero).
  """

  def __init__(self, groups: int = 10, lamda: float = 0.01,
               decay: float = 0.9, eps: float = 1e-5,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.groups = groups
    self.lamda = lamda
    self.decay = decay
    self.eps = eps

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray,
               is_training: bool) -> jnp.ndarray:
    n, f = x.shape
    s = jax.nn.softmax(hk.Linear(self.groups, with_bias=False,
                                 name="assign")(x), axis=-1)       # eq. 3
    grouped = s[:, :, None] * x[:, None, :]                         # eq. 4
    normed = nn_lib.MaskedBatchNorm(decay=self.decay, eps=self.eps,
                                    name="batch_norm")(
                                        grouped.reshape(n, self.groups * f),
                                        mask, is_training)          # eq. 5
    return x + self.lamda * normed.reshape(n, self.groups, f).sum(axis=1)
