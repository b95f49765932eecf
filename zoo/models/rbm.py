"""Restricted Boltzmann machines: Bernoulli-Bernoulli (``rbm``) and Gaussian-Bernoulli (``gaussian_rbm``).

An RBM over visible units v (D,) and binary hidden units h (H,) has the energy

  E(v, h) = -v.b - h.c - v.W.h                  (Bernoulli visible units, v in {0, 1}^D)
  E(v, h) = |v - b|^2 / 2 - h.c - v.W.h         (Gaussian visible units of unit variance)

and, summing out h, the free energy F(v) = -log sum_h exp(-E(v, h)), so that p(v) = exp(-F(v)) / Z.

Training is contrastive divergence (Hinton 2002): CD-k starts k steps of block Gibbs sampling at the
data; persistent CD (Tieleman 2008) continues chains kept from the previous update, which live in the
non-trainable collection ``chains`` and so in the checkpoint. The shared step differentiates the
surrogate ``mean F(v_data) - mean F(stop_gradient(v_negative))``, whose gradient is the CD-k statistics
``-(<v h>_data - <v h>_negative)`` (with hidden probabilities, as in Hinton's practical guide);
momentum, weight decay and the learning-rate schedule are the optimizer's (``config.optim.model``).

Test log-likelihoods need log Z: exact by enumeration when the smaller layer has at most
``exact_max_units`` units, else the AIS estimate of Salakhutdinov & Murray 2008 (:mod:`zoo.metrics.ais`),
computed once per evaluation in ``eval_context``. The base-rate model of AIS and the initial states of
samplers use the training data's pixel marginals, which the loss accumulates in the non-trainable
collection ``data_stats`` (running mean and mean square of the training batches, and their count).

Gaussian-Bernoulli RBM: the data are standardized inside the family, per pixel, with those running
statistics (``z = (x - mean) / max(std, min_std)``; Hinton's guide, section 13.2: zero mean, unit
variance, no learned variances), and its likelihood is the density of x in [0, 1]^D: log p(x) =
log p(z) - sum log max(std, min_std).

Applications: ``impute`` fills missing pixels by Gibbs sampling with the observed ones clamped;
``anomaly_score`` is the free energy (log p(x) up to the constant log Z).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from zoo.errors import ConfigError
from zoo.family import STOCHASTIC_ESTIMATE, Family, bits_per_dim
from zoo.metrics.ais import BERNOULLI, GAUSSIAN, SCHEDULES, rbm_ais, temperature_schedule
from zoo.registry import register

Array = jax.Array
Params = dict[str, Array]
NEG_VISIBLE = ("sample", "mean")


# --------------------------------------------------------------------------------------------------
# RBM math on explicit parameter dicts {"kernel": (D, H), "visible_bias": (D,), "hidden_bias": (H,)}.
# The DBN family builds on the same functions.


def init_params(rng: Array, num_visible: int, num_hidden: int, init_std: float) -> Params:
  """Weights from N(0, init_std^2), biases zero (Hinton's guide: init_std = 0.01).

  Returns:
    {"kernel": (D, H), "visible_bias": (D,), "hidden_bias": (H,)}, float32.
  """
  return {"kernel": init_std * jax.random.normal(rng, (num_visible, num_hidden), jnp.float32),
          "visible_bias": jnp.zeros((num_visible,), jnp.float32),
          "hidden_bias": jnp.zeros((num_hidden,), jnp.float32)}


def hidden_pre(params: Params, v: Array) -> Array:
  """The hidden units' total input c + v.W, (B, H), for visible states v (B, D)."""
  return v @ params["kernel"] + params["hidden_bias"][None]


def visible_pre(params: Params, h: Array) -> Array:
  """The visible units' total input b + W.h, (B, D): logits, or Gaussian means."""
  return h @ params["kernel"].T + params["visible_bias"][None]


def free_energy(params: Params, v: Array, visible: str = BERNOULLI) -> Array:
  """F(v) = -log sum_h exp(-E(v, h)) per example, (B,), for v (B, D) (real-valued v allowed)."""
  hidden = jnp.sum(jax.nn.softplus(hidden_pre(params, v)), axis=-1)
  if visible == BERNOULLI:
    return -(v @ params["visible_bias"]) - hidden
  return 0.5 * jnp.sum(jnp.square(v - params["visible_bias"][None]), axis=-1) - hidden


def sample_hidden(params: Params, v: Array, rng: Array) -> Array:
  """h ~ p(h | v): binary (B, H) float32."""
  p = jax.nn.sigmoid(hidden_pre(params, v))
  return (jax.random.uniform(rng, p.shape, p.dtype) < p).astype(p.dtype)


def sample_visible(params: Params, h: Array, rng: Array, visible: str = BERNOULLI
                   ) -> tuple[Array, Array]:
  """v ~ p(v | h) and its mean E[v | h], each (B, D)."""
  pre = visible_pre(params, h)
  if visible == BERNOULLI:
    mean = jax.nn.sigmoid(pre)
    return (jax.random.uniform(rng, mean.shape, mean.dtype) < mean).astype(mean.dtype), mean
  return pre + jax.random.normal(rng, pre.shape, pre.dtype), pre


def gibbs(params: Params, v: Array, rng: Array, steps: int, visible: str = BERNOULLI,
          clamp: tuple[Array, Array] | None = None, trace: bool = False):
  """``steps`` steps of block Gibbs sampling v -> h -> v under ``lax.scan``.

  Args:
    params: the RBM's parameters.
    v: (B, D) the chains' visible states.
    rng: a PRNG key; step i uses ``fold_in(rng, i)``.
    steps: the number of full steps (static).
    visible: 'bernoulli' or 'gaussian'.
    clamp: optional (mask (B, D) bool, values (B, D)): where mask is true the visible units are held at
      ``values`` (sampling from the conditional given them).
    trace: also return the visible state after every step.

  Returns:
    (v (B, D), mean (B, D)): the last visible state and E[v | h] of the last step (``v`` itself when
    steps == 0); with ``trace``, also the states (steps, B, D).
  """
  def body(carry, i):
    v, _ = carry
    h_rng, v_rng = jax.random.split(jax.random.fold_in(rng, i))
    v, mean = sample_visible(params, sample_hidden(params, v, h_rng), v_rng, visible)
    if clamp is not None:
      mask, values = clamp
      v = jnp.where(mask, values, v)
      mean = jnp.where(mask, values, mean)
    return (v, mean), (v if trace else None)

  (v, mean), states = jax.lax.scan(body, (v, v), jnp.arange(steps))
  return (v, mean, states) if trace else (v, mean)


def cd_negative(params: Params, v_data: Array, chains: Array | None, rng: Array, k: int,
                visible: str = BERNOULLI, neg_visible: str = "sample") -> tuple[Array, Array]:
  """The negative samples of CD-k (chains None) or persistent CD (chains given).

  Args:
    params: the RBM's parameters (gradients are stopped here).
    v_data: (B, D) the data, where CD-k chains start.
    chains: (N, D) persistent chains to continue, or None for CD-k.
    rng: a PRNG key.
    k: Gibbs steps.
    visible: 'bernoulli' or 'gaussian'.
    neg_visible: 'sample' uses the last visible sample in the negative statistics; 'mean' uses
      E[v | h] of the last step (Hinton's guide: less sampling noise; noise-free reconstructions of
      Gaussian units).

  Returns:
    (negative visible states (B or N, D), with gradients stopped; the chains' new state).
  """
  start = v_data if chains is None else chains
  v, mean = gibbs(jax.lax.stop_gradient(params), start, rng, k, visible)
  neg = mean if neg_visible == "mean" else v
  return jax.lax.stop_gradient(neg), jax.lax.stop_gradient(v)


def cd_surrogate(params: Params, v_data: Array, v_neg: Array, visible: str = BERNOULLI
                 ) -> tuple[Array, Array, Array]:
  """mean F(v_data) - mean F(v_neg): its gradient is minus the CD statistics.

  Returns:
    (the scalar surrogate, F(v_data) (B,), F(v_neg) (N,)).
  """
  f_pos = free_energy(params, v_data, visible)
  f_neg = free_energy(params, v_neg, visible)
  return jnp.mean(f_pos) - jnp.mean(f_neg), f_pos, f_neg


def exact_log_partition(params: Params, visible: str = BERNOULLI, chunk: int = 4096) -> Array:
  """log Z by enumerating the states of the smaller layer (the hidden one for Gaussian units).

  Bernoulli: log Z = logsumexp_h [h.c + sum_i softplus(b_i + (W h)_i)] (or the same over v).
  Gaussian: log Z = D/2 log(2 pi) + logsumexp_h [h.c + b.(W h) + |W h|^2 / 2].
  The 2^n states go ``chunk`` at a time through ``lax.map``; n <= 30.

  Returns:
    A float32 scalar.
  """
  d, h = params["kernel"].shape
  over_hidden = visible == GAUSSIAN or h <= d
  n = h if over_hidden else d
  if n > 30:
    raise ValueError(f"enumerating 2^{n} states is too many; use AIS")
  total = 1 << n
  chunk = min(chunk, total)

  def chunk_lse(start):
    idx = start + jnp.arange(chunk, dtype=jnp.int32)
    bits = ((idx[:, None] >> jnp.arange(n, dtype=jnp.int32)[None]) & 1).astype(jnp.float32)
    if not over_hidden:
      return jax.scipy.special.logsumexp(-free_energy(params, bits, visible))
    wh = visible_pre(params, bits) - params["visible_bias"][None]          # (chunk, D): W h
    if visible == BERNOULLI:
      terms = bits @ params["hidden_bias"] + jnp.sum(jax.nn.softplus(wh + params["visible_bias"][None]), -1)
    else:
      terms = (bits @ params["hidden_bias"] + wh @ params["visible_bias"]
               + 0.5 * jnp.sum(jnp.square(wh), axis=-1))
    return jax.scipy.special.logsumexp(terms)

  per_chunk = jax.lax.map(chunk_lse, jnp.arange(0, total, chunk, dtype=jnp.int32))
  log_z = jax.scipy.special.logsumexp(per_chunk)
  if visible == GAUSSIAN:
    log_z = log_z + 0.5 * d * math.log(2 * math.pi)
  return log_z


# Running statistics of the training data seen by the loss (for base rates and standardization).


def init_data_stats(num_visible: int) -> dict[str, Array]:
  """No data seen: {"mean": (D,), "sq_mean": (D,), "count": ()} all zero."""
  return {"mean": jnp.zeros((num_visible,), jnp.float32), "sq_mean": jnp.zeros((num_visible,), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}


def update_data_stats(stats: dict[str, Array], x: Array) -> dict[str, Array]:
  """The running mean and mean square over every example seen, after the batch x (B, D)."""
  n = x.shape[0]
  count = stats["count"] + n
  rate = n / count
  return {"mean": stats["mean"] + rate * (jnp.mean(x, axis=0) - stats["mean"]),
          "sq_mean": stats["sq_mean"] + rate * (jnp.mean(jnp.square(x), axis=0) - stats["sq_mean"]),
          "count": count}


def base_rate_logits(stats: dict[str, Array]) -> Array:
  """Log-odds of the pixel marginals, smoothed as (n mean + 1) / (n + 2): 0 before any data."""
  p = (stats["count"] * stats["mean"] + 1.0) / (stats["count"] + 2.0)
  return jnp.log(p) - jnp.log1p(-p)


def bernoulli_entropy(logits: Array) -> Array:
  """Entropy of independent Bernoulli units with these logits, summed over the last axis."""
  return jnp.sum(jax.nn.softplus(logits) - jax.nn.sigmoid(logits) * logits, axis=-1)


def ais_settings(family, k: int | None, temperatures: int | None) -> tuple[int, int]:
  """The AIS settings of one evaluation.

  Args:
    family: an RBM or DBN family (its ``ais_*`` fields).
    k: AIS chains asked for by the evaluator (``zoo eval --k 100``), or None. Giving it selects the
      final protocol: ``k`` chains over ``final_ais_temperatures``.
    temperatures: annealing steps overriding the family's, or None.

  Returns:
    (chains, temperatures): without ``k``, the family's cheaper periodic settings.
  """
  chains = int(k) if k else int(family.ais_chains)
  if temperatures:
    temps = int(temperatures)
  else:
    temps = int(family.final_ais_temperatures if k else family.ais_temperatures)
  if chains < 2:
    raise ConfigError(f"AIS needs at least 2 chains for its error estimate, got {chains}")
  return chains, temps


def check_ais_fields(family) -> None:
  """ConfigErrors for AIS settings that cannot work."""
  if family.ais_schedule not in SCHEDULES:
    raise ConfigError(f"model.ais_schedule must be one of {', '.join(SCHEDULES)}, "
                      f"not {family.ais_schedule!r}")
  if family.ais_chains < 2:
    raise ConfigError("model.ais_chains must be >= 2 (the standard error needs two chains)")
  for name in ("ais_temperatures", "final_ais_temperatures"):
    try:
      temperature_schedule(getattr(family, name), family.ais_schedule)
    except ValueError as e:
      raise ConfigError(f"model.{name}: {e}") from None
  if not 0 <= family.exact_max_units <= 30:
    raise ConfigError("model.exact_max_units must be in [0, 30]")


def log_partition(params: Params, base_bias: Array, rng: Array, *, exact: bool, chains: int,
                  temperatures: int, schedule: str, visible: str = BERNOULLI) -> dict[str, Array]:
  """log Z of one RBM, exact or by AIS, as the collection that ``eval_context`` hands on.

  Returns:
    {"log_z", "log_z_std_err", "log_z_low", "log_z_high"} scalars (the 3-sigma band of AIS; the exact
    value with zero error when enumerated).
  """
  if exact:
    log_z = exact_log_partition(params, visible)
    return {"log_z": log_z, "log_z_std_err": jnp.zeros(()), "log_z_low": log_z, "log_z_high": log_z}
  r = rbm_ais(params, base_bias, temperature_schedule(temperatures, schedule), rng, num_chains=chains,
              visible=visible)
  return {"log_z": r.log_z, "log_z_std_err": r.log_z_std_err, "log_z_low": r.log_z_low,
          "log_z_high": r.log_z_high}


# --------------------------------------------------------------------------------------------------


@register("rbm")
@dataclasses.dataclass(frozen=True)
class RBM(Family):
  """Bernoulli-Bernoulli RBM trained by CD-k or persistent CD; log-likelihood by AIS (or exact).

  Attributes:
    num_hidden: H, the number of binary hidden units.
    cd_k: Gibbs steps per update (CD-k, or PCD-k when ``persistent``).
    persistent: persistent CD: negative chains carried from update to update (in ``chains``).
    num_chains: the number of persistent chains.
    neg_visible: 'sample' or 'mean': the last visible sample or its mean in the negative statistics.
    init_std: the standard deviation of the initial weights.
    sample_steps: Gibbs steps from the base-rate distribution when sampling (and imputing).
    ais_chains: AIS chains for the periodic evaluations.
    ais_temperatures: AIS annealing steps for the periodic evaluations (cheap).
    final_ais_temperatures: AIS annealing steps when ``k`` chains are asked for (``zoo eval --k 100``):
      the test figure, 14,500 as in Salakhutdinov & Murray 2008.
    ais_schedule: 'paper' or 'linear' spacing of the inverse temperatures.
    exact_max_units: log Z is enumerated exactly when the smaller layer has at most this many units.
  """
  num_hidden: int = 500
  cd_k: int = 1
  persistent: bool = False
  num_chains: int = 100
  neg_visible: str = "sample"
  init_std: float = 0.01
  sample_steps: int = 1000
  ais_chains: int = 100
  ais_temperatures: int = 1000
  final_ais_temperatures: int = 14500
  ais_schedule: str = "paper"
  exact_max_units: int = 20

  visible: ClassVar[str] = BERNOULLI
  likelihood_kind = STOCHASTIC_ESTIMATE
  eval_metric = "nll"

  def validate(self):
    if self.num_hidden < 1 or self.cd_k < 1 or self.num_chains < 1:
      raise ConfigError("model.num_hidden, model.cd_k and model.num_chains must be >= 1")
    if self.neg_visible not in NEG_VISIBLE:
      raise ConfigError(f"model.neg_visible must be one of {', '.join(NEG_VISIBLE)}, "
                        f"not {self.neg_visible!r}")
    if self.sample_steps < 0 or self.init_std <= 0:
      raise ConfigError("model.sample_steps must be >= 0 and model.init_std > 0")
    check_ais_fields(self)

  # -- data space (B, H, W, C) in [0, 1] <-> the model's visible space (B, D)

  def _flat(self, images: Array) -> Array:
    return images.reshape(images.shape[0], -1)

  def to_model_space(self, x: Array, stats: dict[str, Array]) -> Array:
    """Flat data (B, D) -> visible states (B, D)."""
    return x

  def from_model_space(self, v: Array, stats: dict[str, Array]) -> Array:
    """Visible states or means (B, D) -> images (B, H, W, C) in [0, 1]."""
    return jnp.clip(v, 0.0, 1.0).reshape(v.shape[0], *self.image_shape)

  def log_det(self, stats: dict[str, Array]) -> Array:
    """log |d model space / d data space|: 0 here."""
    return jnp.zeros(())

  def base_visible_bias(self, stats: dict[str, Array]) -> Array:
    """The base-rate model of AIS and of the samplers' starting states: the data's pixel log-odds."""
    return base_rate_logits(stats)

  def start_visible(self, rng: Array, stats: dict[str, Array], num: int) -> Array:
    """Draws (num, D) visible states from the base-rate model."""
    p = jax.nn.sigmoid(self.base_visible_bias(stats))
    return (jax.random.uniform(rng, (num, self.num_dims)) < p[None]).astype(jnp.float32)

  @property
  def exact(self) -> bool:
    """Whether log Z is enumerated rather than estimated."""
    if self.visible == GAUSSIAN:
      return self.num_hidden <= self.exact_max_units
    return min(self.num_dims, self.num_hidden) <= self.exact_max_units

  # -- the contract

  def init(self, rng, batch):
    w_rng, c_rng = jax.random.split(rng)
    stats = init_data_stats(self.num_dims)
    out = {"params": {"model": init_params(w_rng, self.num_dims, self.num_hidden, self.init_std)},
           "data_stats": stats}
    if self.persistent:
      out["chains"] = {"visible": self.start_visible(c_rng, stats, self.num_chains)}
    return out

  def negative_phase(self, variables, v_data: Array, rng: Array) -> tuple[Array, Array]:
    """(negative visible states for the statistics, the chains' new state): what ``loss`` uses."""
    chains = variables["chains"]["visible"] if self.persistent else None
    return cd_negative(variables["params"]["model"], v_data, chains, rng, self.cd_k, self.visible,
                       self.neg_visible)

  def loss(self, player, variables, batch, rng, step):
    params = variables["params"]["model"]
    x = self._flat(batch["image"])
    stats = update_data_stats(variables["data_stats"], x)
    v_data = self.to_model_space(x, stats)
    v_neg, chains = self.negative_phase(variables, v_data, rng)
    loss, f_pos, f_neg = cd_surrogate(params, v_data, v_neg, self.visible)
    metrics = {"free_energy": jnp.mean(f_pos), "free_energy_neg": jnp.mean(f_neg)}
    new = {"data_stats": stats}
    if self.persistent:
      new["chains"] = {"visible": chains}
    else:   # the k-step reconstruction error, the classic (if crude) monitor of CD
      metrics["recon_error"] = jnp.mean(jnp.sum(jnp.square(v_data - v_neg), axis=-1))
    return loss, metrics, new

  def log_partition(self, variables, rng, k: int | None = None, temperatures: int | None = None
                    ) -> dict[str, Array]:
    """log Z (exact, or AIS with ``ais_settings``) and its spread; see :func:`log_partition`."""
    chains, temps = ais_settings(self, k, temperatures)
    return log_partition(variables["params"]["model"], self.base_visible_bias(variables["data_stats"]),
                         rng, exact=self.exact, chains=chains, temperatures=temps,
                         schedule=self.ais_schedule, visible=self.visible)

  def eval_context(self, variables, rng, k: int | None = None, temperatures: int | None = None):
    """log Z once per evaluation: ``{"log_partition": {...}}``.

    Args:
      variables: the family's variables.
      rng: a PRNG key.
      k: AIS chains; giving it selects ``final_ais_temperatures`` (the final test protocol).
      temperatures: AIS annealing steps, overriding the family's.
    """
    return {"log_partition": self.log_partition(variables, rng, k, temperatures)}

  def _log_z(self, variables, rng, k, temperatures) -> dict[str, Array]:
    if "log_partition" in variables:
      return variables["log_partition"]
    return self.log_partition(variables, rng, k, temperatures)

  def log_likelihood(self, variables, batch, rng, k: int | None = None, temperatures: int | None = None):
    """log p(x) = -F(x) - log Z per example, (B,), in nats (a density for Gaussian units).

    log Z comes from ``eval_context`` when the variables hold it, else it is computed here.
    """
    stats = variables["data_stats"]
    v = self.to_model_space(self._flat(batch["image"]), stats)
    f = free_energy(variables["params"]["model"], v, self.visible)
    return -f - self._log_z(variables, rng, k, temperatures)["log_z"] + self.log_det(stats)

  def eval_metrics(self, variables, batch, rng, k: int | None = None, temperatures: int | None = None):
    lz = self._log_z(variables, rng, k, temperatures)
    nll = -self.log_likelihood({**variables, "log_partition": lz}, batch, rng)
    ones = jnp.ones_like(nll)
    return {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims),
            "log_z": lz["log_z"] * ones, "log_z_std_err": lz["log_z_std_err"] * ones}

  def anomaly_score(self, variables, batch, rng=None):
    """The free energy of x in data space, (B,): -log p(x) up to the constant log Z."""
    stats = variables["data_stats"]
    v = self.to_model_space(self._flat(batch["image"]), stats)
    return free_energy(variables["params"]["model"], v, self.visible) - self.log_det(stats)

  def sample(self, variables, rng, num, steps: int | None = None):
    """``num`` images (num, H, W, C) in [0, 1]: E[v | h] after Gibbs steps from the base-rate model.

    Args:
      variables: the family's variables.
      rng: a PRNG key.
      num: the number of samples (static).
      steps: Gibbs steps (default ``sample_steps``).
    """
    stats = variables["data_stats"]
    start_rng, chain_rng = jax.random.split(rng)
    v0 = self.start_visible(start_rng, stats, num)
    steps = self.sample_steps if steps is None else int(steps)
    _, mean = gibbs(variables["params"]["model"], v0, chain_rng, steps, self.visible)
    return self.from_model_space(mean, stats)

  def complete(self, variables, batch, mask: Array, rng: Array, steps: int | None = None) -> Array:
    """``zoo sample --complete``: ``impute`` (Gibbs sampling with the observed pixels clamped)."""
    return self.impute(variables, batch, mask, rng, steps)

  def impute(self, variables, batch, mask: Array, rng: Array, steps: int | None = None) -> Array:
    """Fills the unobserved pixels by Gibbs sampling with the observed ones clamped.

    Args:
      variables: the family's variables.
      batch: ``{"image": (B, H, W, C)}``.
      mask: (B, H, W, C), true (or 1) where a pixel is observed.
      rng: a PRNG key.
      steps: Gibbs steps (default ``sample_steps``).

    Returns:
      (B, H, W, C) in [0, 1]: the observed pixels exactly as given, the others E[v | h] of the last step.
    """
    stats = variables["data_stats"]
    x = self._flat(batch["image"])
    observed = self._flat(jnp.broadcast_to(mask, batch["image"].shape)) > 0.5
    v_obs = self.to_model_space(x, stats)
    start_rng, chain_rng = jax.random.split(rng)
    v0 = jnp.where(observed, v_obs, self.start_visible(start_rng, stats, x.shape[0]))
    steps = self.sample_steps if steps is None else int(steps)
    _, mean = gibbs(variables["params"]["model"], v0, chain_rng, steps, self.visible,
                    clamp=(observed, v_obs))
    filled = self._flat(self.from_model_space(mean, stats))
    return jnp.where(observed, x, filled).reshape(batch["image"].shape)


@register("gaussian_rbm")
@dataclasses.dataclass(frozen=True)
class GaussianRBM(RBM):
  """Gaussian-Bernoulli RBM on standardized real-valued pixels (unit variances, Hinton's guide 13.2).

  Attributes:
    min_std: the floor of the per-pixel standard deviation used to standardize (in data units), so that
      pixels that are constant in the training data (MNIST's border) stay finite.
  """
  min_std: float = 0.05

  visible: ClassVar[str] = GAUSSIAN

  def validate(self):
    super().validate()
    if self.min_std <= 0:
      raise ConfigError("model.min_std must be > 0")

  def _scale(self, stats):
    """Per-pixel (mean, std) of the standardization: (0, 1) before any data."""
    seen = stats["count"] > 0
    std = jnp.sqrt(jnp.maximum(stats["sq_mean"] - jnp.square(stats["mean"]), 0.0))
    return (jnp.where(seen, stats["mean"], 0.0),
            jnp.where(seen, jnp.maximum(std, self.min_std), 1.0))

  def to_model_space(self, x, stats):
    mean, std = self._scale(stats)
    return (x - mean[None]) / std[None]

  def from_model_space(self, v, stats):
    mean, std = self._scale(stats)
    return jnp.clip(mean[None] + std[None] * v, 0.0, 1.0).reshape(v.shape[0], *self.image_shape)

  def log_det(self, stats):
    return -jnp.sum(jnp.log(self._scale(stats)[1]))

  def base_visible_bias(self, stats):
    """N(0, I), the maximum-likelihood unit-variance Gaussian of the standardized data."""
    return jnp.zeros((self.num_dims,), jnp.float32)

  def start_visible(self, rng, stats, num):
    return jax.random.normal(rng, (num, self.num_dims), jnp.float32)
