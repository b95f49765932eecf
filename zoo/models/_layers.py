"""Pieces that several families share: activations, MLP and convolutional encoders and decoders."""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax.linen.linear import canonicalize_padding, default_kernel_init
import jax
import jax.numpy as jnp
import numpy as np

from zoo import convgrad, kernels, onednn
from zoo.errors import ConfigError, nearest

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


class Dropout(nn.Module):
  """Inverted dropout (units zeroed with probability ``rate``, the rest scaled by 1/keep) with 16 random
  bits per unit: each 32-bit draw serves two units, halving the random numbers ``nn.Dropout`` draws.

  Why: XLA:CPU makes random bits at about 60 M/s (threefry and rbg alike), so ``nn.Dropout`` on the
  PixelCNN's ten 64x28x28x64 residual branches cost 36% of its training step on 2 cores (49.0 -> 31.3
  examples/s); this mask takes 24 ms per branch instead of 60. The keep probability is quantised to
  1/65536 (round((1 - rate) * 65536) / 65536) and the scale is its exact inverse, so the expectation is
  unchanged. Draws from the module's ``dropout`` stream, as ``nn.Dropout`` does.
  """
  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0:
      return x
    keep = round((1.0 - self.rate) * 65536)
    n = x.size
    bits = jax.random.bits(self.make_rng("dropout"), ((n + 1) // 2,), jnp.uint32)
    u = jnp.stack([bits & 0xFFFF, bits >> 16], axis=-1).reshape(-1)[:n].reshape(x.shape)
    return jnp.where(u < keep, x * (65536.0 / max(keep, 1)), jnp.zeros_like(x))


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


# The zoo's convolutions (issue 7). XLA:CPU runs the weight gradient of a stride-1 convolution several
# times below its matmul speed and a transposed convolution's 15-50x below, and its stride-2 input gradients
# and transposed convolutions somewhat below; on the CPU backend conv2d and conv_transpose2d, and the Conv
# and ConvTranspose modules on them, compute the same functions with weight gradients as tap matmuls (with
# the input gradient from the same copies of dy where that pays) and, where that measures faster,
# transposed convolutions by phase decomposition. Every convolutional family
# builds on these, so a faster formulation replaces them here once, for all families. On GPU and TPU they
# are XLA's, unchanged. experiments/benchmarks/conv_layers.py times both paths per layer shape.
_DN = ("NHWC", "HWIO", "NHWC")
# Below this many output channels a phase's stride-1 convolution is a thin matmul that XLA:CPU runs slowly,
# and XLA's own strided or transposed convolution is faster (a DCGAN's 3-channel first and last layers).
_PHASE_MIN_FEATURES = 16
# Up to this many channels on the sliced side, the weight gradient's per-tap matmuls are thin and slow;
# they become one matmul over the taps' slices concatenated (4x faster for 3 channels).
_CONCAT_MAX_FEATURES = 16
# A stride-1 or transposed convolution into at most this many times its input channels takes both
# gradients from one matrix of dy's shifted copies (``_grads_from_dy_copies``); into more, that copy is
# far the larger and XLA's input gradient beside x's copies is faster (the PixelCNN's 7x7 1 -> 64, whose
# copies of dy would be 24 x 64 channels per pixel). At 2 (not 1) the Gated PixelCNN's 64 -> 128 and the
# Row LSTM's input-to-state convolutions take it too: their steps 1.13x and 1.12x (ab_step.py, in one
# process, results/thresholds_ab_cpu2.jsonl).
_DY_COPIES_MAX_RATIO = 2
# ... and whose copies of dy fit in this many bytes (the PixelCNN's at batch 256: 256 MB); larger ones (a
# high-resolution Progressive GAN layer) take the per-tap path, which need not hold all the copies at once.
_DY_COPIES_MAX_BYTES = 1 << 30
# Traced under ``zoo.kernels.xla_own_kernels()`` (zoo.step's train step on CPU, compiled with XLA's own
# kernels), convolutions take XLA's own gradients where those are the faster there: a stride-1 convolution
# XLA's autodiff of its open box (``_open_box_conv``, no custom VJP; against dy's copies the Gated PixelCNN
# step 1.32x, the PixelCNN's 1.16x at batch 64 and 1.19x at 256), a strided one XLA's weight gradient beside
# the phases' input gradient, and a transposed one XLA's strided convolutions for both gradients
# (``_transposed_weight_grad``; with the strided ones, the DCGAN step 1.10-1.27x at batch 64 and 256 against
# the custom VJPs). ab_step.py, in one process, results/thresholds_ab_cpu2.jsonl. Elsewhere (XLA's default
# YNNPACK kernels, whose convolution weight gradients are 10-30x slower) the custom VJPs stay.
# _XLA_OWN_STRIDED_GRADIENTS = 0 keeps the custom VJPs of the strided and transposed convolutions there too
# (the A/B: ab_step.py --threshold _XLA_OWN_STRIDED_GRADIENTS --values 0 1).
_XLA_OWN_STRIDED_GRADIENTS = 1
# Under XLA's own kernels a stride-1 convolution's weight gradient is XLA's convolution of x transposed to
# (C_in, H, W, B), and XLA fuses x's elementwise producer (the PixelCNN's relu(h)) into that transpose: it
# recomputes the relu in a gathering loop 2.7x slower than the plain transpose of x, which is already in
# memory for the forward convolution (6.8 against 2.5 ms, batch 64, 28x28x64; experiments/native). At 1 the
# layer reads x through ``_materialized``, which XLA cannot fuse through: the transpose reads x as it is.
# Against 0, in one process (ab_step.py --threshold _MATERIALIZE_CONV_INPUT --values 0 1, 7-9 rounds,
# results/thresholds_ab_cpu2.jsonl): the PixelCNN step 1.13x and 1.08x at batch 64 and 256, the Gated
# PixelCNN's 1.05x, the Row LSTM's 0.99x and the MNIST Progressive GAN's 0.98x (noise); the native transpose
# of experiments/native adds nothing on top (0.97x). The strided and transposed convolutions' inputs
# materialized too moved the DCGAN32 step 0.99x and 1.04x: not taken (stride 1 only).
_MATERIALIZE_CONV_INPUT = 1
# Traced under ``zoo.kernels.onednn_kernels()`` as well (the train step on one CPU device, where
# ``zoo.onednn.available()``; ``zoo.step.USE_ONEDNN``), a stride-1 convolution over at least this many
# pixels (batch x H x W) runs its forward pass as oneDNN's convolution over its open box (its gradients stay
# XLA's), and a 1x1 one into more than one channel as oneDNN matmuls, forward and backward. Each oneDNN call
# costs about 40 us more than XLA's own (10 us for a matmul), and small layers lost: the MNIST Progressive
# GAN's 4x4 level (batch 16, 256 pixels) 0.90x in two runs of 7 and 11 rounds, where the PixelCNN's layers
# (50,176 pixels at batch 64) gained (the README, issue 7).
_ONEDNN_MIN_PIXELS = 16384
# ... but a 1x1 convolution with one channel on either side is XLA's: into one, its product is a
# matrix-vector one; from one (ProGAN's from-RGB on MNIST), its input gradient is, and oneDNN's ran at 0.45x
# XLA's convolution (`conv_layers.py --families experiments/karras2017/progan_mnist.py --layers "1x1/1 1->"
# --step-options`, batch 64: 6.6 and 6.7 GFLOP/s at 16x16 and 32x32, 14.6 and 12.6 with XLA's dot; both
# gradients together 9.9 -> 14.0 and 9.9 -> 13.1)
_ONEDNN_1X1_MIN_IN_CHANNELS = 2
# Where a layer's forward pass is oneDNN's convolution, its bias and a residual given to it (``conv2d``'s
# ``add``) are added inside that call (``zoo.onednn.conv``) rather than by XLA after it.
_ONEDNN_FUSED_ADDS = 1
# ... and a transposed convolution's phases (``_phase_conv``) are oneDNN convolutions, one per phase of
# exactly its output, where the phases' input has at least this many pixels: XLA's one convolution of all
# phases computes a row and a column more than any phase needs (5x5 for 4x4: 1.56x the multiplications).
# Each phase layer alone, in one process (batch 64 and 256, 7 rounds): the DCGAN's 4x4x256 -> 8x8x128
# 1.38x and 1.50x, 8x8x128 -> 16x16x64 1.17x and 1.13x; XLA's convolutions per phase 1.35x, 0.55x, 1.00x
# and 1.09x. (Strided forward convolutions in oneDNN were mixed, 0.62-1.19x: not taken.)
_ONEDNN_PHASES = 1
_ONEDNN_PHASE_MIN_PIXELS = 1024
# Traced under ``zoo.kernels.native_kernels()`` too (the train step on one CPU device), the zoo's own kernels
# (``zoo.convgrad``: outer products or dot products of blocks held in registers; no copies per tap) take
# weight gradients wherever the side read as rows has a multiple of 16 channels: every stride-1
# convolution's (the PixelCNN's 3x3 mask B 168 against XLA's 63-93 GFLOP/s, its 7x7 mask A 148-168 against
# 22-49), and a strided or transposed one's where the tapped side (x; for a transposed one dy) has fewer
# than this many channels (the DCGAN's 3-channel layers, 139-183 against 5-70; the VAE's 32-channel ones,
# ``_NATIVE_STRIDED_MIN_PIXELS``). With 64 or more (16 until 2026-11-28), XLA's own weight gradient is as fast
# or faster (the DCGAN's 8x8x128 -> 4x4x256 239 against 158, 4x4x256 -> 8x8x128 223
# against 126; the DCGAN32 step 0.94x at batch 64 with the kernel on every layer). Those 3-channel layers'
# forward pass (a strided convolution) and input gradient (a transposed one) are its convolution of few
# input channels (110-157 against 62-109); the transposed one's forward pass and the strided one's input
# gradient into 3 channels its transposed kernel for thin outputs (104-174 against 33-65, 110-159 against 35-61),
# and a stride-1 convolution from at most 4 channels takes its input gradient from its thin kernel. In one
# process (ab_step.py --threshold USE_NATIVE_CONV_GRADS, 7 rounds, results/thresholds_ab_cpu2.jsonl): the
# PixelCNN28 step 1.13x and 1.17x at batch 64 and 256, the DCGAN32 step 1.00x and 1.02x.
_NATIVE_STRIDED_MAX_TAPPED = 64
# ... and a stride-1 convolution from at most 4 channels (``_thin_input``) takes its forward pass from the
# kernel of few input channels, its bias added in the kernel's sums (``_native_grad_forward``); 0: oneDNN's
# or XLA's over the open box, as for the other stride-1 convolutions.
_NATIVE_THIN_STRIDE1_FORWARD = 1
# ... and only over at least this many pixels (batch x H x W of the side read as rows): each call starts its
# threads and sums their copies of the result (tens of microseconds), and the MNIST Progressive GAN's first
# level (4x4, batch 16: 256 pixels) ran 0.89x with the kernels (ab_step.py, 7 rounds), where the PixelCNN's
# (50,176 pixels at batch 64) and the DCGAN's (16,384) gain. oneDNN's floor is the same (_ONEDNN_MIN_PIXELS).
_NATIVE_MIN_PIXELS = 16384
# ... but a strided or transposed convolution's from this many: the VAE's 4x4 stride-2 32 -> 64 and 64 -> 32
# (batch 100: 4,900 pixels, 321 MFLOP each) ran 1.57x and 1.62x XLA's own weight gradients with the kernel
# (in one process, 9 interleaved rounds; 74 and 79 against 46 and 47 GFLOP/s), where that level's cost is the
# output's threads' copies (a 3x3 128 -> 128's 147,456 sums over 256 pixels), not this one's (32,768 over 4,900).
_NATIVE_STRIDED_MIN_PIXELS = 4096
# ... and its forward pass (a strided convolution's; ``conv_taps``) and input gradient (a transposed one's)
# only where the tapped side has fewer channels than this; from more, those stay XLA's. From 32 channels the
# VAE's 32 -> 64 forward pass ran 0.77x XLA's in ``conv_taps`` (layer alone, 9 interleaved rounds).
_NATIVE_STRIDED_THIN_MAX = 16


# Where the caller compiles for CPU only (``zoo.kernels.cpu_only()``), ``_on_cpu`` traces the CPU formulation
# alone; 0: under ``lax.platform_dependent`` beside XLA's, as elsewhere (experiments/benchmarks/trace_step.py
# times the two).
_TRACE_CPU_ONLY = 1


def _on_cpu(fast, native, *args):
  """``fast(*args)`` where the computation runs on CPU, ``native(*args)`` elsewhere: chosen when lowering
  (``lax.platform_dependent``), or when tracing where the caller compiles for CPU only
  (``zoo.kernels.cpu_only()``: the train step on a CPU mesh). There ``native`` is not traced at all: JAX
  differentiates a ``platform_dependent`` through both of its branches (our CPU formulation's custom VJPs
  and XLA's convolution), so the train step's trace took 1.3-1.8x as long (the families' conv steps; the conv
  VAE's 0.3 s one 0.9x) and trace to compiled 1.0-1.4x (PixelCNN28 1.85 against 1.35 s, ProGAN MNIST's 32x32
  level 11.5 against 9.9), for the same program after XLA's optimizations (the same compiled HLO
  instructions; the conv VAE's with one constant placed elsewhere; experiments/benchmarks/trace_step.py)."""
  if _TRACE_CPU_ONLY and kernels.cpu_only_on():
    return fast(*args)
  return jax.lax.platform_dependent(*args, cpu=fast, default=native)


def _materialized(x, kernel):
  """x, through a conditional whose every branch is x (times 1): the same values, in the buffer x already
  has (XLA's copy insertion adds no copy, the branches simplify to their parameter), but a value that XLA
  cannot fuse x's producer into, as a fusion boundary. An optimization barrier would not do: XLA:CPU
  removes those before fusion. The branch index is data XLA cannot fold (whether the kernel's first entry is
  a NaN; every branch is the same, so the index changes nothing), taken from the kernel, not from x, so that
  a batch-sharded x needs no collective for it. Three branches, not two: this jaxlib keeps a two-way one
  too (JAX gives it an integer index), but a two-way conditional of cheap branches on a predicate is what
  XLA's conditional simplifier may turn into a select, which it would fuse through; a third branch costs
  nothing. JAX forwards a conditional of identity branches (removes it) before XLA sees it; ``x * 1`` it
  keeps. An empty x or kernel (no channels) is returned as it is."""
  if not x.size or not kernel.size:
    return x
  index = jnp.isnan(kernel.reshape(-1)[0]).astype(jnp.int32)
  return jax.lax.switch(index, [lambda x: x * jnp.ones((), x.dtype)] * 3, x)


def _native_conv(x, kernel, padding, strides=(1, 1)):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)


def _native_dilated_conv(x, kernel, strides, padding):
  """XLA's convolution of x dilated by ``strides``: ``lax.conv_transpose`` with explicit padding."""
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, strides, dimension_numbers=_DN)


