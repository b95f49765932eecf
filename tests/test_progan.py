"""Progressive GAN specifics: exact fade-ins, levels as stages of the shared step, resume mid-fade."""
from __future__ import annotations

import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from helpers import tiny_config, tree_equal
from zoo import registry, step as step_lib
from zoo.models import progan


@pytest.fixture(scope="module")
def tiny():
  """A 4-level ProGAN (4x4 .. 32x32) of a few channels, and its variables."""
  family = registry.build("progan", {"features": (8, 8, 4, 4), "latent_dim": 8, "net_shape": (32, 32, 1),
                                     "fade_steps": 4, "stable_steps": 2}, (28, 28, 1))
  variables = jax.jit(family.init)(jax.random.PRNGKey(0), {"image": jnp.zeros((1, 28, 28, 1))})
  return family, variables


# Each path is its own jitted program (alpha a traced argument, so XLA cannot fold the blend away): the
# equalities below are between separately compiled networks, as in training and sampling.
@functools.partial(jax.jit, static_argnums=(0, 3))
def _g(family, variables, z, level, alpha):
  return family.generator.apply({"params": variables["params"]["generator"]}, z, level=level, alpha=alpha)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _d(family, variables, x, level, alpha):
  return family.discriminator.apply({"params": variables["params"]["discriminator"]}, x, level=level,
                                    alpha=alpha)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _g_new_path(family, variables, z, level):
  """G's level-``level`` path alone: toRGB_l of the grown features, no blend."""
  def fn(m, z):
    h = m._base(z)
    for l in range(1, level + 1):
      h = m._grow(l, h)
    return m.to_rgb[level](h)
  return family.generator.apply({"params": variables["params"]["generator"]}, z, method=fn)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _d_new_path(family, variables, x, level):
  """D's level-``level`` path alone: fromRGB_l and every block down to 4x4, no blend."""
  def fn(m, x):
    h = progan._lrelu(m.from_rgb[level](x))
    for l in range(level, 0, -1):
      h = m._shrink(l, h)
    return m._head(h)
  return family.discriminator.apply({"params": variables["params"]["discriminator"]}, x, method=fn)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_fade_in_is_exactly_the_old_network_at_alpha_0_and_the_new_one_at_alpha_1(tiny, level):
  family, variables = tiny
  z = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
  size = 4 * 2 ** level
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, size, size, 1)) * 2 - 1
  # generator: at alpha 0 the previous level's images, nearest-upsampled; at alpha 1 the new path
  one, zero = jnp.float32(1.0), jnp.float32(0.0)
  old = progan.upsample(_g(family, variables, z, level - 1, one))
  new = _g_new_path(family, variables, z, level)
  assert not np.array_equal(old, new)
  np.testing.assert_array_equal(_g(family, variables, z, level, zero), old)
  np.testing.assert_array_equal(_g(family, variables, z, level, one), new)
  half = _g(family, variables, z, level, jnp.float32(0.5))
  np.testing.assert_allclose(half, 0.5 * (old + new), rtol=1e-6, atol=1e-6)
  # discriminator: at alpha 0 the previous level's D on the downsampled images; at alpha 1 the new path
  d_old = _d(family, variables, progan.downsample(x), level - 1, one)
  d_new = _d_new_path(family, variables, x, level)
  np.testing.assert_array_equal(_d(family, variables, x, level, zero), d_old)
  np.testing.assert_array_equal(_d(family, variables, x, level, one), d_new)


def test_real_images_fade_with_the_same_alpha(tiny):
  family, _ = tiny
  fam = family.at_stage(2)                                 # 16x16, fading in from 8x8
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, 32, 32, 1))
  at16 = progan.downsample(x, 2)
  at0 = fam.real_input(x, {"level": 2, "alpha": jnp.float32(0.0)})
  at1 = fam.real_input(x, {"level": 2, "alpha": jnp.float32(1.0)})
  np.testing.assert_array_equal(at1, at16)
  np.testing.assert_array_equal(at0, progan.upsample(progan.downsample(at16)))


