"""Annealed importance sampling (Neal 2001) of the log-partition function of an RBM.

The scheme of Salakhutdinov & Murray 2008 ("On the Quantitative Analysis of Deep Belief Networks"):
anneal from a base-rate model A (no weights; visible biases ``base_visible_bias``, e.g. the
log-odds of the training data's pixel marginals) to the target RBM B along

  f_k(v) = exp((1 - beta_k) b_A.v + beta_k b_B.v) * prod_j (1 + exp(beta_k (c_j + v.W_j)))

(Bernoulli visible units; for Gaussian ones the linear terms become ``-(1-beta_k)|v - b_A|^2/2 -
beta_k |v - b_B|^2/2``), which is the marginal over the hidden units of an RBM whose energy is
``(1 - beta_k) E_A + beta_k E_B``. ``f_0`` is ``2^H`` times the base-rate model, whose partition function
is known in closed form, and ``f_K`` is the target's unnormalized marginal ``exp(-F(v))``. Each chain
starts with ``v ~ p_0``; at each ``k = 1..K`` it adds ``log f_k(v) - log f_{k-1}(v)`` to its log weight
and takes one Gibbs step (h, then v) that leaves ``p_k`` invariant. Then

  Z_B / Z_0 ~= mean_m w_m,   log Z_B ~= log Z_0 + log mean_m w_m.

The whole run is one ``lax.scan`` under ``jax.jit``; all chains advance together, so one step is two
(chains x visible x hidden) matrix products.

The estimate of Z is unbiased, that of log Z biased low; with too few temperatures the bias is large
(tens of nats for a 784-500 RBM at 500 temperatures, a few at 3,000) and a few chains carry all the
weight: a ``log_z_std_err`` near 1 (one chain dominating) says the schedule is too short.

>>> import jax, jax.numpy as jnp
>>> params = {"kernel": jnp.zeros((3, 2)), "visible_bias": jnp.zeros(3), "hidden_bias": jnp.zeros(2)}
>>> r = rbm_ais(params, jnp.zeros(3), temperature_schedule(10), jax.random.PRNGKey(0), num_chains=4)
>>> round(float(r.log_z), 4) == round(5 * float(jnp.log(2.0)), 4)   # 2^(3+2) states, all equal
True
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BERNOULLI = "bernoulli"
GAUSSIAN = "gaussian"
SCHEDULES = ("paper", "linear")

# Salakhutdinov & Murray 2008: 500 betas spaced uniformly in [0, 0.5), 4,000 in [0.5, 0.9) and
# 10,000 in [0.9, 1.0]: 14,500 annealing steps in all.
_PAPER_SEGMENTS = ((0.0, 0.5, 500), (0.5, 0.9, 4000), (0.9, 1.0, 10000))


class AISResult(NamedTuple):
  """An AIS estimate of log Z and its spread (all scalars but ``log_weights``).

  Attributes:
    log_z: log Z_0 + log mean_m w_m, the estimate of the log-partition function.
    log_z_std_err: the standard error of ``log_z`` by the delta method: std(w) / (sqrt(M) mean(w)).
    log_z_low: log(Z_hat - 3 sigma_hat), where sigma_hat is the standard error of Z_hat (the paper's
      band); -inf when that is not positive.
    log_z_high: log(Z_hat + 3 sigma_hat).
    log_z_base: log Z_0, the known log-partition function of the start distribution f_0.
    log_weights: the chains' log importance weights log w_m, (M,).
    ess: the effective sample size (sum w)^2 / sum w^2, between 1 and M.
  """
  log_z: Array
  log_z_std_err: Array
  log_z_low: Array
  log_z_high: Array
  log_z_base: Array
  log_weights: Array
  ess: Array


def temperature_schedule(num: int, kind: str = "paper") -> np.ndarray:
  """The inverse temperatures 0 = beta_0 < beta_1 < ... < beta_num = 1.

  Args:
    num: the number of annealing steps K (intermediate distributions and the target); 14,500 in
      Salakhutdinov & Murray 2008.
    kind: 'paper' (the paper's three uniform segments, [0, .5), [.5, .9) and [.9, 1], with their
      500 : 4,000 : 10,000 proportions of the steps) or 'linear' (uniform in [0, 1]).

  Returns:
    float32 array (num + 1,).
  """
  num = int(num)
  if kind == "linear":
    if num < 1:
      raise ValueError(f"an AIS schedule needs at least 1 step, got {num}")
    return np.linspace(0.0, 1.0, num + 1, dtype=np.float64).astype(np.float32)
  if kind != "paper":
    raise ValueError(f"unknown AIS schedule {kind!r}; known: {', '.join(SCHEDULES)}")
  if num < 3:
    raise ValueError(f"the 'paper' AIS schedule needs at least 3 steps, got {num}")
  total = sum(n for _, _, n in _PAPER_SEGMENTS)
  counts = [max(1, round(num * n / total)) for _, _, n in _PAPER_SEGMENTS[:-1]]
  counts.append(num - sum(counts))
  parts = [np.linspace(lo, hi, n, endpoint=False) for (lo, hi, _), n in zip(_PAPER_SEGMENTS[:-1], counts)]
  lo, hi, _ = _PAPER_SEGMENTS[-1]
  parts.append(np.linspace(lo, hi, counts[-1] + 1))
  return np.concatenate(parts).astype(np.float32)


def log_mean_exp(x: Array, axis: int = 0) -> Array:
  """log(mean(exp(x))) along ``axis``, stably."""
  return jax.scipy.special.logsumexp(x, axis=axis) - jnp.log(x.shape[axis])


def summarize(log_weights: Array, log_z_base: Array | float, num_sigmas: float = 3.0) -> AISResult:
  """The estimate of log Z and its spread from the chains' log importance weights.

  Args:
    log_weights: (M,) log w_m, M >= 2.
    log_z_base: log Z_0.
    num_sigmas: the width of the band ``log_z_low``/``log_z_high`` in standard errors.

  Returns:
    An AISResult.
  """
  m = log_weights.shape[0]
  top = jnp.max(log_weights)
  w = jnp.exp(log_weights - top)                     # in (0, 1], the largest is 1
  mean = jnp.mean(w)
  std_err = jnp.std(w, ddof=1) / jnp.sqrt(float(m)) if m > 1 else jnp.zeros(())
  log_mean = top + jnp.log(mean)
  low = mean - num_sigmas * std_err
  return AISResult(
      log_z=log_z_base + log_mean,
      log_z_std_err=std_err / mean,
      log_z_low=jnp.where(low > 0, log_z_base + top + jnp.log(jnp.maximum(low, 1e-37)), -jnp.inf),
      log_z_high=log_z_base + top + jnp.log(mean + num_sigmas * std_err),
      log_z_base=jnp.asarray(log_z_base, jnp.float32),
      log_weights=log_weights,
      ess=jnp.square(jnp.sum(w)) / jnp.sum(jnp.square(w)),
  )


def base_log_partition(base_visible_bias: Array, num_hidden: int, visible: str = BERNOULLI) -> Array:
  """log Z_0 of f_0 = 2^H x (the base-rate model): independent visible units, free hidden units."""
  hidden = num_hidden * np.log(2.0)
  if visible == BERNOULLI:
    return jnp.sum(jax.nn.softplus(base_visible_bias)) + hidden
  return 0.5 * base_visible_bias.shape[0] * np.log(2 * np.pi) + hidden


def _visible_terms(v, bias_a, bias_b, beta, visible):
  """The visible units' part of log f_beta(v), (M,)."""
  if visible == BERNOULLI:
    return v @ ((1.0 - beta) * bias_a + beta * bias_b)
  return (-0.5 * (1.0 - beta) * jnp.sum(jnp.square(v - bias_a[None]), axis=-1)
          - 0.5 * beta * jnp.sum(jnp.square(v - bias_b[None]), axis=-1))