def _all_taps(kernel_shape):
  return tuple((i, j) for i in range(kernel_shape[0]) for j in range(kernel_shape[1]))


def _stacked_taps(kernel, taps):
  """(kernel[i, j] for (i, j) in ``taps``) as one (T, C_in, C_out) array, in one op: the kernel's taps in
  raster order are rows of its (kh * kw, C_in, C_out) reshape, so ``taps`` that are a run of them, forward
  (all taps; a mask A's) or backward (a flipped kernel's), are a slice of it, and any others one gather; no
  taps, an empty array. Stacked one slice per tap, XLA ran T slices and a concatenation (T + 1 ops): D's
  first layer's forward pass (16 taps) took 1.04-1.21x as long as with the reshape in three comparisons in
  one process, more than the ~1.5 us per op that XLA:CPU's dispatch costs."""
  kh, kw = kernel.shape[:2]
  flat = kernel.reshape(kh * kw, *kernel.shape[2:])
  rows = [i * kw + j for i, j in taps]
  if not rows:
    return flat[:0]
  first, n = rows[0], len(rows)
  if rows == list(range(first, first + n)):
    return flat[first:first + n]
  if rows == list(range(first, first - n, -1)):
    return flat[first - n + 1:first + 1][::-1]
  return flat[np.asarray(rows)]


