"""The shared step's contract: players in order, each updating only its own params; EMA; optimizers."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import convgrad, kernels, onednn, optim, sharding, step as step_lib
from zoo.models import _layers
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


@dataclasses.dataclass(frozen=True)
class Linear(Family):
  """One player, one matmul: 'a' fits w so that x @ w is zero."""

  @property
  def players(self):
    return (("a", 1),)

  def init(self, rng, batch):
    return {"params": {"a": {"w": jnp.ones((batch["x"].shape[1], 64))}}}

  def loss(self, player, variables, batch, rng, step):
    return jnp.mean(jnp.square(batch["x"] @ variables["params"]["a"]["w"])), {}, {}


@dataclasses.dataclass(frozen=True)
class ScaledLinear(Linear):
  """Linear's loss times ``scale``: a program of its own for each scale (a constant in it)."""
  scale: float = 1.0

  def loss(self, player, variables, batch, rng, step):
    loss, metrics, updates = super().loss(player, variables, batch, rng, step)
    return loss * self.scale, metrics, updates


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
  # Adagrad: lr * g / sqrt(initial + sum of g^2): 0.1 * 2 / sqrt(0.1 + 4), then 0.1 * 1 / sqrt(0.1 + 5).
  ada = optim.build({"name": "adagrad", "lr": 0.1, "eps": 0.0}, "model", 10)
  s = ada.init(p)
  u, s = ada.update({"w": jnp.full((), 2.0)}, s, p)
  assert float(u["w"]) == pytest.approx(-0.2 / np.sqrt(4.1), rel=1e-6)
  u, s = ada.update({"w": jnp.ones(())}, s, p)
  assert float(u["w"]) == pytest.approx(-0.1 / np.sqrt(5.1), rel=1e-6)
  wd = optim.build({"name": "adamw", "lr": 0.0, "weight_decay": 0.5}, "model", 10)
  with pytest.raises(ConfigError, match="did you mean: lr"):
    optim.build({"lrr": 1.0}, "model", 10)
  with pytest.raises(ConfigError, match="unknown optimizer"):
    optim.build({"name": "adamm"}, "model", 10)
  with pytest.raises(ConfigError, match="no player 'generator'"):
    optim.build_all({"generator": {}}, ("model",), 10)
  p2 = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree_util.tree_map(jnp.zeros_like, p2)
  masked = optim.build({"name": "sgd", "lr": 1.0, "weight_decay": 0.5, "decay_mask": "matrices"}, "m", 10)
  u, _ = masked.update(zeros, masked.init(p2), p2)
  assert float(u["kernel"][0, 0]) == pytest.approx(-0.5) and float(u["bias"][0]) == 0.0
  u, _ = wd.update(zeros, wd.init(p2), p2)
  assert float(u["bias"][0]) == 0.0      # lr 0: nothing moves


TRACES = []


@dataclasses.dataclass(frozen=True)
class Staged(Family):
  """Two stages, as a DBN's greedy layers: 'first' trains for 3 steps, then 'second' to the end."""
  target: float = 1.0

  @property
  def players(self):
    return (("first", 1),) if self.stage == 0 else (("second", 1),)

  @property
  def all_players(self):
    return ("first", "second")

  @property
  def stage_steps(self):
    return (3,)

  def init(self, rng, batch):
    return {"params": {"first": {"w": jnp.zeros(())}, "second": {"w": jnp.zeros(())}}}

  def loss(self, player, variables, batch, rng, step):
    TRACES.append((self.stage, player))
    p = variables["params"]
    goal = self.target if player == "first" else jax.lax.stop_gradient(p["first"]["w"]) * 2
    return jnp.square(p[player]["w"] - goal), {}, {}

  def eval_metrics(self, variables, batch, rng, **estimator):
    return {"nll": jnp.full(batch["image"].shape[:1], self.stage, jnp.float32)}

  def sample(self, variables, rng, num, **conditioning):
    return jnp.zeros((num, *self.image_shape))


