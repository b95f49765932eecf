"""What every autoregressive family shares: exact likelihoods, sampling and completion in a pixel order.

An autoregressive family factorises p(x) = prod_i p(x_{o_i} | x_{o_1}, ..., x_{o_{i-1}}) over the D = H*W*C
values of an image in a generation order o (a permutation of the flat indices of (H, W, C), raster order
by default). It says two things and inherits the rest:

- ``network_logits(variables, u, **kw) -> (B, H, W, C, K)``: the parameters of every conditional at
  once, from the network's view ``u = network_input(x)`` of an image (a differentiable function of u,
  which never looks at the values after each position in the order). K = 1 for binary
  pixels (Bernoulli logits) and K = ``levels`` for discrete pixels (softmax logits over intensities).
- ``order(**kw) -> (D,)``: the generation order (a family with several orders, e.g. MADE's masks, takes
  the order's index in ``kw``).

From these the base class gives the exact log-likelihood in nats, the training loss (its negative mean),
and a sampler that is jitted end to end: one ``lax.fori_loop`` over the D positions, each step drawing one
value from its conditional given everything drawn before. That loop recomputes the whole network per
position (the *naive* path); a family whose causal structure lets it cache work overrides
``_sample_loop`` with a fast path, drawing with the same keys (``position_key``) so that both paths give
identical samples for the same key.

Completion (inpainting, imputation) runs the same loop from an image whose observed values are kept:
each missing value is drawn from p(x_i | every value before i in the order, observed or drawn). That is
the exact conditional p(x_missing | x_observed) when every observed value comes before every missing one
in the order (the bottom of an image, or the right part of its last rows, in raster order); otherwise it
conditions only on the observed values that come before, and ignores the evidence after
(``completion_is_exact`` says which).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ConfigError, DataError
from zoo.family import EXACT, Family, bits_per_dim

Array = jax.Array

OUTPUTS = ("bernoulli", "categorical")


def raster_order(image_shape) -> np.ndarray:
  """Row by row, left to right, channels in order within a pixel: the flat indices 0 .. D-1."""
  return np.arange(int(np.prod(image_shape)), dtype=np.int32)


def position_key(rng: Array, i) -> Array:
  """The key that draws the value at step ``i`` of the order: the same in every sampling path."""
  return jax.random.fold_in(rng, i)


@dataclasses.dataclass(frozen=True)
class Autoregressive(Family):
  """Base of the autoregressive families (not registered itself).

  Attributes:
    output: 'bernoulli' (binary pixels; data in {0, 1}, other values are thresholded at 0.5) or
      'categorical' (``levels`` intensities; data in [0, 1] is quantised to round(x * (levels - 1))).
    levels: number of intensities of a 'categorical' output.
  """
  output: str = "bernoulli"
  levels: int = 256

  likelihood_kind: ClassVar[str] = EXACT
  eval_metric: ClassVar[str] = "nll"
  # How many generation orders the family has (MADE trains several); kw ``ordering`` picks one.
  num_orderings: ClassVar[int] = 1

  # --- what a family provides ---------------------------------------------------------------------

  def network_logits(self, variables, u: Array, **kw) -> Array:
    """(B, H, W, C) network input (``network_input``: differentiable, so that tests can take the
    jacobian) -> (B, H, W, C, K) conditional parameters, causal in ``order``."""
    raise NotImplementedError

  def logits(self, variables, x: Array, **kw) -> Array:
    """(B, H, W, C) data-space image -> (B, H, W, C, K): ``network_logits`` of its ``network_input``."""
    return self.network_logits(variables, self.network_input(x), **kw)

  def order(self, **kw) -> np.ndarray:
    """The generation order: a permutation of the D flat indices of (H, W, C). Raster by default."""
    return raster_order(self.image_shape)

  # --- shared ------------------------------------------------------------------------------------

  def validate_output(self):
    if self.output not in OUTPUTS:
      raise ConfigError(f"model.output must be one of {OUTPUTS}, not {self.output!r}")
    if self.output == "categorical" and not 2 <= int(self.levels) <= 65536:
      raise ConfigError(f"model.levels must be in [2, 65536], got {self.levels}")

  def validate_group_widths(self, *widths: int):
    """Hidden widths split into one feature group per data channel (masked convolutions) need >= C."""
    c = self.image_shape[-1]
    if c > 1 and any(int(w) < c for w in widths):
      raise ConfigError(f"with {c} data channels every hidden width must be >= {c} (one group per channel)")

  def validate(self):
    self.validate_output()

  @property
  def num_classes(self) -> int:
    """K: values per conditional's parameter vector (1 for Bernoulli logits)."""
    return 1 if self.output == "bernoulli" else int(self.levels)

  def discretize(self, x: Array) -> Array:
    """Data-space values in [0, 1] -> the model's discrete values (int32: 0/1 or 0 .. levels-1)."""
    if self.output == "bernoulli":
      return (x > 0.5).astype(jnp.int32)
    return jnp.clip(jnp.round(x * (self.levels - 1)), 0, self.levels - 1).astype(jnp.int32)

  def to_data(self, v: Array) -> Array:
    """The model's discrete values -> data space [0, 1], float32."""
    if self.output == "bernoulli":
      return v.astype(jnp.float32)
    return v.astype(jnp.float32) / (self.levels - 1)

  def network_input(self, x: Array) -> Array:
    """What the network sees of a data-space image: {0, 1} or intensities scaled to [-1, 1]."""
    v = self.discretize(x).astype(jnp.float32)
    if self.output == "bernoulli":
      return v
    return v * (2.0 / (self.levels - 1)) - 1.0

  def log_prob_from_logits(self, x: Array, logits: Array) -> Array:
    """Per-value log p, (B, H, W, C), of data-space ``x`` under ``logits`` (B, H, W, C, K)."""
    v = self.discretize(x)
    if self.output == "bernoulli":
      l = logits[..., 0]
      return v * l - jax.nn.softplus(l)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, v[..., None], axis=-1)[..., 0]

  def check_batch(self, x: Array) -> None:
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise DataError(f"the {self.name} family models images of shape {tuple(self.image_shape)}, "
                      f"got a batch of shape {tuple(x.shape)}")

  def log_likelihood(self, variables, batch, rng=None, **kw):
    """Exact log p(x) per example, (B,), in nats. An exact likelihood takes no estimator options."""
    if kw:
      raise ConfigError(f"the {self.name} family's likelihood is exact: it takes no estimator options "
                        f"(got {', '.join(sorted(kw))})")
    return self._log_likelihood(variables, batch)

  def _log_likelihood(self, variables, batch, **kw):
    x = batch["image"]
    self.check_batch(x)
    lp = self.log_prob_from_logits(x, self.logits(variables, x, **self._logit_kw(batch, kw)))
    return jnp.sum(lp, axis=(1, 2, 3))

  def _logit_kw(self, batch, kw):
    """Keyword arguments of ``logits`` that come from the batch (e.g. a class label); none by default."""
    return kw

  def _training_kw(self, rng) -> dict:
    """Keyword arguments of ``logits`` in training only (e.g. a dropout key); none by default: the
    likelihood that evaluation and sampling use is the deterministic network's."""
    return {}

  def loss(self, player, variables, batch, rng, step):
    ll = self._log_likelihood(variables, batch, **self._training_kw(rng))
    nll = -jnp.mean(ll)
    return nll, {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims)}, {}

  def draw(self, key: Array, logits: Array) -> Array:
    """One discrete value per row of ``logits`` (B, K): int32 (B,). Same key, same logits, same value."""
    if self.output == "bernoulli":
      u = jax.random.uniform(key, logits.shape[:1])
      return (u < jax.nn.sigmoid(logits[:, 0])).astype(jnp.int32)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

  # The naive path: the whole network per position. Families with a cache override this.
  def _sample_loop(self, variables, rng, v0, observed, order, fast: bool = True, **kw):
    """Fills the unobserved values of ``v0`` (B, D) int32 in ``order``; returns (B, D) int32."""
    del fast
    b = v0.shape[0]
    shape = (b, *self.image_shape)
    order = jnp.asarray(order)

    def body(i, v):
      idx = order[i]

      def fill(v):
        logits = self.logits(variables, self.to_data(v).reshape(shape), **kw)
        logits = logits.reshape(b, -1, logits.shape[-1])
        new = self.draw(position_key(rng, i), jax.lax.dynamic_index_in_dim(logits, idx, 1, False))
        return v.at[:, idx].set(jnp.where(observed[:, idx], v[:, idx], new))

      # a position observed in every example needs no network evaluation
      return jax.lax.cond(jnp.all(observed[:, idx]), lambda v: v, fill, v)

    return jax.lax.fori_loop(0, order.shape[0], body, v0)

  def sample(self, variables, rng, num, fast: bool = True, ordering: int = 0, **conditioning):
    """``num`` images (num, H, W, C) in [0, 1], drawn value by value in the generation order.

    ``fast=False`` forces the naive path (the whole network per position); the two give the same
    samples for the same key. ``ordering`` picks one of a family's generation orders.
    """
    d = self.num_dims
    v0 = jnp.zeros((num, d), jnp.int32)
    observed = jnp.zeros((num, d), bool)
    kw = self._order_kw(ordering, conditioning)
    v = self._sample_loop(variables, rng, v0, observed, self.order(**self._order_only(kw)), fast=fast,
                          **kw)
    return self.to_data(v).reshape(num, *self.image_shape)

  def complete(self, variables, batch, mask, rng, fast: bool = True, ordering: int = 0, **conditioning):
    """Samples the missing values of ``batch['image']`` under the model (see the module docstring).

    Args:
      variables: the family's variables.
      batch: ``{"image": (B, H, W, C)}`` (and a ``label`` for class-conditional models).
      mask: broadcastable to (B, H, W, C), true (or 1) where a value is observed.
      rng: a PRNG key.

    Returns:
      (B, H, W, C) in [0, 1]: observed values as given (discretised to the model's levels), the others
      drawn from the model.
    """
    x = batch["image"]
    self.check_batch(x)
    b = x.shape[0]
    observed = (jnp.broadcast_to(jnp.asarray(mask), x.shape) > 0.5).reshape(b, -1)
    v0 = jnp.where(observed, self.discretize(x).reshape(b, -1), 0)
    if "label" in batch and "label" not in conditioning:
      conditioning = {**conditioning, "label": batch["label"]}
    kw = self._order_kw(ordering, conditioning)
    v = self._sample_loop(variables, rng, v0, observed, self.order(**self._order_only(kw)), fast=fast,
                          **kw)
    return self.to_data(v).reshape(x.shape)

  def completion_is_exact(self, mask, ordering: int = 0) -> bool:
    """True when ``complete`` draws from the exact p(missing | observed) for this (H, W, C) mask: every
    observed value comes before every missing one in the generation order."""
    observed = np.broadcast_to(np.asarray(mask) > 0.5, self.image_shape).reshape(-1)
    in_order = observed[np.asarray(self.order(**self._order_only(self._order_kw(ordering, {}))))]
    missing_at = np.flatnonzero(~in_order)
    return missing_at.size == 0 or not in_order[missing_at[0]:].any()

  # A family with one order ignores ``ordering``; one with several (MADE) passes it to logits and order.
  def _order_kw(self, ordering, conditioning):
    if self.num_orderings > 1:
      return {**conditioning, "ordering": ordering}
    if ordering:
      raise ConfigError(f"the {self.name} family has one generation order; ordering={ordering} does "
                        "not exist")
    return dict(conditioning)

  def _order_only(self, kw):
    return {"ordering": kw["ordering"]} if "ordering" in kw else {}


def completion_mask(kind: str, image_shape, num: int = 1, seed: int = 0) -> np.ndarray:
  """A (num, H, W, C) float mask, 1 where observed, for ``zoo sample --complete KIND``.

  Kinds: 'bottom' (the bottom half missing), 'right' (the right half), 'top', 'left', 'center' (a
  centred square of half the side), 'random' (each pixel missing with probability 1/2).
  """
  h, w, c = image_shape
  m = np.ones((num, h, w, c), np.float32)
  if kind == "bottom":
    m[:, h // 2:] = 0
  elif kind == "top":
    m[:, :h // 2] = 0
  elif kind == "right":
    m[:, :, w // 2:] = 0
  elif kind == "left":
    m[:, :, :w // 2] = 0
  elif kind == "center":
    m[:, h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0
  elif kind == "random":
    m = (np.random.default_rng(seed).random((num, h, w, 1)) < 0.5).astype(np.float32)
    m = np.broadcast_to(m, (num, h, w, c)).copy()
  else:
    raise ConfigError(f"unknown completion mask {kind!r}; known: bottom, top, right, left, center, random")
  return m