def _tap_slices(a, offsets, strides, size):
  """Per (oi, oj) in ``offsets``: a[:, oi + s_h * u, oj + s_w * v, :] for u < size[0], v < size[1] (zero
  outside a), as (N, C)."""
  if not offsets:
    return []
  pads = []
  for d in range(2):
    first = min(o[d] for o in offsets)
    last = max(o[d] for o in offsets) + strides[d] * (size[d] - 1)
    pads.append((max(0, -first), max(0, last - a.shape[1 + d] + 1)))
  a = jnp.pad(a, ((0, 0), *pads, (0, 0)))
  out = []
  for oi, oj in offsets:
    i, j = oi + pads[0][0], oj + pads[1][0]
    end = (a.shape[0], i + strides[0] * (size[0] - 1) + 1, j + strides[1] * (size[1] - 1) + 1, a.shape[3])
    out.append(jax.lax.slice(a, (0, i, j, 0), end, (1, *strides, 1)).reshape(-1, a.shape[3]))
  return out


def _tap_weight_grad(slices, other, taps, kernel_shape, sliced_input: bool):
  """A kernel's gradient from matmuls: tap t's is slices[t]^T @ other (a convolution: x's slices, dy) or
  other^T @ slices[t] (a transposed one: x, dy's slices); zero for the taps not listed."""
  c_in, c_out = kernel_shape[2:]
  if not taps:
    return jnp.zeros(kernel_shape, other.dtype)
  if slices[0].shape[1] <= _CONCAT_MAX_FEATURES:
    cat = jnp.concatenate(slices, axis=1)
    if sliced_input:
      grads = jnp.dot(cat.T, other).reshape(len(taps), c_in, c_out)
    else:
      grads = jnp.dot(other.T, cat).reshape(c_in, len(taps), c_out).transpose(1, 0, 2)
  else:
    grads = [jnp.dot(s.T, other) if sliced_input else jnp.dot(other.T, s) for s in slices]
  return _kernel_of_taps(grads, taps, kernel_shape)


def _kernel_of_taps(grads, taps, kernel_shape):
  """A (kh, kw, C_in, C_out) kernel holding grads[t] (a list, or one (T, C_in, C_out) array) at taps[t] and
  zeros at the taps not listed; of every tap in raster order, the array's reshape (no op)."""
  kh, kw, c_in, c_out = kernel_shape
  if tuple(taps) == _all_taps(kernel_shape):
    return (grads if isinstance(grads, jax.Array) else jnp.stack(grads)).reshape(kernel_shape)
  by_tap = dict(zip(taps, grads))
  zero = jnp.zeros((c_in, c_out), grads[0].dtype)
  return jnp.stack([jnp.stack([by_tap.get((i, j), zero) for j in range(kw)]) for i in range(kh)])


def _grads_from_dy_copies(x, kernel, dy, offsets, strides, taps):
  """dx and the kernel's gradient of a convolution in which x[u] meets dy[s * u + o_t] at tap t (per axis;
  dy zero outside), from one matrix of those copies of dy.

  With D the (N, T * C_out) matrix of dy's copies side by side, one per open tap, row u one pixel of x
  (``_tap_slices``), dx = D @ [kernel[t]^T over the taps] and the taps' weight gradients are x^T @ D: two
  well-shaped matmuls on the one copy, where XLA's input gradient and per-tap matmuls were one thin
  matmul per tap beside a convolution. A stride-1 convolution (padding lo) has o_t = lo - i; a transposed
  one (stride s, padding lo of the dilated input) o_t = lo - i at stride s. Measured on the 2-core CPU
  (huge pages, the PixelCNN's 3x3 mask B, 28x28x64 -> 64): both gradients 107 -> 66 ms at batch 64.
  Where dy has many more channels than x, D is far the larger copy and this does not pay
  (``_DY_COPIES_MAX_RATIO``).
  """
  c_in, c_out = kernel.shape[2:]
  cols = jnp.concatenate(_tap_slices(dy, offsets, strides, x.shape[1:3]), axis=1)
  k_t = _stacked_taps(kernel.swapaxes(2, 3), taps).reshape(len(taps) * c_out, c_in)
  dx = jnp.dot(cols, k_t).reshape(x.shape)
  grads = jnp.dot(x.reshape(-1, c_in).T, cols).reshape(c_in, len(taps), c_out).transpose(1, 0, 2)
  return dx.astype(x.dtype), _kernel_of_taps(grads, taps, kernel.shape).astype(kernel.dtype)


def _from_dy_copies(x, kernel, taps) -> bool:
  """Whether a stride-1 or transposed convolution takes its gradients from ``_grads_from_dy_copies``: dy
  has at most ``_DY_COPIES_MAX_RATIO`` times x's channels and the copies' matrix fits in
  ``_DY_COPIES_MAX_BYTES``."""
  c_in, c_out = kernel.shape[2:]
  size = math.prod(x.shape[:3]) * len(taps) * c_out * jnp.dtype(kernel.dtype).itemsize
  return bool(taps) and c_out <= _DY_COPIES_MAX_RATIO * c_in and size <= _DY_COPIES_MAX_BYTES


