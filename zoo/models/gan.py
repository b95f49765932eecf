"""Generative adversarial networks (Goodfellow et al. 2014) and the machinery every GAN family shares.

A GAN is two players on the shared step: ``players = (("discriminator", n_critic), ("generator", 1))``.
Each player's ``loss`` is differentiated by :mod:`zoo.step` with respect to its own params only; the other
player's params are constants there, and the fakes the discriminator sees are ``stop_gradient``-ed.

Objectives (``model.objective``), with D(x) the discriminator's logit (or the critic's value):

- ``non_saturating``: D minimises softplus(-D(x)) + softplus(D(G(z))) (its cross-entropy); G minimises
  softplus(-D(G(z))) = -log sigmoid(D(G(z))) (Goodfellow et al. 2014, Section 3, the heuristic).
- ``minimax``: D as above; G minimises log(1 - sigmoid(D(G(z)))) = -softplus(D(G(z))), the game's value.
- ``wgan_gp``: the critic minimises D(G(z)) - D(x) + gp_weight * (|grad D(x_hat)|_2 - 1)^2 with x_hat on
  random segments between real and fake (Gulrajani et al. 2017, lambda = 10); G minimises -D(G(z)).
- ``hinge``: D minimises relu(1 - D(x)) + relu(1 + D(G(z))); G minimises -D(G(z)) (Lim & Ye 2017;
  Miyato et al. 2018).

Penalties, added to D's loss with any objective: ``r1_weight`` gamma adds gamma/2 E|grad_x D(x)|^2 on real
data (Mescheder et al. 2018); ``drift_weight`` adds eps E[D(x)^2] (Karras et al. 2017, eps = 0.001).
Gradients of D with respect to its input are taken of the batch sum, which is the per-example gradient
only when D treats examples independently (batch norm in training mode and minibatch standard deviation
couple them slightly; the usual practice, said here).

Data: batches are images in [0, 1]; a family maps them to its generator's output range (``sigmoid``:
[0, 1]; ``tanh``: [-1, 1]; ``linear``: as they are, for non-image toy data) and back in ``sample``.
``net_shape`` lets a network work at another size than the data: 28x28 digits are zero-padded (centred)
to 32x32, and grey images are repeated over 3 channels; samples are cropped back and their channels
averaged. The discriminator always sees the padded images, so the padding is part of what G learns.

Evaluation: a GAN has no likelihood (``likelihood_kind = None``; ``log_likelihood`` raises). The periodic
evaluation reports the Gaussian Parzen-window estimate of Goodfellow et al. (:mod:`zoo.metrics.parzen`)
at the family's ``parzen_sigma`` over ``parzen_samples`` samples drawn once per evaluation in
``eval_context``, as ``parzen_nll`` (nats, lower is better; the best checkpoint is chosen by it), and the
discriminator's mean output on real data and on fakes. The paper's protocol (sigma chosen on a
validation split, 10,000 samples) is ``python -m zoo.metrics.parzen --workdir ...``. The anomaly score
is the discriminator's logit negated.

Latent tools: :func:`lerp`, :func:`slerp`, :meth:`Adversarial.interpolate` (images along a latent path)
and :meth:`Adversarial.grid_latents`, the latents of the trainer's sample grids: the same at every
evaluation (a fixed key), so the grids show progress on fixed latents.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ConfigError, nearest
from zoo.family import Family
from zoo.metrics import parzen
from zoo.models import _layers
from zoo.registry import register

Array = jax.Array

OBJECTIVES = ("non_saturating", "minimax", "wgan_gp", "hinge")
LATENTS = ("normal", "uniform")
OUTPUTS = ("sigmoid", "tanh", "linear")
INTERPOLATIONS = ("lerp", "slerp")


# --------------------------------------------------------------------------------------------------
# Random numbers of many-dimensional shapes are drawn flat and reshaped: the same numbers (with
# jax_threefry_partitionable, the default, the bits depend on the flat index only), but XLA:CPU compiles
# a draw of a 4-D shape several times slower than a flat one (1.6 s against 0.3 s for one 3x3x16x16
# kernel, measured with jax 0.10.2), and a network's init holds one per layer.


def normal_init(stddev: float = 1.0):
  """A Linen initializer: N(0, stddev^2), drawn flat (same values as ``nn.initializers.normal``)."""
  def init(key, shape, dtype=jnp.float32):
    return stddev * jax.random.normal(key, (int(np.prod(shape)),), dtype).reshape(shape)
  return init


def uniform_flat(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
  """U(0, 1) of ``shape``, drawn flat (the same values as ``jax.random.uniform``)."""
  return jax.random.uniform(key, (int(np.prod(shape)),), dtype).reshape(shape)


# --------------------------------------------------------------------------------------------------
# Objectives and penalties, on the discriminator's outputs (B,).


def discriminator_loss(objective: str, real: Array, fake: Array) -> Array:
  """D's loss (to minimise) for its outputs on a real batch (B,) and a fake batch (B',); a scalar."""
  if objective in ("non_saturating", "minimax"):
    return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
  if objective == "wgan_gp":
    return jnp.mean(fake) - jnp.mean(real)
  if objective == "hinge":
    return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
  raise ConfigError(f"unknown GAN objective {objective!r}{nearest(objective, OBJECTIVES)}")


def generator_loss(objective: str, fake: Array) -> Array:
  """G's loss (to minimise) for D's outputs on its fakes (B,); a scalar."""
  if objective == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake))            # -log D(G(z))
  if objective == "minimax":
    return -jnp.mean(jax.nn.softplus(fake))            # log(1 - D(G(z)))
  if objective in ("wgan_gp", "hinge"):
    return -jnp.mean(fake)
  raise ConfigError(f"unknown GAN objective {objective!r}{nearest(objective, OBJECTIVES)}")


def _input_grads(d_fn, x: Array) -> Array:
  """d/dx of sum_i D(x_i): (B, ...), the per-example input gradients when D treats examples apart."""
  return jax.grad(lambda t: jnp.sum(d_fn(t)))(x)


def gradient_penalty(d_fn, real: Array, fake: Array, rng: Array, target: float = 1.0) -> Array:
  """E[(|grad D(x_hat)|_2 - target)^2], x_hat = real + u (fake - real), u ~ U(0, 1) per example.

  Args:
    d_fn: images (B, ...) -> D's outputs (B,).
    real, fake: (B, ...) batches of the same shape.
    rng: a PRNG key for u.
    target: the norm the penalty pulls towards (1 in Gulrajani et al. 2017).

  Returns:
    A scalar.
  """
  u = uniform_flat(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  x_hat = real + u * (fake - real)
  g = _input_grads(d_fn, x_hat)
  norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))) + 1e-12)
  return jnp.mean(jnp.square(norm - target))


def r1_penalty(d_fn, real: Array) -> Array:
  """E|grad_x D(x)|^2 on real data (Mescheder et al. 2018); the loss adds gamma / 2 times it."""
  g = _input_grads(d_fn, real)
  return jnp.mean(jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim))))


# --------------------------------------------------------------------------------------------------
# Latent-space tools.


def lerp(z0: Array, z1: Array, t: Array) -> Array:
  """Linear interpolation (1 - t) z0 + t z1; z0, z1 (..., L), t broadcasting against them."""
  return (1.0 - t) * z0 + t * z1


def slerp(z0: Array, z1: Array, t: Array) -> Array:
  """Spherical interpolation along the great circle between z0 and z1 (Shoemake 1985).

  ``sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1``, w the angle between z0 and z1 (..., L); for
  vectors of equal norm every point keeps that norm (the typical shell of a Gaussian latent), unlike
  lerp, which cuts through the low-norm interior (White 2016). Falls back to lerp when z0 and z1 are
  (anti)parallel.
  """
  n0 = jnp.linalg.norm(z0, axis=-1, keepdims=True)
  n1 = jnp.linalg.norm(z1, axis=-1, keepdims=True)
  cos = jnp.clip(jnp.sum(z0 * z1, -1, keepdims=True) / jnp.maximum(n0 * n1, 1e-12), -1.0, 1.0)
  omega = jnp.arccos(cos)
  sin = jnp.sin(omega)
  degenerate = sin < 1e-6
  safe = jnp.where(degenerate, 1.0, sin)
  out = (jnp.sin((1.0 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / safe
  return jnp.where(degenerate, lerp(z0, z1, t), out)


def interpolate_latents(z0: Array, z1: Array, num: int, kind: str = "slerp") -> Array:
  """``num`` latents from z0 to z1 (L,), both ends included: (num, L)."""
  if kind not in INTERPOLATIONS:
    raise ConfigError(f"unknown interpolation {kind!r}; known: {', '.join(INTERPOLATIONS)}")
  t = jnp.linspace(0.0, 1.0, num)[:, None]
  return (slerp if kind == "slerp" else lerp)(z0[None], z1[None], t)


# --------------------------------------------------------------------------------------------------
# Data space <-> the networks' space.


def pad_to(x: Array, shape: tuple[int, int, int]) -> Array:
  """Images (B, h, w, c) zero-padded (centred) to (B, H, W, c) and grey repeated to C channels."""
  h, w, c = x.shape[1:]
  H, W, C = shape
  top, left = (H - h) // 2, (W - w) // 2
  if (H, W) != (h, w):
    x = jnp.pad(x, ((0, 0), (top, H - h - top), (left, W - w - left), (0, 0)))
  if C != c:
    x = jnp.broadcast_to(x, (*x.shape[:3], C))
  return x


def crop_to(x: Array, shape: tuple[int, int, int]) -> Array:
  """The inverse of :func:`pad_to`: the centre (h, w) crop, channels averaged to c."""
  H, W, C = x.shape[1:]
  h, w, c = shape
  top, left = (H - h) // 2, (W - w) // 2
  x = x[:, top:top + h, left:left + w]
  if C != c:
    x = jnp.mean(x, axis=-1, keepdims=True)
  return x


# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Adversarial(Family):
  """The base of every GAN family: the two-player loss, sampling, latents and evaluation.

  Subclasses provide ``generator`` and ``discriminator`` (Linen modules called as ``net(x, train=...,
  **net_kwargs)``; a generator maps latents (B, L) to images (B, *net_shape) in its output range, a
  discriminator images to outputs (B,)) and may keep batch statistics in the ``batch_stats``
  collection. Staged families (Progressive GAN) override the hooks ``net_kwargs``, ``real_input``,
  ``to_full`` and ``step_collections``.

  Attributes:
    latent_dim: L, the size of z.
    latent_dist: 'normal' (N(0, I)) or 'uniform' (U(-1, 1)^L).
    objective: 'non_saturating', 'minimax', 'wgan_gp' or 'hinge' (see the module docstring).
    n_critic: discriminator updates per generator update.
    gp_weight: lambda of the gradient penalty (objective 'wgan_gp' only).
    r1_weight: gamma of the R1 penalty gamma / 2 E|grad D(x)|^2 on real data; 0 for none.
    drift_weight: eps of the drift term eps E[D(x)^2]; 0 for none.
    net_shape: (H, W, C) the networks work at, when not the data's: padded and channel-repeated
      inside the family; () for the data's shape.
    parzen_samples: samples drawn per evaluation for the Parzen estimate.
    parzen_sigma: the kernel width of the periodic Parzen estimate (the final figure chooses it on a
      validation split: :mod:`zoo.metrics.parzen`).
  """
  latent_dim: int = 100
  latent_dist: str = "normal"
  objective: str = "non_saturating"
  n_critic: int = 1
  gp_weight: float = 10.0
  r1_weight: float = 0.0
  drift_weight: float = 0.0
  net_shape: tuple[int, ...] = ()
  parzen_samples: int = 1000
  parzen_sigma: float = 0.2

  likelihood_kind = None
  eval_metric = "parzen_nll"

  # -- structure

  @property
  def players(self) -> tuple[tuple[str, int], ...]:
    return (("discriminator", int(self.n_critic)), ("generator", 1))

  @property
  def model_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of the networks' images."""
    return tuple(int(d) for d in self.net_shape) if self.net_shape else tuple(self.image_shape)

  @property
  def generator(self) -> nn.Module:
    raise NotImplementedError

  @property
  def discriminator(self) -> nn.Module:
    raise NotImplementedError

  def validate(self):
    if self.objective not in OBJECTIVES:
      raise ConfigError(f"model.objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}"
                        f"{nearest(str(self.objective), OBJECTIVES)}")
    if self.latent_dist not in LATENTS:
      raise ConfigError(f"model.latent_dist must be one of {', '.join(LATENTS)}, not {self.latent_dist!r}")
    if self.latent_dim < 1 or self.n_critic < 1:
      raise ConfigError("model.latent_dim and model.n_critic must be >= 1")
    if min(self.gp_weight, self.r1_weight, self.drift_weight) < 0:
      raise ConfigError("model.gp_weight, model.r1_weight and model.drift_weight must be >= 0")
    if self.parzen_samples < 1 or self.parzen_sigma <= 0:
      raise ConfigError("model.parzen_samples must be >= 1 and model.parzen_sigma > 0")
    if self.net_shape:
      if len(self.net_shape) != 3:
        raise ConfigError(f"model.net_shape must be (H, W, C) or (), not {self.net_shape}")
      (h, w, c), (H, W, C) = self.image_shape, self.model_shape
      if H < h or W < w or (C != c and c != 1):
        raise ConfigError(f"model.net_shape {self.model_shape} cannot hold the data's {self.image_shape} "
                          f"images (it pads them and repeats grey channels)")

  # -- data space <-> the networks' space

  @property
  def value_range(self) -> str:
    """The networks' pixel range: 'symmetric' ([-1, 1]), 'unit' ([0, 1]) or 'identity' (the data's)."""
    return "symmetric"

  def to_model(self, images: Array) -> Array:
    """Images (B, H, W, C) in [0, 1] -> the networks' inputs (B, *model_shape) in the output range."""
    x = pad_to(images.astype(jnp.float32), self.model_shape)
    return 2.0 * x - 1.0 if self.value_range == "symmetric" else x

  def to_data(self, x: Array) -> Array:
    """The generator's outputs (B, *model_shape) -> images (B, H, W, C) in [0, 1] (as is for 'identity')."""
    if self.value_range == "symmetric":
      x = 0.5 * (x + 1.0)
    x = crop_to(x, tuple(self.image_shape))
    return x if self.value_range == "identity" else jnp.clip(x, 0.0, 1.0)

  # -- hooks of staged families (Progressive GAN)

  def net_kwargs(self, variables, step: Array | None) -> dict[str, Any]:
    """Extra keyword arguments of both networks at ``step`` (None: evaluation, from the variables)."""
    return {}

  def real_input(self, x: Array, kwargs: dict[str, Any]) -> Array:
    """Real images (B, *model_shape) as the discriminator sees them at this stage."""
    return x

  def to_full(self, x: Array, kwargs: dict[str, Any]) -> Array:
    """The generator's output at this stage -> (B, *model_shape)."""
    return x

  def step_collections(self, variables, step: Array) -> dict[str, Any]:
    """Non-trainable collections that a train step writes besides batch statistics."""
    return {}

  # -- networks

  def latents(self, rng: Array, num: int) -> Array:
    """``num`` draws of the latent prior, (num, L)."""
    if self.latent_dist == "uniform":
      return jax.random.uniform(rng, (num, self.latent_dim), jnp.float32, -1.0, 1.0)
    return jax.random.normal(rng, (num, self.latent_dim), jnp.float32)

  def apply_net(self, player: str, variables, x: Array, *, train: bool, rng: Array | None = None,
                **kwargs) -> tuple[Array, Any]:
    """Runs ``player``'s network; returns (outputs, its batch statistics: updated when training)."""
    net = self.generator if player == "generator" else self.discriminator
    v = {"params": variables["params"][player]}
    stats = variables.get("batch_stats", {}).get(player)
    if stats is not None:
      v["batch_stats"] = stats
    rngs = {"dropout": rng} if train and rng is not None else None
    if train and stats is not None:
      out, updated = net.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"], **kwargs)
      return out, updated["batch_stats"]
    return net.apply(v, x, train=train, rngs=rngs, **kwargs), stats

  def init_player(self, player: str, rng: Array, x: Array) -> dict[str, Any]:
    """The variables of one network for an input like ``x`` (every stage's params)."""
    net = self.generator if player == "generator" else self.discriminator
    return dict(net.init(rng, x, train=False, **self.net_kwargs(None, None)))

  def init(self, rng, batch):
    g_rng, d_rng = jax.random.split(rng)
    x = self.to_model(batch["image"][:1])
    g = self.init_player("generator", g_rng, jnp.zeros((1, self.latent_dim), jnp.float32))
    d = self.init_player("discriminator", d_rng, x)
    out = {"params": {"discriminator": d.pop("params"), "generator": g.pop("params")}}
    stats = {p: v["batch_stats"] for p, v in (("discriminator", d), ("generator", g)) if "batch_stats" in v}
    if stats:
      out["batch_stats"] = stats
    out.update(self.step_collections(None, jnp.zeros((), jnp.int32)))
    return out

  # -- the objective

  def loss(self, player, variables, batch, rng, step):
    z_rng, g_rng, d_rng, pen_rng = jax.random.split(rng, 4)
    kw = self.net_kwargs(variables, step)
    real = self.real_input(self.to_model(batch["image"]), kw)
    z = self.latents(z_rng, real.shape[0])
    stats = variables.get("batch_stats")
    metrics: dict[str, Array] = {}
    if player == "discriminator":
      fake, _ = self.apply_net("generator", variables, z, train=True, rng=g_rng, **kw)
      fake = jax.lax.stop_gradient(fake)
      d_real, d_stats = self.apply_net("discriminator", variables, real, train=True,
                                       rng=jax.random.fold_in(d_rng, 0), **kw)
      after_real = variables if stats is None else {
          **variables, "batch_stats": {**stats, "discriminator": d_stats}}
      d_fake, d_stats = self.apply_net("discriminator", after_real, fake, train=True,
                                       rng=jax.random.fold_in(d_rng, 1), **kw)
      loss = discriminator_loss(self.objective, d_real, d_fake)
      metrics.update(d_real=jnp.mean(d_real), d_fake=jnp.mean(d_fake))

      def d_fn(x):
        return self.apply_net("discriminator", variables, x, train=True,
                              rng=jax.random.fold_in(d_rng, 2), **kw)[0]

      if self.objective == "wgan_gp":
        gp = gradient_penalty(d_fn, real, fake, pen_rng)
        loss = loss + self.gp_weight * gp
        metrics.update(gp=gp, w_distance=jnp.mean(d_real) - jnp.mean(d_fake))
      if self.r1_weight:
        r1 = r1_penalty(d_fn, real)
        loss = loss + 0.5 * self.r1_weight * r1
        metrics["r1"] = r1
      if self.drift_weight:
        drift = jnp.mean(jnp.square(d_real))
        loss = loss + self.drift_weight * drift
        metrics["drift"] = drift
      new = {} if stats is None else {"batch_stats": {**stats, "discriminator": d_stats}}
    elif player == "generator":
      fake, g_stats = self.apply_net("generator", variables, z, train=True, rng=g_rng, **kw)
      d_fake, _ = self.apply_net("discriminator", variables, fake, train=True, rng=d_rng, **kw)
      loss = generator_loss(self.objective, d_fake)
      metrics["d_fake"] = jnp.mean(d_fake)
      new = {} if stats is None else {"batch_stats": {**stats, "generator": g_stats}}
    else:
      raise ValueError(f"{self.name} has no player {player!r}")
    new.update(self.step_collections(variables, step))
    return loss, metrics, new

  # -- sampling and latents

  def decode(self, variables, z: Array) -> Array:
    """Images (B, H, W, C) in data space for latents z (B, L) (the generator in inference mode)."""
    kw = self.net_kwargs(variables, None)
    x, _ = self.apply_net("generator", variables, z, train=False, **kw)
    return self.to_data(self.to_full(x, kw))

  def sample(self, variables, rng, num):
    """``num`` images (num, H, W, C) in [0, 1]: G(z) for z = ``latents(rng, num)``."""
    return self.decode(variables, self.latents(rng, num))

  def grid_latents(self, seed: int, num: int) -> Array:
    """The latents of the trainer's sample grids (``num_samples``, seed ``seed``): the same at every
    evaluation, so ``decode(variables, grid_latents(seed, n))`` is that grid for any variables."""
    from zoo.train import SAMPLE_SEED_SALT
    return self.latents(jax.random.fold_in(jax.random.PRNGKey(seed), SAMPLE_SEED_SALT), num)

  def interpolate(self, variables, z0: Array, z1: Array, num: int, kind: str = "slerp") -> Array:
    """Images (num, H, W, C) along the ``kind`` path ('lerp' or 'slerp') from z0 to z1 (L,)."""
    return self.decode(variables, interpolate_latents(z0, z1, num, kind))

  # -- evaluation

  def critic(self, variables, images: Array) -> Array:
    """The discriminator's outputs (B,) on images in data space, in inference mode."""
    kw = self.net_kwargs(variables, None)
    return self.apply_net("discriminator", variables, self.real_input(self.to_model(images), kw),
                          train=False, **kw)[0]

  def parzen_centers(self, variables, rng: Array, num: int, chunk: int = 250) -> Array:
    """``num`` samples, flattened (num, D), drawn ``chunk`` at a time (bounded memory)."""
    chunk = min(chunk, num)
    keys = jax.random.split(rng, -(-num // chunk))
    xs = jax.lax.map(lambda k: self.sample(variables, k, chunk).reshape(chunk, -1), keys)
    return xs.reshape(-1, xs.shape[-1])[:num]

  def eval_context(self, variables, rng, parzen_samples: int | None = None, sigma: float | None = None):
    """The Parzen window's centres, drawn once per evaluation: ``{"parzen": {"samples": (N, D)}}``."""
    return {"parzen": {"samples": self.parzen_centers(variables, rng, int(parzen_samples or self.parzen_samples))}}

  def eval_metrics(self, variables, batch, rng, parzen_samples: int | None = None, sigma: float | None = None):
    """Per example: ``parzen_nll`` (nats) at ``sigma`` (default ``parzen_sigma``), ``d_real`` (D on the
    example) and ``d_fake`` (D on a fresh sample)."""
    c_rng, z_rng = jax.random.split(rng)
    x = batch["image"]
    if "parzen" in variables:
      centers = variables["parzen"]["samples"]
    else:
      centers = self.parzen_centers(variables, c_rng, int(parzen_samples or self.parzen_samples))
    sig = jnp.asarray([float(sigma or self.parzen_sigma)], jnp.float32)
    ll = parzen.log_likelihood(x.reshape(x.shape[0], -1), centers, sig)[:, 0]
    fake = self.sample(variables, z_rng, x.shape[0])
    return {"parzen_nll": -ll, "d_real": self.critic(variables, x), "d_fake": self.critic(variables, fake)}

  def anomaly_score(self, variables, batch, rng=None):
    """The discriminator's output negated, (B,): higher means less like the training data."""
    return -self.critic(variables, batch["image"])


# --------------------------------------------------------------------------------------------------
# The GAN of Goodfellow et al. 2014: multilayer perceptrons.


class _MLPGenerator(nn.Module):
  hidden: tuple[int, ...]
  activation: str
  out_shape: tuple[int, int, int]
  output: str

  @nn.compact
  def __call__(self, z, train: bool = False):
    act = _layers.activation(self.activation)
    h = z
    for i, f in enumerate(self.hidden):
      h = act(nn.Dense(f, name=f"dense_{i}")(h))
    h = nn.Dense(int(np.prod(self.out_shape)), name="out")(h)
    h = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "linear": lambda t: t}[self.output](h)
    return h.reshape(z.shape[0], *self.out_shape)


class _MLPDiscriminator(nn.Module):
  hidden: tuple[int, ...]
  activation: str          # 'maxout' or one of _layers.ACTIVATIONS
  pieces: int
  input_dropout: float
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = x.reshape(x.shape[0], -1)
    h = nn.Dropout(self.input_dropout, deterministic=not train)(h)
    for i, f in enumerate(self.hidden):
      if self.activation == "maxout":   # max over `pieces` linear units (Goodfellow et al. 2013)
        h = jnp.max(nn.Dense(f * self.pieces, name=f"dense_{i}")(h).reshape(h.shape[0], f, self.pieces), -1)
      else:
        h = _layers.activation(self.activation)(nn.Dense(f, name=f"dense_{i}")(h))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(1, name="out")(h)[:, 0]


@register("gan")
@dataclasses.dataclass(frozen=True)
class GAN(Adversarial):
  """GAN of multilayer perceptrons (Goodfellow et al. 2014): ReLU/sigmoid generator, maxout discriminator.

  Attributes:
    g_hidden: widths of the generator's hidden layers.
    g_activation: their nonlinearity.
    output: the generator's output nonlinearity: 'sigmoid' (pixels in [0, 1], the paper's), 'tanh', or
      'linear' (non-image data, e.g. 2-D toy sets; samples are not clipped).
    d_hidden: widths (units) of the discriminator's hidden layers.
    d_activation: 'maxout' (the paper's) or an activation name.
    maxout_pieces: linear pieces per maxout unit.
    d_input_dropout: dropout rate on the discriminator's input.
    d_dropout: dropout rate after each of its hidden layers.
  """
  g_hidden: tuple[int, ...] = (1200, 1200)
  g_activation: str = "relu"
  output: str = "sigmoid"
  d_hidden: tuple[int, ...] = (240, 240)
  d_activation: str = "maxout"
  maxout_pieces: int = 5
  d_input_dropout: float = 0.2
  d_dropout: float = 0.5

  @property
  def value_range(self) -> str:
    return {"sigmoid": "unit", "tanh": "symmetric", "linear": "identity"}[self.output]

  def validate(self):
    super().validate()
    if self.output not in OUTPUTS:
      raise ConfigError(f"model.output must be one of {', '.join(OUTPUTS)}, not {self.output!r}")
    _layers.activation(self.g_activation)
    if self.d_activation != "maxout":
      _layers.activation(self.d_activation)
    if self.maxout_pieces < 1 or not (0 <= self.d_input_dropout < 1 and 0 <= self.d_dropout < 1):
      raise ConfigError("model.maxout_pieces must be >= 1 and the dropout rates in [0, 1)")

  @property
  def generator(self):
    return _MLPGenerator(tuple(self.g_hidden), self.g_activation, self.model_shape, self.output)

  @property
  def discriminator(self):
    return _MLPDiscriminator(tuple(self.d_hidden), self.d_activation, int(self.maxout_pieces),
                             float(self.d_input_dropout), float(self.d_dropout))

