"""Improved precision and recall (Kynkäänniemi et al. 2019), from k-nearest-neighbour manifolds.

Each set of features defines a manifold: the union of balls centred on its points, each with the radius
of the distance to its k-th nearest neighbour in the set (k = 3; the point itself, at distance 0, is not
counted, so the radius is the (k+1)-th smallest distance from the point, as the authors' code takes it).
With the reference data as the *real* set and the samples as the *generated* set:

- precision: the fraction of generated samples that lie in the real manifold (within some real
  point's radius): how many samples look real;
- recall: the fraction of real examples that lie in the generated manifold: how much of the data the
  model covers.

Distances are Euclidean (compared squared, which decides the same), computed as
``|a|^2 + |b|^2 - 2 a.b`` in jitted blocks: the radii by a running top-(k+1) over column blocks, the
membership by a running "any" over column blocks, so 50,000 x 50,000 distances never sit in memory.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ZooError

__all__ = ["manifold_radii", "manifold_coverage", "precision_recall"]

_HP = jax.lax.Precision.HIGHEST


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  aa = jnp.sum(jnp.square(a), axis=1)
  bb = jnp.sum(jnp.square(b), axis=1)
  return jnp.maximum(aa[:, None] + bb[None, :] - 2.0 * jnp.dot(a, b.T, precision=_HP), 0.0)


def _blocks(x: np.ndarray, block: int) -> tuple[jax.Array, int]:
  """(num_blocks, block, D) with the rows padded to a whole number of blocks, and the true count."""
  n = len(x)
  nb = -(-n // block)
  padded = np.zeros((nb * block, x.shape[1]), np.float32)
  padded[:n] = x
  return jnp.asarray(padded.reshape(nb, block, x.shape[1])), n


@functools.partial(jax.jit, static_argnames=("k",))
def _radii(rows: jax.Array, cols: jax.Array, n_cols: jax.Array, k: int) -> jax.Array:
  """Squared distance of each row to its (k+1)-th nearest column (cols hold the rows themselves)."""
  block = cols.shape[1]

  def per_row_block(r):
    def step(best, ic):
      i, c = ic
      d = _sq_dists(r, c)
      valid = (i * block + jnp.arange(block)) < n_cols
      d = jnp.where(valid[None, :], d, jnp.inf)
      merged = jnp.concatenate([best, d], axis=1)
      return -jax.lax.top_k(-merged, k + 1)[0], None
    init = jnp.full((r.shape[0], k + 1), jnp.inf)
    best, _ = jax.lax.scan(step, init, (jnp.arange(cols.shape[0]), cols))
    return best[:, k]

  return jax.lax.map(per_row_block, rows)


@jax.jit
def _covered(queries: jax.Array, cols: jax.Array, radii: jax.Array, n_cols: jax.Array) -> jax.Array:
  """Whether each query is within the radius of some column point; radii (num_blocks, block)."""
  block = cols.shape[1]

  def per_query_block(q):
    def step(hit, icr):
      i, c, r = icr
      valid = (i * block + jnp.arange(block)) < n_cols
      inside = (_sq_dists(q, c) <= r[None, :]) & valid[None, :]
      return hit | jnp.any(inside, axis=1), None
    hit, _ = jax.lax.scan(step, jnp.zeros((q.shape[0],), bool), (jnp.arange(cols.shape[0]), cols, radii))
    return hit

  return jax.lax.map(per_query_block, queries)


def manifold_radii(features: np.ndarray, k: int = 3, block: int = 1000) -> np.ndarray:
  """Squared k-NN radii of a feature set, (N,): the (k+1)-th smallest squared distance from each point."""
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or len(features) <= k:
    raise ZooError(f"k-NN radii with k={k} need (N > k, D) features, got shape {features.shape}")
  block = min(block, len(features))
  blocks, n = _blocks(features, block)
  return np.asarray(_radii(blocks, blocks, jnp.int32(n), k=int(k))).reshape(-1)[:n]


def manifold_coverage(queries: np.ndarray, features: np.ndarray, radii: np.ndarray,
                      block: int = 1000) -> float:
  """The fraction of ``queries`` (M, D) inside the manifold of ``features`` (N, D) with squared ``radii``."""
  queries, features = np.asarray(queries, np.float32), np.asarray(features, np.float32)
  block = min(block, max(len(features), len(queries)))
  qb, m = _blocks(queries, block)
  cb, n = _blocks(features, block)
  rb = np.full(cb.shape[0] * block, np.inf, np.float32)
  rb[:n] = radii
  hit = np.asarray(_covered(qb, cb, jnp.asarray(rb.reshape(cb.shape[:2])), jnp.int32(n)))
  return float(np.mean(hit.reshape(-1)[:m]))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 1000
                     ) -> tuple[float, float]:
  """Improved precision and recall of generated features against real ones.

  Args:
    real: (N, D) features of the reference data (the "real" set).
    fake: (M, D) features of the samples (the "generated" set).
    k: the neighbour whose distance is a point's radius (3 in the paper).
    block: rows and columns per jitted distance block.

  Returns:
    (precision, recall): the fraction of samples in the real manifold, and of real examples in the
    samples' manifold.
  """
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ZooError(f"precision/recall need (N, D) and (M, D) features, got {real.shape} and {fake.shape}")
  precision = manifold_coverage(fake, real, manifold_radii(real, k, block), block)
  recall = manifold_coverage(real, fake, manifold_radii(fake, k, block), block)
  return precision, recall
