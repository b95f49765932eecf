"""Variational autoencoder (Kingma & Welling 2013) with the importance-weighted bound (Burda et al. 2015).

Gaussian posterior q(z|x) = N(mu(x), diag sigma(x)^2), standard normal prior, and a Bernoulli or Gaussian
decoder, with MLP or convolutional networks. Training maximises the ELBO (``train_k=1``, analytic KL) or
the IWAE-k bound (``train_k>1``); ``log_likelihood`` gives the ELBO or the IWAE-k bound for any k,
computed over k in chunks so that k=5000 fits in memory.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.errors import ConfigError
from zoo.family import LOWER_BOUND, Family, bits_per_dim
from zoo.models import _layers
from zoo.registry import register


class _VAENet(nn.Module):
  family: "VAE"

  def setup(self):
    f = self.family
    self.encoder = _layers.Encoder(f.encoder, f.hidden, f.conv_features, f.activation, 2 * f.latent_dim)
    self.decoder = _layers.Decoder(f.encoder, f.hidden, f.conv_features, f.activation, f.image_shape)
    if f.likelihood == "gaussian":
      self.log_scale = self.param("log_scale", nn.initializers.zeros, tuple(f.image_shape))

  def encode(self, x):
    """(B, H, W, C) -> mean and log-std of q(z|x), each (B, L)."""
    h = self.encoder(x)
    return jnp.split(h, 2, axis=-1)

  def decode(self, z):
    """(..., L) -> decoder outputs (..., H, W, C): logits or Gaussian means."""
    lead = z.shape[:-1]
    out = self.decoder(z.reshape(-1, z.shape[-1]))
    return out.reshape(*lead, *out.shape[1:])

  def log_px(self, x, out):
    """log p(x|z) summed over pixels; ``out`` (..., H, W, C) broadcasts against x (B, H, W, C)."""
    x = jnp.broadcast_to(x, out.shape)
    if self.family.likelihood == "bernoulli":
      lp = _layers.bernoulli_log_prob(x, out)
    else:
      lp = _layers.gaussian_log_prob(x, out, jnp.broadcast_to(self.log_scale, out.shape))
    return jnp.sum(lp, axis=(-3, -2, -1))

  def __call__(self, x):  # used by init only
    mean, _ = self.encode(x)
    return self.decode(mean)


def _log_normal(z, mean, log_std):
  return jnp.sum(_layers.gaussian_log_prob(z, mean, log_std), axis=-1)


@register("vae")
@dataclasses.dataclass(frozen=True)
class VAE(Family):
  """Variational autoencoder.

  Attributes:
    encoder: 'mlp' or 'conv' (the decoder mirrors it).
    hidden: widths of the dense layers of the encoder (the decoder uses them reversed).
    conv_features: channels of the 4x4 stride-2 convolutions ('conv' only).
    activation: hidden-layer nonlinearity.
    latent_dim: number of latent units.
    likelihood: 'bernoulli' (logits) or 'gaussian' (means with a learned per-pixel log-std).
    beta: weight of the KL term in training (1 is the ELBO).
    train_k: importance samples in the training bound; 1 trains the ELBO, >1 the IWAE-k bound.
    iwae_chunk: importance samples evaluated at a time by ``log_likelihood``.
  """
  encoder: str = "mlp"
  hidden: tuple[int, ...] = (200, 200)
  conv_features: tuple[int, ...] = (32, 64)
  activation: str = "tanh"
  latent_dim: int = 50
  likelihood: str = "bernoulli"
  beta: float = 1.0
  train_k: int = 1
  iwae_chunk: int = 100

  likelihood_kind = LOWER_BOUND
  eval_metric = "nll"

  def validate(self):
    if self.encoder not in ("mlp", "conv"):
      raise ConfigError(f"model.encoder must be 'mlp' or 'conv', not {self.encoder!r}")
    if self.likelihood not in ("bernoulli", "gaussian"):
      raise ConfigError(f"model.likelihood must be 'bernoulli' or 'gaussian', not {self.likelihood!r}")
    if self.latent_dim < 1 or self.train_k < 1 or self.iwae_chunk < 1:
      raise ConfigError("model.latent_dim, model.train_k and model.iwae_chunk must be >= 1")
    _layers.activation(self.activation)
    if self.encoder == "conv":
      _layers.check_conv_shape(self.image_shape, len(self.conv_features), "vae with encoder='conv'")

  @property
  def net(self) -> _VAENet:
    return _VAENet(self)

  def init(self, rng, batch):
    variables = self.net.init(rng, batch["image"][:1])
    return {"params": {"model": variables["params"]}}

  def _apply(self, variables, method, *args):
    return self.net.apply({"params": variables["params"]["model"]}, *args, method=method)

  def elbo_terms(self, variables, x, rng):
    """Per-example (reconstruction log-likelihood, KL(q(z|x) || p(z))), each (B,), in nats."""
    def f(net, x, rng):
      mean, log_std = net.encode(x)
      z = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
      recon = net.log_px(x, net.decode(z))
      kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(2 * log_std) - 1.0 - 2 * log_std, axis=-1)
      return recon, kl
    return self._apply(variables, f, x, rng)

  def _log_weights(self, variables, x, mean, log_std, rng, k):
    """log p(x, z) - log q(z|x) for k draws z ~ q(z|x) per example: (k, B)."""
    mean, log_std = mean[None], log_std[None]
    z = mean + jnp.exp(log_std) * jax.random.normal(rng, (k,) + mean.shape[1:])
    log_px = self._apply(variables, lambda net, x, z: net.log_px(x, net.decode(z)), x, z)
    return log_px + _log_normal(z, 0.0, 0.0) - _log_normal(z, mean, log_std)

  def iwae(self, variables, x, rng, k: int):
    """The IWAE-k bound per example, (B,): log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x).

    The k samples are drawn ``iwae_chunk`` at a time under ``lax.scan`` with a running log-sum-exp,
    so memory does not grow with k.
    """
    k = int(k)
    chunk = min(self.iwae_chunk, k)
    n_chunks = math.ceil(k / chunk)
    mean, log_std = self._apply(variables, _VAENet.encode, x)

    def body(carry, i):
      running_max, running_sum = carry
      log_w = self._log_weights(variables, x, mean, log_std, jax.random.fold_in(rng, i), chunk)
      valid = (i * chunk + jnp.arange(chunk)) < k          # the last chunk may run past k
      log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
      new_max = jnp.maximum(running_max, jnp.max(log_w, axis=0))
      running_sum = (running_sum * jnp.exp(running_max - new_max)
                     + jnp.sum(jnp.exp(log_w - new_max[None]), axis=0))
      return (new_max, running_sum), None

    init = (jnp.full(x.shape[:1], -jnp.inf), jnp.zeros(x.shape[:1]))
    (m, s), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
    return m + jnp.log(s) - jnp.log(k)

  def loss(self, player, variables, batch, rng, step):
    x = batch["image"]
    if self.train_k == 1:
      recon, kl = self.elbo_terms(variables, x, rng)
      elbo = recon - kl
      loss = -jnp.mean(recon - self.beta * kl)
      return loss, {"elbo": jnp.mean(elbo), "kl": jnp.mean(kl), "recon": jnp.mean(recon)}, {}
    bound = self.iwae(variables, x, rng, self.train_k)
    return -jnp.mean(bound), {"iwae": jnp.mean(bound)}, {}

  def log_likelihood(self, variables, batch, rng, k: int = 1):
    """The ELBO (k=1, analytic KL) or the IWAE-k bound (k>1) per example, (B,), in nats."""
    k = int(k)
    if k < 1:
      raise ConfigError(f"importance samples k must be >= 1, got {k}")
    if k == 1:
      recon, kl = self.elbo_terms(variables, batch["image"], rng)
      return recon - kl
    return self.iwae(variables, batch["image"], rng, k)

  def eval_metrics(self, variables, batch, rng, k: int = 1):
    recon, kl = self.elbo_terms(variables, batch["image"], rng)
    nll = -(recon - kl)
    out = {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims), "kl": kl, "recon": -recon}
    if int(k) > 1:
      iw = -self.iwae(variables, batch["image"], jax.random.fold_in(rng, 1), k)
      out[f"nll_iwae{int(k)}"] = iw
      out[f"bits_per_dim_iwae{int(k)}"] = bits_per_dim(iw, self.num_dims)
      out["nll"] = iw
      out["bits_per_dim"] = bits_per_dim(iw, self.num_dims)
      out["nll_elbo"] = nll
    return out

  def _mean_image(self, variables, out):
    if self.likelihood == "bernoulli":
      return jax.nn.sigmoid(out)
    return jnp.clip(out, 0.0, 1.0)

  def sample(self, variables, rng, num, use_mean: bool = True):
    """``num`` images (num, H, W, C) in [0, 1]: decoder means (default) or draws from p(x|z)."""
    z_rng, x_rng = jax.random.split(rng)
    z = jax.random.normal(z_rng, (num, self.latent_dim))
    out = self._apply(variables, _VAENet.decode, z)
    if use_mean:
      return self._mean_image(variables, out)
    if self.likelihood == "bernoulli":
      return jax.random.bernoulli(x_rng, jax.nn.sigmoid(out)).astype(jnp.float32)
    scale = jnp.exp(variables["params"]["model"]["log_scale"])[None]
    return jnp.clip(out + scale * jax.random.normal(x_rng, out.shape), 0.0, 1.0)

  def encode(self, variables, batch):
    """Posterior mean and log-std, each (B, latent_dim)."""
    return self._apply(variables, _VAENet.encode, batch["image"])

  def decode(self, variables, z):
    """Decoder means (B, H, W, C) in [0, 1] for latents (B, latent_dim)."""
    return self._mean_image(variables, self._apply(variables, _VAENet.decode, z))

  def reconstruct(self, variables, batch, rng=None):
    """Decoder means at the posterior means, (B, H, W, C)."""
    mean, _ = self.encode(variables, batch)
    return self.decode(variables, mean)
