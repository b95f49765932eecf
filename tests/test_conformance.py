"""One conformance suite over every registered family: a new family gets these checks for free."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from helpers import assert_every_family_has_quick, tiny_config, tree_close_but_for_a_few, tree_equal
from zoo import data as data_lib
from zoo import registry, sharding, step as step_lib
from zoo.checkpoint import Checkpointer
from zoo.errors import ZooError
from zoo.train import build_run

FAMILIES = registry.names()


def test_registry_is_not_empty_and_every_family_has_a_quick_config():
  assert {"vae", "autoencoder"} <= set(FAMILIES)
  assert_every_family_has_quick()


class Harness:
  """A family's tiny config, its data, and helpers to run the shared step on n devices."""

  def __init__(self, name: str, num_devices: int = 8, **overrides):
    self.config = tiny_config(name, num_devices=num_devices, **overrides)
    self.dataset = data_lib.load(self.config.data)
    self.batches = [self.dataset.batch("train", i, int(self.config.batch_size), seed=0) for i in range(3)]
    self.run = build_run(self.config, self.batches[0], self.dataset.image_shape)
    self.step = step_lib.jit_train_step(self.run.family, self.run.txs, self.run.mesh,
                                        self.config.ema.to_dict())
    self._memo = {}

  def initial(self):
    """The initial state, made once (the tests read it; a step does not take it)."""
    if "init" not in self._memo:
      self._memo["init"] = self.run.init_state()
    return self._memo["init"]

  def trained(self, n: int):
    """``train(n)``'s state and metrics, computed once: on 8 forced devices each step of a family's tiny
    config takes 0.03-0.5 s (each device updates its own copy of the parameters), and four tests read the
    state after two steps."""
    if n not in self._memo:
      self._memo[n] = self.train(n)
    return self._memo[n]

  def train(self, n: int):
    state = self.run.init_state()
    metrics = None
    for i in range(n):
      state, metrics = self.step(state, sharding.global_batch(self.batches[i % 3], self.run.mesh))
    return state, metrics


# One xdist group per family (`--dist loadgroup` in setup.cfg): a family's tests share one worker and
# its module-scoped harness, instead of each worker compiling every family's harness again.
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.xdist_group(f"family-{n}"))
                                        for n in FAMILIES])
def harness(request):
  return Harness(request.param)


def test_family_is_a_hashable_frozen_dataclass(harness):
  family = harness.run.family
  assert dataclasses.is_dataclass(family)
  hash(family)
  with pytest.raises(dataclasses.FrozenInstanceError):
    family.image_shape = (1, 1, 1)


def test_init_gives_params_for_every_player(harness):
  state = harness.initial()
  for player, repeats in harness.run.family.players:
    assert repeats >= 1
    leaves = jax.tree_util.tree_leaves(state.params[player])
    assert leaves, f"player {player} has no params"
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)


def test_one_step_is_finite_and_moves_every_player(harness):
  before = jax.tree_util.tree_map(np.asarray, harness.initial().params)
  state, metrics = harness.trained(1)
  metrics = jax.device_get(metrics)
  assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics
  assert int(state.step) == 1
  for player, _ in harness.run.family.players:
    assert not tree_equal(before[player], state.params[player]), f"{player} did not move"


def test_second_step_does_not_recompile(harness):
  harness.trained(2)
  assert harness.step._cache_size() == 1


def test_checkpoint_round_trip_of_the_whole_state(harness, tmp_path):
  state, _ = harness.trained(2)
  ck = Checkpointer(tmp_path, keep=2)
  ck.save(2, state, {**harness.run.meta, "step": 2, "data_position": 2}, "{}")
  ck.wait()
  restored, meta = ck.restore(harness.run.abstract_state, harness.run.meta)
  ck.close()
  assert meta["step"] == 2 and meta["data_position"] == 2
  # params, optimizer moments, rng, non-trainable collections and EMA, leaf by leaf, bit for bit
  assert tree_equal(jax.device_get(state), jax.device_get(restored))
  assert restored.opt_state.keys() == state.opt_state.keys()


def test_same_seed_same_result(harness):
  a, _ = harness.trained(2)
  b, _ = harness.train(2)                     # a second run from the initial state
  assert tree_equal(jax.device_get(a.params), jax.device_get(b.params))
  assert tree_equal(jax.device_get(a.nontrainable), jax.device_get(b.nontrainable))


