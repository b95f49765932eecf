"""The one train step and eval step, shared by every family.

``train_step(state, batch) -> (state, metrics)``: for each player in the family's schedule, the gradient
of that player's loss with respect to that player's params only, its optimizer update, then EMA where
configured. It is jitted once per family configuration with the state donated, params replicated and the
batch split over the mesh's ``data`` axis.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from zoo import kernels, onednn, sharding
from zoo.family import Family
from zoo.state import TrainState


def init_state(family: Family, txs: Mapping[str, optax.GradientTransformation], seed: int,
               example_batch: Mapping[str, Any], ema: Mapping[str, float] | None = None) -> TrainState:
  """A fresh TrainState. Pure: jit it with out_shardings, or ``jax.eval_shape`` it for a restore target."""
  init_rng, run_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = dict(family.init(init_rng, example_batch))
  params = variables.pop("params")
  missing = [p for p in family.all_players if p not in params]
  if missing:
    raise ValueError(f"{family.name}.init returned no params for player(s) {missing}")
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      rng=run_rng,
      params=params,
      opt_state={p: txs[p].init(params[p]) for p in family.all_players},
      nontrainable=variables,
      # copies: the EMA must not share buffers with the params, which the step donates
      ema={p: jax.tree_util.tree_map(jnp.copy, params[p]) for p in (ema or {})},
  )


def _prefix(metrics: Mapping[str, jax.Array], player: str, single: bool) -> dict[str, jax.Array]:
  return dict(metrics) if single else {f"{player}/{k}": v for k, v in metrics.items()}


def train_step_fn(family: Family, txs: Mapping[str, optax.GradientTransformation],
                  ema: Mapping[str, float] | None = None) -> Callable:
  """The un-jitted step for ``family``; :func:`jit_train_step` compiles it for a mesh."""
  ema = dict(ema or {})
  single = len(family.players) == 1

  def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
    step_rng = jax.random.fold_in(state.rng, state.step)
    params = dict(state.params)
    opt_state = dict(state.opt_state)
    nontrainable = dict(state.nontrainable)
    metrics = {}
    for i, (player, repeats) in enumerate(family.players):
      for r in range(repeats):
        rng = jax.random.fold_in(jax.random.fold_in(step_rng, i), r)

        def objective(p, player=player, rng=rng):
          variables = {"params": {**params, player: p}, **nontrainable}
          loss, m, new_nt = family.loss(player, variables, batch, rng, state.step)
          return loss, (m, new_nt)

        (loss, (m, new_nt)), grads = jax.value_and_grad(objective, has_aux=True)(params[player])
        updates, opt_state[player] = txs[player].update(grads, opt_state[player], params[player])
        params[player] = optax.apply_updates(params[player], updates)
        nontrainable.update(new_nt)
      metrics.update(_prefix({"loss": loss, **m}, player, single))
    new_ema = {p: optax.incremental_update(params[p], state.ema[p], 1.0 - ema[p]) for p in state.ema}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              nontrainable=nontrainable, ema=new_ema)
    return new_state, metrics

  return train_step


# XLA:CPU (jax 0.10) hands dots, convolutions and elementwise fusions to YNNPACK by default. On the 2-core
# CPU of 2026-11-26 (Xeon, family 6 model 207, AVX-512) XLA's own kernels ran its dots and convolutions
# faster: the PixelCNN's 2x3 64 -> 64 convolution 20 -> 11 ms at batch 64, the DCGAN D's 8x8x128 -> 4x4x256
# 24 -> 16 ms at batch 256, a 2048^3 matmul 64 -> 60 ms; YNNPACK's reductions stayed the faster (without
# them a bias gradient, which XLA splits into reduce-windows, took 17 ms). So the shared step compiles with
# YNNPACK kept for reductions only: in one process (experiments/benchmarks/ab_step.py --threshold
# USE_CPU_COMPILER_OPTIONS --values 0 1, results/thresholds_ab_cpu2.jsonl) the PixelCNN step 1.15x at batch
# 64 (1.02x in a noisier run), the DCGAN step 1.08x at batch 256 and 1.07x at 64, the Gated PixelCNN's 1.08x.
# Only on CPU meshes, only where XLA accepts the option (it is experimental: a jax without it compiles as
# before), and not where XLA_FLAGS names it already (the user's choice wins); USE_CPU_COMPILER_OPTIONS = False
# (or ZOO_XLA_CPU_DEFAULTS=1) compiles with XLA's defaults.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
USE_CPU_COMPILER_OPTIONS = True
# With them, the vector width XLA's own loops (elementwise fusions, transposes, the reductions it emits itself)
# prefer, in bits (0: XLA's default). XLA:CPU prefers 256-bit vectors even where the CPU has 512-bit ones. On
# the AVX-512 CPU of 2026-11-27, 512 against the default, within-round medians of 5-11 interleaved rounds in
# one process: the PixelCNN step 1.04x and 1.01x at batch 64 and 256, the DCGAN32's 0.98x and 1.05x, the
# Gated PixelCNN's 1.08x (ab_step.py --threshold CPU_PREFER_VECTOR_WIDTH --values 0 512,
# results/thresholds_ab_cpu2.jsonl); scratch runs before it gave the PixelCNN 1.05-1.10x, the DCGAN32 1.06x,
# the Gated PixelCNN 1.15x, the MNIST DCGAN 1.02x, and the MLP-sized steps (VAE, RBM, NADE, MADE, GAN, DAE,
# ProGAN on MNIST, PixelRNN) 0.98-1.05x, within their noise. A preference: a CPU without 512-bit vectors
# compiles as before.
CPU_PREFER_VECTOR_WIDTH = 512
# Which of the shared jitted functions compile with them, each measured against XLA's defaults in one process
# (experiments/benchmarks/ab_options.py, results/cpu_options_ab_cpu2.jsonl): the train step (above) and the
# eval step (the PixelCNN's 1.81x, the Gated PixelCNN's 1.55x, MADE's 1.08x, the VAE's 1000-sample bound's and
# the Row LSTM's 1.02x); not the samplers (the PixelCNN's and the DCGAN's 0.99x, the VAE's 1.10x of 1 ms) nor
# the once-per-evaluation context (the RBM's AIS 0.95x).
# And the sample-quality metrics' feature extraction ('features', zoo.metrics.features; ab_features.py,
# results/features_options_ab_cpu2_cascadelake.jsonl): the FID Inception 1.54-1.60x at batch 16 and 32, the
# digit classifier 0.89-1.04x (noise) at 250 and 1000.
CPU_OPTIONS_FOR = frozenset({"train", "eval", "features"})
# Which of them, where they compile with the CPU options, trace their layers as the train step does
# (``own_kernels_for`` those options: on one CPU device oneDNN's convolutions and the zoo's own kernels, e.g. a
# thin input's ``conv_taps``): the eval step too. Against the same options traced plainly, in one process
# (ab_options.py --compare options kernels, results/own_kernels_ab_cpu2_cascadelake.jsonl, two or three runs
# each, the machine's speed halving between them): the PixelCNN's eval step 1.14-1.19x, the conv VAE's
# 1.13-1.28x, the Row LSTM's 1.10-1.12x, the Gated PixelCNN's 0.95-1.06x, the Diagonal BiLSTM's 0.97-0.99x. The
# samplers would gain from the kernels too (the MNIST DCGAN's 1.27x over the options alone) but lose to the
# options that come with them (the Row LSTM's sampler 0.70x with them, the RBM's and DBN's Gibbs chains
# 0.80-0.85x), so they keep XLA's defaults; a function outside CPU_OPTIONS_FOR is traced plainly.
OWN_KERNELS_FOR = frozenset({"train", "eval"})
_SHARED_FUNCTIONS = frozenset({"train", "eval", "sample", "context", "features"})
# With them the train step traces its families under ``kernels.xla_own_kernels()``: convolutions take XLA's own
# gradients where those are the faster under XLA's own kernels (stride-1 ones entirely; a strided one's weight
# gradient; a transposed one's both; see zoo/models/_layers.py)
USE_XLA_OWN_GRADIENTS = True
# With them, on one CPU device, the layers' stride-1 convolutions run forward in oneDNN and their 1x1
# convolutions are oneDNN matmuls, forward and backward (``zoo.onednn``: XLA:CPU's own oneDNN runtime,
# through the custom calls its oneDNN rewriter would emit; which layers: zoo/models/_layers.py). Against
# False in one process (ab_step.py --threshold USE_ONEDNN --values 0 1, results/thresholds_ab_cpu2.jsonl):
# the PixelCNN28 step 1.076x at batch 64 (9 rounds) and 1.071x at 256, the dropout PixelCNN's 1.185x, the
# Gated PixelCNN's 0.998x, the Row LSTM's 0.929x and then 1.018x (9 rounds).
USE_ONEDNN = True
# With them, on one CPU device, the layers' convolution weight gradients are the zoo's own kernel
# (``zoo.convgrad``, where it builds here) wherever the side it reads as rows has a multiple of 16 channels
# (zoo/models/_layers.py): against XLA's own weight gradients, per layer, 2.3x (the PixelCNN's 3x3 mask B)
# to 4x (its 7x7 mask A); the steps in the README.
USE_NATIVE_CONV_GRADS = True


def cpu_compiler_options() -> dict:
  """The XLA options the shared functions compile with on CPU: ``CPU_COMPILER_OPTIONS`` and the preferred
  vector width (``CPU_PREFER_VECTOR_WIDTH``, where set)."""
  options = dict(CPU_COMPILER_OPTIONS)
  if CPU_PREFER_VECTOR_WIDTH:
    options["xla_cpu_prefer_vector_width"] = int(CPU_PREFER_VECTOR_WIDTH)
  return options


@functools.lru_cache(maxsize=None)
def _cpu_options_accepted(options: tuple) -> bool:
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32)).compile(dict(options))
  except Exception:      # an XLA without the option, or with other values for it
    return False
  return True


def compiler_options(mesh: Mesh, fn: str = "train") -> dict | None:
  """The XLA options the shared function ``fn`` ('train', 'eval', 'sample', 'context' or 'features': the
  metrics' feature extraction, ``zoo.metrics.features``) compiles with on ``mesh``: ``cpu_compiler_options()``
  where its devices are CPUs and ``fn`` is in ``CPU_OPTIONS_FOR`` (see above), else None (XLA's defaults)."""
  if fn not in _SHARED_FUNCTIONS:
    raise ValueError(f"compiler_options: fn must be one of {sorted(_SHARED_FUNCTIONS)}, got {fn!r}")
  options = cpu_compiler_options()
  if (not USE_CPU_COMPILER_OPTIONS or fn not in CPU_OPTIONS_FOR or os.environ.get("ZOO_XLA_CPU_DEFAULTS") == "1"
      or any(d.platform != "cpu" for d in mesh.devices.flat)
      or any(name in os.environ.get("XLA_FLAGS", "") for name in options)):
    return None
  return options if _cpu_options_accepted(tuple(sorted(options.items()))) else None


@contextlib.contextmanager
def own_kernels_for(options: dict | None, mesh: Mesh | None = None):
  """The context to trace a function in that compiles with ``options`` on ``mesh`` (None: one device):
  ``kernels.xla_own_kernels()`` where those are the step's CPU options (not None) and
  ``USE_XLA_OWN_GRADIENTS``, so that the layers take the formulations fastest under the kernels it compiles
  with (the train step, and benchmarks that compile as it does); and with them, on one device,
  ``kernels.native_kernels()`` where ``USE_NATIVE_CONV_GRADS`` (the layers ask ``zoo.convgrad.available()``
  when they would use it) and ``kernels.onednn_kernels()`` where ``USE_ONEDNN`` and
  ``zoo.onednn.available()``, and then ``onednn.uncached()``: what the block compiles (a benchmark's
  functions) is not written to the persistent compilation cache (the train step, compiled after its trace,
  is wrapped by ``jit_train_step``). Wherever ``options`` is not None (``compiler_options`` gives them only
  for a mesh of CPUs), ``kernels.cpu_only()``: the layers trace their CPU formulations alone."""
  own = options is not None and USE_XLA_OWN_GRADIENTS
  use_onednn = _onednn_for(options, mesh)
  native = own and _one_device(mesh) and USE_NATIVE_CONV_GRADS
  with kernels.xla_own_kernels(own), kernels.onednn_kernels(use_onednn), kernels.native_kernels(native), (
      kernels.cpu_only(options is not None)), (onednn.uncached() if use_onednn else contextlib.nullcontext()):
    yield


def _one_device(mesh: Mesh | None) -> bool:
  """Whether ``mesh`` (None: one device) has one device: the custom calls of oneDNN and of the zoo's own
  kernels cannot be split by XLA's partitioner over a batch-sharded mesh."""
  return mesh is None or mesh.devices.size == 1


def _onednn_for(options: dict | None, mesh: Mesh | None) -> bool:
  """Whether a function compiled with ``options`` on ``mesh`` (None: one device) is traced under
  ``kernels.onednn_kernels()`` (``own_kernels_for``)."""
  return (options is not None and USE_XLA_OWN_GRADIENTS and _one_device(mesh) and USE_ONEDNN
          and onednn.available())


def jit_train_step(family: Family, txs: Mapping[str, optax.GradientTransformation], mesh: Mesh,
                   ema: Mapping[str, float] | None = None) -> Callable:
  """The shared step, jitted for ``mesh`` with the state donated (``_jit_shared``: ``compiler_options(mesh)``,
  the layers traced for the kernels it compiles with)."""
  rep = sharding.replicated(mesh)
  return _jit_shared(train_step_fn(family, txs, ema), "train", mesh, in_shardings=(rep, sharding.data_sharded(mesh)),
                     out_shardings=(rep, rep), donate_argnums=(0,))


def _jit_shared(fn: Callable, name: str, mesh: Mesh, **jit_kwargs) -> Callable:
  """``fn`` jitted as the shared function ``name`` ('train', 'eval', 'sample' or 'context') on ``mesh``: compiled
  with ``compiler_options(mesh, name)`` and, where ``name`` is in ``OWN_KERNELS_FOR``, traced under
  ``own_kernels_for`` those options, so that the layers' formulations follow the kernels it compiles with. A
  program holding oneDNN's custom calls is compiled without being written to the persistent cache (that write
  crashes jaxlib 0.11.2; zoo.onednn)."""
  options = compiler_options(mesh, name)
  traced_for = options if name in OWN_KERNELS_FOR else None

  @functools.wraps(fn)
  def traced(*args):
    with own_kernels_for(traced_for, mesh):
      return fn(*args)
  jitted = jax.jit(traced, compiler_options=options, **jit_kwargs)
  return onednn.UncachedJit(jitted) if _onednn_for(traced_for, mesh) else jitted


@functools.lru_cache(maxsize=64)
def jit_eval_step(family: Family, mesh: Mesh, **estimator) -> Callable:
  """``eval_step(variables, batch, rng) -> ({metric: sum over unmasked examples}, count)``, jitted.

  ``batch['mask']`` (B,) marks real examples; padding examples contribute nothing. ``estimator``
  options (e.g. ``k=5000``) go to the family's ``eval_metrics``. Cached: the periodic evaluations of a
  run trace and compile it once. Compiled with ``compiler_options(mesh, 'eval')`` and traced for them as the
  train step is (``OWN_KERNELS_FOR``).
  """
  rep = sharding.replicated(mesh)

  def eval_step(variables, batch, rng):
    mask = batch["mask"].astype(jnp.float32)
    per_example = family.eval_metrics(variables, batch, rng, **estimator)
    sums = {k: jnp.sum(jnp.where(mask > 0, v, 0.0)) for k, v in per_example.items()}
    return sums, jnp.sum(mask)

  return _jit_shared(eval_step, "eval", mesh, in_shardings=(rep, sharding.data_sharded(mesh), rep),
                     out_shardings=rep)


@functools.lru_cache(maxsize=64)
def jit_eval_context(family: Family, mesh: Mesh, **estimator) -> Callable:
  """``context(variables, rng) -> collections``: the family's once-per-evaluation work, jitted, cached."""
  return _jit_shared(lambda v, r: family.eval_context(v, r, **estimator), "context", mesh,
                     out_shardings=sharding.replicated(mesh))


@functools.lru_cache(maxsize=64)
def jit_sample(family: Family, mesh: Mesh, num: int, **conditioning) -> Callable:
  """``sample(variables, rng) -> (num, H, W, C)``, jitted, cached (the same grid at every evaluation)."""
  return _jit_shared(lambda v, r: family.sample(v, r, num, **conditioning), "sample", mesh,
                     out_shardings=sharding.replicated(mesh))
