"""RBM specifics: exact log Z, the reported likelihood, CD-k gradients, persistent chains, clamped Gibbs."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from helpers import tiny_config, tree_equal
from zoo import registry
from zoo.models import rbm


def _family(name="rbm", shape=(2, 5, 1), **fields):
  return registry.build(name, {"num_hidden": 6, **fields}, shape)


def _with_params(family, key, scale=1.0, data=None):
  """The family's variables with random weights and biases (and data statistics from ``data``)."""
  x = jnp.zeros((1, *family.image_shape))
  variables = family.init(jax.random.PRNGKey(0), {"image": x})
  k1, k2, k3 = jax.random.split(key, 3)
  d, h = family.num_dims, family.num_hidden
  variables["params"]["model"] = {
      "kernel": scale * jax.random.normal(k1, (d, h)), "visible_bias": 0.5 * jax.random.normal(k2, (d,)),
      "hidden_bias": 0.5 * jax.random.normal(k3, (h,))}
  if data is not None:
    variables["data_stats"] = rbm.update_data_stats(variables["data_stats"], data.reshape(data.shape[0], -1))
  return variables


def _all_binary(d):
  return np.array(list(itertools.product([0, 1], repeat=d)), np.float64)


def _numpy_log_p(params, v):
  """log p(v) for every row of v, in float64, by summing exp(-E(v, h)) over every (v, h)."""
  w, b, c = (np.asarray(params[k], np.float64) for k in ("kernel", "visible_bias", "hidden_bias"))
  hs = _all_binary(w.shape[1])
  def log_unnorm(vs):
    e = (vs @ b)[:, None] + (hs @ c)[None] + vs @ w @ hs.T
    top = e.max(1, keepdims=True)
    return (top + np.log(np.exp(e - top).sum(1, keepdims=True)))[:, 0]
  all_v = log_unnorm(_all_binary(w.shape[0]))
  log_z = all_v.max() + np.log(np.exp(all_v - all_v.max()).sum())
  return log_unnorm(np.asarray(v, np.float64)) - log_z, log_z


@pytest.mark.parametrize("d,h", [(10, 6), (6, 10)])      # enumerates the hidden, then the visible layer
def test_exact_log_partition_by_enumeration(d, h):
  params = rbm.init_params(jax.random.PRNGKey(1), d, h, 1.0)
  params["visible_bias"] = jnp.linspace(-1, 1, d)
  params["hidden_bias"] = jnp.linspace(1, -2, h)
  _, want = _numpy_log_p(params, np.zeros((1, d)))
  assert float(rbm.exact_log_partition(params, chunk=16)) == pytest.approx(want, abs=1e-4)


def test_reported_log_likelihood_is_the_exact_one_when_exact():
  family = _family()
  assert family.exact
  variables = _with_params(family, jax.random.PRNGKey(3))
  x = (jax.random.uniform(jax.random.PRNGKey(4), (8, 2, 5, 1)) < 0.4).astype(jnp.float32)
  want, _ = _numpy_log_p(variables["params"]["model"], np.asarray(x).reshape(8, -1))
  rng = jax.random.PRNGKey(5)
  context = family.eval_context(variables, rng)
  got = family.log_likelihood({**variables, **context}, {"image": x}, rng)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  metrics = family.eval_metrics({**variables, **context}, {"image": x}, rng)
  np.testing.assert_allclose(np.asarray(metrics["nll"]), -want, atol=1e-4)
  assert float(metrics["log_z_std_err"][0]) == 0.0
  # the same model with log Z by AIS: within the estimate's own error
  ais_family = _family(exact_max_units=0, ais_chains=200, ais_temperatures=1000)
  assert not ais_family.exact
  ctx = jax.jit(ais_family.eval_context)(variables, rng)["log_partition"]
  est = ais_family.log_likelihood({**variables, "log_partition": ctx}, {"image": x}, rng)
  assert np.max(np.abs(np.asarray(est) - want)) < 3 * float(ctx["log_z_std_err"]) + 1e-3
  # anomaly score = free energy = -log p(x) - log Z
  score = family.anomaly_score(variables, {"image": x})
  np.testing.assert_allclose(np.asarray(score), -want - float(context["log_partition"]["log_z"]), atol=1e-4)


def test_gaussian_rbm_density_integrates_to_one():
  # 2 Gaussian pixels standardized by data statistics: p(x) must integrate to 1 over the plane
  family = _family("gaussian_rbm", shape=(1, 2, 1), num_hidden=3, min_std=0.05)
  data = jnp.array([[0.2, 0.9], [0.4, 0.1], [0.3, 0.5]]).reshape(3, 1, 2, 1)
  variables = _with_params(family, jax.random.PRNGKey(6), scale=0.8, data=data)
  grid = jnp.linspace(-3.0, 3.5, 801)
  xs = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2, 1)
  ctx = family.eval_context(variables, jax.random.PRNGKey(0))
  log_p = jax.jit(lambda v, x: family.log_likelihood(v, {"image": x}, jax.random.PRNGKey(0)))(
      {**variables, **ctx}, xs)
  cell = float(grid[1] - grid[0]) ** 2
  assert float(jnp.sum(jnp.exp(log_p)) * cell) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("k,persistent,neg_visible", [(1, False, "sample"), (3, False, "sample"),
                                                       (2, False, "mean"), (1, True, "sample")])
