"""Autoencoder specifics: corruption, code statistics for sampling, anomaly scores."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from helpers import fit
from zoo import registry


def test_masking_noise_zeroes_about_the_asked_fraction():
  family = registry.build("autoencoder", {"noise": "masking", "noise_level": 0.3}, (28, 28, 1))
  x = jnp.ones((64, 28, 28, 1))
  frac = float(jnp.mean(family.corrupt(x, jax.random.PRNGKey(0)) == 0))
  assert abs(frac - 0.3) < 0.02
  plain = registry.build("autoencoder", {}, (28, 28, 1))
  assert bool(jnp.all(plain.corrupt(x, jax.random.PRNGKey(0)) == x))


def test_code_moments_track_the_codes_and_anomalies_score_higher():
  family = registry.build("autoencoder", {"hidden": (64,), "latent_dim": 4, "code_momentum": 0.0}, (28, 28, 1))
  x = (jax.random.uniform(jax.random.PRNGKey(1), (32, 28, 28, 1)) < 0.1).astype(jnp.float32)
  v = family.init(jax.random.PRNGKey(0), {"image": x})
  _, _, new = family.loss("model", v, {"image": x}, jax.random.PRNGKey(0), 0)
  code = family.net.apply({"params": v["params"]["model"]}, x, method=type(family.net).encode)
  np.testing.assert_allclose(np.asarray(new["code_stats"]["mean"]), np.asarray(code.mean(0)), rtol=1e-5, atol=1e-6)
  # after brief training, inverted images (dense where the data are sparse) score as anomalies
  f = lambda p: family.loss("model", {**v, "params": {"model": p}}, {"image": x}, jax.random.PRNGKey(0), 0)[0]
  p = fit(f, v["params"]["model"], 100, 3e-3)
  trained = {**v, "params": {"model": p}}
  normal = family.anomaly_score(trained, {"image": x[:8]})
  odd = family.anomaly_score(trained, {"image": 1.0 - x[:8]})
  assert float(jnp.min(odd)) > float(jnp.max(normal))


def test_samples_and_ppl_walk_the_gaussian_fitted_to_the_codes():
  from zoo.metrics.ppl import default_interpolation, has_latent_space
  family = registry.build("autoencoder", {"hidden": (16,), "latent_dim": 3}, (28, 28, 1))
  v = jax.jit(family.init)(jax.random.PRNGKey(0), {"image": jnp.zeros((2, 28, 28, 1))})
  mean = jnp.array([3.0, -2.0, 0.5])
  cov = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.25]])
  v = {**v, "code_stats": {**v["code_stats"], "mean": mean, "second": cov + jnp.outer(mean, mean)}}
  z = np.asarray(jax.jit(lambda v, r: family.latent_prior(v)(r, 20_000))(v, jax.random.PRNGKey(1)))
  np.testing.assert_allclose(z.mean(0), mean, atol=0.05)                 # not N(0, I): the codes' fit
  np.testing.assert_allclose(np.cov(z, rowvar=False), cov, atol=0.06)
  rng = jax.random.PRNGKey(2)
  images = jax.jit(lambda v, r: family.sample(v, r, 4))(v, rng)
  again = jax.jit(lambda v, r: family.decode(v, family.latent_prior(v)(r, 4)))(v, rng)
  np.testing.assert_array_equal(np.asarray(images), np.asarray(again))
  # PPL finds the latent space, and walks it linearly (slerp's arcs about the origin leave a fit away from it)
  assert has_latent_space(family) and default_interpolation(family) == "lerp"
