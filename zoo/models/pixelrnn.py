"""PixelRNN (van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks").

An autoregressive model of images in raster order (rows top to bottom, pixels left to right, the C
channels of a pixel in order) whose conditionals come from two-dimensional LSTM layers (Sec. 3):

- a 7x7 convolution of mask A (a value never sees itself) maps the image to 2h features;
- ``layers`` recurrent layers, each an LSTM of h units whose input-to-state part is a masked
  convolution of the whole input map (computed at once) and whose state-to-state part is a small
  convolution of the states already computed, swept over the image with ``lax.scan``; a 1x1 convolution
  takes the h outputs back to 2h features, and the layer's input is added to them (residual, Sec. 3.3);
- ReLU, a 1x1 convolution of mask B to ``output_features``, ReLU, and a 1x1 convolution of mask B to the
  K logits of each of the C channels (Table 1: "ReLU followed by 1x1 conv, mask B (2 layers)", then the
  sigmoid or the softmax).

The two recurrent layers of the paper (``cell``):

``row_lstm`` (Sec. 3.1): the image is processed row by row, all columns of a row at once. The
input-to-state part is a 1x3 convolution of mask B along the row; the state-to-state part is a 1x3
convolution of the previous row's hidden states. Its receptive field is a triangle above the pixel: it
misses the far left of its own row and the far right of the rows above.

``diagonal_bilstm`` (Sec. 3.2): each row i of the map is shifted right by i (skewed), so that the image's
diagonals become columns, and the skewed map is processed column by column. The input-to-state part is
a 1x1 convolution of mask B; the state-to-state part is a 2x1 convolution along the column of the
previous column's states, which in the image are the states of the pixel above and of the pixel to the
left. A second direction does the same on the left-right mirrored map (its states come from above and
from the right); its output is shifted down by one row before the two are added, so that no pixel sees
its own row to its right. Each layer so sees every position of its input map before it in raster order
(Fig. 4). The model as a whole misses one pixel of that context: the last pixel of the row above, for
pixels more than 3 columns from the right edge. A pixel's value enters the feature maps only at the
mask-A convolution's outputs after it, here the current row's last 3 columns, and no layer carries it
leftwards within a row (tests/test_pixelrnn.py pins the receptive fields down).

With C > 1 channels every feature map is split into C groups (``_layers.feature_groups``, Sec. 3.4):
features of group c see the current pixel's channels < c only. The LSTM gates of hidden unit u are
the four neighbouring features 4u .. 4u+3 (o, f, i, g) of the input-to-state output, so a unit and its
gates share a group; the state-to-state parts read only pixels wholly before the current one and need
no mask.

Sampling has a cached path: each layer keeps the states of the row above and of the pixel to the left,
so that a value costs one step of each layer at one pixel, not a pass of the whole network (the base
class's naive path, ``fast=False``, which gives the same values for the same key).

Not in this module: the paper's learnable skip connections from every layer to the output (Sec. 3.3).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.errors import ConfigError
from zoo.models import _layers
from zoo.models._autoregressive import Autoregressive, position_key
from zoo.registry import register

CELLS = ("row_lstm", "diagonal_bilstm")


def _lstm(z, c):
  """One LSTM update. z: (..., 4n) pre-activations, unit u's gates (o, f, i, g) at 4u .. 4u+3; c: (..., n).

  Returns the new (hidden, cell) states, each (..., n).
  """
  z = z.reshape(*z.shape[:-1], z.shape[-1] // 4, 4)
  o, f, i = jax.nn.sigmoid(z[..., 0]), jax.nn.sigmoid(z[..., 1]), jax.nn.sigmoid(z[..., 2])
  c = f * c + i * jnp.tanh(z[..., 3])
  return o * jnp.tanh(c), c


def row_lstm(gates, kernel, unroll: int = 1):
  """The Row LSTM's recurrence: rows top to bottom, every column of a row at once.

  Row i's pre-activations are its input-to-state part plus a 1x3 convolution (zero padded) of row
  i-1's hidden states; row -1's states are zero.

  Args:
    gates: (B, H, W, 4n) input-to-state pre-activations.
    kernel: (1, 3, n, 4n) state-to-state kernel; taps 0, 1, 2 read columns j-1, j, j+1 of the row above.
    unroll: ``lax.scan`` unrolling.

  Returns:
    (B, H, W, n) hidden states.
  """
  b, _, w, g4 = gates.shape
  n = g4 // 4
  k = kernel.reshape(3 * n, g4)

  def step(carry, g):
    h, c = carry                                             # (B, W, n) each: the row above
    p = jnp.pad(h, ((0, 0), (1, 1), (0, 0)))
    z = g + jnp.concatenate([p[:, :-2], h, p[:, 2:]], axis=-1) @ k
    h, c = _lstm(z, c)
    return (h, c), h

  zeros = jnp.zeros((b, w, n), gates.dtype)
  _, hs = jax.lax.scan(step, (zeros, zeros), jnp.moveaxis(gates, 1, 0), unroll=unroll)
  return jnp.moveaxis(hs, 0, 1)


def skew(x):
  """(B, H, W, F) -> (B, H, W + H - 1, F): row i shifted right by i, zeros elsewhere."""
  b, h, w, f = x.shape
  x = jnp.pad(x, ((0, 0), (0, 0), (0, h), (0, 0))).reshape(b, h * (w + h), f)
  return x[:, :h * (w + h - 1)].reshape(b, h, w + h - 1, f)


def unskew(x, width: int):
  """The inverse of ``skew``: (B, H, width + H - 1, F) -> (B, H, width, F)."""
  b, h, ws, f = x.shape
  x = jnp.pad(x.reshape(b, h * ws, f), ((0, 0), (0, h), (0, 0)))
  return x.reshape(b, h, ws + 1, f)[:, :, :width]


def diagonal_lstm(gates, kernel, unroll: int = 1):
  """One direction of the Diagonal BiLSTM: the LSTM whose state at pixel (i, j) follows from the states
  at (i-1, j) and (i, j-1) (zero outside the image), computed a diagonal at a time on the skewed map.

  Args:
    gates: (B, H, W, 4n) input-to-state pre-activations.
    kernel: (2, 1, n, 4n) state-to-state kernel over a column of the skewed map: tap 0 reads the state
      one row up (the pixel above), tap 1 the same row (the pixel to the left).
    unroll: ``lax.scan`` unrolling.

  Returns:
    (B, H, W, n) hidden states.
  """
  b, h, w, g4 = gates.shape
  n = g4 // 4
  k = kernel.reshape(2 * n, g4)

  def step(carry, g):
    hid, c = carry                                           # (B, H, n) each: the previous column
    up = jnp.pad(hid, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    z = g + jnp.concatenate([up, hid], axis=-1) @ k
    hid, c = _lstm(z, c)
    return (hid, c), hid

  # Zero pre-activations in the skew's padding keep the states there exactly zero (g = tanh(0) = 0 and
  # no bias in the state-to-state part), the zero boundary of the recurrence.
  zeros = jnp.zeros((b, h, n), gates.dtype)
  _, hs = jax.lax.scan(step, (zeros, zeros), jnp.moveaxis(skew(gates), 2, 0), unroll=unroll)
  return unskew(jnp.moveaxis(hs, 0, 2), w)


class _RowLSTM(nn.Module):
  """A Row LSTM layer: (B, H, W, 2h) -> (B, H, W, h).

  ``column`` computes one pixel from a cache of the row above (the sampler's cached path); ``__call__``
  the whole map at once. Cache: the row above's hidden and cell states (``h_above``, ``c_above``), the
  current row's so far (``h_row``, ``c_row``), and the layer's input one pixel to the left (``x_left``).
  """
  features: int
  channels: int
  unroll: int = 1

  def setup(self):
    n = self.features
    self.input_to_state = _layers.MaskedConv(4 * n, (1, 3), "B", channels=self.channels, out_repeat=4)
    self.state_to_state = self.param("state_to_state", nn.initializers.lecun_normal(), (1, 3, n, 4 * n))

  def __call__(self, x):
    return row_lstm(self.input_to_state(x), self.state_to_state, self.unroll)

  @staticmethod
  def empty_cache(batch: int, width: int, features: int, in_features: int) -> dict:
    zeros = jnp.zeros((batch, width, features))
    return {"h_above": zeros, "c_above": zeros, "h_row": zeros, "c_row": zeros,
            "x_left": jnp.zeros((batch, in_features))}

  def column(self, x, cache, j):
    """The layer at pixel (i, j) of the current row i: input (B, 2h) -> ((B, h), updated cache)."""
    n = self.features
    patch = jnp.stack([cache["x_left"], x, jnp.zeros_like(x)], axis=1)[:, None]   # columns j-1, j, j+1
    g = self.input_to_state(patch)[:, 0, 1]
    above = jax.lax.dynamic_slice_in_dim(jnp.pad(cache["h_above"], ((0, 0), (1, 1), (0, 0))), j, 3, 1)
    z = g + above.reshape(x.shape[0], 3 * n) @ self.state_to_state.reshape(3 * n, 4 * n)
    h, c = _lstm(z, cache["c_above"][:, j])
    return h, {**cache, "h_row": cache["h_row"].at[:, j].set(h), "c_row": cache["c_row"].at[:, j].set(c),
               "x_left": x}

  def end_row(self, cache):
    """The cache for the next row, once every pixel of this one is drawn."""
    zeros = jnp.zeros_like(cache["h_row"])
    return {"h_above": cache["h_row"], "c_above": cache["c_row"], "h_row": zeros, "c_row": zeros,
            "x_left": jnp.zeros_like(cache["x_left"])}


class _DiagonalBiLSTM(nn.Module):
  """A Diagonal BiLSTM layer: (B, H, W, 2h) -> (B, H, W, h), the sum of its two directions.

  ``column`` computes one pixel from a cache (the sampler's cached path): the forward direction's states
  of the row above (``h_above``) and of the pixel to the left (``h_left``, ``c_left``), and the backward
  direction's states of the row above (``back_above``), which are also its output shifted down one row;
  ``end_row`` runs the backward direction over a finished row (right to left) for the next one.
  """
  features: int
  channels: int
  unroll: int = 1

  def setup(self):
    n = self.features
    conv = lambda: _layers.MaskedConv(4 * n, (1, 1), "B", channels=self.channels, out_repeat=4)
    self.input_to_state_fwd, self.input_to_state_bwd = conv(), conv()
    init = nn.initializers.lecun_normal()
    self.state_to_state_fwd = self.param("state_to_state_fwd", init, (2, 1, n, 4 * n))
    self.state_to_state_bwd = self.param("state_to_state_bwd", init, (2, 1, n, 4 * n))

  def __call__(self, x):
    gates = jnp.stack([self.input_to_state_fwd(x), self.input_to_state_bwd(x)[:, :, ::-1]])
    kernels = jnp.stack([self.state_to_state_fwd, self.state_to_state_bwd])
    # both directions in one scan: the backward one runs on the mirrored map
    fwd, bwd = jax.vmap(lambda g, k: diagonal_lstm(g, k, self.unroll))(gates, kernels)
    bwd = jnp.pad(bwd[:, :, ::-1], ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]   # down one row
    return fwd + bwd

  @staticmethod
  def empty_cache(batch: int, width: int, features: int, in_features: int) -> dict:
    zeros = jnp.zeros((batch, width, features))
    return {"h_above": zeros, "back_above": zeros, "h_row": zeros,
            "x_row": jnp.zeros((batch, width, in_features)), "h_left": zeros[:, 0], "c_left": zeros[:, 0]}

  def column(self, x, cache, j):
    """The layer at pixel (i, j) of the current row i: input (B, 2h) -> ((B, h), updated cache)."""
    n = self.features
    g = self.input_to_state_fwd(x[:, None, None])[:, 0, 0]
    z = g + jnp.concatenate([cache["h_above"][:, j], cache["h_left"]], -1) @ \
        self.state_to_state_fwd.reshape(2 * n, 4 * n)
    h, c = _lstm(z, cache["c_left"])
    return h + cache["back_above"][:, j], {
        **cache, "h_row": cache["h_row"].at[:, j].set(h), "x_row": cache["x_row"].at[:, j].set(x),
        "h_left": h, "c_left": c}

  def end_row(self, cache):
    """The cache for the next row, once every pixel of this one is drawn."""
    n = self.features
    k = self.state_to_state_bwd.reshape(2 * n, 4 * n)
    gates = self.input_to_state_bwd(cache["x_row"][:, None])[:, 0]

    def step(carry, inputs):                 # from the right: the state of (i, j) from (i-1, j), (i, j+1)
      h_right, c_right = carry
      g, up = inputs
      h, c = _lstm(g + jnp.concatenate([up, h_right], -1) @ k, c_right)
      return (h, c), h

    zeros = jnp.zeros_like(cache["h_left"])
    _, back = jax.lax.scan(step, (zeros, zeros), (jnp.moveaxis(gates, 1, 0),
                                                  jnp.moveaxis(cache["back_above"], 1, 0)), reverse=True)
    return {"h_above": cache["h_row"], "back_above": jnp.moveaxis(back, 0, 1),
            "h_row": jnp.zeros_like(cache["h_row"]), "x_row": jnp.zeros_like(cache["x_row"]),
            "h_left": zeros, "c_left": zeros}


class _PixelRNNNet(nn.Module):
  """Network input (B, H, W, C) -> logits (B, H, W, C * K), channel c's K logits at c*K .. c*K+K-1."""
  family: "PixelRNN"

  def setup(self):
    f = self.family
    c = f.image_shape[2]
    layer = _RowLSTM if f.cell == "row_lstm" else _DiagonalBiLSTM
    self.conv_in = _layers.MaskedConv(2 * f.features, (7, 7), "A", channels=c)
    self.lstm = [layer(f.features, c, f.unroll) for _ in range(f.layers)]
    self.up = [_layers.MaskedConv(2 * f.features, (1, 1), "B", channels=c) for _ in range(f.layers)]
    self.out_hidden = _layers.MaskedConv(f.output_features, (1, 1), "B", channels=c)
    self.out = _layers.MaskedConv(c * f.num_classes, (1, 1), "B", channels=c)

  def _layers(self, x, recurrent):
    for lstm, up in zip(self.lstm, self.up):
      h = up(recurrent(lstm, x))
      x = x + h if self.family.residual else h
    return self.out(nn.relu(self.out_hidden(nn.relu(x))))

  def __call__(self, x):
    return self._layers(self.conv_in(x), lambda lstm, x: lstm(x))

  def pixel(self, window, caches, j):
    """The logits at pixel (i, j) from the layers' caches (the sampler's cached path).

    Args:
      window: (B, 4, 7, C) network input at rows i-3 .. i and columns j-3 .. j+3 (zeros outside).
      caches: one cache per recurrent layer (its ``empty_cache`` or ``end_row``'s).
      j: the column.

    Returns:
      ((B, C, K) logits, the caches with pixel (i, j)'s states in them).
    """
    new = []                                 # the layers' updated caches, in order

    def recurrent(lstm, x):
      h, cache = lstm.column(x[:, 0, 0], caches[len(new)], j)
      new.append(cache)
      return h[:, None, None]

    out = self._layers(self.conv_in(window)[:, 3:, 3:4], recurrent)
    return out.reshape(window.shape[0], window.shape[-1], -1), new

  def end_row(self, caches):
    return [lstm.end_row(cache) for lstm, cache in zip(self.lstm, caches)]


@register("pixelrnn")
@dataclasses.dataclass(frozen=True)
class PixelRNN(Autoregressive):
  """PixelRNN: a Row LSTM or Diagonal BiLSTM autoregressive model of images in raster order.

  Attributes:
    cell: 'row_lstm' or 'diagonal_bilstm'.
    layers: recurrent layers.
    features: h, the LSTM's hidden units; the residual stream between layers has 2h features.
    output_features: features of the hidden 1x1 output layer.
    residual: add each recurrent layer's input to its output (Sec. 3.3).
    unroll: ``lax.scan`` unrolling of the recurrences (speed only; the same function).
    output, levels: see ``Autoregressive``.
  """
  cell: str = "row_lstm"
  layers: int = 7
  features: int = 16
  output_features: int = 32
  residual: bool = True
  unroll: int = 1

  def validate(self):
    self.validate_output()
    if self.cell not in CELLS:
      raise ConfigError(f"model.cell must be one of {CELLS}, not {self.cell!r}")
    c = int(self.image_shape[2])
    if self.layers < 1:
      raise ConfigError(f"model.layers must be >= 1, got {self.layers}")
    if self.features < c or self.output_features < c:
      raise ConfigError(f"model.features and model.output_features must be >= the {c} channels (one "
                        f"group of features per channel), got {self.features} and {self.output_features}")
    if self.unroll < 1:
      raise ConfigError(f"model.unroll must be >= 1, got {self.unroll}")

  @property
  def net(self) -> _PixelRNNNet:
    return _PixelRNNNet(self)

  def init(self, rng, batch):
    x = self.network_input(batch["image"][:1])
    return {"params": {"model": self.net.init(rng, x)["params"]}}

  def network_logits(self, variables, u, **kw):
    """The network on its input: (B, H, W, C) ``network_input`` values (any reals) -> (B, H, W, C, K)."""
    out = self.net.apply({"params": variables["params"]["model"]}, u)
    return out.reshape(*u.shape, self.num_classes)

  def _sample_loop(self, variables, rng, v0, observed, order, fast: bool = True, **kw):
    """Fills the unobserved values of ``v0`` (B, D) in raster order (the family's one order).

    The cached path (``fast``): pixel by pixel, each layer computes only the current pixel from its cache
    of states (``_RowLSTM.column``, ``_DiagonalBiLSTM.column``), and the first convolution only its 7x7
    window; at the end of a row the caches move down (the Diagonal BiLSTM's backward direction runs
    over the finished row). A pixel of C channels is evaluated C times, once per channel drawn; the last
    evaluation's states are kept: no feature depends on a pixel's last channel. The same keys as the
    naive path (``fast=False``, the whole network per value) give the same values.
    """
    if not fast:
      return super()._sample_loop(variables, rng, v0, observed, order, fast=False, **kw)
    h, w, c = self.image_shape
    b = v0.shape[0]
    params = {"params": variables["params"]["model"]}
    layer = _RowLSTM if self.cell == "row_lstm" else _DiagonalBiLSTM
    caches = [layer.empty_cache(b, w, self.features, 2 * self.features) for _ in range(self.layers)]

    def pixel(p, carry):
      v, caches = carry
      i, j = p // w, p % w
      for ch in range(c):
        x = self.network_input(self.to_data(v).reshape(b, h, w, c))
        window = jax.lax.dynamic_slice(jnp.pad(x, ((0, 0), (3, 0), (3, 3), (0, 0))), (0, i, j, 0),
                                       (b, 4, 7, c))
        logits, new_caches = self.net.apply(params, window, caches, j, method=_PixelRNNNet.pixel)
        idx = p * c + ch
        drawn = self.draw(position_key(rng, idx), logits[:, ch])
        v = v.at[:, idx].set(jnp.where(observed[:, idx], v[:, idx], drawn))
      caches = jax.lax.cond(j == w - 1, lambda cs: self.net.apply(params, cs, method=_PixelRNNNet.end_row),
                            lambda cs: cs, new_caches)
      return v, caches

    return jax.lax.fori_loop(0, h * w, pixel, (v0, caches))[0]
