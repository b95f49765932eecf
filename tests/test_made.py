"""MADE specifics: autoregressive masks for every ordering, normalisation of one mask set and of the
ensemble, the training mask schedule, ordering-specific sampling and completion, and bad configs."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import registry
from zoo.errors import ConfigError
from zoo.models.made import connectivity

SHAPE = (3, 3, 1)


def _random_variables(family, seed=0):
  """The family's variables with every parameter random (init leaves the biases at zero), jitted."""
  def make(key):
    init_key, noise_key = jax.random.split(key)
    leaves, tree = jax.tree_util.tree_flatten(
        family.init(init_key, {"image": jnp.zeros((1, *family.image_shape))}))
    keys = jax.random.split(noise_key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  return jax.jit(make)(jax.random.PRNGKey(seed))


def _all_binary_images(shape):
  d = int(np.prod(shape))
  return jnp.asarray(np.array(list(itertools.product((0, 1), repeat=d)), np.float32).reshape(-1, *shape))


@pytest.fixture(scope="module")
def made():
  family = registry.build("made", {"hidden": (16, 12), "num_masks": 3, "order_agnostic": True}, SHAPE)
  return family, _random_variables(family)


@pytest.mark.parametrize("config", [
    {"hidden": (16, 12), "num_masks": 3, "order_agnostic": True},
    {"hidden": (10,), "num_masks": 2, "direct": True, "output": "categorical", "levels": 3},
    {"hidden": (), "num_masks": 2, "order_agnostic": True, "direct": True}])
def test_outputs_depend_only_on_earlier_inputs_in_each_ordering(config):
  """The Jacobian of the logits with respect to the (continuous) network input is zero for every input
  at or after the output's position in that mask set's ordering, and not zero everywhere else."""
  family = registry.build("made", config, SHAPE)
  variables = _random_variables(family)
  d, k = family.num_dims, family.num_classes
  u = jax.random.uniform(jax.random.PRNGKey(5), (1, *SHAPE), minval=-1.0, maxval=1.0)
  jacobian = jax.jit(jax.jacfwd(lambda u, m: family.network_logits(variables, u, ordering=m)))
  orders = []
  for m in range(2):
    jac = np.asarray(jacobian(u, m)).reshape(d, k, d)             # (output, class, input)
    order = np.asarray(family.order(ordering=m))
    assert sorted(order.tolist()) == list(range(d))
    position = np.argsort(order)
    later = position[None, :] >= position[:, None]                # [out, in]: input not before output
    assert np.all(jac[np.broadcast_to(later[:, None, :], jac.shape)] == 0.0), f"mask set {m} leaks"
    # the last output in the order sees something; the first sees nothing but its bias
    assert np.any(jac[order[-1]] != 0.0)
    orders.append(order)
  if family.order_agnostic:
    assert not np.array_equal(orders[0], orders[1])
  else:
    np.testing.assert_array_equal(orders[0], np.arange(d))


def test_logits_are_causal_end_to_end(made):
  """Flipping one binary pixel changes the logits of the pixels after it in the order only."""
  family, variables = made
  x = (jax.random.uniform(jax.random.PRNGKey(1), (1, *SHAPE)) < 0.5).astype(jnp.float32)
  flat = x.reshape(1, -1)
  # row 0: x; row 1 + j: x with pixel j flipped
  flips = jnp.concatenate([flat, jnp.abs(flat - jnp.eye(family.num_dims))]).reshape(-1, *SHAPE)
  logits = jax.jit(lambda v, x, m: family.logits(v, x, ordering=m))   # one compile, m traced
  for m in range(family.num_masks):
    out = np.asarray(logits(variables, flips, m)).reshape(len(flips), -1)
    position = np.argsort(np.asarray(family.order(ordering=m)))
    for j in range(family.num_dims):
      changed = out[1 + j] != out[0]
      assert not np.any(changed & (position <= position[j])), (m, j)


def test_probabilities_sum_to_one_for_each_mask_and_for_the_ensemble(made):
  family, variables = made
  batch = {"image": _all_binary_images(SHAPE)}
  ll = jax.jit(family.log_likelihood, static_argnames=("masks", "ordering"))
  for m in range(family.num_masks):
    assert float(jax.scipy.special.logsumexp(ll(variables, batch, ordering=m))) == pytest.approx(0.0, abs=1e-5)
  for masks in (None, 2):
    assert float(jax.scipy.special.logsumexp(ll(variables, batch, masks=masks))) == pytest.approx(0.0, abs=1e-5)


def test_the_ensemble_is_the_mixture_of_the_mask_sets(made):
  family, variables = made
  batch = {"image": _all_binary_images(SHAPE)[::37]}
  per_mask = np.stack([np.asarray(family.log_likelihood(variables, batch, ordering=m))
                       for m in range(family.num_masks)])
  want = np.log(np.mean(np.exp(per_mask.astype(np.float64)), axis=0))
  np.testing.assert_allclose(np.asarray(family.log_likelihood(variables, batch)), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(family.log_likelihood(variables, batch, masks=1)), per_mask[0], rtol=1e-6)
  metrics = family.eval_metrics(variables, batch, None, masks=2)
  np.testing.assert_allclose(np.asarray(metrics["nll_one_mask"]), -per_mask[0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(metrics["nll"]), -np.log(np.mean(np.exp(per_mask[:2]), axis=0)),
                             rtol=1e-5)
  one = registry.build("made", {"hidden": (16, 12), "num_masks": 3, "order_agnostic": True,
                                "test_masks": 1}, SHAPE)
  np.testing.assert_allclose(np.asarray(one.log_likelihood(variables, batch)), per_mask[0], rtol=1e-6)


def test_training_step_s_uses_mask_set_s_mod_num_masks(made):
  family, variables = made
  batch = {"image": (jax.random.uniform(jax.random.PRNGKey(2), (8, *SHAPE)) < 0.5).astype(jnp.float32)}
  loss = jax.jit(lambda v, s: family.loss("model", v, batch, jax.random.PRNGKey(0), s)[0])
  for step in (0, 1, 2, 3, 7):
    want = -float(jnp.mean(family.log_likelihood(variables, batch, ordering=step % family.num_masks)))
    assert float(loss(variables, jnp.int32(step))) == pytest.approx(want, rel=1e-6)


def test_masks_are_reproducible_constants():
  a = connectivity(9, (5, 4), 3, True, 0)
  b = connectivity(9, (5, 4), 5, True, 0)
  np.testing.assert_array_equal(a[0], b[0][:3])                 # set m does not depend on num_masks
  for x, y in zip(a[1], b[1]):
    np.testing.assert_array_equal(x, y[:3])
  c = connectivity(9, (5, 4), 3, True, 1)
  assert not np.array_equal(a[0], c[0])
  # a hidden unit's degree is in [the smallest degree of the layer below, D - 2]: no unit is unused
  low = np.zeros((3, 1), np.int32)
  for deg in a[1]:
    assert np.all(deg >= low) and np.all(deg <= 9 - 2)
    low = deg.min(axis=1, keepdims=True)


def test_sampling_and_completion_per_ordering(made):
  family, variables = made
  draw = jax.jit(lambda v, r, m: family.sample(v, r, 32, ordering=m), static_argnums=2)
  s0, s1 = (np.asarray(draw(variables, jax.random.PRNGKey(0), m)) for m in (0, 1))
  assert s0.shape == (32, *SHAPE) and set(np.unique(s0)) <= {0.0, 1.0}
  assert not np.array_equal(s0, s1)
  x = (jax.random.uniform(jax.random.PRNGKey(1), (8, *SHAPE)) < 0.5).astype(jnp.float32)
  mask = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (8, *SHAPE)) < 0.5)
  out = np.asarray(family.complete(variables, {"image": x}, mask, jax.random.PRNGKey(3), ordering=2))
  np.testing.assert_array_equal(out[mask], np.asarray(x)[mask])
  # exactness follows the mask set's own order
  order = np.asarray(family.order(ordering=2))
  first_half = np.zeros(family.num_dims)
  first_half[order[:4]] = 1
  assert family.completion_is_exact(first_half.reshape(SHAPE), ordering=2)
  assert not family.completion_is_exact(1.0 - first_half.reshape(SHAPE), ordering=2)