@pytest.fixture
def staged_family():
  from zoo import registry
  registry.register("staged_toy")(Staged)
  yield "staged_toy"
  registry._FAMILIES.pop("staged_toy")


def test_stages_switch_players_and_retrace_once_per_stage(staged_family, tmp_path):
  import zoo
  from zoo import config as config_lib
  import ml_collections
  cfg = config_lib.with_defaults(ml_collections.ConfigDict(dict(
      family=staged_family, seed=0, batch_size=8, steps=7, checkpoint_every=2, eval_every=0,
      eval_examples=16, eval_batch_size=8, num_samples=0, log_every=1, num_devices=1,
      data={"name": "binarized_mnist"}, model={}, optim={"first": {"name": "sgd", "lr": 0.25},
                                                          "second": {"name": "sgd", "lr": 0.25}})))
  TRACES.clear()
  zoo.train_and_evaluate(cfg, tmp_path / "whole", progress=False)
  assert TRACES.count((0, "first")) == 1 and TRACES.count((1, "second")) == 1
  assert all(player == ("first", "second")[stage] for stage, player in TRACES)
  whole = zoo.load(tmp_path / "whole")
  assert whole.family.stage == 1 and whole.meta["stage"] == 1
  w1, w2 = float(whole.state.params["first"]["w"]), float(whole.state.params["second"]["w"])
  assert w1 == pytest.approx(1 - 0.5 ** 3)                 # 3 steps of w -= 0.5 (w - 1)
  assert w2 == pytest.approx(2 * w1 * (1 - 0.5 ** 4))      # then 4 steps towards 2 * w1
  # a run stopped inside stage 0 resumes into stage 1 at the right step
  cfg.steps = 2
  zoo.train_and_evaluate(cfg, tmp_path / "split", progress=False)
  cfg.steps = 7
  zoo.train_and_evaluate(cfg, tmp_path / "split", progress=False)
  split = zoo.load(tmp_path / "split")
  assert float(split.state.params["second"]["w"]) == pytest.approx(w2)


def test_the_step_compiles_with_the_cpu_options_on_cpu_and_xlas_defaults_where_told(monkeypatch):
  """On a CPU mesh the shared step compiles with CPU_COMPILER_OPTIONS (XLA's own dots and convolutions,
  not YNNPACK's) and 512-bit vectors preferred; not when switched off, told by the environment, or where
  XLA_FLAGS names one of the options."""
  mesh = sharding.make_mesh(1)
  assert step_lib.compiler_options(mesh) == step_lib.cpu_compiler_options()
  assert step_lib.compiler_options(mesh)["xla_cpu_prefer_vector_width"] == step_lib.CPU_PREFER_VECTOR_WIDTH == 512
  monkeypatch.setattr(step_lib, "CPU_PREFER_VECTOR_WIDTH", 0)        # 0: XLA's default width
  assert step_lib.compiler_options(mesh) == step_lib.CPU_COMPILER_OPTIONS
  monkeypatch.setattr(step_lib, "CPU_PREFER_VECTOR_WIDTH", 512)
  a = jnp.ones((64, 64))
  matmul = jax.jit(lambda a: a @ a)
  assert "ynn" in matmul.lower(a).compile().as_text()              # XLA's default: a YNNPACK dot
  assert "ynn" not in matmul.lower(a).compile(step_lib.compiler_options(mesh)).as_text()
  family, txs = Linear(), {"a": optax.sgd(0.5)}
  batch = {"x": jnp.ones((8, 64))}
  state = step_lib.init_state(family, txs, 0, batch)

  def compiled_step():
    return step_lib.jit_train_step(family, txs, mesh).lower(state, batch).compile().as_text()
  ours = compiled_step()
  monkeypatch.setattr(step_lib, "USE_CPU_COMPILER_OPTIONS", False)
  assert step_lib.compiler_options(mesh) is None
  assert compiled_step() != ours                    # the step's matmuls compile differently with the options
  monkeypatch.setattr(step_lib, "USE_CPU_COMPILER_OPTIONS", True)
  seen = []       # what the layers read while the step traces: XLA's own kernels with the options only
  traced = dataclasses.replace(family)
  object.__setattr__(traced, "loss", lambda *a: (seen.append(kernels.xla_own_kernels_on()), family.loss(*a))[1])
  for use in (True, False):
    monkeypatch.setattr(step_lib, "USE_XLA_OWN_GRADIENTS", use)
    step_lib.jit_train_step(traced, txs, mesh).lower(state, batch)
  assert seen == [True, False] and not kernels.xla_own_kernels_on()
  monkeypatch.setenv("ZOO_XLA_CPU_DEFAULTS", "1")
  assert step_lib.compiler_options(mesh) is None
  monkeypatch.delenv("ZOO_XLA_CPU_DEFAULTS")
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  assert step_lib.compiler_options(mesh) is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
  assert step_lib.compiler_options(mesh) is None


