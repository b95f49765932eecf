"""Checks every autoregressive family gets for free: causality, normalisation, fast == naive sampling,
completion. Families are found through the registry, built from their :quick config's model section on
tiny images."""
from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import quick_experiments
from zoo import config as config_lib
from zoo import registry
from zoo.errors import ConfigError
from zoo.models._autoregressive import Autoregressive, completion_mask

FAMILIES = [n for n in registry.names() if issubclass(registry.get(n), Autoregressive)]


def tiny(name: str, image_shape, **changes) -> Autoregressive:
  model = config_lib.load(quick_experiments()[name]).model.to_dict()
  model.update(changes)
  return registry.build(name, model, image_shape)


def _init(family):
  x = jnp.zeros((1, *family.image_shape), jnp.float32)
  batch = {"image": x, "label": jnp.zeros((1,), jnp.int32)}
  return jax.jit(family.init)(jax.random.PRNGKey(0), batch)     # one compile, not one per initializer


def _kw(family, ordering):
  kw = family._logit_kw({"label": jnp.zeros((1,), jnp.int32)}, {})
  return {**kw, "ordering": ordering} if family.num_orderings > 1 else kw


def _supports(name, output):
  try:
    tiny(name, (2, 2, 1), output=output, levels=3)
    return True
  except ConfigError:
    return False


def test_the_autoregressive_families_are_registered():
  assert {"pixelcnn", "gated_pixelcnn"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_no_output_depends_on_its_own_or_a_later_value(name):
  """d logits_i / d u_j == 0 exactly for every j at or after i in the family's order (jax.jacrev)."""
  for shape in [(4, 4, 1), (2, 2, 3)] if _supports(name, "categorical") else [(4, 4, 1)]:
    family = tiny(name, shape, **({"output": "categorical", "levels": 4} if shape[-1] > 1 else {}))
    variables = _init(family)
    d = family.num_dims
    u = jax.random.uniform(jax.random.PRNGKey(1), (1, *shape), minval=-1.0, maxval=1.0)
    for ordering in range(min(family.num_orderings, 2)):
      kw = _kw(family, ordering)
      jac = jax.jit(jax.jacrev(lambda u: family.network_logits(variables, u, **kw).reshape(d, -1)))(u)
      jac = np.abs(np.asarray(jac)).reshape(d, -1, d).max(axis=1)        # (output i, input j)
      pos = np.empty(d, int)
      pos[np.asarray(family.order(**family._order_only(kw)))] = np.arange(d)
      future = pos[None, :] >= pos[:, None]                              # j at or after i
      assert np.all(jac[future] == 0.0), f"{name} {shape} ordering {ordering}: output sees the future"
      assert np.any(jac[~future] != 0.0), f"{name}: no output depends on any input"


@pytest.mark.parametrize("name,output", [(n, o) for n in FAMILIES for o in ("bernoulli", "categorical")
                                         if _supports(n, o)])
def test_probabilities_of_every_image_sum_to_one(name, output):
  shape, levels = ((3, 3, 1), 2) if output == "bernoulli" else ((2, 2, 1), 3)
  family = tiny(name, shape, output=output, levels=levels)
  variables = _init(family)
  values = np.array(list(itertools.product(range(levels), repeat=family.num_dims)), np.float32)
  x = jnp.asarray(values.reshape(-1, *shape) / (levels - 1))
  batch = {"image": x, "label": jnp.zeros((x.shape[0],), jnp.int32)}
  ll = jax.jit(family.log_likelihood)(variables, batch, jax.random.PRNGKey(0))
  assert ll.shape == (x.shape[0],)
  np.testing.assert_allclose(float(jax.scipy.special.logsumexp(ll)), 0.0, atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_fast_and_naive_sampling_draw_the_same_images(name):
  family = tiny(name, (4, 4, 1))
  variables = _init(family)
  fast = jax.jit(lambda v, r: family.sample(v, r, 6, fast=True))(variables, jax.random.PRNGKey(2))
  naive = jax.jit(lambda v, r: family.sample(v, r, 6, fast=False))(variables, jax.random.PRNGKey(2))
  assert fast.shape == (6, 4, 4, 1)
  np.testing.assert_array_equal(np.asarray(fast), np.asarray(naive))
  assert set(np.unique(np.asarray(fast))) <= {0.0, 1.0}
  other = family.sample(variables, jax.random.PRNGKey(3), 6)
  assert not np.array_equal(np.asarray(other), np.asarray(fast)), "the key does not change the samples"


@pytest.mark.parametrize("name", FAMILIES)
def test_completion_keeps_what_is_observed_and_is_exact_for_the_future(name):
  family = tiny(name, (4, 4, 1))
  variables = _init(family)
  x = (np.random.default_rng(0).random((5, 4, 4, 1)) > 0.5).astype(np.float32)
  for kind in ("bottom", "random"):
    mask = completion_mask(kind, family.image_shape, 5)
    out = np.asarray(jax.jit(family.complete)(variables, {"image": jnp.asarray(x)}, jnp.asarray(mask),
                                              jax.random.PRNGKey(4)))
    np.testing.assert_array_equal(out[mask > 0], x[mask > 0])
    assert set(np.unique(out)) <= {0.0, 1.0}
  # raster-order families condition exactly on an observed top half; no family does on a random mask
  top_observed = completion_mask("bottom", family.image_shape)[0]
  assert family.completion_is_exact(top_observed) == np.array_equal(family.order(), np.arange(16))
  assert not family.completion_is_exact(np.eye(4)[:, :, None])


def test_bad_inputs_fail_with_a_clear_error():
  family = tiny("pixelcnn", (4, 4, 1))
  with pytest.raises(ConfigError, match="model.output"):
    dataclasses.replace(family, output="gaussian").validate()
  with pytest.raises(ConfigError, match="unknown completion mask"):
    completion_mask("diagonal", (4, 4, 1))
  with pytest.raises(Exception, match="shape"):
    family.log_likelihood(_init(family), {"image": jnp.zeros((2, 5, 5, 1))})