def test_different_seed_different_init(harness):
  run = harness.run
  seed = int(harness.config.seed)
  assert not tree_equal(jax.device_get(harness.initial().params), jax.device_get(run.init_state(seed + 1).params))
  assert tree_equal(jax.device_get(harness.initial().params), jax.device_get(run.init_state(seed).params))


def test_one_device_and_eight_devices_agree(harness):
  name = harness.run.family.name
  state8, _ = harness.trained(2)
  one = Harness(name, num_devices=1)
  state1, _ = one.train(2)
  assert len(harness.run.mesh.devices.flat) == 8 and len(one.run.mesh.devices.flat) == 1
  # elementwise within float32 tolerance, but for the odd entry that Adam's per-entry normalisation
  # magnifies out of summation-order noise (see the helper)
  differ = tree_close_but_for_a_few(jax.device_get(state1.params), jax.device_get(state8.params))
  assert not differ, differ


def test_sample_is_jittable_and_in_data_space(harness):
  state = harness.initial()
  family = harness.run.family
  fn = jax.jit(lambda v, r: family.sample(v, r, 5))
  x = np.asarray(fn(state.variables(), jax.random.PRNGKey(3)))
  assert x.shape == (5, *family.image_shape)
  assert np.all(np.isfinite(x)) and x.min() >= 0.0 and x.max() <= 1.0


def test_log_likelihood_or_a_clear_error(harness):
  state = harness.initial()
  family = harness.run.family
  batch = {k: v[:4] for k, v in harness.batches[0].items()}
  if family.likelihood_kind is None:
    with pytest.raises(ZooError, match="no likelihood"):
      family.log_likelihood(state.variables(), batch, jax.random.PRNGKey(0))
  else:
    ll = np.asarray(jax.jit(family.log_likelihood)(state.variables(), batch, jax.random.PRNGKey(0)))
    assert ll.shape == (4,) and np.all(np.isfinite(ll))
  # jitted, as the trainer runs them (op by op, each primitive compiles on its own: ~8 s for a ProGAN)
  metrics = jax.jit(family.eval_metrics)(state.variables(), batch, jax.random.PRNGKey(0))
  assert family.eval_metric in metrics
  assert all(np.asarray(v).shape == (4,) for v in metrics.values())
  # every family scores anomalies (its likelihood, or its own score when it has none)
  score = np.asarray(jax.jit(family.anomaly_score)(state.variables(), batch, jax.random.PRNGKey(0)))
  assert score.shape == (4,) and np.all(np.isfinite(score))


def test_the_zoo_layout_exports_and_imports_every_variable(harness):
  """Every family has a PyTorch/safetensors twin: the zoo layout names each variable once, and
  export-then-import gives back the same arrays."""
  from zoo.interop import from_foreign, get_layout, to_foreign
  from zoo.interop.layout import leaf_paths
  state = jax.device_get(harness.initial())
  variables = {"params": state.params, **state.nontrainable}
  layout = get_layout("zoo")
  back = from_foreign(layout, to_foreign(layout, variables), variables)
  mine = leaf_paths(variables)
  assert set(back) == set(mine)
  for path, a in back.items():
    assert a.dtype == np.asarray(mine[path]).dtype and np.array_equal(a, mine[path]), path


def test_the_device_agreement_check_allows_an_odd_entry_not_a_disagreement():
  a = {"w": np.linspace(-1, 1, 5000, dtype=np.float32).reshape(50, 100), "b": np.ones(100, np.float32)}
  odd = {"w": a["w"].copy(), "b": a["b"]}
  odd["w"][3, 7] += 5e-5                                       # one entry an Adam step's fraction away
  assert tree_close_but_for_a_few(a, odd) == ""
  assert "the largest difference" in tree_close_but_for_a_few(a, {"w": a["w"] * 1.001, "b": a["b"]})
  far = {"w": a["w"].copy(), "b": a["b"]}
  far["w"][3, 7] = 1.0                                         # one entry, but far off
  assert "at ['w']" in tree_close_but_for_a_few(a, far)
  assert "different structures" in tree_close_but_for_a_few(a, {"w": a["w"]})
