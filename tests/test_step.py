"""The shared step's contract: players in order, each updating only its own params; EMA; optimizers."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import optim, sharding, step as step_lib
from zoo.errors import ConfigError
from zoo.family import Family


@dataclasses.dataclass(frozen=True)
class TwoPlayers(Family):
  """A toy two-player game: 'a' pulls its w towards 1, 'b' pulls its v towards a's w (twice a step)."""

  @property
  def players(self):
    return (("a", 1), ("b", 2))

  def init(self, rng, batch):
    return {"params": {"a": {"w": jnp.zeros(())}, "b": {"v": jnp.zeros(())}},
            "counts": {"b_calls": jnp.zeros((), jnp.int32)}}

  def loss(self, player, variables, batch, rng, step):
    p = variables["params"]
    if player == "a":
      return jnp.square(p["a"]["w"] - 1.0), {"w": p["a"]["w"]}, {}
    seen = jax.lax.stop_gradient(p["a"]["w"])
    calls = variables["counts"]["b_calls"] + 1
    return jnp.square(p["b"]["v"] - seen), {"seen_w": seen}, {"counts": {"b_calls": calls}}


def _run(ema=None, steps=1):
  family = TwoPlayers()
  txs = {"a": optax.sgd(0.5), "b": optax.sgd(0.5)}
  mesh = sharding.make_mesh(1)
  batch = sharding.global_batch({"image": np.zeros((1, 1, 1, 1), np.float32)}, mesh)
  state = step_lib.init_state(family, txs, 0, {"image": np.zeros((1, 1, 1, 1), np.float32)}, ema)
  fn = step_lib.jit_train_step(family, txs, mesh, ema)
  history = []
  for _ in range(steps):
    state, metrics = fn(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


def test_players_update_in_order_and_only_their_own_params():
  state, (m,) = _run()
  # a: w = 0 - 0.5 * 2 * (0 - 1) = 1; b then sees the updated w = 1 (not the stale 0)
  assert float(state.params["a"]["w"]) == pytest.approx(1.0)
  assert float(m["b/seen_w"]) == pytest.approx(1.0)
  # b takes two updates: v = 0 -> 1 -> 1 (each v -= 0.5 * 2 * (v - 1))
  assert float(state.params["b"]["v"]) == pytest.approx(1.0)
  assert int(state.nontrainable["counts"]["b_calls"]) == 2
  assert set(m) == {"a/loss", "a/w", "b/loss", "b/seen_w"}


def test_ema_follows_the_params():
  state, _ = _run(ema={"a": 0.9}, steps=2)
  # w: 0 -> 1 -> 1; ema: 0 -> 0.1 -> 0.19
  assert float(state.ema["a"]["w"]) == pytest.approx(0.19)
  assert "b" not in state.ema
  assert float(state.variables(use_ema=True)["params"]["a"]["w"]) == pytest.approx(0.19)
  assert float(state.variables()["params"]["a"]["w"]) == pytest.approx(1.0)


def test_ema_through_the_trainer(tmp_path):
  import zoo
  from helpers import tiny_config
  res = zoo.train_and_evaluate(tiny_config("vae", steps=3, **{"ema.model": 0.5}), tmp_path, progress=False)
  loaded = zoo.load(tmp_path)
  p, e = loaded.state.params["model"], loaded.state.ema["model"]
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p, e)
  assert max(jax.tree_util.tree_leaves(diff)) > 0          # the EMA lags the params
  assert res["steps"] == 3 and np.isfinite(res["eval"]["valid"]["nll"])


def test_optimizer_config():
  tx = optim.build({"name": "sgd", "lr": 0.1, "momentum": 0.9}, "model", 100)
  p = {"w": jnp.ones(())}
  u, _ = tx.update({"w": jnp.ones(())}, tx.init(p), p)
  assert float(u["w"]) == pytest.approx(-0.1)
  sched = optim.schedule(optim.options({"lr": 1.0, "schedule": "warmup_cosine", "warmup_steps": 10}, "m"), 110)
  assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(1.0) and float(sched(110)) < 1e-3
  wd = optim.build({"name": "adamw", "lr": 0.0, "weight_decay": 0.5}, "model", 10)
  with pytest.raises(ConfigError, match="did you mean: lr"):
    optim.build({"lrr": 1.0}, "model", 10)
  with pytest.raises(ConfigError, match="unknown optimizer"):
    optim.build({"name": "adamm"}, "model", 10)
  with pytest.raises(ConfigError, match="no player 'generator'"):
    optim.build_all({"generator": {}}, (("model", 1),), 10)
  assert wd is not None
