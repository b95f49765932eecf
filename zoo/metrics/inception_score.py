"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), over splits.

The samples are put in a fixed random order (``np.random.RandomState(2020).permutation(N)``, as
torch-fidelity shuffles its inputs with its ``rng_seed`` 2020; ``shuffle_seed=None`` keeps the given
order, as the original code does) and cut into ``splits`` consecutive parts (part ``i`` is ``[i N //
splits, (i+1) N // splits)``). The shuffle changes nothing for i.i.d. samples, but an ordered set (a
data split sorted by class: binarized MNIST's test split scores 1.5 unshuffled, 8.6 shuffled) would
otherwise give each part few classes. In each part, ``p(y)`` is the mean of the softmax ``p(y|x)``
over the part, and the score is the exponential of the mean KL divergence. The result is the mean and the standard deviation (``np.std``) of the parts'
scores; 10 splits of 50,000 samples is the convention. One jitted pass over the logits (segment sums
by part); logits from the Inception network are its ``logits_unbiased`` (see
:mod:`zoo.metrics.features`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ZooError

__all__ = ["inception_score"]


@functools.partial(jax.jit, static_argnames=("splits",))
def _split_scores(logits: jax.Array, splits: int) -> jax.Array:
  n = logits.shape[0]
  starts = (np.arange(1, splits) * n) // splits   # part p is [p N // splits, (p+1) N // splits)
  part = jnp.asarray(np.searchsorted(starts, np.arange(n), side="right"))
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(log_p)
  counts = jax.ops.segment_sum(jnp.ones((n,)), part, num_segments=splits)
  marginal = jax.ops.segment_sum(p, part, num_segments=splits) / counts[:, None]
  # 0 log 0 = 0: a class no sample of the part can have (p underflows to 0) adds nothing.
  kl = jnp.sum(jnp.where(p > 0, p * (log_p - jnp.log(marginal)[part]), 0.0), axis=-1)
  return jnp.exp(jax.ops.segment_sum(kl, part, num_segments=splits) / counts)


def inception_score(logits: np.ndarray, splits: int = 10, shuffle_seed: int | None = 2020
                    ) -> tuple[float, float]:
  """The Inception Score of samples' class logits.

  Args:
    logits: (N, K) unnormalised class log-probabilities, N >= splits.
    splits: number of parts.
    shuffle_seed: the seed of the fixed permutation applied before the split (None: keep the order).

  Returns:
    (mean, standard deviation) of the parts' scores.
  """
  logits = np.asarray(logits, np.float32)
  if logits.ndim != 2 or len(logits) < splits or splits < 1:
    raise ZooError(f"the Inception Score needs (N, K) logits with N >= splits={splits}, got {logits.shape}")
  if shuffle_seed is not None:
    logits = logits[np.random.RandomState(shuffle_seed).permutation(len(logits))]
  scores = np.asarray(_split_scores(jnp.asarray(logits), splits=int(splits)), np.float64)
  return float(np.mean(scores)), float(np.std(scores))