def _phases(n, k, s, lo, hi):
  """One spatial axis of a stride-1 convolution (kernel size k, padding (lo, hi)) of x (size n) dilated by s
  (x[u] at row s * u, s - 1 zero rows between): how it splits into s stride-1 convolutions of x.

  Output row o = s * a + p reads dilated row o + i - lo at tap i, a row of x only for the taps
  i = r + s * m with r = (lo - p) mod s, and then it is x[a + m - L] with L = (lo - p - r) / s (exact): phase
  p of the output is the stride-1 convolution of x padded by L before, with the taps r, r + s, ... Returns
  the output size, the rows each phase computes (ceil(out / s): the later phases may compute one row past
  the output, cropped after), and per phase (r, (L, R)) with R the padding after that gives that many rows;
  L or R may be negative (a crop).
  """
  out = (n - 1) * s + 1 + lo + hi - k + 1
  rows = -(-out // s)
  phases = []
  for p in range(s):
    r = (lo - p) % s
    left = (lo - p - r) // s
    phases.append((r, (left, rows + len(range(r, k, s)) - 1 - n - left)))
  return out, rows, phases


def _phase_conv(x, kernel, strides, padding, onednn_phases: bool = False):
  """``_native_dilated_conv`` as s_h * s_w stride-1 convolutions of x, one per output phase with the kernel
  taps of its parity (``_phases``), interleaved by depth-to-space: no multiplications by the dilation's
  zeros.

  With ``onednn_phases`` (``_use_onednn_phases``) each phase is its own oneDNN convolution of exactly its
  rows and columns, where no phase's padding is negative.

  Where every phase has as many taps as the others (a kernel size that the stride divides, as the DCGAN's
  4x4 at stride 2), the phases are one convolution: their sub-kernels side by side on the output channels,
  padded for the phase that reaches furthest each way, each phase cropping its own window of the output.
  That costs one extra output row and column at most (9x9 for 8x8) but XLA:CPU runs the one larger
  convolution faster than the s_h * s_w small ones (the DCGAN32 train step 6-7% faster).
  """
  b, h, w, _ = x.shape
  kh, kw, _, c_out = kernel.shape
  (sh, sw), (pad_h, pad_w) = strides, padding
  out_h, rows_h, phases_h = _phases(h, kh, sh, *pad_h)
  out_w, rows_w, phases_w = _phases(w, kw, sw, *pad_w)
  pairs = [(r, ph, c, pw) for r, ph in phases_h for c, pw in phases_w]
  subs = [kernel[r::sh, c::sw] for r, _, c, _ in pairs]
  if onednn_phases and all(sub.size for sub in subs) and min(min(*ph, *pw) for _, ph, _, pw in pairs) >= 0:
    ys = [onednn.conv(x, sub, (1, 1), (ph, pw)) for (_, ph, _, pw), sub in zip(pairs, subs)]
  elif len({sub.shape for sub in subs}) == 1 and subs[0].size:
    top, bottom = max(ph[0] for _, ph in phases_h), max(ph[1] for _, ph in phases_h)
    left, right = max(pw[0] for _, pw in phases_w), max(pw[1] for _, pw in phases_w)
    y = _cropping_conv(x, jnp.concatenate(subs, axis=3), ((top, bottom), (left, right)))
    ys = [y[:, top - ph[0]:top - ph[0] + rows_h, left - pw[0]:left - pw[0] + rows_w, n * c_out:(n + 1) * c_out]
          for n, (_, ph, _, pw) in enumerate(pairs)]
  else:
    ys = []
    for (_, ph, _, pw), sub in zip(pairs, subs):
      if sub.size == 0:  # a stride above the kernel size: no tap meets this phase
        ys.append(jnp.zeros((b, rows_h, rows_w, c_out), jnp.result_type(x, kernel)))
      else:
        ys.append(_cropping_conv(x, sub, (ph, pw)))
  # (sh, sw, B, rows_h, rows_w, C) -> (B, rows_h, sh, rows_w, sw, C): output row a * sh + p is phase p's
  # row a.
  y = jnp.stack(ys).reshape(sh, sw, b, rows_h, rows_w, c_out).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(b, rows_h * sh, rows_w * sw, c_out)[:, :out_h, :out_w]


def _cropping_conv(x, kernel, padding, strides=(1, 1)):
  """``_native_conv`` where a padding may be negative (a crop): then x is padded and cropped by lax.pad
  first, as XLA:CPU miscomputes a convolution padded (-1, 1)."""
  if min(min(p) for p in padding) >= 0:
    return _native_conv(x, kernel, padding, strides)
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)))
  return _native_conv(x, kernel, ((0, 0), (0, 0)), strides)


def _plus(y, bias=None, add=None):
  """(y + bias) + add, leaving out what is None (bias broadcast over the last axis)."""
  if bias is not None:
    y = y + bias.reshape((1,) * (y.ndim - 1) + (-1,))
  return y if add is None else y + add


def _open_box_conv(x, kernel, padding, strides, taps, onednn_forward: bool = False, bias=None, add=None):
  """``_native_conv`` of a kernel whose taps outside ``taps`` are zero, over the smallest box of kernel rows
  and columns holding the open taps: the padding shrinks by the rows and columns cut (a negative padding
  crops x), so the output is the same. A PixelCNN's 3x3 mask-B kernel becomes 2x3 (6 taps, not 9), the 7x7
  mask-A 4x7: XLA's convolution and its input gradient then take 2/3 and 4/7 of the time. With
  ``onednn_forward`` the box's forward pass is oneDNN's (``zoo.onednn.conv``; both gradients XLA's, as
  without it), unless its padding is negative (a crop). Returns ``_plus(conv, bias, add)``: oneDNN adds
  them as it writes the convolution's output (``zoo.onednn.conv``), which saves XLA's pass over it."""
  kh, kw = kernel.shape[:2]
  if not taps:
    return _plus(_native_conv(x, jnp.zeros_like(kernel), padding, strides), bias, add)
  box, pads = _open_box(kernel.shape, padding, taps)
  (top, bottom), (left, right) = box
  boxed = kernel[top:kh - bottom, left:kw - right]
  if onednn_forward and min(min(p) for p in pads) >= 0:
    if _ONEDNN_FUSED_ADDS and all(v is None or v.dtype == x.dtype for v in (bias, add)):
      return onednn.conv(x, boxed, strides, pads, bias, add)
    y = onednn.conv(x, boxed, strides, pads)
  elif box == ((0, 0), (0, 0)):
    y = _native_conv(x, kernel, padding, strides)
  else:
    y = _cropping_conv(x, boxed, pads, strides)
  return _plus(y, bias, add)


def _use_onednn(x, kernel, pixels: int | None = None, min_pixels: int | None = None) -> bool:
  """Whether this layer emits oneDNN's kernels on CPU: traced by the train step under
  ``kernels.onednn_kernels()``, float32, over at least ``min_pixels`` (default ``_ONEDNN_MIN_PIXELS``)
  pixels, x's batch x H x W unless ``pixels`` says how many the oneDNN call convolves."""
  pixels = math.prod(x.shape[:3]) if pixels is None else pixels
  return (kernels.onednn_kernels_on() and x.dtype == jnp.float32 and kernel.dtype == jnp.float32
          and bool(kernel.size) and pixels >= (_ONEDNN_MIN_PIXELS if min_pixels is None else min_pixels))


def _use_onednn_phases(pixels: int, x, kernel) -> bool:
  """Whether a transposed convolution's phases (``_phase_conv``: a transposed convolution's forward pass, a
  strided one's input gradient) are oneDNN convolutions, one per phase: ``_ONEDNN_PHASES`` on and
  ``_use_onednn`` for the phases' input of ``pixels`` pixels, at least ``_ONEDNN_PHASE_MIN_PIXELS``."""
  return bool(_ONEDNN_PHASES) and _use_onednn(x, kernel, pixels, _ONEDNN_PHASE_MIN_PIXELS)


