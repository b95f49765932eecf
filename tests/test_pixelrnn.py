"""PixelRNN specifics: the two recurrences against pixel-by-pixel loops, exact causality in raster order
(channels included), the layers' receptive fields, normalisation on tiny images, sampling and completion.

The generic checks of every autoregressive family are in test_autoregressive.py.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import registry
from zoo.errors import ConfigError
from zoo.models import pixelrnn
from zoo.models.pixelrnn import PixelRNN

CELLS = ("row_lstm", "diagonal_bilstm")


def family(cell, shape, **kw) -> PixelRNN:
  """A small PixelRNN for images of ``shape``."""
  f = PixelRNN(image_shape=shape, cell=cell, **{"layers": 1, "features": 4, "output_features": 8, **kw})
  f.validate()
  return f


def random_variables(init_fn, *example, seed: int = 0):
  """Variables shaped as ``init_fn(key, *example)`` makes them, drawn on the host as N(0, 1/fan_in),
  biases included (nonzero, so that ReLUs are both on and off).

  Not the modules' own initialisers: XLA compiles truncated normals slowly on CPU (seconds per program),
  and these tests compile one small program per model; host arrays keep the programs free of RNG.
  """
  shapes = jax.eval_shape(init_fn, jax.random.PRNGKey(0), *example)
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]) if len(s.shape) > 1 else 4.0)
                 ).astype(np.float32), shapes)


def init(f: PixelRNN, seed: int = 0):
  return random_variables(f.init, {"image": jnp.zeros((1, *f.image_shape))}, seed=seed)


def dependence(fn, variables, in_shape, n_out: int, n_in: int, draws: int = 4) -> np.ndarray:
  """(n_out, n_in) booleans: does some feature of output position o depend on input position i?

  ``fn(variables, x)`` maps x, (1, *in_shape), to (1, ...) whose values are n_out positions (leading,
  in raster order) times features; ``in_shape`` is n_in positions times features. The union over
  ``draws`` random inputs keeps a ReLU that happens to be off from hiding a dependence; a dependence
  the architecture rules out has an exactly zero derivative for every input.
  """
  u = np.random.default_rng(1).normal(size=(draws, 1, *in_shape)).astype(np.float32)
  jac = jax.jit(lambda v, u: jax.vmap(jax.jacrev(lambda x: fn(v, x)))(u))(variables, u)
  jac = np.asarray(jac)
  in_features = int(np.prod(in_shape)) // n_in
  return (jac.reshape(draws, n_out, -1, n_in, in_features) != 0).any(axis=(0, 2, 4))


def model_dependence(f: PixelRNN) -> np.ndarray:
  """(D, D) booleans over the flat raster indices of (H, W, C): does value o's conditional depend on
  the network input at value i?"""
  d = f.num_dims
  return dependence(f.network_logits, init(f), f.image_shape, d, d)


def raster_causal(dep: np.ndarray) -> bool:
  """No value's conditional depends on itself or on anything after it."""
  return not np.triu(dep).any()


