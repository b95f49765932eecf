"""DCGAN (Radford, Metz & Chintala 2015): all-convolutional generator and discriminator with batch norm.

The paper's guidelines (Section 3): strided convolutions instead of pooling (fractionally-strided in G),
batch norm in both networks except G's output layer and D's input layer, no fully connected hidden layers
(G's first layer projects z and reshapes it; D's last flattens into one output), ReLU in G with tanh at
the output, LeakyReLU (slope 0.2) in D; weights from N(0, 0.02^2); Adam at 2e-4 with beta1 = 0.5.

Sizes: G projects z to (H / 2^n, W / 2^n, g_features[0]) and doubles the resolution n =
len(g_features) times through stride-2 transposed convolutions to g_features[1:] and then the image's
channels; D halves it len(d_features) times. 64x64 (n = 4: 4x4 -> 64x64), 32x32 (n = 3) and 28x28
(n = 2: 7x7 -> 28x28) work directly; ``net_shape=(32, 32, 1)`` instead pads 28x28 digits to 32x32
(see :mod:`zoo.models.gan`).

Batch norm: statistics of the batch in training, running averages (the ``batch_stats`` collection,
non-trainable state in the shared step and the checkpoint) in ``sample``, ``critic`` and evaluation. D
normalises its real and its fake batch separately (two passes, as two minibatches; the running averages
see both); G's statistics are updated in G's step only, D's in D's step only. Convolutions followed by
batch norm have no bias (it would be cancelled; with Adam its numerically-zero gradients would make it
drift by noise).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from zoo.errors import ConfigError
from zoo.models import _layers
from zoo.models.gan import Adversarial, normal_init
from zoo.registry import register


def _bn(momentum: float, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(momentum=momentum, epsilon=1e-5, name=name)


class _Generator(nn.Module):
  features: tuple[int, ...]
  out_shape: tuple[int, int, int]
  kernel: int
  init_std: float
  momentum: float

  @nn.compact
  def __call__(self, z, train: bool = False):
    init = normal_init(self.init_std)
    n = len(self.features)
    h0, w0 = self.out_shape[0] >> n, self.out_shape[1] >> n
    x = nn.Dense(h0 * w0 * self.features[0], use_bias=False, kernel_init=init, name="project")(z)
    x = x.reshape(z.shape[0], h0, w0, self.features[0])
    x = nn.relu(_bn(self.momentum, "bn_0")(x, use_running_average=not train))
    k = (self.kernel, self.kernel)
    for i, f in enumerate(self.features[1:]):
      x = _layers.ConvTranspose(f, k, strides=(2, 2), padding="SAME", use_bias=False, kernel_init=init,
                                name=f"deconv_{i}")(x)
      x = nn.relu(_bn(self.momentum, f"bn_{i + 1}")(x, use_running_average=not train))
    x = _layers.ConvTranspose(self.out_shape[2], k, strides=(2, 2), padding="SAME", kernel_init=init,
                              name=f"deconv_{n - 1}")(x)
    return jnp.tanh(x)


class _Discriminator(nn.Module):
  features: tuple[int, ...]
  kernel: int
  init_std: float
  momentum: float

  @nn.compact
  def __call__(self, x, train: bool = False):
    init = normal_init(self.init_std)
    k = (self.kernel, self.kernel)
    for i, f in enumerate(self.features):
      x = _layers.Conv(f, k, strides=(2, 2), padding="SAME", use_bias=i == 0, kernel_init=init,
                       name=f"conv_{i}")(x)
      if i > 0:
        x = _bn(self.momentum, f"bn_{i}")(x, use_running_average=not train)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(1, kernel_init=init, name="out")(x)[:, 0]


@register("dcgan")
@dataclasses.dataclass(frozen=True)
class DCGAN(Adversarial):
  """Deep convolutional GAN (Radford et al. 2015) on the shared two-player step.

  Attributes:
    g_features: channels of G's projection and of its hidden transposed convolutions; their number is
      the number of resolution doublings.
    d_features: channels of D's stride-2 convolutions (batch norm on all but the first).
    kernel_size: of every (transposed) convolution (4 or 5 are usual).
    init_std: standard deviation of the N(0, std^2) initial weights.
    bn_momentum: decay of batch norm's running averages (0.9 is PyTorch's momentum 0.1).
  """
  latent_dim: int = 100
  latent_dist: str = "uniform"
  g_features: tuple[int, ...] = (256, 128, 64)
  d_features: tuple[int, ...] = (64, 128, 256)
  kernel_size: int = 4
  init_std: float = 0.02
  bn_momentum: float = 0.9

  def validate(self):
    super().validate()
    if not self.g_features or not self.d_features or min(*self.g_features, *self.d_features) < 1:
      raise ConfigError("model.g_features and model.d_features must be non-empty positive channel counts")
    if self.kernel_size < 1 or self.init_std <= 0 or not 0 < self.bn_momentum < 1:
      raise ConfigError("model.kernel_size >= 1, model.init_std > 0 and model.bn_momentum in (0, 1)")
    _layers.check_conv_shape(self.model_shape, len(self.g_features), "dcgan's generator (g_features)")
    _layers.check_conv_shape(self.model_shape, len(self.d_features), "dcgan's discriminator (d_features)")

  @property
  def generator(self):
    return _Generator(tuple(self.g_features), self.model_shape, int(self.kernel_size), float(self.init_std),
                      float(self.bn_momentum))

  @property
  def discriminator(self):
    return _Discriminator(tuple(self.d_features), int(self.kernel_size), float(self.init_std),
                          float(self.bn_momentum))
