"""VAE specifics: the analytic KL, the IWAE bound and its chunked evaluation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import fit
from zoo import registry
from zoo.family import bits_per_dim


@pytest.fixture(scope="module")
def vae_and_vars():
  family = registry.build("vae", {"hidden": (64,), "latent_dim": 8, "iwae_chunk": 3}, (28, 28, 1))
  x = (jax.random.uniform(jax.random.PRNGKey(1), (64, 28, 28, 1)) < 0.2).astype(jnp.float32)
  variables = family.init(jax.random.PRNGKey(0), {"image": x})
  return family, variables, x


def test_analytic_kl_matches_monte_carlo(vae_and_vars):
  family, variables, x = vae_and_vars
  _, kl = family.elbo_terms(variables, x[:4], jax.random.PRNGKey(2))
  mean, log_std = family.encode(variables, {"image": x[:4]})
  mean, log_std = mean[None], log_std[None]
  z = mean + jnp.exp(log_std) * jax.random.normal(jax.random.PRNGKey(3), (200_000,) + mean.shape[1:])
  log_q = jnp.sum(-0.5 * ((z - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * np.log(2 * np.pi), -1)
  log_p = jnp.sum(-0.5 * z ** 2 - 0.5 * np.log(2 * np.pi), -1)
  mc = np.asarray(jnp.mean(log_q - log_p, axis=0))
  np.testing.assert_allclose(np.asarray(kl), mc, rtol=0.02, atol=0.01)


def test_iwae_is_above_the_elbo_and_rises_with_k(vae_and_vars):
  family, variables, x = vae_and_vars
  batch = {"image": x}
  means = [float(jnp.mean(family.log_likelihood(variables, batch, jax.random.PRNGKey(5), k=k)))
           for k in (1, 5, 50, 500)]
  assert all(b > a for a, b in zip(means, means[1:])), means


def test_chunked_iwae_equals_the_direct_logsumexp(vae_and_vars):
  family, variables, x = vae_and_vars
  rng = jax.random.PRNGKey(7)
  k, chunk = 10, family.iwae_chunk          # 4 chunks of 3, the last one half past k
  got = family.iwae(variables, x[:8], rng, k)
  mean, log_std = family.encode(variables, {"image": x[:8]})
  log_w = jnp.concatenate([family._log_weights(variables, x[:8], mean, log_std, jax.random.fold_in(rng, i), chunk)
                           for i in range(4)])[:k]
  want = jax.scipy.special.logsumexp(log_w, axis=0) - np.log(k)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_large_k_runs_in_chunks(vae_and_vars):
  family, variables, x = vae_and_vars
  ll = jax.jit(lambda v, b, r: family.log_likelihood(v, b, r, k=5000))(variables, {"image": x[:2]},
                                                                       jax.random.PRNGKey(0))
  assert ll.shape == (2,) and np.all(np.isfinite(np.asarray(ll)))


def test_elbo_is_a_bound_on_binary_data_and_bits_per_dim(vae_and_vars):
  family, variables, x = vae_and_vars
  ll = np.asarray(family.log_likelihood(variables, {"image": x}, jax.random.PRNGKey(0)))
  assert np.all(ll < 0)
  m = family.eval_metrics(variables, {"image": x}, jax.random.PRNGKey(0))
  np.testing.assert_allclose(np.asarray(m["bits_per_dim"]), np.asarray(m["nll"]) / (784 * np.log(2)), rtol=1e-6)
  assert bits_per_dim(784 * np.log(2), 784) == pytest.approx(1.0)


def test_gaussian_and_conv_variants_train_a_step():
  for cfg in ({"likelihood": "gaussian", "hidden": (32,), "latent_dim": 4},
              {"encoder": "conv", "conv_features": (8, 16), "hidden": (32,), "latent_dim": 4, "train_k": 3}):
    family = registry.build("vae", cfg, (28, 28, 1))
    x = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1))
    # jitted throughout: op by op, each primitive compiles on its own (20 s for the two variants)
    v = jax.jit(family.init)(jax.random.PRNGKey(0), {"image": x})
    loss_fn = lambda p: family.loss("model", {"params": {"model": p}}, {"image": x}, jax.random.PRNGKey(2), 0)[0]
    p = v["params"]["model"]
    first = float(jax.jit(loss_fn)(p))
    p = fit(loss_fn, p, 20, 1e-2)
    assert float(jax.jit(loss_fn)(p)) < first
    sample = jax.jit(lambda p, r: family.sample({"params": {"model": p}}, r, 3))
    assert sample(p, jax.random.PRNGKey(0)).shape == (3, 28, 28, 1)


def test_bad_model_config_names_the_nearest_key():
  from zoo.errors import ConfigError
  with pytest.raises(ConfigError, match="latent_dim"):
    registry.build("vae", {"latent_dims": 3}, (28, 28, 1))
  with pytest.raises(ConfigError, match="divisible by 4"):
    registry.build("vae", {"encoder": "conv"}, (30, 30, 1))


def test_bernoulli_log_prob_matches_the_textbook_form():
  from zoo.models._layers import bernoulli_log_prob
  logits = jnp.linspace(-60.0, 60.0, 241)
  for x in (0.0, 1.0, 0.25):
    textbook = x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)
    np.testing.assert_allclose(np.asarray(bernoulli_log_prob(x, logits)), np.asarray(textbook), atol=2e-6)