def test_recurrences_match_pixel_by_pixel_loops():
  rng = np.random.default_rng(0)
  b, h, w, n = 2, 4, 5, 3
  gates = rng.normal(size=(b, h, w, 4 * n)).astype(np.float32)
  k_diag = rng.normal(size=(2, 1, n, 4 * n)).astype(np.float32) * 0.5
  k_row = rng.normal(size=(1, 3, n, 4 * n)).astype(np.float32) * 0.5
  diag, row, skewed, back = jax.jit(lambda g, kd, kr: (
      pixelrnn.diagonal_lstm(g, kd), pixelrnn.row_lstm(g, kr), pixelrnn.skew(g),
      pixelrnn.unskew(pixelrnn.skew(g), w)))(gates, k_diag, k_row)

  def lstm(z, c):
    z = z.reshape(*z.shape[:-1], n, 4)
    s = 1 / (1 + np.exp(-z))
    c = s[..., 1] * c + s[..., 2] * np.tanh(z[..., 3])
    return s[..., 0] * np.tanh(c), c

  # Diagonal LSTM: the state at (i, j) from the states above and to the left (cell state: the left one)
  hid, cell = np.zeros((b, h + 1, w + 1, n)), np.zeros((b, h + 1, w + 1, n))   # row 0 / column 0: outside
  for i, j in itertools.product(range(h), range(w)):
    z = gates[:, i, j] + hid[:, i, j + 1] @ k_diag[0, 0] + hid[:, i + 1, j] @ k_diag[1, 0]
    hid[:, i + 1, j + 1], cell[:, i + 1, j + 1] = lstm(z, cell[:, i + 1, j])
  np.testing.assert_allclose(np.asarray(diag), hid[:, 1:, 1:], atol=1e-5)

  # Row LSTM: row i from the hidden states of row i-1 at columns j-1, j, j+1
  hid, cell = np.zeros((b, h + 1, w + 2, n)), np.zeros((b, h + 1, w, n))
  for i in range(h):
    z = gates[:, i] + sum(hid[:, i, t:t + w] @ k_row[0, t] for t in range(3))
    hid[:, i + 1, 1:-1], cell[:, i + 1] = lstm(z, cell[:, i])
  np.testing.assert_allclose(np.asarray(row), hid[:, 1:, 1:-1], atol=1e-5)

  # the skew puts row i at columns i .. i+W-1, zeros elsewhere; unskew undoes it
  skewed = np.asarray(skewed)
  assert skewed.shape == (b, h, w + h - 1, 4 * n)
  for i in range(h):
    assert np.array_equal(skewed[:, i, i:i + w], gates[:, i])
    assert not skewed[:, i, :i].any() and not skewed[:, i, i + w:].any()
  assert np.array_equal(np.asarray(back), gates)


def test_recurrent_layers_receptive_fields():
  """Sec. 3: the Row LSTM layer sees a triangle above the pixel; the Diagonal BiLSTM layer sees every
  position before it in raster order, and itself (its input at a position holds only earlier pixels)."""
  h, w, f = 4, 6, 2
  ii, jj = np.divmod(np.arange(h * w), w)
  oi, oj, si, sj = ii[:, None], jj[:, None], ii[None, :], jj[None, :]
  expected = {
      "row_lstm": (si <= oi) & (sj >= oj - 1 - (oi - si)) & (sj <= oj + (oi - si)),
      "diagonal_bilstm": (si < oi) | ((si == oi) & (sj <= oj)),
  }
  for cls, cell in ((pixelrnn._RowLSTM, "row_lstm"), (pixelrnn._DiagonalBiLSTM, "diagonal_bilstm")):
    layer = cls(3, 1)
    v = random_variables(layer.init, jnp.zeros((1, h, w, f)))
    np.testing.assert_array_equal(dependence(layer.apply, v, (h, w, f), h * w, h * w), expected[cell],
                                  err_msg=cell)


@pytest.mark.parametrize("cell", CELLS)
def test_exactly_causal_in_raster_order(cell):
  dep = model_dependence(family(cell, (4, 4, 1), layers=2))
  assert raster_causal(dep)
  assert all(dep[o, :o].any() for o in range(1, dep.shape[0]))
  if cell == "diagonal_bilstm":          # every earlier pixel (Fig. 4)
    np.testing.assert_array_equal(dep, np.tril(np.ones_like(dep), -1))


def test_diagonal_bilstm_receptive_field_on_a_wide_image():
  """Past the 7x7 convolution's reach the Diagonal BiLSTM still sees every earlier pixel but one: the
  last pixel of the row above enters the feature maps only at the mask-A convolution's outputs after it,
  in the current row's last 3 columns, and no layer carries it leftwards within a row."""
  h, w = 3, 10
  dep = model_dependence(family("diagonal_bilstm", (h, w, 1)))
  expected = np.tril(np.ones_like(dep), -1)
  for i in range(1, h):
    expected[i * w:i * w + w - 4, i * w - 1] = False
  np.testing.assert_array_equal(dep, expected)