def _conv_out_hw(hw, kernel_hw, strides, padding) -> tuple[int, int]:
  """(H_out, W_out) of a convolution with explicit padding."""
  return tuple((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(hw, kernel_hw, strides, padding))


def _open_box(kernel_shape, padding, taps):
  """The smallest box of kernel rows and columns holding ``taps`` (non-empty), as the rows and columns cut
  ((top, bottom), (left, right)), and the padding of the convolution over that box with the same output."""
  kh, kw = kernel_shape[:2]
  rows, cols = [t[0] for t in taps], [t[1] for t in taps]
  box = ((min(rows), kh - 1 - max(rows)), (min(cols), kw - 1 - max(cols)))
  return box, tuple((lo - cut_lo, hi - cut_hi) for (lo, hi), (cut_lo, cut_hi) in zip(padding, box))


def _use_native_weight_grad(row_channels: int, pixels: int, *arrays, min_pixels: int | None = None) -> bool:
  """Whether a weight gradient is ``zoo.convgrad``'s kernel: traced under ``kernels.native_kernels()`` (the
  train step on one CPU device), float32 throughout, the side read as rows with a multiple of 16 channels
  and at least ``min_pixels`` pixels (``_NATIVE_MIN_PIXELS``), and the kernel built and checked here."""
  return (kernels.native_kernels_on() and row_channels % convgrad.ROW_MULTIPLE == 0
          and pixels >= (_NATIVE_MIN_PIXELS if min_pixels is None else min_pixels)
          and all(a is None or a.dtype == jnp.float32 for a in arrays) and convgrad.available())


def _native_strided(own: bool, tapped: int, row_channels: int, pixels: int, *arrays) -> int:
  """How much of a strided or transposed convolution ``zoo.convgrad`` takes under the train step's kernels
  (``own``), by the channels of its tapped side (x; a transposed one's dy) and of the side read as rows: 0
  none; 1 the weight gradient (``_NATIVE_STRIDED_MAX_TAPPED``, ``_NATIVE_STRIDED_MIN_PIXELS``); 2 that and
  the convolution over the tapped side as well (``_NATIVE_STRIDED_THIN_MAX``)."""
  if not (own and tapped < _NATIVE_STRIDED_MAX_TAPPED and _use_native_weight_grad(
      row_channels, pixels, *arrays, min_pixels=_NATIVE_STRIDED_MIN_PIXELS)):
    return 0
  return 2 if tapped < _NATIVE_STRIDED_THIN_MAX else 1


def _conv_taps_pads(x_hw, kernel_shape, strides, padding, out_hw):
  """The padding (or cropping) of x so that tap (i, j) of a convolution's output (a, b) reads it at
  (s_h a + i, s_w b + j): ``zoo.convgrad``'s P is x padded so (inside its kernels: no padded copy of x)."""
  return tuple((lo, s * (m - 1) + k - n - lo)
               for n, k, s, (lo, _), m in zip(x_hw, kernel_shape[:2], strides, padding, out_hw))


def _native_conv_weight_grad(x, dy, kernel_shape, strides, padding, taps):
  """conv2d's kernel gradient at the open ``taps`` (zero elsewhere) by ``zoo.convgrad``; dy read as rows."""
  pads = _conv_taps_pads(x.shape[1:3], kernel_shape, strides, padding, dy.shape[1:3])
  grads = convgrad.weight_grad(x, dy, taps, strides, pads=pads)
  return _kernel_of_taps(grads, taps, kernel_shape)


def _native_thin_conv_stride1(x, kernel, padding, taps=None):
  """A stride-1 convolution (padding (lo, hi) per axis, may be negative) into few channels by
  ``zoo.convgrad.thin_conv``, over ``taps`` (default all; the others' kernels are zero)."""
  taps = _all_taps(kernel.shape) if taps is None else taps
  out_hw = _conv_out_hw(x.shape[1:3], kernel.shape[:2], (1, 1), padding)
  pads = _conv_taps_pads(x.shape[1:3], kernel.shape, (1, 1), padding, out_hw)
  v = _stacked_taps(kernel.swapaxes(2, 3), taps)
  return convgrad.thin_conv(x, v, taps, (1, 1), out_hw, pads=pads)


def _native_thin_conv(x, kernel, padding, strides, taps, bias=None):
  """conv2d of an x of few channels by ``zoo.convgrad.conv_taps`` (the open taps' kernels as its w), plus
  ``bias`` (in the kernel's sums) where given."""
  out_hw = _conv_out_hw(x.shape[1:3], kernel.shape[:2], strides, padding)
  pads = _conv_taps_pads(x.shape[1:3], kernel.shape, strides, padding, out_hw)
  return convgrad.conv_taps(x, _stacked_taps(kernel, taps), taps, strides, out_hw, pads=pads,
                            bias=bias)


def _transposed_taps(x_hw, dy_hw, kernel_shape, strides, padding):
  """A transposed convolution's dy as ``zoo.convgrad``'s P: the pads of dy, and each tap's offset in P:
  input pixel u meets output s * u + top - i at tap i (``_phases``), so with dy padded by k - 1 - top before
  (at least 0), tap (i, j) reads P at s * u + (top - i + that padding)."""
  pads, offsets = [], []
  for n, k, s, (top, _), m in zip(x_hw, kernel_shape[:2], strides, padding, dy_hw):
    before = max(0, k - 1 - top)
    pads.append((before, s * (n - 1) + top + 1 - m))
    offsets.append([top - i + before for i in range(k)])
  return tuple(pads), [(offsets[0][i], offsets[1][j]) for i, j in _all_taps(kernel_shape)]


def _native_transposed_grads(x, kernel, dy, strides, padding, input_grad: bool = True):
  """conv_transpose2d's both gradients by ``zoo.convgrad``, both reading dy padded (inside the kernels):
  dx[u] = sum_t P[s u + o_t] kernel[t]^T (``conv_taps``) and the kernel's gradient (``weight_grad``, x read
  as rows; its sums come out (tap, C_out, C_in)); without ``input_grad``, (None, the kernel's gradient)."""
  pads, offsets = _transposed_taps(x.shape[1:3], dy.shape[1:3], kernel.shape, strides, padding)
  dx = None
  if input_grad:
    k_t = kernel.reshape(-1, *kernel.shape[2:]).swapaxes(1, 2)
    dx = convgrad.conv_taps(dy, k_t, offsets, strides, x.shape[1:3], pads=pads)
  grads = convgrad.weight_grad(dy, x, offsets, strides, pads=pads)
  return dx, grads.transpose(0, 2, 1).reshape(kernel.shape)


def _thin_input(kernel, taps) -> bool:
  """A stride-1 convolution the zoo's kernels take forward (``conv_taps``) and back (``thin_conv``) under the
  train step: from at most ``convgrad.THIN_MAX`` channels into a multiple of 16 (a PixelCNN's first layer)."""
  return bool(taps) and kernel.shape[2] <= convgrad.THIN_MAX and kernel.shape[3] % convgrad.ROW_MULTIPLE == 0


def _native_grad_forward(x, kernel, bias, add, padding, taps, onednn_forward):
  """``_conv_native_grad``'s forward pass: from few channels (``_thin_input``) ``conv_taps`` over the open
  taps with the bias in its sums (the 7x7 mask A 1 -> 64 at batch 64: it ran 1.04-1.20x oneDNN's over the 4x7
  box, which convolves 28 taps for 24; README, Speed), else ``_open_box_conv``."""
  if _NATIVE_THIN_STRIDE1_FORWARD and _thin_input(kernel, taps):
    return _plus(_native_thin_conv(x, kernel, padding, (1, 1), taps, bias), None, add)
  return _open_box_conv(x, kernel, padding, (1, 1), taps, onednn_forward, bias, add)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _conv_native_grad(x, kernel, bias, add, padding, taps, onednn_forward, has_bias, has_add):
  return _native_grad_forward(x, kernel, bias, add, padding, taps, onednn_forward)


def _conv_native_grad_fwd(x, kernel, bias, add, padding, taps, onednn_forward, has_bias, has_add):
  return _native_grad_forward(x, kernel, bias, add, padding, taps, onednn_forward), (x, kernel)


def _conv_native_grad_bwd(padding, taps, onednn_forward, has_bias, has_add, residuals, dy):
  """A stride-1 convolution under the train step's kernels: XLA's input gradient over the open box (as
  XLA's autodiff of ``_open_box_conv`` takes it) and the weight gradient by ``zoo.convgrad``."""
  x, kernel = residuals
  if _thin_input(kernel, taps):
    # into few channels (a PixelCNN's first layer): dx[u] = sum over the open taps of dy[u + lo - i] k[i]^T,
    # the thin kernel over dy padded by k - 1 - lo before, each tap at offset k - 1 - i (the 7x7 mask A's
    # 34-49 GFLOP/s against XLA's 7-10 at batch 64, 138-176 with the padding in the kernel and its taps taken
    # by runs of a row, ``convgrad.thin_conv``; a strided convolution's input gradient and a transposed
    # one's forward pass into 3 channels, by phases, ran 25-28 against XLA's 52-60: those take the transposed
    # thin kernel, ``convgrad.thin_transposed``)
    kh, kw = kernel.shape[:2]
    flipped = [(kh - 1 - i, kw - 1 - j) for i, j in taps]
    pads = tuple((k - 1 - lo, n - m + lo) for k, (lo, _), n, m in zip((kh, kw), padding, x.shape[1:3], dy.shape[1:3]))
    dx = _native_thin_conv_stride1(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3), pads, flipped)
  else:
    dx = jax.vjp(lambda x: _open_box_conv(x, kernel, padding, (1, 1), taps), x)[1](dy)[0]
  dk = _native_conv_weight_grad(x, dy, kernel.shape, (1, 1), padding, taps)
  return dx, dk, jnp.sum(dy, (0, 1, 2)) if has_bias else None, dy if has_add else None


