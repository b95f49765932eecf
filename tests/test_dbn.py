"""DBN specifics: greedy stages through the trainer, and the lower bound against exact enumeration."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from helpers import tiny_config, tree_equal
from zoo import registry


def _bits(n):
  return np.array(list(itertools.product([0, 1], repeat=n)), np.float64)


def _lse(a, axis=None):
  top = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(top + np.log(np.sum(np.exp(a - top), axis=axis, keepdims=True)), axis=axis)


def _log_sigmoid(a):
  return -np.logaddexp(0, -a)


def _enumerate(params, x):
  """Exact log p(x) and the exact variational bound of a DBN by enumerating every hidden layer (numpy).

  params: [(W, b, c)] per layer, float64. x: (B, D). The top RBM's log Z by enumerating its two layers.
  """
  *lower, (wt, bt, ct) = params
  def log_p_star(v):      # -F_top(v) for rows of v
    return v @ bt + np.sum(np.logaddexp(0, v @ wt + ct), 1)
  log_z = _lse(log_p_star(_bits(wt.shape[0])))
  states = [_bits(w.shape[1]) for w, _, _ in lower]           # every configuration of h^1 .. h^s
  exact, bound = [], []
  for xi in x:
    log_joint, log_q = [], []
    for combo in itertools.product(*[range(len(s)) for s in states]):
      hs = [xi] + [states[l][i] for l, i in enumerate(combo)]
      lj, lq = 0.0, 0.0
      for l, (w, b, c) in enumerate(lower):
        logits = w @ hs[l + 1] + b
        lj += np.sum(hs[l] * _log_sigmoid(logits) + (1 - hs[l]) * _log_sigmoid(-logits))
        a = hs[l] @ w + c
        lq += np.sum(hs[l + 1] * _log_sigmoid(a) + (1 - hs[l + 1]) * _log_sigmoid(-a))
      lj += log_p_star(hs[-1][None])[0] - log_z
      log_joint.append(lj)
      log_q.append(lq)
    log_joint, log_q = np.array(log_joint), np.array(log_q)
    exact.append(_lse(log_joint))
    q = np.exp(log_q)
    bound.append(np.sum(q * (log_joint - log_q)))
  return np.array(exact), np.array(bound)


def _tiny_dbn(hidden, key):
  family = registry.build("dbn", {"hidden": hidden, "cd_k": (1,) * len(hidden),
                                  "layer_steps": (1,) * (len(hidden) - 1), "bound_samples": 4000},
                          (2, 3, 1))
  variables = family.init(key, {"image": jnp.zeros((1, 2, 3, 1))})
  params = []
  for l, name in enumerate(family.all_players):
    k1, k2, k3 = jax.random.split(jax.random.fold_in(key, 10 + l), 3)
    d, h = family.sizes[l], family.sizes[l + 1]
    p = {"kernel": 1.5 * jax.random.normal(k1, (d, h)), "visible_bias": jax.random.normal(k2, (d,)),
         "hidden_bias": jax.random.normal(k3, (h,))}
    variables["params"][name] = p
    params.append(tuple(np.asarray(p[k], np.float64) for k in ("kernel", "visible_bias", "hidden_bias")))
  return family.at_stage(len(hidden) - 1), variables, params


@pytest.mark.parametrize("hidden", [(4, 3), (3, 3, 2)])
def test_bound_is_the_enumerated_bound_and_below_the_exact_likelihood(hidden):
  family, variables, params = _tiny_dbn(hidden, jax.random.PRNGKey(0))
  x = np.array([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.float32)
  exact, bound = _enumerate(params, x.astype(np.float64))
  assert np.all(bound <= exact + 1e-9) and np.any(bound < exact - 1e-3)
  rng = jax.random.PRNGKey(1)
  batch = {"image": jnp.asarray(x).reshape(3, 2, 3, 1)}
  ctx = family.eval_context(variables, rng)            # the top RBM is small: its log Z is enumerated
  est = np.asarray(jax.jit(family.log_likelihood)({**variables, **ctx}, batch, rng))
  np.testing.assert_allclose(est, bound, atol=0.08)    # 4,000 draws of q per example
  # at stage 0 the DBN is its first RBM: the likelihood is exact here
  first = family.at_stage(0)
  w, b, c = params[0]
  vs = _bits(6)
  neg_f = vs @ b + np.sum(np.logaddexp(0, vs @ w + c), 1)
  want = x @ b + np.sum(np.logaddexp(0, x @ w + c), 1) - _lse(neg_f)
  got = first.log_likelihood({**variables, **first.eval_context(variables, rng)}, batch, rng)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_stages_train_layer_by_layer(tmp_path):
  settings = dict(steps=6, checkpoint_every=3, num_devices=1, num_samples=0, eval_examples=32,
                  **{"model.hidden": (16, 8), "model.layer_steps": (3,), "model.sample_steps": 5})
  zoo.train_and_evaluate(tiny_config("dbn", **{**settings, "steps": 3}), tmp_path, progress=False)
  stage0 = zoo.load(tmp_path)
  zoo.train_and_evaluate(tiny_config("dbn", **settings), tmp_path, progress=False)   # resumes into stage 1
  whole = zoo.load(tmp_path)
  p0, p_init, p1 = stage0.state.params, stage0.run.init_state().params, whole.state.params
  assert stage0.meta["stage"] == 0 and whole.meta["stage"] == 1 and whole.family.stage == 1
  get = jax.device_get
  assert not tree_equal(get(p0["layer0"]), get(p_init["layer0"]))   # stage 0 trains layer 0
  assert tree_equal(get(p0["layer1"]), get(p_init["layer1"]))       # ... and not layer 1
  assert tree_equal(get(p1["layer0"]), get(p0["layer0"]))           # stage 1 leaves layer 0 alone
  assert not tree_equal(get(p1["layer1"]), get(p0["layer1"]))       # ... and trains layer 1
  stats = whole.state.nontrainable["data_stats"]
  assert float(stats["layer0"]["count"]) == 3 * 16 and float(stats["layer1"]["count"]) == 3 * 16
  x = whole.sample(3)
  assert x.shape == (3, 28, 28, 1) and 0 <= x.min() and x.max() <= 1


def test_a_layer_can_come_from_a_trained_rbm_run(tmp_path):
  """Greedy training reuses a trained RBM as layer 0 (config.init_from) and trains only layer 1."""
  common = dict(num_devices=1, num_samples=0, eval_examples=32, checkpoint_every=3)
  zoo.train_and_evaluate(tiny_config("rbm", steps=3, **common, **{"model.num_hidden": 16}),
                         tmp_path / "rbm", progress=False)
  rbm = zoo.load(tmp_path / "rbm")
  settings = dict(steps=3, **common, **{"model.hidden": (16, 8), "model.layer_steps": (0,),
                                        "model.sample_steps": 5, "init_from.workdir": str(tmp_path / "rbm"),
                                        "init_from.players": {"layer0": "model"}})
  zoo.train_and_evaluate(tiny_config("dbn", **settings), tmp_path / "dbn", progress=False)
  dbn = zoo.load(tmp_path / "dbn")
  get = jax.device_get
  assert dbn.meta["stage"] == 1
  assert tree_equal(get(dbn.state.params["layer0"]), get(rbm.state.params["model"]))
  assert tree_equal(get(dbn.state.nontrainable["data_stats"]["layer0"]),
                    get(rbm.state.nontrainable["data_stats"]))
  assert not tree_equal(get(dbn.state.params["layer1"]), get(dbn.run.init_state().params["layer1"]))

  wrong = tiny_config("dbn", **{**settings, "init_from.players": {"layer9": "model"}})
  with pytest.raises(zoo.ConfigError, match="no player 'layer9'"):
    zoo.train_and_evaluate(wrong, tmp_path / "wrong", progress=False)
  bigger = tiny_config("dbn", **{**settings, "model.hidden": (20, 8)})
  with pytest.raises(zoo.ConfigError, match="does not fit"):
    zoo.train_and_evaluate(bigger, tmp_path / "bigger", progress=False)