@pytest.mark.parametrize("cell", CELLS)
def test_causal_across_channels(cell):
  """C = 3, 4 levels: value (i, j, c) sees the channels before c of its own pixel and never c or later."""
  dep = model_dependence(family(cell, (2, 2, 3), output="categorical", levels=4, features=6,
                                    output_features=12))
  assert raster_causal(dep)
  for p in range(4):
    for c in range(3):
      assert dep[3 * p + c, 3 * p:3 * p + c].all()


@pytest.mark.parametrize("cell", CELLS)
def test_probabilities_of_every_image_sum_to_one(cell):
  """Exact normalisation over every image of tiny shapes: 3x3, a row, one pixel, and a column of two
  pixels of two channels of 3 levels."""
  cases = []
  for shape, output, levels in (((3, 3, 1), "bernoulli", 2), ((1, 3, 1), "bernoulli", 2),
                                ((1, 1, 1), "bernoulli", 2), ((2, 1, 2), "categorical", 3)):
    values = np.asarray(list(itertools.product(range(levels), repeat=int(np.prod(shape)))), np.float32)
    images = (values / (levels - 1)).reshape(-1, *shape)
    cases.append((family(cell, shape, output=output, levels=levels), images))

  @jax.jit
  def totals(variables, images):
    return [jax.scipy.special.logsumexp(f.log_likelihood(v, {"image": x}))
            for (f, _), v, x in zip(cases, variables, images)]

  for (f, _), total in zip(cases, totals([init(f) for f, _ in cases], [x for _, x in cases])):
    assert abs(float(total)) < 1e-5, (f.image_shape, float(total))


@pytest.mark.parametrize("cell", CELLS)
def test_sampling_and_completion_cached_and_naive(cell):
  """The cached sampler (per pixel, one step of each layer) draws what the naive one (the whole network
  per value) draws with the same key: completions of a 3-channel categorical model of two layers keep
  what is observed, before and after the missing values, and fill the rest identically. And a sample."""
  colour = family(cell, (2, 3, 3), output="categorical", levels=4, features=6, layers=2)
  binary = family(cell, (3, 4, 1))
  rng = np.random.default_rng(4)
  images = (rng.integers(0, 4, (6, 2, 3, 3)) / 3).astype(np.float32)
  mask = (rng.random((6, 2, 3, 3)) < 0.5).astype(np.float32)

  @jax.jit
  def run(v_colour, v_binary, images, mask, key):
    return (colour.complete(v_colour, {"image": images}, mask, key),
            colour.complete(v_colour, {"image": images}, mask, key, fast=False),
            binary.sample(v_binary, key, 6))

  done, done_naive, x = map(np.asarray, run(init(colour), init(binary), images, mask, jax.random.PRNGKey(3)))
  assert done.shape == images.shape and np.isin(done, np.arange(4, dtype=np.float32) / 3).all()
  np.testing.assert_array_equal(done, done_naive)
  np.testing.assert_array_equal(done[mask > 0], images[mask > 0])
  assert (done[mask == 0] != images[mask == 0]).any()          # something was drawn
  assert x.shape == (6, 3, 4, 1) and np.isin(x, (0.0, 1.0)).all() and 0 < x.mean() < 1


def test_bad_config_is_one_clear_line():
  for cfg, match in (({"cell": "grid_lstm"}, "model.cell must be one of"),
                     ({"layers": 0}, "model.layers must be >= 1"),
                     ({"features": 2}, "one group of features per channel"),
                     ({"output": "gaussian"}, "model.output must be one of")):
    with pytest.raises(ConfigError, match=match) as err:
      registry.build("pixelrnn", cfg, (8, 8, 3))
    assert "\n" not in str(err.value)
