"""Shared test helpers: tiny configs of every registered family, taken from their experiments' :quick;
tree and array comparisons; a function's lowering for a platform."""
from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import jax
import numpy as np

from zoo import config as config_lib
from zoo import registry
from zoo.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def quick_experiments() -> dict[str, str]:
  """{family: 'experiments/.../x.py:quick'} for the first quick experiment of each family.

  Every family must have one: that is how the conformance suite gets a small config of it.
  """
  found: dict[str, str] = {}
  for rel in config_lib.list_experiments():
    if rel.startswith("benchmarks/"):
      continue
    try:
      family = config_lib.load(f"{rel}:quick").family
    except ConfigError:      # an experiment without a quick variant
      continue
    found.setdefault(family, f"{rel}:quick")
  return found


def tiny_config(family: str, **overrides):
  """The family's quick experiment config, shrunk for unit tests."""
  spec = quick_experiments()[family]
  base = {"steps": 4, "log_every": 2, "eval_every": 0, "checkpoint_every": 0, "eval_examples": 64,
          "eval_batch_size": 32, "batch_size": 16, "num_samples": 4}
  # Annealed importance sampling (RBM, DBN) with a handful of temperatures and Parzen windows (GANs) on
  # few samples: the tests check shapes, finiteness and plumbing, not the estimates.
  model = config_lib.load(spec).model
  base.update({f"model.{k}": v for k, v in SMALL_ESTIMATES.items() if k in model})
  base.update(overrides)
  return config_lib.load(spec, [f"{k}={v!r}" for k, v in base.items()])


SMALL_ESTIMATES = {"ais_chains": 4, "ais_temperatures": 20, "final_ais_temperatures": 40, "parzen_samples": 64}


def rel_error(a, b) -> float:
  """max |a - b| / max |b|, in float64; a and b must have the same shape (b: the reference)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def assert_close_scaled(a, b) -> None:
  """a equals b to float32 rounding: 1e-5 relative, and 1e-5 of b's largest magnitude (at least 1) absolute."""
  scale = max(1.0, float(np.abs(np.asarray(b)).max()))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * scale)


def lowered_for(f, platform: str, *args) -> str:
  """The StableHLO text of jit(f)(*args) exported for ``platform`` (CUDA works on a CPU-only machine)."""
  return jax.export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()


def tree_equal(a, b) -> bool:
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def tree_allclose(a, b, rtol=1e-5, atol=1e-6) -> bool:
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  return ta == tb and all(np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
                          for x, y in zip(la, lb))


def tree_close_but_for_a_few(a, b, rtol=1e-4, atol=1e-5, max_fraction=1e-3, outlier_atol=1e-3) -> str:
  """'' when a and b agree elementwise within rtol/atol but for at most ``max_fraction`` of all elements
  (at least one), each of those within ``outlier_atol``; else what differs.

  For parameters after a few steps of an Adam-like optimizer, computed in two summation orders (1 and 8
  devices): its update divides each gradient entry by that entry's own running scale, so an entry whose
  gradient is at the level of float rounding noise moves by a different fraction of the learning rate in
  each order (seen: 1 of the MLP GAN's 25,600 first-layer weights, 2.2e-5 apart after 2 steps at lr 2e-4).
  A real disagreement (a batch not averaged across devices, a missing all-reduce) moves most entries.
  """
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  if ta != tb:
    return f"different structures: {ta} and {tb}"
  total, off, worst = 0, 0, (0.0, "")
  for (path, x), y in zip(la, lb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    bad = ~np.isclose(x, y, rtol=rtol, atol=atol)
    total, off = total + x.size, off + int(bad.sum())
    if bad.any():
      worst = max(worst, (float(np.max(np.abs(x - y)[bad])), jax.tree_util.keystr(path)))
  if off > max(1, max_fraction * total) or worst[0] > outlier_atol:
    return f"{off} of {total} elements differ; the largest difference {worst[0]:.3g} at {worst[1]}"
  return ""


def assert_every_family_has_quick():
  missing = sorted(set(registry.names()) - set(quick_experiments()))
  assert not missing, f"families without a :quick experiment config: {missing}"


def fit(loss_fn, params, steps: int, lr: float):
  """Minimises ``loss_fn(params)`` with Adam for ``steps`` jitted steps; returns the params."""
  import optax
  tx = optax.adam(lr)

  @jax.jit
  def update(p, opt):
    u, opt = tx.update(jax.grad(loss_fn)(p), opt)
    return optax.apply_updates(p, u), opt

  opt = tx.init(params)
  for _ in range(steps):
    params, opt = update(params, opt)
  return params


def experiment_module(name: str, folder: str = "experiments/benchmarks"):
  """The script ``folder/name.py`` imported as a module (from the repository's root), its folder on
  ``sys.path`` only while it imports (a script imports its siblings, e.g. ``conv_layers``)."""
  sys.path.insert(0, folder)
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(folder)