_conv_native_grad.defvjp(_conv_native_grad_fwd, _conv_native_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _conv_tap_grad(x, kernel, padding, strides, taps, xla_weight_grad, onednn_phases=False, native=False):
  if native == 2 and taps:     # an x of few channels (``_native_strided``): XLA runs it as thin matmuls
    return _native_thin_conv(x, kernel, padding, strides, taps)
  return _open_box_conv(x, kernel, padding, strides, taps)


def _conv_tap_grad_fwd(x, kernel, padding, strides, taps, xla_weight_grad, onednn_phases=False, native=False):
  return _conv_tap_grad(x, kernel, padding, strides, taps, xla_weight_grad, onednn_phases, native), (x, kernel)


def _conv_tap_grad_bwd(padding, strides, taps, xla_weight_grad, onednn_phases, native, residuals, dy):
  """At stride 1 into at most twice x's channels, both gradients from dy's copies (``_from_dy_copies``).
  Otherwise the weight gradient as (C_in, N) @ (N, C_out) matmuls, one per open tap: tap (i, j) multiplies
  x[:, s_h * a + i - top, s_w * b + j - left, :] into output (a, b), or with ``xla_weight_grad`` XLA's own
  (under XLA's own kernels, ``zoo.kernels``); and the input gradient XLA's over the box of open taps
  (``_open_box_conv``), except at larger strides into 16 or more channels, a transposed convolution by
  phases (``_strided_input_grad``; its phases oneDNN's with ``onednn_phases``). With ``native``
  (``_native_strided``: an x of few channels) the weight gradient is ``zoo.convgrad``'s
  (``_native_conv_weight_grad``), and with ``native`` 2 (fewer still) so is the forward pass
  (``_native_thin_conv``)."""
  x, kernel = residuals
  if strides == (1, 1) and _from_dy_copies(x, kernel, taps):
    offsets = [(padding[0][0] - i, padding[1][0] - j) for i, j in taps]
    return _grads_from_dy_copies(x, kernel, dy, offsets, strides, taps)
  if native and kernel.shape[2] <= convgrad.THIN_MAX:
    # into an image's few channels: the transposed convolution of dy, u = s o + i - lo, as o' = s u' + lo' - i'
    # with the taps flipped (i' = k - 1 - i) and lo' = k - 1 - lo
    dx = convgrad.thin_transposed(dy, jnp.flip(kernel, (0, 1)), strides,
                                  tuple(k - 1 - lo for k, (lo, _) in zip(kernel.shape[:2], padding)), x.shape[1:3])
  elif strides != (1, 1) and kernel.shape[2] >= _PHASE_MIN_FEATURES:
    dx = _strided_input_grad(dy, kernel, x.shape, padding, strides, onednn_phases)
  else:
    dx = jax.vjp(lambda x: _open_box_conv(x, kernel, padding, strides, taps), x)[1](dy)[0]
  if native:
    return dx, _native_conv_weight_grad(x, dy, kernel.shape, strides, padding, taps)
  if xla_weight_grad:
    return dx, jax.vjp(lambda k: _open_box_conv(x, k, padding, strides, taps), kernel)[1](dy)[0]
  offsets = [(i - padding[0][0], j - padding[1][0]) for i, j in taps]
  slices = _tap_slices(x, offsets, strides, dy.shape[1:3])
  dk = _tap_weight_grad(slices, dy.reshape(-1, dy.shape[3]), taps, kernel.shape, sliced_input=True)
  return dx, dk.astype(kernel.dtype)


_conv_tap_grad.defvjp(_conv_tap_grad_fwd, _conv_tap_grad_bwd)


def _strided_input_grad(dy, kernel, x_shape, padding, strides, onednn_phases: bool = False):
  """The input gradient of a strided convolution: a transposed convolution of dy, by phases.

  Row h of x meets dy[a] at tap i = h + lo - s * a, so dx[h] = sum_i z[h + lo - i] kernel[i]^T with z = dy
  dilated by s: a stride-1 convolution of z, padded by k - 1 - lo before (and to x's n rows after), with the
  kernel flipped and its channels swapped.
  """
  pads = []
  for n, k, s, (lo, _), m in zip(x_shape[1:3], kernel.shape[:2], strides, padding, dy.shape[1:3]):
    pads.append((k - 1 - lo, n + lo - (m - 1) * s - 1))
  return _phase_conv(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3), strides, tuple(pads), onednn_phases)