@functools.partial(jax.jit, static_argnames=("num_chains", "visible"))
def rbm_ais(params: dict, base_visible_bias: Array, betas: Array, rng: Array, *, num_chains: int,
            visible: str = BERNOULLI) -> AISResult:
  """AIS estimate of the log-partition function of an RBM, from a base-rate model.

  Args:
    params: ``{"kernel": (D, H), "visible_bias": (D,), "hidden_bias": (H,)}``. The energy is
      ``-v.b - h.c - v.W.h`` for Bernoulli visible units and ``|v - b|^2 / 2 - h.c - v.W.h`` for
      Gaussian ones of unit variance.
    base_visible_bias: (D,) the visible biases b_A of the base-rate model (its means for Gaussian
      units).
    betas: (K + 1,) inverse temperatures from 0 to 1, e.g. ``temperature_schedule(14500)``.
    rng: a PRNG key.
    num_chains: M, the number of independent AIS runs (100 in the paper).
    visible: 'bernoulli' or 'gaussian'.

  Returns:
    An AISResult (log Z, its standard error and 3-sigma band, the M log weights, the ESS).
  """
  if visible not in (BERNOULLI, GAUSSIAN):
    raise ValueError(f"visible must be {BERNOULLI!r} or {GAUSSIAN!r}, not {visible!r}")
  w = params["kernel"]
  b = params["visible_bias"]
  c = params["hidden_bias"]
  bias_a = jnp.asarray(base_visible_bias, w.dtype)
  d, h_dim = w.shape
  betas = jnp.asarray(betas, w.dtype)
  init_rng, run_rng = jax.random.split(rng)
  if visible == BERNOULLI:
    u = jax.random.uniform(init_rng, (num_chains, d), w.dtype)
    v0 = (u < jax.nn.sigmoid(bias_a)[None]).astype(w.dtype)
  else:
    v0 = bias_a[None] + jax.random.normal(init_rng, (num_chains, d), w.dtype)

  def step(carry, xs):
    v, log_w = carry
    beta, beta_prev, k = xs
    pre = v @ w + c[None]                                           # (M, H), shared by all three uses
    log_w = (log_w
             + _visible_terms(v, bias_a, b, beta, visible) - _visible_terms(v, bias_a, b, beta_prev, visible)
             + jnp.sum(jax.nn.softplus(beta * pre) - jax.nn.softplus(beta_prev * pre), axis=-1))
    h_rng, v_rng = jax.random.split(jax.random.fold_in(run_rng, k))
    hid = (jax.random.uniform(h_rng, pre.shape, w.dtype) < jax.nn.sigmoid(beta * pre)).astype(w.dtype)
    mean = (1.0 - beta) * bias_a[None] + beta * (hid @ w.T + b[None])
    if visible == BERNOULLI:
      v = (jax.random.uniform(v_rng, mean.shape, w.dtype) < jax.nn.sigmoid(mean)).astype(w.dtype)
    else:
      v = mean + jax.random.normal(v_rng, mean.shape, w.dtype)
    return (v, log_w), None

  steps = betas.shape[0] - 1
  xs = (betas[1:], betas[:-1], jnp.arange(steps))
  (_, log_w), _ = jax.lax.scan(step, (v0, jnp.zeros((num_chains,), w.dtype)), xs)
  return summarize(log_w, base_log_partition(bias_a, h_dim, visible))
