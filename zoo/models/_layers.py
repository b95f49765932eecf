"""Pieces that several families share: activations, MLP and convolutional encoders and decoders."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ConfigError, nearest

# The zoo's convolution layers. Every convolutional family builds on these names, so that faster
# formulations for a backend (issue 7: CPU weight gradients as one matmul, transposed convolutions by
# phase decomposition) replace them here once, for all families, computing the same function.
Conv = nn.Conv
ConvTranspose = nn.ConvTranspose

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "softplus": nn.softplus,
    "elu": nn.elu,
    "gelu": nn.gelu,
    "leaky_relu": lambda x: nn.leaky_relu(x, 0.2),
    "swish": nn.swish,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ConfigError(f"unknown activation {name!r}{nearest(name, ACTIVATIONS)}; "
                      f"known: {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def check_conv_shape(image_shape: Sequence[int], num_strided: int, what: str) -> None:
  """A conv stack of ``num_strided`` stride-2 layers needs H and W divisible by 2**num_strided."""
  h, w = image_shape[:2]
  f = 2 ** num_strided
  if h % f or w % f:
    raise ConfigError(f"{what}: {num_strided} stride-2 layers need image height and width divisible "
                      f"by {f}; the data's images are {h}x{w}")


class MLP(nn.Module):
  """Dense layers with an activation between them (none after the last)."""
  features: Sequence[int]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    act = activation(self.activation)
    for i, f in enumerate(self.features):
      x = nn.Dense(f, name=f"dense_{i}")(x)
      if i < len(self.features) - 1:
        x = act(x)
    return x


class Encoder(nn.Module):
  """Images (B, H, W, C) -> vectors (B, out_dim).

  ``kind='mlp'``: flatten, then ``hidden`` dense layers. ``kind='conv'``: 4x4 stride-2 convolutions of
  ``conv_features`` channels, flatten, then ``hidden`` dense layers.
  """
  kind: str
  hidden: Sequence[int]
  conv_features: Sequence[int]
  activation: str
  out_dim: int

  @nn.compact
  def __call__(self, x):
    act = activation(self.activation)
    if self.kind == "conv":
      for i, f in enumerate(self.conv_features):
        x = act(Conv(f, (4, 4), strides=(2, 2), padding="SAME", name=f"conv_{i}")(x))
    x = x.reshape(x.shape[0], -1)
    for i, f in enumerate(self.hidden):
      x = act(nn.Dense(f, name=f"dense_{i}")(x))
    return nn.Dense(self.out_dim, name="out")(x)


class Decoder(nn.Module):
  """Vectors (B, L) -> per-pixel outputs (B, H, W, C * channels_per_pixel), the mirror of Encoder."""
  kind: str
  hidden: Sequence[int]
  conv_features: Sequence[int]
  activation: str
  image_shape: Sequence[int]
  channels_per_pixel: int = 1

  @nn.compact
  def __call__(self, z):
    act = activation(self.activation)
    h, w, c = self.image_shape
    out_c = c * self.channels_per_pixel
    x = z
    for i, f in enumerate(reversed(tuple(self.hidden))):
      x = act(nn.Dense(f, name=f"dense_{i}")(x))
    if self.kind == "conv":
      n = len(self.conv_features)
      feats = tuple(reversed(tuple(self.conv_features)))
      hs, ws = h // 2 ** n, w // 2 ** n
      x = act(nn.Dense(hs * ws * feats[0], name="project")(x)).reshape(z.shape[0], hs, ws, feats[0])
      outs = feats[1:] + (out_c,)
      for i, f in enumerate(outs):
        x = ConvTranspose(f, (4, 4), strides=(2, 2), padding="SAME", name=f"deconv_{i}")(x)
        if i < len(outs) - 1:
          x = act(x)
      return x
    x = nn.Dense(int(np.prod((h, w, out_c))), name="out")(x)
    return x.reshape(z.shape[0], h, w, out_c)


def feature_groups(num_features: int, channels: int, repeat: int = 1) -> np.ndarray:
  """The data channel (0 .. channels-1) that each of ``num_features`` features belongs to.

  Features are split into ``channels`` contiguous groups (PixelCNN's R, G, B groups); with ``repeat``
  r > 1, runs of r neighbouring features share a group (a gated layer's interleaved (tanh, sigmoid)
  pairs). With ``num_features == channels`` feature i is data channel i.
  """
  f = np.arange(num_features) // repeat
  return (f * channels) // max(num_features // repeat, 1)


def causal_mask(kernel_size: Sequence[int], in_groups: np.ndarray, out_groups: np.ndarray,
                mask_type: str, center: Sequence[int] | None = None) -> np.ndarray:
  """The (kh, kw, in, out) 0/1 mask of a PixelCNN convolution in raster order.

  Taps in rows above the centre and to its left in the centre row are open; taps after it are closed;
  at the centre tap an output feature of group g sees input groups < g (mask 'A', the first layer: a
  value never sees itself) or <= g (mask 'B', every later layer). ``center`` defaults to the middle of
  the kernel; a kernel whose centre is its last row or column (Gated PixelCNN's stacks) names it.
  """
  if mask_type not in ("A", "B"):
    raise ConfigError(f"mask type must be 'A' or 'B', got {mask_type!r}")
  kh, kw = kernel_size
  ch, cw = center if center is not None else (kh // 2, kw // 2)
  rows = np.arange(kh)[:, None]
  cols = np.arange(kw)[None, :]
  spatial = (rows < ch) | ((rows == ch) & (cols < cw))
  g_in, g_out = np.asarray(in_groups)[:, None], np.asarray(out_groups)[None, :]
  at_center = (g_in < g_out) if mask_type == "A" else (g_in <= g_out)
  m = np.broadcast_to(spatial[:, :, None, None], (kh, kw, len(g_in), g_out.shape[1])).astype(np.float32)
  m = m.copy()
  m[ch, cw] = at_center.astype(np.float32)
  return m


def _native_conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_tap_grad(x, kernel, padding, taps):
  return _native_conv(x, kernel, padding)


def _conv_tap_grad_fwd(x, kernel, padding, taps):
  return _native_conv(x, kernel, padding), (x, kernel)


def _conv_tap_grad_bwd(padding, taps, residuals, dy):
  """XLA's input gradient; the weight gradient as one (C_in, N) @ (N, C_out) matmul per open tap."""
  x, kernel = residuals
  dx = jax.vjp(lambda x: _native_conv(x, kernel, padding), x)[1](dy)[0]
  kh, kw, c_in, c_out = kernel.shape
  h, w = dy.shape[1:3]
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  dy2 = dy.reshape(-1, c_out)
  zero = jnp.zeros((c_in, c_out), kernel.dtype)
  rows = []
  for i in range(kh):
    row = []
    for j in range(kw):
      if (i, j) in taps:
        row.append(jnp.dot(xp[:, i:i + h, j:j + w, :].reshape(-1, c_in).T, dy2))
      else:
        row.append(zero)
    rows.append(jnp.stack(row))
  return dx, jnp.stack(rows).astype(kernel.dtype)


_conv_tap_grad.defvjp(_conv_tap_grad_fwd, _conv_tap_grad_bwd)


def conv2d(x, kernel, padding, mask: np.ndarray | None = None):
  """A stride-1 NHWC/HWIO convolution, ``lax.conv_general_dilated``'s function exactly.

  On the CPU backend its weight gradient is a matmul per kernel tap (skipping the taps that ``mask``, a
  (kh, kw, ...) 0/1 array, closes: their gradient is zero), which XLA:CPU runs about 8x faster than its
  own weight gradient of a convolution (issue 7); the input gradient is XLA's. On GPU and TPU it is
  XLA's convolution, forward and backward, unchanged.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), already masked if it is masked.
    padding: ((top, bottom), (left, right)).
    mask: the kernel's mask, for the taps it closes.
  """
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  if jax.default_backend() != "cpu":
    return _native_conv(x, kernel, padding)
  kh, kw = kernel.shape[:2]
  if mask is None:
    taps = tuple((i, j) for i in range(kh) for j in range(kw))
  else:
    open_ = np.asarray(mask).reshape(kh, kw, -1).any(axis=-1)
    taps = tuple((i, j) for i in range(kh) for j in range(kw) if open_[i, j])
  return _conv_tap_grad(x, kernel, padding, taps)


class MaskedConv(nn.Module):
  """A PixelCNN masked convolution ('SAME' spatial size, stride 1): the kernel times ``causal_mask``.

  Attributes:
    features: output features.
    kernel_size: (kh, kw), odd.
    mask_type: 'A' (first layer) or 'B'.
    channels: data channels C; features are split into C groups for the within-pixel channel order.
    in_repeat, out_repeat: ``feature_groups`` repeats of the input and output features.
  """
  features: int
  kernel_size: Sequence[int]
  mask_type: str = "B"
  channels: int = 1
  in_repeat: int = 1
  out_repeat: int = 1
  use_bias: bool = True

  def mask(self, in_features: int) -> np.ndarray:
    return causal_mask(self.kernel_size, feature_groups(in_features, self.channels, self.in_repeat),
                       feature_groups(self.features, self.channels, self.out_repeat), self.mask_type)

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
    mask = self.mask(x.shape[-1])
    y = conv2d(x, kernel * jnp.asarray(mask), ((kh // 2, kh // 2), (kw // 2, kw // 2)), mask)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))[None, None, None, :]
    return y


def gaussian_log_prob(x, mean, log_std):
  """Elementwise log N(x; mean, exp(log_std)^2)."""
  return -0.5 * jnp.square((x - mean) * jnp.exp(-log_std)) - log_std - 0.5 * np.log(2 * np.pi)


def bernoulli_log_prob(x, logits):
  """Elementwise log Bernoulli(x; sigmoid(logits)) for x in [0, 1] (stable for any logits).

  x log s(l) + (1 - x) log s(-l) = x l - softplus(l): one transcendental per pixel instead of two,
  which is most of the cost of an IWAE-5000 evaluation.
  """
  return x * logits - jax.nn.softplus(logits)