def _dilated_conv(x, kernel, strides, padding, onednn_phases: bool = False):
  """``_native_dilated_conv``'s function: by phases into 16 or more channels (oneDNN's with
  ``onednn_phases``), else XLA's (faster there)."""
  if kernel.shape[3] >= _PHASE_MIN_FEATURES and tuple(strides) != (1, 1):
    return _phase_conv(x, kernel, strides, padding, onednn_phases)
  return _native_dilated_conv(x, kernel, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv_transpose_tap_grad(x, kernel, strides, padding, xla_grads, onednn_phases=False, native=False):
  if native == 2 and kernel.shape[3] <= convgrad.THIN_MAX:     # into an image's channels
    # the stride-1 convolution of x dilated by the strides ((n - 1) s + 1 rows)
    out_hw = _conv_out_hw(tuple((n - 1) * s + 1 for n, s in zip(x.shape[1:3], strides)), kernel.shape[:2],
                          (1, 1), padding)
    return convgrad.thin_transposed(x, kernel.swapaxes(2, 3), strides, tuple(lo for lo, _ in padding), out_hw)
  return _dilated_conv(x, kernel, strides, padding, onednn_phases)


def _conv_transpose_tap_grad_fwd(x, kernel, strides, padding, xla_grads, onednn_phases=False, native=False):
  return _conv_transpose_tap_grad(x, kernel, strides, padding, xla_grads, onednn_phases, native), (x, kernel)


def _conv_transpose_tap_grad_bwd(strides, padding, xla_grads, onednn_phases, native, residuals, dy):
  """The weight gradient as (C_in, N) @ (N, C_out) matmuls, one per tap: input pixel u meets output
  s * u + top - i at tap i (``_phases``), so tap (i, j) multiplies x by dy[:, s_h * u + top - i,
  s_w * v + left - j, :]; N is the input's pixels, and no products with the dilation's zeros. Into at most
  twice x's channels, the input gradient comes from those same copies of dy (``_grads_from_dy_copies``),
  else it is XLA's (a strided convolution of dy). With ``xla_grads`` (under XLA's own kernels,
  ``zoo.kernels``) both are XLA's own strided convolutions (``_transposed_weight_grad``), or with ``native``
  (``_native_strided``) the weight gradient ``zoo.convgrad``'s, and with ``native`` 2 both
  (``_native_transposed_grads``)."""
  x, kernel = residuals
  if native == 2:
    return _native_transposed_grads(x, kernel, dy, strides, padding)
  taps = _all_taps(kernel.shape)
  offsets = [(padding[0][0] - i, padding[1][0] - j) for i, j in taps]
  if not xla_grads and _from_dy_copies(x, kernel, taps):
    return _grads_from_dy_copies(x, kernel, dy, offsets, strides, taps)
  dx = jax.vjp(lambda x: _native_dilated_conv(x, kernel, strides, padding), x)[1](dy)[0]
  if native:      # 1 (``native`` needs XLA's own kernels): XLA's input gradient, the kernel's weight gradient
    dk = _native_transposed_grads(x, kernel, dy, strides, padding, input_grad=False)[1]
  elif xla_grads:
    dk = _transposed_weight_grad(x, dy, kernel.shape, strides, padding)
  else:
    slices = _tap_slices(dy, offsets, strides, x.shape[1:3])
    dk = _tap_weight_grad(slices, x.reshape(-1, x.shape[3]), taps, kernel.shape, sliced_input=False)
  return dx, dk.astype(kernel.dtype)


def _transposed_weight_grad(x, dy, kernel_shape, strides, padding):
  """The weight gradient of a transposed convolution (``_native_dilated_conv``, padding (lo, hi) of the
  dilated x) as XLA's weight gradient of a strided convolution, which XLA's own kernels run fast (with XLA's
  input gradient, the DCGAN G's layers' both gradients 1.1-1.4x faster than from dy's copies; XLA's weight
  gradient of the transposed convolution itself is 100x slower): per axis dk[i] = sum_u x[u]^T dy[s u + lo - i]
  is, at tap t = k - 1 - i, sum_u dy[s u + t - (k - 1 - lo)]^T x[u], the weight gradient of dy convolved
  at stride s (padded by k - 1 - lo before) into x's size, at cotangent x, its taps flipped and its
  channels swapped."""
  pads = []
  for n, k, s, (lo, _), m in zip(x.shape[1:3], kernel_shape[:2], strides, padding, dy.shape[1:3]):
    pads.append((k - 1 - lo, (n - 1) * s + 1 + lo - m))
  swapped = jnp.zeros((*kernel_shape[:2], kernel_shape[3], kernel_shape[2]), jnp.result_type(x, dy))
  dk = jax.vjp(lambda k: _cropping_conv(dy, k, tuple(pads), strides), swapped)[1](x)[0]
  return jnp.flip(dk, (0, 1)).swapaxes(2, 3)


_conv_transpose_tap_grad.defvjp(_conv_transpose_tap_grad_fwd, _conv_transpose_tap_grad_bwd)


def _explicit_pads(padding, x_hw, kernel_hw, strides):
  """'SAME', 'VALID' or (lo, hi) pairs -> ((top, bottom), (left, right)), as conv_general_dilated reads
  them."""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x_hw, kernel_hw, strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv2d(x, kernel, padding, mask: np.ndarray | None = None, strides: Sequence[int] = (1, 1), bias=None,
           add=None):
  """An NHWC/HWIO convolution, ``lax.conv_general_dilated(x, kernel, strides, padding)``'s function exactly,
  plus ``bias`` and then ``add`` where given.

  On the CPU backend its weight gradient is a matmul per kernel tap (skipping the taps that ``mask``, a
  (kh, kw, ...) 0/1 array, closes: their gradient is zero), which XLA:CPU runs several times faster than its
  own weight gradient of a convolution (issue 7). At stride 1 into at most twice the channels it reads, both
  gradients are matmuls on one matrix of dy's copies at the open taps (``_grads_from_dy_copies``);
  otherwise the input gradient is XLA's, except at larger strides into 16 or more input channels, a
  transposed convolution by phases (``_strided_input_grad``). The forward pass (and XLA's input gradient)
  convolve over the smallest box of kernel rows and columns that holds the taps ``mask`` leaves open
  (``_open_box_conv``: a 3x3 mask B runs as 2x3). Traced under ``zoo.kernels.xla_own_kernels()`` (the
  shared train step compiling with XLA's own CPU kernels) the gradients are XLA's instead, but for a strided
  convolution's input gradient by phases; a stride-1 one then reads x as it is in memory
  (``_materialized``), so that XLA does not recompute x's producer inside its weight gradient's transpose.
  On GPU and TPU it is XLA's convolution of the whole kernel, forward and backward, unchanged. Where the
  forward pass is oneDNN's, the bias and ``add`` (a residual, say) are added inside its call.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out), already masked if it is masked.
    padding: ((top, bottom), (left, right)), 'SAME' or 'VALID'.
    mask: the kernel's mask, for the taps it closes (a tap is closed where mask[i, j] is zero throughout;
      the kernel must be zero there).
    strides: (s_h, s_w).
    bias: (C_out,) or None.
    add: an array of the output's shape, or None: the result is (conv + bias) + add.
  """
  strides = tuple(int(s) for s in strides)
  kh, kw = kernel.shape[:2]
  padding = _explicit_pads(padding, x.shape[1:3], (kh, kw), strides)
  if bias is not None and tuple(bias.shape) != (kernel.shape[3],):
    raise ValueError(f"conv2d: bias must have shape ({kernel.shape[3]},), got {tuple(bias.shape)}")
  native = lambda x, k, b, a: _plus(_native_conv(x, k, padding, strides), b, a)   # noqa: E731
  if mask is None:
    taps = _all_taps((kh, kw))
  else:
    open_ = np.asarray(mask).reshape(kh, kw, -1).any(axis=-1)
    taps = tuple((i, j) for i in range(kh) for j in range(kw) if open_[i, j])
  onednn_ok = _use_onednn(x, kernel)
  if taps == ((0, 0),) and (kh, kw) == (1, 1) and strides == (1, 1) and padding == ((0, 0), (0, 0)):
    # a 1x1 convolution is a matmul over the pixels: XLA:CPU runs it as one 2.7x faster than as a
    # convolution (64 -> 64 channels, batch 64, 28x28), and differentiates it into matmuls too; under the
    # train step's oneDNN kernels, oneDNN's matmuls (its weight gradient 3x XLA's, above), but for one channel
    # on either side (_ONEDNN_1X1_MIN_IN_CHANNELS)
    dot = (onednn.matmul if onednn_ok and kernel.shape[3] > 1 and kernel.shape[2] >= _ONEDNN_1X1_MIN_IN_CHANNELS
           else jnp.dot)
    return _on_cpu(lambda x, k, b, a: _plus(dot(x.reshape(-1, x.shape[3]), k[0, 0]).reshape(*x.shape[:3], -1),
                                            b, a), native, x, kernel, bias, add)
  own = kernels.xla_own_kernels_on()   # XLA's own gradients where they are the faster (above)
  # dy's pixels: the native weight gradient reads them as rows; a strided input gradient's phases convolve them
  dy_pixels = x.shape[0] * math.prod(_conv_out_hw(x.shape[1:3], (kh, kw), strides, padding))
  if strides == (1, 1) and own:
    native_wgrad = _use_native_weight_grad(kernel.shape[3], dy_pixels, x, kernel, bias, add)

    def cpu(x, k, b, a):
      if _MATERIALIZE_CONV_INPUT:
        x = _materialized(x, k)
      if native_wgrad:
        return _conv_native_grad(x, k, b, a, padding, taps, onednn_ok, b is not None, a is not None)
      return _open_box_conv(x, k, padding, strides, taps, onednn_forward=onednn_ok, bias=b, add=a)
  else:
    xla_weight_grad = own and bool(_XLA_OWN_STRIDED_GRADIENTS)
    phases = _use_onednn_phases(dy_pixels, x, kernel)
    native_wgrad = _native_strided(own, kernel.shape[2], kernel.shape[3], dy_pixels, x, kernel)

    def cpu(x, k, b, a):
      return _plus(_conv_tap_grad(x, k, padding, strides, taps, xla_weight_grad, phases, native_wgrad), b, a)
  return _on_cpu(cpu, native, x, kernel, bias, add)


def _conv_transpose_pads(k, s, padding):
  """lax.conv_transpose's padding of the dilated input for 'SAME' (output size n * s) or 'VALID' (output
  size (n - 1) * s + max(k, s)), as jax._src.lax.convolution._conv_transpose_padding derives it."""
  if padding == "SAME":
    total = k + s - 2
    before = k - 1 if s > k - 1 else -(-total // 2)
  elif padding == "VALID":
    total = k + s - 2 + max(k - s, 0)
    before = k - 1
  else:
    raise ValueError(f"padding must be 'SAME', 'VALID' or (lo, hi) pairs, got {padding!r}")
  return before, total - before


def conv_transpose2d(x, kernel, strides: Sequence[int], padding):
  """``lax.conv_transpose(x, kernel, strides, padding)`` (NHWC/HWIO, ``transpose_kernel=False``) exactly,
  what ``flax.linen.ConvTranspose`` computes: the stride-1 convolution of x dilated by ``strides``.

  On the CPU backend the weight gradient is a matmul per kernel tap, 10-30x faster than XLA's, and with 16
  or more output channels the forward pass is s_h * s_w stride-1 convolutions of x, one per output phase
  (``_phase_conv``: no multiplications by the dilation's zeros); into at most twice the channels it reads, both
  gradients are matmuls on one matrix of dy's copies (``_grads_from_dy_copies``), else the input gradient
  is XLA's; under ``zoo.kernels.xla_own_kernels()`` both gradients are XLA's strided convolutions
  (``_transposed_weight_grad``). On GPU and TPU it is ``lax.conv_transpose``, forward and backward, unchanged.

  Args:
    x: (B, H, W, C_in).
    kernel: (kh, kw, C_in, C_out).
    strides: (s_h, s_w).
    padding: 'SAME', 'VALID', or ((top, bottom), (left, right)), the padding of the dilated input (as
      lax.conv_transpose reads explicit pairs).
  """
  strides = tuple(int(s) for s in strides)
  if isinstance(padding, str):
    pads = tuple(_conv_transpose_pads(k, s, padding) for k, s in zip(kernel.shape[:2], strides))
  else:
    pads = padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  xla_grads = kernels.xla_own_kernels_on() and bool(_XLA_OWN_STRIDED_GRADIENTS)   # see above
  phases = _use_onednn_phases(math.prod(x.shape[:3]), x, kernel)
  native_wgrad = _native_strided(xla_grads, kernel.shape[3], kernel.shape[2], math.prod(x.shape[:3]), x, kernel)
  return _on_cpu(lambda x, k: _conv_transpose_tap_grad(x, k, strides, pads, xla_grads, phases, native_wgrad),
                 lambda x, k: jax.lax.conv_transpose(x, k, strides, padding, dimension_numbers=_DN),
                 x, kernel)


def _pair(v, what: str) -> tuple[int, int]:
  v = 1 if v is None else v
  v = (v, v) if isinstance(v, int) else tuple(v)
  if len(v) != 2:
    raise ValueError(f"{what}: the zoo's convolutions are 2-D, got {v!r}")
  return tuple(int(a) for a in v)


def _layer_args(m, what: str):
  """Kernel size, strides and padding of a Conv or ConvTranspose, refusing what it does not compute."""
  if isinstance(m.kernel_size, int) or len(m.kernel_size) != 2:
    raise ValueError(f"{what}: the zoo's convolutions are 2-D; kernel_size must be (kh, kw), got "
                     f"{m.kernel_size!r}")
  for name in ("input_dilation", "kernel_dilation"):
    if _pair(getattr(m, name, 1), what) != (1, 1):
      raise NotImplementedError(f"{what}: {name} is not supported")
  if getattr(m, "feature_group_count", 1) != 1:
    raise NotImplementedError(f"{what}: feature_group_count is not supported")
  padding = canonicalize_padding(m.padding, 2)
  if isinstance(padding, str) and padding not in ("SAME", "VALID"):
    raise NotImplementedError(f"{what}: padding {padding!r} is not supported (only 'SAME', 'VALID', pairs)")
  return tuple(m.kernel_size), _pair(m.strides, what), padding


def _flat_batch(x, f):
  """Flax's convention: every axis before (H, W, C) is a batch axis (none: one example)."""
  batch = x.shape[:-3]
  y = f(x.reshape((-1,) + x.shape[-3:]))
  return y.reshape(batch + y.shape[1:])


def _apply_layer(m, x, kernel_size, f):
  """A Conv or ConvTranspose ``m`` on x: its 'kernel' (kh, kw, C_in, features) and 'bias' params as
  flax's layers declare them, dtype promotion, then ``f(x, kernel)`` over flax's batch axes, plus bias."""
  kernel = m.param("kernel", m.kernel_init, kernel_size + (x.shape[-1], m.features), m.param_dtype)
  bias = m.param("bias", m.bias_init, (m.features,), m.param_dtype) if m.use_bias else None
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=m.dtype)
  y = _flat_batch(x, lambda x: f(x, kernel))
  return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


class Conv(nn.Module):
  """``flax.linen.Conv`` for images (..., H, W, C), on ``conv2d``: the same parameters ('kernel'
  (kh, kw, C_in, features), 'bias' (features,)), initializers and function, with the fast CPU gradients.
  Dilations, feature groups, 'CIRCULAR'/'REFLECT'/'CAUSAL' padding and 1-D or 3-D kernels raise."""
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] | None = 1
  padding: str | int | Sequence = "SAME"
  input_dilation: int | Sequence[int] | None = 1
  kernel_dilation: int | Sequence[int] | None = 1
  feature_group_count: int = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    ks, strides, padding = _layer_args(self, "Conv")
    return _apply_layer(self, x, ks, lambda x, kernel: conv2d(x, kernel, padding, strides=strides))


