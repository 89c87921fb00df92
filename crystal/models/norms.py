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

  The [N, G, F] array of eq. 4 is only formed inside the variance sum: with
  a_g = γ_g / σ_g, eqs. 5-6 are

    H~ = H + λ (H ∘ (S A) + Σ_g (β_g - a_g μ_g)),   A = [a_1 … a_G]  [G, F]

  and μ = Sᵀ H / n is a matmul, so the forward and backward passes work on
  [N, F] and [N, G] arrays plus one [N, G·F] elementwise pass each way
  (faster than normalising the [N, G·F] array: docs/benchmarks.md). The
  parameters and running statistics are those of a
  ``MaskedBatchNorm`` over [N, G·F] (name ``batch_norm``). It runs in
  float32 under every ``train.precision`` (``engine.precision``).
  """
  full_precision = "norm"

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
    g = self.groups
    s = jax.nn.softmax(hk.Linear(g, with_bias=False, name="assign")(x),
                       axis=-1)                                     # eq. 3
    bn = nn_lib.MaskedBatchNorm(decay=self.decay, eps=self.eps,
                                name="batch_norm")

    def batch_moments():                                            # eq. 5
      count = nn_lib.masked_count(mask, x.dtype)
      denom = jnp.maximum(count, 1.0)
      s_real = jnp.where(mask[:, None], s, 0.0)
      mean = nn_lib.cross_replica_sum(s_real.T @ x) / denom         # [G, F]
      dev = s[:, :, None] * x[:, None, :] - mean                    # eq. 4
      var = nn_lib.cross_replica_sum(nn_lib.masked_row_sum(
          jnp.square(dev), mask)) / denom
      return mean.reshape(g * f), var.reshape(g * f), count

    mean, var = bn.statistics((g * f,), x.dtype, is_training, batch_moments)
    scale, offset = bn.affine((g * f,), x.dtype)
    a = (scale * jax.lax.rsqrt(var + self.eps)).reshape(g, f)
    shift = jnp.sum(offset.reshape(g, f) - a * mean.reshape(g, f), axis=0)
    normed = x * (s @ a) + shift                                    # Σ_g H~_g
    return x + self.lamda * jnp.where(mask[:, None], normed, 0.0)   # eq. 6
