"""AIS (zoo.metrics.ais) against exact partition functions of RBMs small enough to enumerate."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.metrics import ais


def _random_rbm(key, d, h, scale):
  k1, k2, k3 = jax.random.split(key, 3)
  return {"kernel": scale * jax.random.normal(k1, (d, h)), "visible_bias": 0.5 * jax.random.normal(k2, (d,)),
          "hidden_bias": 0.5 * jax.random.normal(k3, (h,))}


def _brute_force_log_z(params, visible):
  """log Z in float64 numpy, straight from the energy: every (v, h) for Bernoulli units; for Gaussian
  units the closed-form Gaussian integral over v for every h."""
  w, b, c = (np.asarray(params[k], np.float64) for k in ("kernel", "visible_bias", "hidden_bias"))
  d, h = w.shape
  hs = np.array(list(itertools.product([0, 1], repeat=h)), np.float64)
  if visible == "bernoulli":
    vs = np.array(list(itertools.product([0, 1], repeat=d)), np.float64)
    neg_energy = (vs @ b)[:, None] + (hs @ c)[None] + vs @ w @ hs.T
  else:
    mu = b[None] + hs @ w.T                               # v | h ~ N(b + W h, I)
    neg_energy = hs @ c + 0.5 * np.sum(mu ** 2, 1) - 0.5 * np.sum(b ** 2) + 0.5 * d * np.log(2 * np.pi)
  top = neg_energy.max()
  return float(top + np.log(np.exp(neg_energy - top).sum()))


def test_paper_schedule_has_the_papers_segments():
  betas = ais.temperature_schedule(14500)
  assert betas.shape == (14501,) and betas[0] == 0.0 and betas[-1] == 1.0
  assert np.all(np.diff(betas) > 0)
  assert np.sum(betas < 0.5) == 500 and np.sum((betas >= 0.5) & (betas < 0.9)) == 4000
  assert np.sum(betas >= 0.9) == 10001                 # 10,000 steps in [0.9, 1], plus beta = 1
  small = ais.temperature_schedule(29)
  assert small.shape == (30,) and np.all(np.diff(small) > 0) and small[-1] == 1.0
  np.testing.assert_allclose(ais.temperature_schedule(4, "linear"), [0, 0.25, 0.5, 0.75, 1])
  with pytest.raises(ValueError, match="unknown AIS schedule"):
    ais.temperature_schedule(10, "cosine")


@pytest.mark.parametrize("visible,d,h,scale", [("bernoulli", 10, 6, 1.0), ("gaussian", 8, 5, 0.3)])
def test_ais_agrees_with_enumeration_within_its_error(visible, d, h, scale):
  params = _random_rbm(jax.random.PRNGKey(0), d, h, scale)
  exact = _brute_force_log_z(params, visible)
  base = jnp.zeros((d,))
  r = ais.rbm_ais(params, base, ais.temperature_schedule(1000), jax.random.PRNGKey(1), num_chains=200,
                  visible=visible)
  err = float(r.log_z_std_err)
  assert 0 < err < 0.1
  assert abs(float(r.log_z) - exact) < 3 * err + 1e-3, (float(r.log_z), exact, err)
  assert float(r.log_z_low) <= exact <= float(r.log_z_high)
  assert r.log_weights.shape == (200,) and 1 <= float(r.ess) <= 200
  # fewer temperatures: a worse estimate, and AIS says so
  rough = ais.rbm_ais(params, base, ais.temperature_schedule(10), jax.random.PRNGKey(1), num_chains=200,
                      visible=visible)
  assert float(rough.log_z_std_err) > 2 * err


def test_ais_is_exact_when_the_target_is_the_base_with_hidden_biases():
  # W = 0 and b_A = b_B: every chain's weight is the same number, so the estimate has no error
  d, h = 7, 5
  params = {"kernel": jnp.zeros((d, h)), "visible_bias": jnp.linspace(-2, 2, d),
            "hidden_bias": jnp.linspace(-1, 3, h)}
  r = ais.rbm_ais(params, params["visible_bias"], ais.temperature_schedule(50), jax.random.PRNGKey(0),
                  num_chains=16)
  want = float(jnp.sum(jax.nn.softplus(params["visible_bias"]))
               + jnp.sum(jax.nn.softplus(params["hidden_bias"])))
  assert float(r.log_z) == pytest.approx(want, abs=1e-4)
  assert float(r.log_z_std_err) < 1e-5


def test_summarize_is_the_log_mean_of_the_weights_and_its_standard_error():
  log_w = jnp.array([-1.0, 0.5, 2.0, 0.0, -3.0])
  r = ais.summarize(log_w, 10.0)
  w = np.exp(np.asarray(log_w, np.float64))
  se = w.std(ddof=1) / np.sqrt(5)
  assert float(r.log_z) == pytest.approx(10 + np.log(w.mean()), abs=1e-5)
  assert float(r.log_z_std_err) == pytest.approx(se / w.mean(), rel=1e-5)
  assert float(r.log_z_high) == pytest.approx(10 + np.log(w.mean() + 3 * se), abs=1e-5)
  assert float(r.log_z_low) == -np.inf                # mean - 3 se < 0 here: no lower band
  assert float(r.ess) == pytest.approx(w.sum() ** 2 / (w ** 2).sum(), rel=1e-5)


def test_ais_is_one_compiled_program():
  params = _random_rbm(jax.random.PRNGKey(2), 6, 4, 0.5)
  betas = ais.temperature_schedule(20)
  before = ais.rbm_ais._cache_size()
  a = ais.rbm_ais(params, jnp.zeros(6), betas, jax.random.PRNGKey(0), num_chains=8)
  b = ais.rbm_ais(params, jnp.zeros(6), betas, jax.random.PRNGKey(1), num_chains=8)
  assert ais.rbm_ais._cache_size() == before + 1       # the second call reuses the first's program
  assert float(a.log_z) != float(b.log_z)