class ConvTranspose(nn.Module):
  """``flax.linen.ConvTranspose`` (``transpose_kernel=False``) for images (..., H, W, C), on
  ``conv_transpose2d``: the same parameters ('kernel' (kh, kw, C_in, features), 'bias' (features,)),
  initializers and function, with the fast CPU path. Kernel dilation, ``transpose_kernel``, 'CIRCULAR'
  padding and 1-D or 3-D kernels raise."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  padding: str | int | Sequence = "SAME"
  kernel_dilation: Sequence[int] | None = None
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()
  transpose_kernel: bool = False

  @nn.compact
  def __call__(self, x):
    ks, strides, padding = _layer_args(self, "ConvTranspose")
    if self.transpose_kernel:
      raise NotImplementedError("ConvTranspose: transpose_kernel=True is not supported")
    return _apply_layer(self, x, ks, lambda x, kernel: conv_transpose2d(x, kernel, strides, padding))


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
  def __call__(self, x, add=None):
    """The convolution of x, plus the bias, plus ``add`` (an array of the output's shape, a residual) where
    given: ``conv2d`` adds it inside the convolution's call where that can (oneDNN's, on CPU)."""
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
    mask = self.mask(x.shape[-1])
    bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
    return conv2d(x, kernel * jnp.asarray(mask), ((kh // 2, kh // 2), (kw // 2, kw // 2)), mask, bias=bias,
                  add=add)


def gaussian_log_prob(x, mean, log_std):
  """Elementwise log N(x; mean, exp(log_std)^2)."""
  return -0.5 * jnp.square((x - mean) * jnp.exp(-log_std)) - log_std - 0.5 * np.log(2 * np.pi)


def bernoulli_log_prob(x, logits):
  """Elementwise log Bernoulli(x; sigmoid(logits)) for x in [0, 1] (stable for any logits).

  x log s(l) + (1 - x) log s(-l) = x l - softplus(l): one transcendental per pixel instead of two,
  which is most of the cost of an IWAE-5000 evaluation.
  """
  return x * logits - jax.nn.softplus(logits)