def test_surrogate_gradient_is_the_textbook_cd_statistics(k, persistent, neg_visible):
  family = _family(cd_k=k, persistent=persistent, neg_visible=neg_visible, num_chains=5)
  variables = _with_params(family, jax.random.PRNGKey(7), scale=0.5)
  x = (jax.random.uniform(jax.random.PRNGKey(8), (12, 2, 5, 1)) < 0.5).astype(jnp.float32)
  batch, rng = {"image": x}, jax.random.PRNGKey(9)
  v0 = np.asarray(x, np.float64).reshape(12, -1)
  v_neg, _ = family.negative_phase(variables, jnp.asarray(v0, jnp.float32), rng)   # the loss's own samples
  v_neg = np.asarray(v_neg, np.float64)

  def loss(p):
    return family.loss("model", {**variables, "params": {"model": p}}, batch, rng, 0)[0]
  grads = jax.grad(loss)(variables["params"]["model"])

  p = {k_: np.asarray(v, np.float64) for k_, v in variables["params"]["model"].items()}
  sigmoid = lambda a: 1 / (1 + np.exp(-a))
  h0 = sigmoid(v0 @ p["kernel"] + p["hidden_bias"])
  hk = sigmoid(v_neg @ p["kernel"] + p["hidden_bias"])
  # descent on the surrogate = ascent on <v h>_data - <v h>_negative
  np.testing.assert_allclose(-np.asarray(grads["kernel"]), v0.T @ h0 / len(v0) - v_neg.T @ hk / len(v_neg),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(-np.asarray(grads["visible_bias"]), v0.mean(0) - v_neg.mean(0), atol=1e-5)
  np.testing.assert_allclose(-np.asarray(grads["hidden_bias"]), h0.mean(0) - hk.mean(0), atol=1e-5)
  assert v_neg.shape == ((5 if persistent else 12), 10)
  if neg_visible == "sample":
    assert set(np.unique(v_neg)) <= {0.0, 1.0}


def test_clamped_gibbs_never_changes_the_observed_pixels():
  family = _family(num_hidden=6, sample_steps=30)
  variables = _with_params(family, jax.random.PRNGKey(10), scale=2.0)
  params = variables["params"]["model"]
  x = (jax.random.uniform(jax.random.PRNGKey(11), (16, 10)) < 0.5).astype(jnp.float32)
  observed = jax.random.uniform(jax.random.PRNGKey(12), (16, 10)) < 0.5
  start = jnp.where(observed, x, 1.0 - x)
  _, _, states = jax.jit(lambda v, r: rbm.gibbs(params, v, r, 30, clamp=(observed, x), trace=True))(
      start, jax.random.PRNGKey(13))
  states = np.asarray(states)
  obs = np.broadcast_to(np.asarray(observed), states.shape)
  assert np.array_equal(states[obs], np.broadcast_to(np.asarray(x), states.shape)[obs])
  assert not np.array_equal(states[:, ~np.asarray(observed)][0], states[:, ~np.asarray(observed)][-1])
  # the family's imputation, Bernoulli and Gaussian: observed pixels come back bit for bit
  images = x.reshape(16, 2, 5, 1)
  mask = observed.reshape(16, 2, 5, 1)
  for fam in (family, _family("gaussian_rbm", num_hidden=6, sample_steps=30)):
    v = _with_params(fam, jax.random.PRNGKey(14), data=images)
    out = np.asarray(jax.jit(fam.impute)(v, {"image": images}, mask, jax.random.PRNGKey(15)))
    assert np.array_equal(out[np.asarray(mask)], np.asarray(images)[np.asarray(mask)])
    assert out.min() >= 0 and out.max() <= 1
    assert not np.array_equal(out[~np.asarray(mask)], np.asarray(images)[~np.asarray(mask)])


def test_persistent_chains_survive_a_checkpoint_and_resume_continues_them(tmp_path):
  settings = dict(steps=4, checkpoint_every=2, num_devices=1, num_samples=0, eval_examples=32,
                  **{"model.persistent": True, "model.num_chains": 8, "model.num_hidden": 16})
  zoo.train_and_evaluate(tiny_config("rbm", **settings), tmp_path / "whole", progress=False)
  zoo.train_and_evaluate(tiny_config("rbm", **{**settings, "steps": 2}), tmp_path / "split", progress=False)
  half = zoo.load(tmp_path / "split")
  zoo.train_and_evaluate(tiny_config("rbm", **settings), tmp_path / "split", progress=False)
  whole, split = zoo.load(tmp_path / "whole"), zoo.load(tmp_path / "split")
  chains = lambda m: np.asarray(m.state.nontrainable["chains"]["visible"])
  assert chains(half).shape == (8, 784) and set(np.unique(chains(half))) <= {0.0, 1.0}
  assert not np.array_equal(chains(half), chains(whole))      # the chains moved in steps 3 and 4
  assert np.array_equal(chains(split), chains(whole))         # ... along the same path after the resume
  assert tree_equal(jax.device_get(whole.state), jax.device_get(split.state))
  # and the checkpoint at step 2 holds the chains the run had then
  at2 = zoo.load(tmp_path / "whole", step=2)
  assert np.array_equal(chains(at2), chains(half))
  assert float(whole.state.nontrainable["data_stats"]["count"]) == 4 * 16
