"""Fréchet distance between Gaussians fitted to two feature sets (FID: Heusel et al. 2017).

    FID = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr (S_1 S_2)^{1/2}

with the conventions of the reference implementations (TTUR's ``fid.py``, pytorch-fid): ``mu`` the
mean and ``S`` the unbiased covariance (``np.cov``, ddof 1) of the float32 features, the distance in
float64. The statistics are accumulated over feature batches by a jitted product (float32 products of
centred features, summed in float64 on the host), so 50,000 x 2048 features need one batch at a time
on the device.

The matrix square root: pytorch-fid calls ``scipy.linalg.sqrtm(S_1 S_2)`` (a Schur method on a
non-symmetric product; it can return complex values and needs an eps on the diagonal when the product
is singular). Only its trace is needed, and ``S_1 S_2`` is similar to the symmetric positive
semi-definite ``A = S_1^{1/2} S_2 S_1^{1/2}``, so ``tr (S_1 S_2)^{1/2} = sum_i sqrt(lambda_i(A))``:
two symmetric eigendecompositions in float64, with round-off's tiny negative eigenvalues clipped at 0.
The two agree to float64 round-off where sqrtm succeeds, and this one needs no eps.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ZooError

__all__ = ["fid_from_features", "feature_stats", "frechet_distance"]


@jax.jit
def _centred_gram(x: jax.Array, mean: jax.Array) -> jax.Array:
  c = x - mean[None]
  return jnp.dot(c.T, c, precision=jax.lax.Precision.HIGHEST)


def feature_stats(features: np.ndarray, batch_size: int = 5000) -> tuple[np.ndarray, np.ndarray]:
  """The mean and unbiased covariance of features, accumulated batch by batch.

  Args:
    features: (N, D), N >= 2.
    batch_size: rows per jitted product (the last batch is padded with the mean, which adds nothing).

  Returns:
    (mu (D,) float64, sigma (D, D) float64), as ``np.mean(axis=0)`` and ``np.cov(rowvar=False)``.
  """
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or len(features) < 2:
    raise ZooError(f"feature statistics need (N >= 2, D) features, got shape {features.shape}")
  n, d = features.shape
  mu = np.zeros(d, np.float64)
  for lo in range(0, n, batch_size):
    mu += features[lo:lo + batch_size].sum(axis=0, dtype=np.float64)
  mu /= n
  mu32 = jnp.asarray(mu, jnp.float32)
  bs = min(batch_size, n)
  gram = np.zeros((d, d), np.float64)
  pending = None
  for lo in range(0, n, bs):
    chunk = features[lo:lo + bs]
    if len(chunk) < bs:
      chunk = np.concatenate([chunk, np.broadcast_to(mu.astype(np.float32), (bs - len(chunk), d))])
    out = _centred_gram(jnp.asarray(chunk), mu32)
    if pending is not None:
      gram += np.asarray(pending, np.float64)
    pending = out
  gram += np.asarray(pending, np.float64)
  # The batch products are centred on the float32 mean; correct for its rounding exactly.
  delta = mu - np.asarray(mu32, np.float64)
  gram -= n * np.outer(delta, delta)
  sigma = gram / (n - 1)
  return mu, (sigma + sigma.T) / 2


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1, mu2: (D,) means.
    sigma1, sigma2: (D, D) covariances (symmetric positive semi-definite).

  Returns:
    The distance (a float >= 0 up to round-off).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ZooError(f"Fréchet distance of statistics of different shapes: {mu1.shape}, {s1.shape} and "
                   f"{mu2.shape}, {s2.shape}")
  root = _sqrt_psd((s1 + s1.T) / 2)
  inner = root @ s2 @ root
  eig = np.linalg.eigvalsh((inner + inner.T) / 2)
  tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
  """FID between two feature sets, (N, D) and (M, D)."""
  return frechet_distance(*feature_stats(real), *feature_stats(fake))
