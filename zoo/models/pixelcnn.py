"""PixelCNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016) and Gated PixelCNN (van den Oord et al. 2016b).

Both model p(x) = prod_i p(x_i | x_<i) in raster order (rows, then columns, then channels within a pixel)
with convolutions whose kernels are masked so that no output sees its own value or any later one; the
likelihood is exact and every conditional is computed in one pass.

PixelCNN: a 7x7 mask-A convolution, residual blocks h + conv3x3_maskB(relu(h)), 1x1 mask-B ReLU layers
and a 1x1 output layer (Bernoulli logits or a softmax over ``levels`` intensities per channel). Its
masked 3x3 kernels leave a blind spot above-right of each pixel that grows with depth.

Gated PixelCNN: a vertical stack (convolutions over the rows above, shifted down a row before it feeds
the horizontal stack) and a horizontal stack (convolutions over the pixels to the left in the current
row), tanh(a) * sigmoid(b) gates, residual connections on the horizontal stack, optionally conditioned on
a class label; it has no blind spot.

Sampling: the naive path (the base class) evaluates the whole network once per value drawn. PixelCNN's
fast path (``_sample_loop`` with ``fast=True``) keeps every layer's activations in a cache and, at each
position, computes each layer at that position only, from the cached activations of the positions
before it: one pass over the network in total instead of one per position, with the same keys, so the
samples are the same.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ConfigError
from zoo.models import _layers
from zoo.models._autoregressive import Autoregressive, position_key
from zoo.registry import register


class _PixelCNNNet(nn.Module):
  family: "PixelCNN"

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    f = self.family
    c = f.image_shape[-1]
    k = f.first_kernel
    h = _layers.MaskedConv(f.features, (k, k), "A", c, name="conv_a")(x)
    for i in range(f.blocks):
      block = _layers.MaskedConv(f.features, (3, 3), "B", c, name=f"block_{i}")
      if deterministic or f.dropout == 0:   # no dropout: the residual added in the convolution's call
        h = block(nn.relu(h), add=h)
      else:
        h = h + _layers.Dropout(f.dropout)(block(nn.relu(h)), deterministic)
    for j, width in enumerate(f.output_features):
      h = _layers.MaskedConv(width, (1, 1), "B", c, name=f"out_{j}")(nn.relu(h))
    out = _layers.MaskedConv(c * f.num_classes, (1, 1), "B", c, name="logits")(nn.relu(h))
    return out.reshape(*x.shape, f.num_classes)


def _masked(params, conv: _layers.MaskedConv, in_features: int):
  """A MaskedConv's kernel times its mask, and its bias."""
  return params["kernel"] * jnp.asarray(conv.mask(in_features)), params["bias"]


def _head_kernels(params, output_features, width: int, channels: int, num_classes: int):
  """The masked (kernel, bias) of the 1x1 output layers ``out_j`` and ``logits``, as matrices."""
  heads = []
  names = [f"out_{j}" for j in range(len(output_features))] + ["logits"]
  for name, w in zip(names, (*output_features, channels * num_classes)):
    kern, bias = _masked(params[name], _layers.MaskedConv(w, (1, 1), "B", channels), width)
    heads.append((kern[0, 0], bias))
    width = w
  return heads


def _head_logits(h, heads, channels: int, num_classes: int, ch):
  """The output layers at one pixel, (B, F) -> channel ``ch``'s logits (B, K)."""
  for kern, bias in heads:
    h = nn.relu(h) @ kern + bias[None]
  logits = h.reshape(h.shape[0], channels, num_classes)
  return jax.lax.dynamic_index_in_dim(logits, ch, 1, keepdims=False)


def _apply(family, variables, u, *args, dropout_rng=None):
  """The family's network on ``u``; with ``dropout_rng`` (training) its dropout is on."""
  return family.net.apply({"params": variables["params"]["model"]}, u, *args, dropout_rng is None,
                          rngs=None if dropout_rng is None else {"dropout": dropout_rng})


def _validate_dropout(rate):
  if not 0 <= rate < 1:
    raise ConfigError(f"model.dropout must be in [0, 1), got {rate}")


def _dropout_kw(family, rng) -> dict:
  """``Autoregressive._training_kw`` of a family with a ``dropout`` rate: its key, when it drops."""
  return {"dropout_rng": rng} if family.dropout else {}