@dataclasses.dataclass(frozen=True)
class LinearEval(Linear):
  """Linear with an eval metric and a sampler, each one matmul."""

  def eval_metrics(self, variables, batch, rng, **estimator):
    return {"sq": jnp.sum(jnp.square(batch["x"] @ variables["params"]["a"]["w"]), axis=1)}

  def sample(self, variables, rng, num, **conditioning):
    return (jnp.ones((num, 64)) @ variables["params"]["a"]["w"]).reshape(num, 8, 8, 1)


def test_the_eval_step_compiles_with_the_cpu_options_and_the_samplers_with_xlas_defaults(monkeypatch):
  """CPU_OPTIONS_FOR names the shared functions that compile with the CPU options: the eval step does
  (its matmul compiles differently when 'eval' is left out), the sampler and the evaluation context do not."""
  mesh = sharding.make_mesh(1)
  assert step_lib.compiler_options(mesh, "eval") == step_lib.cpu_compiler_options()
  assert step_lib.compiler_options(mesh, "sample") is None
  assert step_lib.compiler_options(mesh, "context") is None
  with pytest.raises(ValueError, match="fn must be one of"):
    step_lib.compiler_options(mesh, "evaluate")
  family = LinearEval()
  variables = {"params": {"a": {"w": jnp.ones((64, 64))}}}
  batch = sharding.global_batch({"x": np.ones((8, 64), np.float32), "mask": np.ones(8, np.float32)}, mesh)
  key = jax.random.PRNGKey(0)

  def compiled(fn):
    for jitted in (step_lib.jit_eval_step, step_lib.jit_sample):
      jitted.cache_clear()         # cached per family and mesh, built with the options of the time
    if fn == "eval":
      return step_lib.jit_eval_step(family, mesh).lower(variables, batch, key).compile().as_text()
    return step_lib.jit_sample(family, mesh, 8).lower(variables, key).compile().as_text()
  eval_text, sample_text = compiled("eval"), compiled("sample")
  assert "ynn" in sample_text                       # XLA's default: a YNNPACK dot
  monkeypatch.setattr(step_lib, "CPU_OPTIONS_FOR", frozenset({"train", "sample"}))
  assert compiled("eval") != eval_text and compiled("sample") != sample_text
  monkeypatch.setattr(step_lib, "USE_CPU_COMPILER_OPTIONS", False)
  assert step_lib.compiler_options(mesh, "eval") is None
  for jitted in (step_lib.jit_eval_step, step_lib.jit_sample):
    jitted.cache_clear()


@dataclasses.dataclass(frozen=True)
class ThinConvEval(Linear):
  """An eval metric through one 3x3 convolution from one channel into 16: a layer the zoo's own kernel
  (``conv_taps``) takes forward where the layers are traced for the train step's kernels on one CPU device."""

  def init(self, rng, batch):
    return {"params": {"a": {"k": jax.random.normal(rng, (3, 3, 1, 16))}}}

  def eval_metrics(self, variables, batch, rng, **estimator):
    y = _layers.conv2d(batch["image"], variables["params"]["a"]["k"], "SAME")
    return {"sq": jnp.sum(jnp.square(y), axis=(1, 2, 3))}


