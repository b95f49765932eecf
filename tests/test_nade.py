"""NADE specifics: the likelihood against a plain per-position NumPy loop, normalisation, the O(D H)
sampler against the naive one, completion, and bad configs."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import registry
from zoo.errors import ConfigError


def _random_variables(family, seed=0):
  """The family's variables with every parameter random (init leaves the biases at zero), jitted."""
  def make(key):
    init_key, noise_key = jax.random.split(key)
    leaves, tree = jax.tree_util.tree_flatten(
        family.init(init_key, {"image": jnp.zeros((1, *family.image_shape))}))
    keys = jax.random.split(noise_key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  return jax.jit(make)(jax.random.PRNGKey(seed))


def _numpy_log_likelihood(family, variables, x):
  """log p(x) by the definition: for each position d, h_d = sigmoid(c + sum_{j<d} x_j W_j)."""
  p = {k: np.asarray(a, np.float64) for k, a in variables["params"]["model"].items()}
  b = x.shape[0]
  disc = np.asarray(family.discretize(jnp.asarray(x))).reshape(b, -1)
  if family.output == "bernoulli":
    inputs = disc.astype(np.float64)
  else:
    inputs = disc * 2.0 / (family.levels - 1) - 1.0
  out = np.zeros(b)
  for n in range(b):
    for d in range(family.num_dims):
      a = p["c"] + inputs[n, :d] @ p["W"][:d]
      h = 1.0 / (1.0 + np.exp(-a))
      logits = h @ p["V"][d] + p["b"][d]                 # (K,)
      if family.output == "bernoulli":
        prob1 = 1.0 / (1.0 + np.exp(-logits[0]))
        out[n] += np.log(prob1 if disc[n, d] else 1.0 - prob1)
      else:
        out[n] += logits[disc[n, d]] - np.log(np.sum(np.exp(logits)))
  return out


def _all_images(family):
  levels = 2 if family.output == "bernoulli" else family.levels
  grid = np.array(list(itertools.product(range(levels), repeat=family.num_dims)), np.float32)
  return jnp.asarray((grid / (levels - 1)).reshape(-1, *family.image_shape))


@pytest.mark.parametrize("config,shape", [({"hidden": 5}, (3, 3, 1)),
                                          ({"hidden": 4, "output": "categorical", "levels": 4}, (2, 1, 2))])
def test_likelihood_equals_a_per_position_numpy_loop(config, shape):
  family = registry.build("nade", config, shape)
  variables = _random_variables(family)
  x = jax.random.uniform(jax.random.PRNGKey(3), (6, *shape))
  got = np.asarray(jax.jit(family.log_likelihood)(variables, {"image": x}))
  np.testing.assert_allclose(got, _numpy_log_likelihood(family, variables, np.asarray(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,shape", [({"hidden": 5}, (3, 3, 1)),
                                          ({"hidden": 3, "output": "categorical", "levels": 3}, (2, 2, 1))])
def test_probabilities_of_every_image_sum_to_one(config, shape):
  family = registry.build("nade", config, shape)
  variables = _random_variables(family)
  ll = family.log_likelihood(variables, {"image": _all_images(family)})
  assert float(jax.scipy.special.logsumexp(ll)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("config,shape", [({"hidden": 6}, (3, 3, 1)),
                                          ({"hidden": 4, "output": "categorical", "levels": 5}, (2, 1, 2))])
def test_fast_and_naive_samples_are_identical(config, shape):
  family = registry.build("nade", config, shape)
  variables = _random_variables(family)
  draw = jax.jit(lambda v, r, fast: family.sample(v, r, 64, fast=fast), static_argnums=2)
  for seed in range(2):
    fast = np.asarray(draw(variables, jax.random.PRNGKey(seed), True))
    naive = np.asarray(draw(variables, jax.random.PRNGKey(seed), False))
    np.testing.assert_array_equal(fast, naive)
  assert fast.shape == (64, *shape) and 0.0 < fast.mean() < 1.0


def test_samples_follow_the_model():
  """On 2x1 binary images the sample frequencies of the four images match exp(log_likelihood)."""
  family = registry.build("nade", {"hidden": 3}, (2, 1, 1))
  variables = _random_variables(family)
  x = _all_images(family)
  probs = np.exp(np.asarray(family.log_likelihood(variables, {"image": x})))
  s = np.asarray(jax.jit(lambda v, r: family.sample(v, r, 20_000))(variables, jax.random.PRNGKey(0)))
  codes = (s.reshape(len(s), -1) @ np.array([2, 1])).astype(int)
  freq = np.bincount(codes, minlength=4) / len(s)
  np.testing.assert_allclose(freq, probs, atol=0.015)


def test_completion_keeps_observed_pixels_and_fast_equals_naive():
  family = registry.build("nade", {"hidden": 6}, (3, 3, 1))
  variables = _random_variables(family)
  x = (jax.random.uniform(jax.random.PRNGKey(1), (16, 3, 3, 1)) < 0.5).astype(jnp.float32)
  mask = jax.random.uniform(jax.random.PRNGKey(2), (16, 3, 3, 1)) < 0.5
  out = {fast: np.asarray(family.complete(variables, {"image": x}, mask, jax.random.PRNGKey(3), fast=fast))
         for fast in (True, False)}
  np.testing.assert_array_equal(out[True], out[False])
  np.testing.assert_array_equal(out[True][np.asarray(mask)], np.asarray(x)[np.asarray(mask)])
  assert family.completion_is_exact(np.array([1, 1, 1, 1, 0, 0, 0, 0, 0]).reshape(3, 3, 1))
  assert not family.completion_is_exact(np.array([0, 1, 1, 1, 1, 1, 1, 1, 1]).reshape(3, 3, 1))


def test_loss_is_the_mean_nll():
  family = registry.build("nade", {"hidden": 8}, (3, 3, 1))
  x = (jax.random.uniform(jax.random.PRNGKey(1), (8, 3, 3, 1)) < 0.3).astype(jnp.float32)
  variables = _random_variables(family)
  both = jax.jit(lambda v: (family.loss("model", v, {"image": x}, jax.random.PRNGKey(2), 0)[:2],
                            -jnp.mean(family.log_likelihood(v, {"image": x}))))
  (loss, metrics), want = both(variables)
  want = float(want)
  assert float(loss) == pytest.approx(want, rel=1e-6) and float(metrics["nll"]) == pytest.approx(want, rel=1e-6)


def test_bad_configs_and_options_fail_clearly():
  with pytest.raises(ConfigError, match="hidden"):
    registry.build("nade", {"hidden": 0}, (3, 3, 1))
  with pytest.raises(ConfigError, match="output"):
    registry.build("nade", {"output": "gaussian"}, (3, 3, 1))
  with pytest.raises(ConfigError, match="levels"):
    registry.build("nade", {"output": "categorical", "levels": 1}, (3, 3, 1))
  with pytest.raises(ConfigError, match="unknown config key"):
    registry.build("nade", {"hiden": 5}, (3, 3, 1))
  family = registry.build("nade", {"hidden": 3}, (2, 2, 1))
  variables = family.init(jax.random.PRNGKey(0), {"image": jnp.zeros((1, 2, 2, 1))})
  with pytest.raises(ConfigError, match="no estimator"):
    family.log_likelihood(variables, {"image": jnp.zeros((1, 2, 2, 1))}, None, k=5)
  with pytest.raises(ConfigError, match="one generation order"):
    family.sample(variables, jax.random.PRNGKey(0), 2, ordering=1)
