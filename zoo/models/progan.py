"""Progressive GAN (Karras, Aila, Laine & Lehtinen 2017): growing resolution with a smooth fade-in.

Training starts at 4x4 and doubles the resolution of both networks level by level (Section 2). A level
is a training *stage* of the shared step: the step is traced once per level, and the stage follows from
the global step (``stage_steps``), which the checkpoint holds. Within level l >= 1 the new layers fade in
over ``fade_steps`` steps with

    alpha = clip((step - first step of level l) / fade_steps, 0, 1),

a function of the step computed inside the loss (so a run resumed mid-fade continues exactly), then the
level trains ``stable_steps`` more steps at alpha = 1. The alpha of the last step taken is also written
to the non-trainable collection ``fade`` (``{"alpha": scalar}``) so that sampling and evaluation,
which have no step, use the same blend; it is in the checkpoint with the state.

During a fade (Figure 2): G's output is ``(1 - alpha) * upsample(toRGB_{l-1}(h_{l-1})) + alpha *
toRGB_l(h_l)``; D's input path is ``(1 - alpha) * fromRGB_{l-1}(downsample(x)) + alpha *
block_l(fromRGB_l(x))``; the real images are downscaled to the level's resolution (2x2 box filter) and
blended between it and its half resolution in the same way. At alpha = 0 the networks are exactly those
of level l - 1 (upsampled), at alpha = 1 exactly the new ones.

Other features (Sections 3, 4 and Appendix A.1 of the paper): equalized learning rate (weights from
N(0, 1) scaled at run time by He's constant sqrt(2 / fan_in); the toRGB layers use gain 1); pixelwise
feature normalisation in G after every convolution (and of the latent, so z lies on a sphere); the
minibatch standard deviation as an extra feature map at D's 4x4 block (over groups of ``mbstd_group``
examples; 0 takes the whole minibatch as in the paper, groups make it independent of the batch size);
LeakyReLU 0.2; the WGAN-GP loss with lambda = 10 and the drift term 0.001 E[D(x)^2]; n_critic = 1; Adam
(1e-3, beta1 0, beta2 0.99) and an exponential moving average of G's weights (``config.ema =
{"generator": 0.999}``), which the trainer samples and evaluates with.

G (Table 2): z -> dense to 4x4xf_0 -> conv 3x3; then per level: upsample (nearest) -> conv 3x3 -> conv
3x3; toRGB 1x1 at each level. D mirrors it: fromRGB 1x1; per level: conv 3x3 -> conv 3x3 -> 2x2 average
pool; at 4x4: minibatch stddev -> conv 3x3 -> dense (the 4x4 'valid' conv) -> dense to 1. All
convolutions go through ``_layers.Conv``; the scale of the equalized learning rate multiplies their
outputs, which is the same function and gradient as scaling the kernel.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.errors import ConfigError
from zoo.models import _layers
from zoo.models.gan import Adversarial, normal_init
from zoo.registry import register

Array = jax.Array
SQRT2 = math.sqrt(2.0)


def pixel_norm(x: Array, eps: float = 1e-8) -> Array:
  """Each feature vector (last axis) scaled to unit root-mean-square."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def upsample(x: Array, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling of (B, H, W, C) by ``factor``."""
  if factor == 1:
    return x
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def downsample(x: Array, factor: int = 2) -> Array:
  """Box-filter (average-pool) downsampling of (B, H, W, C) by ``factor``."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  return jnp.mean(x.reshape(b, h // factor, factor, w // factor, factor, c), axis=(2, 4))


def minibatch_stddev(x: Array, group: int) -> Array:
  """Appends the mean over features and positions of the across-group standard deviation (B, H, W, 1).

  Examples i and i + B/G, i + 2B/G, ... form a group of G = ``group`` (0: the whole batch; a G that does
  not divide B falls back to gcd(B, G)).
  """
  b, h, w, c = x.shape
  g = b if group <= 0 else math.gcd(b, group)
  y = x.reshape(g, b // g, h, w, c)
  y = jnp.sqrt(jnp.mean(jnp.square(y - jnp.mean(y, axis=0, keepdims=True)), axis=0) + 1e-8)
  y = jnp.mean(y, axis=(1, 2, 3))                                       # (B / G,)
  y = jnp.tile(y, g)                                                    # example i -> its group's value
  return jnp.concatenate([x, jnp.broadcast_to(y[:, None, None, None], (b, h, w, 1))], axis=-1)


class EqDense(nn.Module):
  """Dense layer with an equalized learning rate: N(0, 1) weights times gain / sqrt(fan_in)."""
  features: int
  gain: float = SQRT2

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", normal_init(1.0), (x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return (x @ w) * (self.gain / math.sqrt(x.shape[-1])) + b.reshape((1,) * (x.ndim - 1) + (-1,))


class EqConv(nn.Module):
  """Convolution ('SAME', stride 1) with an equalized learning rate, through ``_layers.Conv``."""
  features: int
  kernel: int
  gain: float = SQRT2

  @nn.compact
  def __call__(self, x):
    y = _layers.Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False,
                     kernel_init=normal_init(1.0), name="conv")(x)
    scale = self.gain / math.sqrt(x.shape[-1] * self.kernel * self.kernel)
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    return y * scale + b.reshape(1, 1, 1, -1)


def _lrelu(x):
  return nn.leaky_relu(x, 0.2)


def _blend(old: Array, new: Array, alpha: Array) -> Array:
  """(1 - alpha) old + alpha new: exactly old at alpha 0 and exactly new at alpha 1."""
  return (1.0 - alpha) * old + alpha * new


class _Generator(nn.Module):
  features: tuple[int, ...]
  channels: int

  def setup(self):
    f = self.features
    self.first = EqDense(16 * f[0])
    self.first_conv = EqConv(f[0], 3)
    self.conv_a = [EqConv(f[l], 3) for l in range(1, len(f))]
    self.conv_b = [EqConv(f[l], 3) for l in range(1, len(f))]
    self.to_rgb = [EqConv(self.channels, 1, gain=1.0) for _ in f]

  def _base(self, z):
    h = _lrelu(self.first(pixel_norm(z))).reshape(z.shape[0], 4, 4, self.features[0])
    return pixel_norm(_lrelu(self.first_conv(pixel_norm(h))))

  def _grow(self, l, h):
    h = upsample(h)
    h = pixel_norm(_lrelu(self.conv_a[l - 1](h)))
    return pixel_norm(_lrelu(self.conv_b[l - 1](h)))

  def __call__(self, z, train: bool = False, level: int = 0, alpha=1.0):
    """Images (B, 4 * 2^level, ..., channels) at ``level``, the new toRGB blended in by ``alpha``."""
    h, prev = self._base(z), None
    for l in range(1, level + 1):
      prev, h = h, self._grow(l, h)
    out = self.to_rgb[level](h)
    if level == 0:
      return out
    return _blend(upsample(self.to_rgb[level - 1](prev)), out, alpha)

  def init_all(self, z, train: bool = False, **unused):
    """Touches every level's layers (for ``init``); returns the last level's images."""
    h = self._base(z)
    out = self.to_rgb[0](h)
    for l in range(1, len(self.features)):
      h = self._grow(l, h)
      out = self.to_rgb[l](h)
    return out


class _Discriminator(nn.Module):
  features: tuple[int, ...]
  mbstd_group: int

  def setup(self):
    f = self.features
    self.from_rgb = [EqConv(f[l], 1) for l in range(len(f))]
    self.conv_a = [EqConv(f[l], 3) for l in range(1, len(f))]
    self.conv_b = [EqConv(f[l - 1], 3) for l in range(1, len(f))]
    self.final_conv = EqConv(f[0], 3)
    self.final_dense = EqDense(f[0])
    self.out = EqDense(1, gain=1.0)

  def _shrink(self, l, h):
    h = _lrelu(self.conv_a[l - 1](h))
    return downsample(_lrelu(self.conv_b[l - 1](h)))

  def _head(self, h):
    h = minibatch_stddev(h, self.mbstd_group)
    h = _lrelu(self.final_conv(h))
    h = _lrelu(self.final_dense(h.reshape(h.shape[0], -1)))
    return self.out(h)[:, 0]

  def __call__(self, x, train: bool = False, level: int = 0, alpha=1.0):
    """Outputs (B,) for images x (B, 4 * 2^level, ...) at ``level``, the new fromRGB blended by ``alpha``."""
    h = _lrelu(self.from_rgb[level](x))
    if level > 0:
      h = _blend(_lrelu(self.from_rgb[level - 1](downsample(x))), self._shrink(level, h), alpha)
      for l in range(level - 1, 0, -1):
        h = self._shrink(l, h)
    return self._head(h)

  def init_all(self, x, train: bool = False, **unused):
    """Touches every level's layers (for ``init``); x is at the last level's resolution."""
    top = len(self.features) - 1
    for l in range(top):
      self.from_rgb[l](downsample(x, 2 ** (top - l)))
    return self(x, level=top, alpha=0.5)


@register("progan")
@dataclasses.dataclass(frozen=True)
class ProGAN(Adversarial):
  """Progressive GAN: levels from 4x4 to the networks' resolution, each a stage of the shared step.

  Attributes:
    features: channels at each level, 4x4 first; their number fixes the levels: the networks' size
      (``net_shape`` or the data's) must be 4 * 2^(len(features) - 1).
    fade_steps: steps of the fade-in at the start of each level after the first.
    stable_steps: steps at alpha = 1 of each level (the last level trains to the end of the run).
    mbstd_group: group size of the minibatch standard deviation (0: the whole minibatch).
  """
  latent_dim: int = 512
  objective: str = "wgan_gp"
  gp_weight: float = 10.0
  drift_weight: float = 0.001
  features: tuple[int, ...] = (512, 512, 512, 512)
  fade_steps: int = 50_000
  stable_steps: int = 50_000
  mbstd_group: int = 4

  def validate(self):
    super().validate()
    if not self.features or min(self.features) < 1:
      raise ConfigError("model.features must be positive channel counts, one per level")
    if self.fade_steps < 0 or self.stable_steps < 1:
      raise ConfigError("model.fade_steps must be >= 0 and model.stable_steps >= 1")
    h, w, _ = self.model_shape
    want = 4 * 2 ** (len(self.features) - 1)
    if (h, w) != (want, want):
      raise ConfigError(f"progan with {len(self.features)} levels makes {want}x{want} images, but the "
                        f"networks' size is {h}x{w}: set model.features to one entry per level from 4x4, "
                        f"or model.net_shape (which pads the data)")

  # -- levels

  @property
  def num_levels(self) -> int:
    return len(self.features)

  @property
  def level(self) -> int:
    """The resolution level of this stage: 0 is 4x4."""
    return min(int(self.stage), self.num_levels - 1)

  @property
  def stage_steps(self) -> tuple[int, ...]:
    per_level = int(self.fade_steps) + int(self.stable_steps)
    return (int(self.stable_steps),) + (per_level,) * (self.num_levels - 2) if self.num_levels > 1 else ()

  def level_start(self, level: int) -> int:
    """The first step of ``level``."""
    return sum(self.stage_steps[:level])

  @property
  def whole_model_step(self) -> int:
    """The last level's first step after its fade-in (alpha 1)."""
    start = self.level_start(self.num_levels - 1)
    return start + int(self.fade_steps) if self.num_levels > 1 else start

  def alpha_at(self, step: Array) -> Array:
    """The fade-in of this level's new layers at ``step``, a float32 scalar in [0, 1]."""
    if self.level == 0 or self.fade_steps == 0:
      return jnp.ones((), jnp.float32)
    t = (jnp.asarray(step, jnp.float32) - self.level_start(self.level)) / float(self.fade_steps)
    return jnp.clip(t, 0.0, 1.0)

  # -- hooks of the Adversarial base

  @property
  def generator(self):
    return _Generator(tuple(self.features), self.model_shape[2])

  @property
  def discriminator(self):
    return _Discriminator(tuple(self.features), int(self.mbstd_group))

  def init_player(self, player, rng, x):
    net = self.generator if player == "generator" else self.discriminator
    return dict(net.init(rng, x, method="init_all"))

  def net_kwargs(self, variables, step):
    if step is not None:
      alpha = self.alpha_at(step)
    elif variables is not None and "fade" in variables:
      alpha = variables["fade"]["alpha"]
    else:
      alpha = jnp.ones((), jnp.float32)
    return {"level": self.level, "alpha": alpha}

  def real_input(self, x, kwargs):
    level, alpha = kwargs["level"], kwargs["alpha"]
    x = downsample(x, 2 ** (self.num_levels - 1 - level))
    if level == 0:
      return x
    return _blend(upsample(downsample(x)), x, alpha)

  def to_full(self, x, kwargs):
    return upsample(x, 2 ** (self.num_levels - 1 - kwargs["level"]))

  def step_collections(self, variables, step):
    return {"fade": {"alpha": self.alpha_at(step)}}
