"""Plain and denoising autoencoders (deterministic codes; Vincent et al. 2008 for the denoising one).

The objective is the reconstruction error of the clean input from (optionally) corrupted input. An
autoencoder is not a density model: it has no ``log_likelihood``. Its reconstruction error is its anomaly
score. It samples by decoding codes drawn from a Gaussian fitted to the training codes (ex-post density
estimation, as in Ghosh et al. 2019): the running mean and second moment of the codes are non-trainable
state that the loss updates and the checkpoint keeps.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zoo.errors import ConfigError
from zoo.family import Family
from zoo.models import _layers
from zoo.registry import register

import flax.linen as nn


class _AENet(nn.Module):
  family: "Autoencoder"

  def setup(self):
    f = self.family
    self.encoder = _layers.Encoder(f.encoder, f.hidden, f.conv_features, f.activation, f.latent_dim)
    self.decoder = _layers.Decoder(f.encoder, f.hidden, f.conv_features, f.activation, f.image_shape)

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def __call__(self, x):
    return self.decode(self.encode(x))


NOISES = ("none", "gaussian", "masking", "salt_pepper")


@register("autoencoder")
@dataclasses.dataclass(frozen=True)
class Autoencoder(Family):
  """Autoencoder; denoising when ``noise`` is not 'none'.

  Attributes:
    encoder: 'mlp' or 'conv' (the decoder mirrors it).
    hidden: widths of the encoder's dense layers (reversed in the decoder).
    conv_features: channels of the 4x4 stride-2 convolutions ('conv' only).
    activation: hidden-layer nonlinearity.
    latent_dim: size of the code.
    reconstruction: 'bce' (decoder logits, cross-entropy; data in [0, 1]) or 'mse' (sigmoid outputs).
    noise: corruption of the input: 'none', 'gaussian' (std ``noise_level``), 'masking' (each pixel
      zeroed with probability ``noise_level``) or 'salt_pepper' (each pixel set to 0 or 1 with
      probability ``noise_level``).
    noise_level: the corruption's strength.
    code_momentum: momentum of the running code moments used for sampling.
  """
  encoder: str = "mlp"
  hidden: tuple[int, ...] = (500,)
  conv_features: tuple[int, ...] = (32, 64)
  activation: str = "relu"
  latent_dim: int = 32
  reconstruction: str = "bce"
  noise: str = "none"
  noise_level: float = 0.0
  code_momentum: float = 0.99

  likelihood_kind = None
  eval_metric = "recon"

  def validate(self):
    if self.encoder not in ("mlp", "conv"):
      raise ConfigError(f"model.encoder must be 'mlp' or 'conv', not {self.encoder!r}")
    if self.reconstruction not in ("bce", "mse"):
      raise ConfigError(f"model.reconstruction must be 'bce' or 'mse', not {self.reconstruction!r}")
    if self.noise not in NOISES:
      raise ConfigError(f"model.noise must be one of {', '.join(NOISES)}, not {self.noise!r}")
    if not 0.0 <= self.code_momentum < 1.0:
      raise ConfigError("model.code_momentum must be in [0, 1)")
    _layers.activation(self.activation)
    if self.encoder == "conv":
      _layers.check_conv_shape(self.image_shape, len(self.conv_features), "autoencoder with encoder='conv'")

  @property
  def net(self) -> _AENet:
    return _AENet(self)

  def init(self, rng, batch):
    params = self.net.init(rng, batch["image"][:1])["params"]
    code_stats = {"mean": jnp.zeros((self.latent_dim,)),
                  "second": jnp.eye(self.latent_dim),
                  "count": jnp.zeros((), jnp.int32)}
    return {"params": {"model": params}, "code_stats": code_stats}

  def corrupt(self, x, rng):
    """The denoising corruption of a batch (identity when noise='none')."""
    level = self.noise_level
    if self.noise == "gaussian":
      return x + level * jax.random.normal(rng, x.shape)
    if self.noise == "masking":
      return jnp.where(jax.random.bernoulli(rng, level, x.shape), 0.0, x)
    if self.noise == "salt_pepper":
      hit_rng, val_rng = jax.random.split(rng)
      hit = jax.random.bernoulli(hit_rng, level, x.shape)
      return jnp.where(hit, jax.random.bernoulli(val_rng, 0.5, x.shape).astype(x.dtype), x)
    return x

  def _per_example_error(self, out, x):
    if self.reconstruction == "bce":
      err = -_layers.bernoulli_log_prob(x, out)
    else:
      err = jnp.square(jax.nn.sigmoid(out) - x)
    return jnp.sum(err, axis=(1, 2, 3))

  def _forward(self, variables, x):
    params = {"params": variables["params"]["model"]}
    code = self.net.apply(params, x, method=_AENet.encode)
    return code, self.net.apply(params, code, method=_AENet.decode)

  def loss(self, player, variables, batch, rng, step):
    x = batch["image"]
    code, out = self._forward(variables, self.corrupt(x, rng))
    err = self._per_example_error(out, x)
    stats = variables["code_stats"]
    c = jax.lax.stop_gradient(code)
    # The first batch sets the moments; later ones move them with the momentum.
    m = jnp.where(stats["count"] > 0, self.code_momentum, 0.0)
    new_stats = {"mean": m * stats["mean"] + (1 - m) * jnp.mean(c, axis=0),
                 "second": m * stats["second"] + (1 - m) * (c.T @ c) / c.shape[0],
                 "count": stats["count"] + 1}
    return jnp.mean(err), {"recon": jnp.mean(err)}, {"code_stats": new_stats}

  def reconstruct(self, variables, batch, rng=None):
    """Reconstructions (B, H, W, C) in [0, 1] of the clean inputs."""
    _, out = self._forward(variables, batch["image"])
    return jax.nn.sigmoid(out)

  def anomaly_score(self, variables, batch, rng=None):
    """Reconstruction error per example (nats for 'bce', squared error for 'mse'), (B,)."""
    _, out = self._forward(variables, batch["image"])
    return self._per_example_error(out, batch["image"])

  def eval_metrics(self, variables, batch, rng, **estimator):
    _, out = self._forward(variables, batch["image"])
    mse = jnp.sum(jnp.square(jax.nn.sigmoid(out) - batch["image"]), axis=(1, 2, 3))
    return {"recon": self._per_example_error(out, batch["image"]), "sq_error": mse}

  def latent_prior(self, variables):
    """``(rng, num) -> codes (num, latent_dim)``: draws from N(mean, cov) of the training codes (their
    moments are in the variables; PPL walks this distribution)."""
    stats = variables["code_stats"]
    cov = stats["second"] - jnp.outer(stats["mean"], stats["mean"])
    chol = jnp.linalg.cholesky(cov + 1e-5 * jnp.eye(self.latent_dim))
    return lambda rng, num: stats["mean"][None] + jax.random.normal(rng, (num, self.latent_dim)) @ chol.T

  def decode(self, variables, z):
    """Codes (B, latent_dim) -> decoder means (B, H, W, C) in [0, 1]."""
    return jax.nn.sigmoid(self.net.apply({"params": variables["params"]["model"]}, z, method=_AENet.decode))

  def sample(self, variables, rng, num):
    """Decodes codes drawn from N(mean, cov) of the training codes: (num, H, W, C) in [0, 1]."""
    return self.decode(variables, self.latent_prior(variables)(rng, num))