def _horizontal_mask(n: int, in_features: int, features2: int, channels: int, first: bool) -> np.ndarray:
  """The Gated PixelCNN's 1 x (n//2 + 1) horizontal kernel mask: the centre tap (its last) masked by
  channel group, mask A in the first layer (a value never sees itself), B after."""
  return _layers.causal_mask((1, n // 2 + 1), _layers.feature_groups(in_features, channels),
                             _layers.feature_groups(features2, channels, repeat=2), "A" if first else "B",
                             center=(0, n // 2))


@register("pixelcnn")
@dataclasses.dataclass(frozen=True)
class PixelCNN(Autoregressive):
  """PixelCNN with residual blocks.

  Attributes:
    features: channels of the hidden layers.
    blocks: residual blocks h + conv3x3_maskB(relu(h)).
    first_kernel: size of the first (mask-A) convolution, odd.
    output_features: widths of the 1x1 ReLU layers before the output layer.
    dropout: rate of dropout on each residual block's branch, in training only (0: none).
    output, levels: see ``Autoregressive``.
  """
  features: int = 64
  blocks: int = 10
  first_kernel: int = 7
  output_features: tuple[int, ...] = (64,)
  dropout: float = 0.0

  def validate(self):
    self.validate_output()
    if self.features < 1 or self.blocks < 0 or any(w < 1 for w in self.output_features):
      raise ConfigError("model.features and model.output_features must be >= 1, model.blocks >= 0")
    if self.first_kernel < 1 or self.first_kernel % 2 == 0:
      raise ConfigError(f"model.first_kernel must be odd and >= 1, got {self.first_kernel}")
    self.validate_group_widths(self.features, *self.output_features)
    _validate_dropout(self.dropout)

  @property
  def net(self) -> _PixelCNNNet:
    return _PixelCNNNet(self)

  def init(self, rng, batch):
    x = self.network_input(batch["image"][:1])
    return {"params": {"model": self.net.init(rng, x)["params"]}}

  def network_logits(self, variables, u, dropout_rng=None, **kw):
    return _apply(self, variables, u, dropout_rng=dropout_rng)

  _training_kw = _dropout_kw

  # ---- the fast sampler -------------------------------------------------------------------------

  def _sample_loop(self, variables, rng, v0, observed, order, fast: bool = True, **kw):
    if not fast:
      return super()._sample_loop(variables, rng, v0, observed, order, **kw)
    p = variables["params"]["model"]
    hh, ww, c = self.image_shape
    b, n_k = v0.shape[0], self.num_classes
    k, pk = self.first_kernel, self.first_kernel // 2
    f = self.features
    conv_a = _masked(p["conv_a"], _layers.MaskedConv(f, (k, k), "A", c), c)
    blocks = [_masked(p[f"block_{i}"], _layers.MaskedConv(f, (3, 3), "B", c), f) for i in range(self.blocks)]
    heads = _head_kernels(p, self.output_features, f, c, n_k)

    def at(cache, r, col, size, kernel, bias):
      """The masked conv of ``cache`` (padded) at output pixel (r, col): (B, out)."""
      patch = jax.lax.dynamic_slice(cache, (0, r, col, 0), (b, size, size, cache.shape[-1]))
      return jnp.einsum("bhwi,hwio->bo", patch, kernel) + bias[None]

    def body(i, carry):
      v, canvas, caches = carry
      r, rest = jnp.divmod(i, ww * c)
      col, ch = jnp.divmod(rest, c)
      h = at(canvas, r, col, k, *conv_a)
      new_caches = []
      for cache, (kernel, bias) in zip(caches, blocks):
        cache = jax.lax.dynamic_update_slice(cache, nn.relu(h)[:, None, None, :], (0, r + 1, col + 1, 0))
        h = h + at(cache, r, col, 3, kernel, bias)
        new_caches.append(cache)
      new = self.draw(position_key(rng, i), _head_logits(h, heads, c, n_k, ch))
      value = jnp.where(observed[:, i], v[:, i], new)
      v = v.at[:, i].set(value)
      canvas = canvas.at[:, r + pk, col + pk, ch].set(self.network_input(self.to_data(value)))
      return v, canvas, tuple(new_caches)

    if not np.array_equal(np.asarray(order), np.arange(v0.shape[1])):
      raise ConfigError("the PixelCNN fast sampler draws in raster order only")
    x0 = self.network_input(self.to_data(v0).reshape(b, hh, ww, c))
    canvas = jnp.pad(x0, ((0, 0), (pk, pk), (pk, pk), (0, 0)))
    caches = tuple(jnp.zeros((b, hh + 2, ww + 2, f), jnp.float32) for _ in blocks)
    v, _, _ = jax.lax.fori_loop(0, v0.shape[1], body, (v0, canvas, caches))
    return v


def _gate(pre):
  """tanh(a) * sigmoid(b) of interleaved (a, b) feature pairs: (..., 2F) -> (..., F)."""
  return jnp.tanh(pre[..., 0::2]) * nn.sigmoid(pre[..., 1::2])


def _conv(x, kernel, padding, mask=None):
  return _layers.conv2d(x, kernel, padding, mask)


class _GatedLayer(nn.Module):
  """One gated layer of both stacks (van den Oord et al. 2016b, Fig. 2)."""
  features: int
  kernel: int
  channels: int
  first: bool
  num_labels: int
  dropout: float

  @nn.compact
  def __call__(self, v, h, label, deterministic: bool = True):
    f2, n, c = 2 * self.features, self.kernel, self.channels
    init = nn.initializers.lecun_normal()
    # vertical stack: an (n//2 + 1) x n kernel over the rows at and above each row
    kv = self.param("vertical", init, (n // 2 + 1, n, v.shape[-1], f2))
    bias = self.param("vertical_bias", nn.initializers.zeros, (f2,))
    v_pre = _conv(v, kv, [(n // 2, 0), (n // 2, n // 2)]) + bias[None, None, None, :]
    # horizontal stack: a 1 x (n//2 + 1) kernel over the pixels at and left of each pixel, the centre
    # tap masked by channel group (mask A in the first layer: a value never sees itself)
    kh = self.param("horizontal", init, (1, n // 2 + 1, h.shape[-1], f2))
    mask = _horizontal_mask(n, h.shape[-1], f2, c, self.first)
    h_pre = _conv(h, kh * jnp.asarray(mask), [(0, 0), (n // 2, 0)], mask)
    # the vertical stack's view of the rows strictly above, shifted down a row, feeds the horizontal one
    shifted = jnp.pad(v_pre, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
    h_pre = h_pre + nn.Dense(f2, name="link")(shifted)
    if self.num_labels:
      onehot = jax.nn.one_hot(label, self.num_labels)
      v_pre = v_pre + nn.Dense(f2, use_bias=False, name="label_vertical")(onehot)[:, None, None, :]
      h_pre = h_pre + nn.Dense(f2, use_bias=False, name="label_horizontal")(onehot)[:, None, None, :]
    out = _layers.MaskedConv(self.features, (1, 1), "B", c, name="horizontal_out")(_gate(h_pre))
    return _gate(v_pre), out if self.first else h + _layers.Dropout(self.dropout)(out, deterministic)


class _GatedNet(nn.Module):
  family: "GatedPixelCNN"

  @nn.compact
  def __call__(self, x, label, deterministic: bool = True):
    f = self.family
    c = f.image_shape[-1]
    v = h = x
    for i in range(f.layers):
      v, h = _GatedLayer(f.features, f.first_kernel if i == 0 else f.kernel, c, i == 0, f.num_labels,
                         f.dropout, name=f"layer_{i}")(v, h, label, deterministic)
    for j, width in enumerate(f.output_features):
      h = _layers.MaskedConv(width, (1, 1), "B", c, name=f"out_{j}")(nn.relu(h))
    out = _layers.MaskedConv(c * f.num_classes, (1, 1), "B", c, name="logits")(nn.relu(h))
    return out.reshape(*x.shape, f.num_classes)


@register("gated_pixelcnn")
@dataclasses.dataclass(frozen=True)
class GatedPixelCNN(Autoregressive):
  """Gated PixelCNN without the blind spot, optionally class-conditional.

  Attributes:
    features: channels of each stack (the gates have twice as many pre-activations).
    layers: gated layers.
    first_kernel: kernel size n of the first layer (vertical n//2+1 x n, horizontal 1 x n//2+1), odd.
    kernel: kernel size of the other layers, odd.
    output_features: widths of the 1x1 ReLU layers before the output layer.
    num_labels: classes to condition on (0: unconditional); the batch's ``label`` picks one.
    dropout: rate of dropout on each residual update of the horizontal stack, in training only.
    output, levels: see ``Autoregressive``.
  """
  features: int = 64
  layers: int = 10
  first_kernel: int = 7
  kernel: int = 3
  output_features: tuple[int, ...] = (64,)
  num_labels: int = 0
  dropout: float = 0.0

  def validate(self):
    self.validate_output()
    if self.features < 1 or self.layers < 1 or any(w < 1 for w in self.output_features):
      raise ConfigError("model.features, model.layers and model.output_features must be >= 1")
    for name in ("first_kernel", "kernel"):
      k = getattr(self, name)
      if k < 1 or k % 2 == 0:
        raise ConfigError(f"model.{name} must be odd and >= 1, got {k}")
    if self.num_labels < 0:
      raise ConfigError(f"model.num_labels must be >= 0, got {self.num_labels}")
    self.validate_group_widths(self.features, *self.output_features)
    _validate_dropout(self.dropout)

  @property
  def net(self) -> _GatedNet:
    return _GatedNet(self)

  def init(self, rng, batch):
    x = self.network_input(batch["image"][:1])
    return {"params": {"model": self.net.init(rng, x, jnp.zeros((1,), jnp.int32))["params"]}}

  def _labels(self, label, num):
    if not self.num_labels:
      if label is not None:
        raise ConfigError(f"this {self.name} is unconditional (model.num_labels=0): it takes no label")
      return jnp.zeros((num,), jnp.int32)
    if label is None:
      raise ConfigError(f"this {self.name} is conditioned on {self.num_labels} classes: give a label")
    return jnp.broadcast_to(jnp.asarray(label, jnp.int32), (num,))

  def _logit_kw(self, batch, kw):
    if self.num_labels and "label" in batch and "label" not in kw:
      return {**kw, "label": batch["label"]}
    return kw

  def network_logits(self, variables, u, label=None, dropout_rng=None, **kw):
    return _apply(self, variables, u, self._labels(label, u.shape[0]), dropout_rng=dropout_rng)

  _training_kw = _dropout_kw

  def sample(self, variables, rng, num, fast: bool = True, ordering: int = 0, label=None, **conditioning):
    """As ``Autoregressive.sample``; a class-conditional model draws class ``label`` (an int or (num,)),
    by default the classes in turn (0, 1, ..., num_labels - 1, 0, ...)."""
    if self.num_labels:
      label = jnp.arange(num) % self.num_labels if label is None else label
      conditioning["label"] = self._labels(label, num)
    return super().sample(variables, rng, num, fast=fast, ordering=ordering, **conditioning)

  # ---- the fast sampler -------------------------------------------------------------------------
  # Row by row: at the start of row r the vertical stack's row r-1 (which only sees rows <= r-1, all
  # drawn by then) is computed for every layer and column at once; then, pixel by pixel, the horizontal
  # stack is computed at the new pixel only, from cached inputs of the pixels to its left and the
  # vertical stack's row above.

  def _sample_loop(self, variables, rng, v0, observed, order, fast: bool = True, label=None, **kw):
    if not fast:
      return super()._sample_loop(variables, rng, v0, observed, order, label=label, **kw)
    if not np.array_equal(np.asarray(order), np.arange(v0.shape[1])):
      raise ConfigError("the Gated PixelCNN fast sampler draws in raster order only")
    p = variables["params"]["model"]
    hh, ww, c = self.image_shape
    b, n_k, f2 = v0.shape[0], self.num_classes, 2 * self.features
    label = self._labels(label, b)
    onehot = jax.nn.one_hot(label, self.num_labels) if self.num_labels else None
    layers = []
    for i in range(self.layers):
      q = p[f"layer_{i}"]
      n = self.first_kernel if i == 0 else self.kernel
      in_f = c if i == 0 else self.features
      mask = _horizontal_mask(n, in_f, f2, c, i == 0)
      out_kernel, out_bias = _masked(q["horizontal_out"], _layers.MaskedConv(self.features, (1, 1), "B", c), f2 // 2)
      lab_v = onehot @ q["label_vertical"]["kernel"] if onehot is not None else 0.0
      lab_h = onehot @ q["label_horizontal"]["kernel"] if onehot is not None else 0.0
      layers.append(dict(n=n, kv=q["vertical"], bv=q["vertical_bias"], kh=(q["horizontal"] * jnp.asarray(mask))[0],
                         link=q["link"], out=(out_kernel[0, 0], out_bias), lab_v=lab_v, lab_h=lab_h))
    heads = _head_kernels(p, self.output_features, self.features, c, n_k)

    pv = [l["n"] // 2 for l in layers]                       # vertical/horizontal padding per layer
    canvas = jnp.pad(self.network_input(self.to_data(v0).reshape(b, hh, ww, c)),
                     ((0, 0), (pv[0], 0), (pv[0], pv[0]), (0, 0)))
    # vertical inputs of layers 1.. (top and side padded) and horizontal inputs of layers 1.. (left padded)
    vert = tuple(jnp.zeros((b, hh + pv[i], ww + 2 * pv[i], self.features)) for i in range(1, self.layers))
    horiz = tuple(jnp.zeros((b, hh, ww + pv[i], self.features)) for i in range(1, self.layers))

    def vertical_row(r, canvas, vert):
      """Every layer's link input from the vertical stack's row r - 1 (zeros for r = 0); writes the
      gated row r - 1 into the next layer's vertical input."""
      links, new_vert = [], list(vert)
      for i, l in enumerate(layers):
        src = canvas if i == 0 else new_vert[i - 1]
        slab = jax.lax.dynamic_slice_in_dim(src, jnp.maximum(r - 1, 0), pv[i] + 1, axis=1)
        pre = _conv(slab, l["kv"], [(0, 0), (0, 0)])[:, 0] + l["bv"][None, None, :]   # (B, W, 2F)
        pre = jnp.where(r > 0, pre, 0.0)
        links.append(pre @ l["link"]["kernel"] + l["link"]["bias"][None, None, :])
        if i + 1 < self.layers:
          gated = _gate(pre + (l["lab_v"][:, None, :] if onehot is not None else 0.0))
          new_vert[i] = jax.lax.dynamic_update_slice(
              new_vert[i], gated[:, None], (0, jnp.maximum(r - 1, 0) + pv[i + 1], pv[i + 1], 0))
      # row 0 has no row above: its links are zero and the vertical caches stay as they were
      new_vert = [jnp.where(r > 0, nv, ov) for nv, ov in zip(new_vert, vert)]
      return jnp.stack(links), tuple(new_vert)

    def pixel(i, r, col, ch, v, canvas, horiz, links):
      hs = list(horiz)
      h = None
      for li, l in enumerate(layers):
        n = l["n"]
        src = canvas[:, pv[0]:] if li == 0 else hs[li - 1]
        row = jax.lax.dynamic_slice(src, (0, r, col, 0), (b, 1, n // 2 + 1, src.shape[-1]))[:, 0]
        pre = jnp.einsum("bwi,wio->bo", row, l["kh"]) + jax.lax.dynamic_index_in_dim(links[li], col, 1, False)
        if onehot is not None:
          pre = pre + l["lab_h"]
        out = _gate(pre) @ l["out"][0] + l["out"][1][None]
        h = out if li == 0 else h + out
        if li + 1 < self.layers:
          hs[li] = jax.lax.dynamic_update_slice(hs[li], h[:, None, None, :], (0, r, col + pv[li + 1], 0))
      new = self.draw(position_key(rng, i), _head_logits(h, heads, c, n_k, ch))
      value = jnp.where(observed[:, i], v[:, i], new)
      v = v.at[:, i].set(value)
      canvas = canvas.at[:, r + pv[0], col + pv[0], ch].set(self.network_input(self.to_data(value)))
      return v, canvas, tuple(hs)

    def row_body(r, carry):
      v, canvas, vert, horiz = carry
      links, vert = vertical_row(r, canvas, vert)

      def pixel_body(j, carry):
        v, canvas, horiz = carry
        col, ch = jnp.divmod(j, c)
        return pixel(r * ww * c + j, r, col, ch, v, canvas, horiz, links)

      v, canvas, horiz = jax.lax.fori_loop(0, ww * c, pixel_body, (v, canvas, horiz))
      return v, canvas, vert, horiz

    v, _, _, _ = jax.lax.fori_loop(0, hh, row_body, (v0, canvas, vert, horiz))
    return v