def test_orthogonal_init_gives_orthonormal_unmasked_kernels():
  family = registry.build("made", {"hidden": (12, 12), "kernel_init": "orthogonal", "direct": True}, SHAPE)
  params = family.init(jax.random.PRNGKey(0), {"image": jnp.zeros((1, *SHAPE))})["params"]["model"]
  square = np.asarray(params["dense_1"]["kernel"])            # 12 x 12: an orthogonal matrix
  np.testing.assert_allclose(square.T @ square, np.eye(12), atol=1e-5)
  wide = np.asarray(params["dense_0"]["kernel"])              # 9 x 12: orthonormal rows
  np.testing.assert_allclose(wide @ wide.T, np.eye(9), atol=1e-5)


def test_bad_configs_and_options_fail_clearly(made):
  for config, match in [({"hidden": (0,)}, "hidden"), ({"hidden": ()}, "direct"),
                        ({"num_masks": 0}, "num_masks"), ({"num_masks": 2, "test_masks": 3}, "test_masks"),
                        ({"activation": "relux"}, "activation"), ({"output": "poisson"}, "output"),
                        ({"kernel_init": "glorot"}, "kernel_init")]:
    with pytest.raises(ConfigError, match=match):
      registry.build("made", config, SHAPE)
  family, variables = made
  batch = {"image": jnp.zeros((2, *SHAPE))}
  with pytest.raises(ConfigError, match="ordering=3"):
    family.sample(variables, jax.random.PRNGKey(0), 2, ordering=3)
  with pytest.raises(ConfigError, match="masks=4"):
    family.log_likelihood(variables, batch, None, masks=4)
  with pytest.raises(ConfigError, match="unknown option"):
    family.eval_metrics(variables, batch, None, k=5)
  single = registry.build("made", {"hidden": (4,)}, SHAPE)
  assert single.num_orderings == 1 and family.num_orderings == 3
  with pytest.raises(ConfigError, match="one generation order"):
    single.sample(single.init(jax.random.PRNGKey(0), batch), jax.random.PRNGKey(0), 2, ordering=1)