def test_levels_alpha_and_stage_boundaries(tiny):
  family, _ = tiny                                          # stable 2, fade 4: levels start at 0, 2, 8, 14
  assert family.stage_steps == (2, 6, 6)
  assert [family.stage_at(s) for s in (0, 1, 2, 7, 8, 13, 14, 99)] == [0, 0, 1, 1, 2, 2, 3, 3]
  fam = family.at_stage(1)
  alphas = [float(fam.alpha_at(s)) for s in range(2, 8)]
  assert alphas == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
  assert float(family.at_stage(0).alpha_at(0)) == 1.0


def test_pixel_norm_and_minibatch_stddev():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 6)) * 3
  y = jax.jit(progan.pixel_norm)(x)
  np.testing.assert_allclose(np.mean(np.square(np.asarray(y)), -1), 1.0, rtol=1e-4)
  out = np.asarray(jax.jit(progan.minibatch_stddev, static_argnums=1)(x, 4))
  assert out.shape == (8, 4, 4, 7)
  xn = np.asarray(x, np.float64).reshape(4, 2, 4, 4, 6)        # groups: examples i, i + 2, i + 4, i + 6
  want = np.mean(np.sqrt(np.var(xn, axis=0) + 1e-8), axis=(1, 2, 3))   # (2,)
  np.testing.assert_allclose(out[:, 0, 0, 6], np.tile(want, 4), rtol=1e-5)


def _settings(**kw):
  # The non-saturating loss: levels, fades and resumes do not depend on it, and WGAN-GP's gradient of a
  # gradient doubles the step's tracing and compile time (the conformance suite runs it).
  base = {"model.objective": "non_saturating", "num_devices": 1, "batch_size": 8, "num_samples": 0, "eval_examples": 16, "eval_batch_size": 16,
          "log_every": 1, "checkpoint_every": 0, "keep_checkpoints": 5,
          "model.features": (4, 4, 4, 4), "model.latent_dim": 8, "model.fade_steps": 2,
          "model.stable_steps": 1, "model.parzen_samples": 16}
  base.update(kw)
  return tiny_config("progan", **base)


@pytest.mark.slow
def test_every_level_traces_the_step_once_and_a_resume_mid_fade_is_bit_identical(tmp_path, monkeypatch):
  # stable 1, fade 2: levels start at steps 0, 1, 4, 7; the checkpoint at step 3 is mid-fade of level 1
  traces = []
  shared = step_lib.train_step_fn

  def counting(family, txs, ema=None):
    fn = shared(family, txs, ema)

    def traced(state, batch):
      traces.append(family.stage)
      return fn(state, batch)
    return traced

  monkeypatch.setattr(step_lib, "train_step_fn", counting)
  whole, part = tmp_path / "whole", tmp_path / "part"
  zoo.train_and_evaluate(_settings(steps=6, checkpoint_every=3), whole, progress=False)
  assert traces == [0, 1, 2], traces                         # one trace per level, in order
  traces.clear()
  # The run as it was when its checkpoint at step 3 was the newest: a run stopped there, mid-fade.
  shutil.copytree(whole, part)
  shutil.rmtree(part / "checkpoints" / "6")
  (part / "results.json").unlink()
  mid = zoo.load(part)
  assert mid.meta["step"] == 3 and mid.meta["stage"] == 1 and mid.family.level == 1
  # the level is the checkpoint's stage; the alpha of the last step taken (step 2: 1/2) is in the state
  assert float(mid.state.nontrainable["fade"]["alpha"]) == 0.5
  assert float(mid.family.alpha_at(3)) == 1.0
  zoo.train_and_evaluate(_settings(steps=6, checkpoint_every=3), part, progress=False)   # resumes at 3
  assert traces == [1, 2], traces                            # the resumed run traces its level once
  a, b = zoo.load(whole), zoo.load(part)
  assert a.meta["step"] == b.meta["step"] == 6 and a.meta["stage"] == b.meta["stage"] == 2
  assert tree_equal(jax.device_get(a.state), jax.device_get(b.state))
  np.testing.assert_array_equal(a.sample(4), b.sample(4))
