"""What is particular to PixelCNN and Gated PixelCNN: the blind spot, the channel order, conditioning, dropout."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.errors import ConfigError
from zoo.models import _layers
from zoo.models.pixelcnn import GatedPixelCNN, PixelCNN


def _init(family, label=None):
  x = jnp.zeros((1, *family.image_shape), jnp.float32)
  return jax.jit(family.init)(jax.random.PRNGKey(0), {"image": x})    # one compile, not one per initializer


def _dependence(family, variables, **kw):
  """(D, D) bool: does output i depend on input j (jacobian of the logits, max over K)?"""
  d = family.num_dims
  jacobian = jax.jit(jax.jacrev(lambda u: family.network_logits(variables, u, **kw).reshape(d, -1)))
  dep = np.zeros((d, d), bool)
  for seed in range(3):     # a ReLU that is off at one input hides a dependence: take several inputs
    u = jax.random.uniform(jax.random.PRNGKey(seed), (1, *family.image_shape), minval=-1.0, maxval=1.0)
    dep |= np.abs(np.asarray(jacobian(u))).reshape(d, -1, d).max(axis=1) > 0
  return dep


def test_gated_pixelcnn_sees_every_earlier_pixel_and_pixelcnn_has_a_blind_spot():
  shape = (5, 5, 1)
  gated = GatedPixelCNN(image_shape=shape, features=8, layers=4, first_kernel=3, kernel=3,
                        output_features=(8,))
  dep = _dependence(gated, _init(gated))
  earlier = np.tril(np.ones((25, 25), bool), -1)            # j < i in raster order
  assert np.all(dep[earlier]), "the gated stacks leave pixels before i that do not influence i"
  assert not np.any(dep[~earlier])
  plain = PixelCNN(image_shape=shape, features=4, blocks=2, first_kernel=3, output_features=(4,))
  dep = _dependence(plain, _init(plain))
  assert not np.any(dep[~earlier])
  # pixel (3, 0) cannot see (1, 3): up two rows and right three columns is outside masked 3x3 stacks
  assert not dep[3 * 5 + 0, 1 * 5 + 3] and earlier[3 * 5, 1 * 5 + 3]


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_rgb_channels_are_drawn_in_order_and_fast_sampling_matches(cls):
  kw = dict(blocks=1) if cls is PixelCNN else dict(layers=2)
  family = cls(image_shape=(3, 3, 3), features=6, first_kernel=3, output_features=(6,),
               output="categorical", levels=4, **kw)
  family.validate()
  variables = _init(family)
  dep = _dependence(family, variables)
  assert not np.any(dep[np.triu(np.ones((27, 27), bool))])
  # green sees red of its own pixel, blue sees red and green, red sees neither
  p = 4 * 3
  assert dep[p + 1, p] and dep[p + 2, p] and dep[p + 2, p + 1] and not dep[p, p + 1]
  fast = family.sample(variables, jax.random.PRNGKey(5), 3, fast=True)
  naive = family.sample(variables, jax.random.PRNGKey(5), 3, fast=False)
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(naive))
  assert set(np.round(np.unique(np.asarray(fast)) * 3).astype(int)) <= {0, 1, 2, 3}


def test_the_class_label_conditions_the_gated_pixelcnn():
  family = GatedPixelCNN(image_shape=(4, 4, 1), features=4, layers=2, first_kernel=3,
                         output_features=(4,), num_labels=3)
  variables = _init(family)
  u = jnp.zeros((2, 4, 4, 1))
  a = jax.jit(family.network_logits)(variables, u, label=jnp.array([0, 1]))
  assert not np.allclose(np.asarray(a[0]), np.asarray(a[1]))
  x = jnp.zeros((2, 4, 4, 1))
  log_likelihood = jax.jit(family.log_likelihood)
  ll = log_likelihood(variables, {"image": x, "label": jnp.array([2, 2])})
  ll2 = log_likelihood(variables, {"image": x, "label": jnp.array([0, 2])})
  assert ll[1] == ll2[1] and ll[0] != ll2[0]
  draw = jax.jit(lambda v, r, fast: family.sample(v, r, 3, label=jnp.array([0, 1, 2]), fast=fast),
                 static_argnums=2)
  imgs = draw(variables, jax.random.PRNGKey(0), True)
  assert imgs.shape == (3, 4, 4, 1)
  np.testing.assert_array_equal(np.asarray(imgs), np.asarray(draw(variables, jax.random.PRNGKey(0), False)))
  with pytest.raises(ConfigError, match="give a label"):
    family.network_logits(variables, u)
  with pytest.raises(ConfigError, match="unconditional"):
    unconditional = GatedPixelCNN(image_shape=(4, 4, 1), features=4, layers=2, first_kernel=3,
                                  output_features=(4,))
    unconditional.network_logits(variables, u, label=jnp.array([0, 1]))


def test_causal_mask_is_the_definition():
  m = _layers.causal_mask((3, 3), np.array([0, 1]), np.array([0, 1]), "A")
  assert m[0].all() and m[1, 0].all() and not m[2].any() and not m[1, 2].any()
  np.testing.assert_array_equal(m[1, 1], [[0, 1], [0, 0]])       # in 0 -> out 1 only
  m = _layers.causal_mask((3, 3), np.array([0, 1]), np.array([0, 1]), "B")
  np.testing.assert_array_equal(m[1, 1], [[1, 1], [0, 1]])
  np.testing.assert_array_equal(_layers.feature_groups(6, 3), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(_layers.feature_groups(6, 3, repeat=2), [0, 0, 1, 1, 2, 2])
  np.testing.assert_array_equal(_layers.feature_groups(12, 3, repeat=2), [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


@pytest.mark.parametrize("cls", [PixelCNN, GatedPixelCNN])
def test_dropout_acts_in_training_only_and_keeps_the_network_causal(cls):
  kw = dict(blocks=2) if cls is PixelCNN else dict(layers=3)
  family = cls(image_shape=(4, 4, 1), features=8, first_kernel=3, output_features=(8,), dropout=0.5, **kw)
  family.validate()
  variables = _init(family)
  x = (jax.random.uniform(jax.random.PRNGKey(1), (6, 4, 4, 1)) > 0.5).astype(jnp.float32)
  batch = {"image": x}
  losses = [float(family.loss("model", variables, batch, jax.random.PRNGKey(k), 0)[0]) for k in (0, 0, 1)]
  assert losses[0] == losses[1] and losses[0] != losses[2]
  # evaluation and sampling see the deterministic network: the dropout-free model's likelihood, whatever
  # the key (dropout has no parameters, so the same variables serve both)
  plain = dataclasses.replace(family, dropout=0.0)
  ll = family.log_likelihood(variables, batch, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(ll), np.asarray(plain.log_likelihood(variables, batch)))
  assert -float(jnp.mean(ll)) not in losses
  # a dropped unit removes paths, never adds one: training logits stay causal
  dep = _dependence(family, variables, dropout_rng=jax.random.PRNGKey(2))
  assert not np.any(dep[np.triu(np.ones((16, 16), bool))])
  with pytest.raises(ConfigError, match="dropout"):
    dataclasses.replace(family, dropout=1.0).validate()


@pytest.mark.parametrize("rate,shape", [(0.15, (64, 7, 7, 64)), (0.5, (3, 5, 7))])   # odd size: an odd half
def test_the_16_bit_dropout_drops_at_its_rate_and_keeps_the_mean(rate, shape):
  x = jnp.ones(shape)
  drop = _layers.Dropout(rate)
  y = np.asarray(jax.jit(lambda k: drop.apply({}, x, False, rngs={"dropout": k}))(jax.random.PRNGKey(0)))
  keep = round((1 - rate) * 65536)
  assert set(np.unique(y)) <= {0.0, np.float32(65536 / keep)}
  dropped = float(np.mean(y == 0))
  assert abs(dropped - rate) < 4 * np.sqrt(rate * (1 - rate) / y.size) + 1e-9     # 4 standard errors
  y2 = np.asarray(drop.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(1)}))
  assert not np.array_equal(y, y2)
  np.testing.assert_array_equal(np.asarray(drop.apply({}, x, True)), np.asarray(x))


@pytest.mark.parametrize("bad", [dict(first_kernel=4), dict(features=0), dict(blocks=-1)])
def test_bad_pixelcnn_configs_fail_clearly(bad):
  with pytest.raises(ConfigError):
    PixelCNN(image_shape=(4, 4, 1), **bad).validate()
  with pytest.raises(ConfigError, match="one group per channel"):
    PixelCNN(image_shape=(4, 4, 3), features=2).validate()


@pytest.mark.parametrize("x_shape,k_shape,padding", [
    ((2, 5, 7, 3), (3, 3, 3, 4), ((1, 1), (1, 1))),      # odd sizes
    ((1, 4, 4, 2), (2, 3, 2, 5), ((1, 0), (1, 1))),      # batch 1, a vertical-stack kernel
    ((3, 6, 6, 4), (1, 2, 4, 4), ((0, 0), (1, 0))),      # a horizontal-stack kernel
    ((2, 8, 8, 1), (7, 7, 1, 6), ((3, 3), (3, 3)))])     # a first layer
def test_conv2d_and_its_tap_weight_gradient_equal_xla(x_shape, k_shape, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape)
  mask = (np.random.default_rng(0).random(k_shape[:2] + (1, 1)) > 0.4) * np.ones(k_shape, np.float32)
  ours = lambda x, k: jnp.sum(jnp.sin(_layers.conv2d(x, k * mask, padding, mask)))
  xla = lambda x, k: jnp.sum(jnp.sin(_layers._native_conv(x, k * mask, padding)))
  np.testing.assert_allclose(ours(x, k), xla(x, k), rtol=1e-6)
  for a, b in zip(jax.jit(jax.grad(ours, (0, 1)))(x, k), jax.jit(jax.grad(xla, (0, 1)))(x, k)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