def test_the_eval_step_traces_its_layers_for_the_kernels_it_compiles_with(monkeypatch):
  """The eval step, compiled with the CPU options, traces its layers as the train step does
  (``OWN_KERNELS_FOR``): on one CPU device its thin convolution is the zoo's kernel, with the same values as
  XLA's; left out of OWN_KERNELS_FOR, or outside CPU_OPTIONS_FOR, it is traced plainly (XLA's convolution)."""
  assert convgrad.available()
  monkeypatch.setattr(_layers, "_NATIVE_MIN_PIXELS", 1)
  family, mesh = ThinConvEval(), sharding.make_mesh(1)
  images = np.random.default_rng(0).normal(size=(8, 12, 12, 1)).astype(np.float32)
  variables = family.init(jax.random.PRNGKey(1), {"image": images})
  batch = sharding.global_batch({"image": images, "mask": np.ones(8, np.float32)}, mesh)

  def built(own_kernels_for, options_for):
    monkeypatch.setattr(step_lib, "OWN_KERNELS_FOR", own_kernels_for)
    monkeypatch.setattr(step_lib, "CPU_OPTIONS_FOR", options_for)
    step_lib.jit_eval_step.cache_clear()         # cached per family and mesh, built with the sets of the time
    fn = step_lib.jit_eval_step(family, mesh)
    text = fn.lower(variables, batch, jax.random.PRNGKey(0)).as_text()
    return convgrad.CONV_TARGET in text, float(fn(variables, batch, jax.random.PRNGKey(0))[0]["sq"])
  ours, plain = built(frozenset({"train", "eval"}), frozenset({"train", "eval"})), built(
      frozenset({"train"}), frozenset({"train", "eval"}))
  assert ours[0] and not plain[0]
  assert ours[1] == pytest.approx(plain[1], rel=1e-5)
  assert not built(frozenset({"train", "eval"}), frozenset({"train"}))[0]   # XLA's defaults: traced plainly
  step_lib.jit_eval_step.cache_clear()


def _step_cache_entries() -> set:
  """The train steps (``jit_train_step``'s, named after ``train_step_fn``'s ``train_step``) in the suite's
  persistent cache, which takes every program (conftest)."""
  return {name for name in os.listdir(jax.config.jax_compilation_cache_dir) if name.startswith("jit_train_step-")}


def test_a_step_with_onednn_is_compiled_without_writing_it_to_the_persistent_cache(monkeypatch):
  """Writing an executable that holds oneDNN's custom calls to JAX's persistent cache crashes jaxlib 0.11.2
  (zoo.onednn): where the step traces under oneDNN's kernels (one CPU device) it compiles under
  onednn.uncached(), whether called or lowered and compiled; elsewhere it is written as any program."""
  monkeypatch.setattr(onednn, "available", lambda: True)
  txs, batch = {"a": optax.sgd(0.5)}, {"x": jnp.ones((8, 64))}
  rng = np.random.default_rng()
  written = {}
  for use_onednn, mesh in ((True, sharding.make_mesh(1)), (False, sharding.make_mesh(1)),
                           (True, sharding.make_mesh(2))):
    monkeypatch.setattr(step_lib, "USE_ONEDNN", use_onednn)
    before = _step_cache_entries()
    for how in ("call", "lower"):
      family = ScaledLinear(scale=float(rng.integers(1, 1 << 30)))    # a program no run compiled before
      state = step_lib.init_state(family, txs, 0, batch)
      step = step_lib.jit_train_step(family, txs, mesh)
      if how == "call":
        step(state, sharding.global_batch(batch, mesh))
      else:
        step.lower(state, sharding.global_batch(batch, mesh)).compile()
    written[use_onednn, mesh.devices.size] = len(_step_cache_entries() - before)
  assert written == {(True, 1): 0, (False, 1): 2, (True, 2): 2}   # oneDNN off, or a mesh of several: written
