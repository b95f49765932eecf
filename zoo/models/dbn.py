"""Deep belief network (Hinton, Osindero & Teh 2006), trained greedily layer by layer.

A DBN with layers of sizes D = n_0, n_1, ..., n_L is a stack of RBMs: RBM l joins h^l (h^0 = x) to
h^{l+1}. The top RBM is an undirected prior p(h^{L-1}, h^L); the layers below it are directed,
p(h^l | h^{l+1}) = prod_i sigmoid(b_l + W_l h^{l+1})_i, with RBM l's weights and visible biases.

Greedy training is a schedule of stages over the shared step: stage l trains RBM l (player
``layer{l}``) by CD-k or persistent CD on the data pushed up through the frozen layers below it (binary
samples of q(h^{j+1} | h^j) = prod sigmoid(c_j + h^j W_j), or their probabilities with
``upward='mean'``); ``layer_steps`` says how many steps each stage but the last takes. Every checkpoint
holds all layers, and a run resumed mid-stage continues in that stage.

At stage s the model is the DBN of the first s + 1 RBMs, so an evaluation during stage s measures what
has been built so far. Its test log-likelihood is estimated as in Salakhutdinov & Murray 2008: with
the recognition distribution q(h^1..h^s | x) = prod_l q(h^{l+1} | h^l),

  log p(x) >= E_q[ sum_{l<s} log p(h^l | h^{l+1}) - F_s(h^s) ] + H(q) - log Z_s,

where F_s and Z_s are the top RBM's free energy and partition function (AIS, as for the ``rbm``
family, with base rates from the top RBM's training inputs). The expectation uses ``bound_samples``
draws of q per example; the entropies are exact given the sampled layer below. At stage 0 it is the
first RBM's AIS log-likelihood.

Samples: Gibbs sampling in the top RBM from its base-rate model, then one downward pass through the
directed layers (the bottom layer's probabilities are returned).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zoo.errors import ConfigError
from zoo.family import STOCHASTIC_ESTIMATE, Family, bits_per_dim
from zoo.metrics.ais import BERNOULLI
from zoo.models import _layers
from zoo.models.rbm import (NEG_VISIBLE, ais_settings, base_rate_logits, bernoulli_entropy, cd_negative,
                            cd_surrogate, check_ais_fields, free_energy, gibbs, hidden_pre, init_data_stats,
                            init_params, log_partition, update_data_stats, visible_pre)
from zoo.registry import register

Array = jax.Array
UPWARD = ("sample", "mean")


@register("dbn")
@dataclasses.dataclass(frozen=True)
class DBN(Family):
  """Deep belief network of stacked RBMs, trained greedily; log-likelihood bound by AIS.

  Attributes:
    hidden: the sizes of the hidden layers n_1..n_L (L >= 2), e.g. (500, 2000).
    cd_k: Gibbs steps of each layer's CD (one per layer).
    layer_steps: train steps of each stage but the last (which runs to the end of the run).
    persistent: persistent CD for every layer (chains in the ``chains`` collection).
    num_chains: persistent chains per layer.
    neg_visible: 'sample' or 'mean' visible states in the negative statistics.
    upward: 'sample' or 'mean': what the layers below pass up as the data of the layer in training.
    init_std: the standard deviation of the initial weights.
    sample_steps: Gibbs steps in the top RBM when sampling.
    bound_samples: draws of q(h | x) per example in the estimate of the lower bound.
    ais_chains, ais_temperatures, final_ais_temperatures, ais_schedule, exact_max_units: the top RBM's
      log Z, as in the ``rbm`` family.
  """
  hidden: tuple[int, ...] = (500, 2000)
  cd_k: tuple[int, ...] = (1, 1)
  layer_steps: tuple[int, ...] = (50_000,)
  persistent: bool = False
  num_chains: int = 100
  neg_visible: str = "sample"
  upward: str = "sample"
  init_std: float = 0.01
  sample_steps: int = 1000
  bound_samples: int = 10
  ais_chains: int = 100
  ais_temperatures: int = 1000
  final_ais_temperatures: int = 14500
  ais_schedule: str = "paper"
  exact_max_units: int = 20

  likelihood_kind = STOCHASTIC_ESTIMATE   # at stage >= 1, an estimate of a lower bound
  eval_metric = "nll"

  def validate(self):
    if len(self.hidden) < 2:
      raise ConfigError("model.hidden needs at least 2 layers for a DBN; one RBM is the 'rbm' family")
    if min(self.hidden) < 1:
      raise ConfigError("model.hidden: every layer needs at least one unit")
    if len(self.cd_k) != len(self.hidden) or min(self.cd_k) < 1:
      raise ConfigError(f"model.cd_k needs one value >= 1 per layer ({len(self.hidden)}), got {self.cd_k}")
    # 0 steps: the layer is not trained here; it comes from another run (config.init_from), e.g. the
    # first layer from a trained RBM, as greedy training reuses it.
    if len(self.layer_steps) != len(self.hidden) - 1 or min(self.layer_steps) < 0:
      raise ConfigError(f"model.layer_steps needs the steps of every layer but the last "
                        f"({len(self.hidden) - 1} values >= 0; 0 for a layer copied from another run "
                        f"with init_from), got {self.layer_steps}")
    if self.neg_visible not in NEG_VISIBLE:
      raise ConfigError(f"model.neg_visible must be one of {', '.join(NEG_VISIBLE)}, "
                        f"not {self.neg_visible!r}")
    if self.upward not in UPWARD:
      raise ConfigError(f"model.upward must be one of {', '.join(UPWARD)}, not {self.upward!r}")
    if self.num_chains < 1 or self.bound_samples < 1 or self.sample_steps < 0 or self.init_std <= 0:
      raise ConfigError("model.num_chains and model.bound_samples must be >= 1, model.sample_steps >= 0, "
                        "model.init_std > 0")
    check_ais_fields(self)

  # -- layers and stages

  @property
  def sizes(self) -> tuple[int, ...]:
    """(n_0 = D, n_1, ..., n_L)."""
    return (self.num_dims,) + tuple(int(n) for n in self.hidden)

  @staticmethod
  def layer(l: int) -> str:
    return f"layer{l}"

  @property
  def top(self) -> int:
    """The index of the top RBM of the DBN at this stage."""
    return min(self.stage, len(self.hidden) - 1)

  @property
  def players(self):
    return ((self.layer(self.top), 1),)

  @property
  def all_players(self):
    return tuple(self.layer(l) for l in range(len(self.hidden)))

  @property
  def stage_steps(self):
    return tuple(int(n) for n in self.layer_steps)

  def _params(self, variables, l: int):
    return variables["params"][self.layer(l)]

  def exact_at(self, l: int) -> bool:
    return min(self.sizes[l], self.sizes[l + 1]) <= self.exact_max_units

  # -- the contract

  def init(self, rng, batch):
    params, stats, chains = {}, {}, {}
    for l in range(len(self.hidden)):
      w_rng, c_rng = jax.random.split(jax.random.fold_in(rng, l))
      params[self.layer(l)] = init_params(w_rng, self.sizes[l], self.sizes[l + 1], self.init_std)
      stats[self.layer(l)] = init_data_stats(self.sizes[l])
      chains[self.layer(l)] = {"visible": jax.random.bernoulli(
          c_rng, 0.5, (self.num_chains, self.sizes[l])).astype(jnp.float32)}
    out = {"params": params, "data_stats": stats}
    if self.persistent:
      out["chains"] = chains
    return out

  def up(self, variables, x: Array, rng: Array, to_layer: int) -> Array:
    """The data of RBM ``to_layer``: x (B, D) pushed up through the layers below it, (B, n_to_layer)."""
    h = x
    for l in range(to_layer):
      p = jax.nn.sigmoid(hidden_pre(self._params(variables, l), h))
      h = (jax.random.uniform(jax.random.fold_in(rng, l), p.shape) < p).astype(p.dtype) \
          if self.upward == "sample" else p
    return jax.lax.stop_gradient(h)

  def loss(self, player, variables, batch, rng, step):
    l = self.all_players.index(player)
    name = self.layer(l)
    params = variables["params"][name]
    up_rng, neg_rng = jax.random.split(rng)
    v_data = self.up(variables, batch["image"].reshape(batch["image"].shape[0], -1), up_rng, l)
    stats = update_data_stats(variables["data_stats"][name], v_data)
    chains = variables["chains"][name]["visible"] if self.persistent else None
    v_neg, new_chains = cd_negative(params, v_data, chains, neg_rng, int(self.cd_k[l]), BERNOULLI,
                                    self.neg_visible)
    loss, f_pos, f_neg = cd_surrogate(params, v_data, v_neg)
    metrics = {"free_energy": jnp.mean(f_pos), "free_energy_neg": jnp.mean(f_neg)}
    new = {"data_stats": {**variables["data_stats"], name: stats}}
    if self.persistent:
      new["chains"] = {**variables["chains"], name: {"visible": new_chains}}
    else:
      metrics["recon_error"] = jnp.mean(jnp.sum(jnp.square(v_data - v_neg), axis=-1))
    return loss, metrics, new

  def log_partition(self, variables, rng, k: int | None = None, temperatures: int | None = None):
    """log Z of the top RBM at this stage (exact or AIS) and its spread."""
    chains, temps = ais_settings(self, k, temperatures)
    s = self.top
    return log_partition(self._params(variables, s), base_rate_logits(variables["data_stats"][self.layer(s)]),
                         rng, exact=self.exact_at(s), chains=chains, temperatures=temps,
                         schedule=self.ais_schedule)

  def eval_context(self, variables, rng, k: int | None = None, temperatures: int | None = None):
    """The top RBM's log Z once per evaluation (``k``: AIS chains, with ``final_ais_temperatures``)."""
    return {"log_partition": self.log_partition(variables, rng, k, temperatures)}

  def _log_z(self, variables, rng, k, temperatures):
    if "log_partition" in variables:
      return variables["log_partition"]
    return self.log_partition(variables, rng, k, temperatures)

  def unnormalized_bound(self, variables, x: Array, rng: Array, num_samples: int | None = None) -> Array:
    """The lower bound on log p(x) plus log Z of the top RBM, estimated per example, (B,).

    Args:
      variables: the family's variables.
      x: (B, D) binary data.
      rng: a PRNG key for the draws of q.
      num_samples: draws of q per example (default ``bound_samples``).

    Returns:
      (B,) E_q[sum_l log p(h^l | h^{l+1}) - F_top(h^top)] + H(q), averaged over the draws; at stage 0
      simply -F_0(x).
    """
    s = self.top
    if s == 0:
      return -free_energy(self._params(variables, 0), x)
    n = int(num_samples or self.bound_samples)
    b = x.shape[0]
    h = jnp.tile(x, (n, 1))                                     # (n B, D): draw-major
    total = jnp.zeros((n * b,), jnp.float32)
    for l in range(s):
      params = self._params(variables, l)
      logits = hidden_pre(params, h)
      h_next = (jax.random.uniform(jax.random.fold_in(rng, l), logits.shape) < jax.nn.sigmoid(logits)
                ).astype(jnp.float32)
      total = (total + bernoulli_entropy(logits)
               + jnp.sum(_layers.bernoulli_log_prob(h, visible_pre(params, h_next)), axis=-1))
      h = h_next
    total = total - free_energy(self._params(variables, s), h)
    return jnp.mean(total.reshape(n, b), axis=0)

  def log_likelihood(self, variables, batch, rng, k: int | None = None, temperatures: int | None = None):
    """Per-example estimate of the variational lower bound on log p(x) (at stage 0: of log p(x)), (B,)."""
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    lz = self._log_z(variables, rng, k, temperatures)
    return self.unnormalized_bound(variables, x, jax.random.fold_in(rng, 1)) - lz["log_z"]

  def eval_metrics(self, variables, batch, rng, k: int | None = None, temperatures: int | None = None):
    lz = self._log_z(variables, rng, k, temperatures)
    nll = -self.log_likelihood({**variables, "log_partition": lz}, batch, rng)
    ones = jnp.ones_like(nll)
    return {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims),
            "log_z": lz["log_z"] * ones, "log_z_std_err": lz["log_z_std_err"] * ones}

  def anomaly_score(self, variables, batch, rng=None):
    """Minus the unnormalized bound, (B,): -log p(x) (bound) up to the constant log Z."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    return -self.unnormalized_bound(variables, x, rng)

  def sample(self, variables, rng, num, steps: int | None = None):
    """``num`` images (num, H, W, C) in [0, 1]: Gibbs in the top RBM, then a downward pass.

    Args:
      variables: the family's variables.
      rng: a PRNG key.
      num: the number of samples (static).
      steps: Gibbs steps in the top RBM (default ``sample_steps``).
    """
    s = self.top
    start_rng, chain_rng, down_rng = jax.random.split(rng, 3)
    p0 = jax.nn.sigmoid(base_rate_logits(variables["data_stats"][self.layer(s)]))
    h = (jax.random.uniform(start_rng, (num, self.sizes[s])) < p0[None]).astype(jnp.float32)
    steps = self.sample_steps if steps is None else int(steps)
    h, mean = gibbs(self._params(variables, s), h, chain_rng, steps)
    for l in range(s - 1, -1, -1):
      mean = jax.nn.sigmoid(visible_pre(self._params(variables, l), h))
      h = (jax.random.uniform(jax.random.fold_in(down_rng, l), mean.shape) < mean).astype(jnp.float32)
    return jnp.clip(mean, 0.0, 1.0).reshape(num, *self.image_shape)

