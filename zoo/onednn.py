"""oneDNN's convolution and matmul on CPU, through XLA:CPU's own oneDNN runtime (issue 7).

jaxlib's XLA:CPU carries oneDNN and runs it for the custom calls ``__onednn$convolution`` and
``__onednn$matmul`` (the targets its own oneDNN rewriter emits; that rewriter is not enabled in jaxlib's
builds, so XLA never emits them itself). This module emits them: ``conv`` is a forward convolution
(NHWC/HWIO, strides, non-negative padding) and ``matmul`` a matrix product, each a JAX primitive that is
linear in either operand (``ad.defbilinear``), so they differentiate to any order. On the 2-core AVX-512 CPU
of issue 7 (batch 64): the PixelCNN's 2x3 64 -> 64 convolution 8-10 ms against XLA's 10-12, and the
K-heavy product of a 1x1 convolution's weight gradient ((64 x 50,176) @ (50,176 x 64)) 2.0 ms against 6.4
(210 against 64 GFLOP/s), and (50,176 x 384) @ (384 x 64) 10.2 against 12.7 ms.

The weight gradient of a convolution stays XLA's (the transpose rule for the kernel): oneDNN's forward
convolution with a 28x28 "kernel" (the weight gradient written as a forward convolution) ran 4.2 s against
XLA's 19 ms, and the input gradient stays XLA's too (in the train step, oneDNN's input gradient beside XLA's
weight gradient ran no faster: both want the two cores). A matmul's transposes are oneDNN matmuls.

The custom calls' configuration is XLA's internal protobuf (``OneDnnConvolutionConfig``, JSON), which no
API promises to keep (a test in a later XLA's sources writes the spatial dimensions 1-based), and a config
oneDNN rejects aborts the process (an uncaught C++ exception: "could not permute axes of a memory
descriptor", seen here with the 1-based encoding). So they are used only where ``available()``: on a jaxlib whose encoding
was checked (``TESTED_JAXLIB``), after a subprocess has run both custom calls against XLA's own
convolution and product and found them equal (once per process tree: the answer is passed to child
processes in ``ZOO_ONEDNN``), and not where ``ZOO_ONEDNN=0``. The layers use them only where the shared
train step traces them under ``zoo.kernels.onednn_kernels()`` (one CPU device: an XLA partitioner cannot
split a custom call over a batch-sharded mesh).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from zoo import native

try:   # JAX internals a later JAX may move: without them oneDNN stays off (available() is False)
  from jax._src import config as _jax_config
  from jax._src.interpreters import mlir as _mlir
  _MIN_CACHED_COMPILE_SECS = _jax_config.persistent_cache_min_compile_time_secs
  from jax.extend.core import Primitive
  from jax.interpreters import ad, mlir
  _UNSUPPORTED = None
except (ImportError, AttributeError) as e:
  _UNSUPPORTED = f"{type(e).__name__}: {e}"

# jaxlib versions whose XLA reads the configuration as ``_conv_config`` writes it (zero-based dimensions,
# window values as they are): 0.10.2 here and 0.11.2 on a lent GPU machine's CPU (``CHECK``, below);
# a newer jaxlib is not used until it is checked and added here.
TESTED_JAXLIB = ("0.10.", "0.11.")
_ENV = "ZOO_ONEDNN"
# The probe, as a command: python -c "from zoo import onednn; onednn._check()" (not ``-m zoo.onednn``: the
# package's own imports load this module first, and ``-m`` would run a second copy of it)
CHECK = "from zoo import onednn; onednn._check()"
_DN = ("NHWC", "HWIO", "NHWC")
# XLA cannot write an executable holding oneDNN's thunks to JAX's persistent compilation cache (the `zoo`
# command keeps one, the tests too): jaxlib 0.10's serializer throws bad_alloc, which JAX catches and reports
# as a warning, and jaxlib 0.11.2's crashes the process (a segfault in JAX's cache write, seen on a lent GPU
# machine's CPU with the probe's own programs). Such a program is compiled afresh in each process anyway
# (1.3 s for the PixelCNN benchmark's step), so whatever compiles one does it under ``uncached()``, which
# skips the write; the warning is not shown where something still tries.
warnings.filterwarnings("ignore", message=r"Error writing persistent compilation cache entry.*bad_alloc")


def _custom_call(ctx, target: str, operands, config: dict):
  result = _mlir.aval_to_ir_type(ctx.module_context, ctx.avals_out[0])
  backend_config = json.dumps({"outer_dimension_partitions": [], **config})
  return _mlir.custom_call(target, result_types=[result], operands=list(operands),
                           backend_config=backend_config, api_version=1).results


# ---- convolution: y = conv(x, kernel), NHWC / HWIO -> NHWC

def _conv_shape(x_shape, k_shape, strides, padding):
  b, h, w, _ = x_shape
  kh, kw, _, c_out = k_shape
  return (b, (h + sum(padding[0]) - kh) // strides[0] + 1, (w + sum(padding[1]) - kw) // strides[1] + 1, c_out)


def _conv_config(strides, padding, fusions=()) -> dict:
  data = {"batch_dim": 0, "feature_dim": 3, "spatial_dims": [1, 2]}
  return {"onednn_conv_config": {
      "dims": 4, "feature_groups": 1, **({"fusions": {"ops": list(fusions)}} if fusions else {}),
      "input": {"dims": 4, "data": data},
      "kernel": {"dims": 4, "filter": {"input_feature_dim": 2, "output_feature_dim": 3, "spatial_dims": [0, 1]}},
      "output": {"dims": 4, "data": data},
      "window": {"strides": list(strides), "pad_left": [lo for lo, _ in padding],
                 "pad_right": [hi for _, hi in padding], "window_dilations": [1, 1]}}}


def _xla_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)


def _conv_ct_x(ct, x, kernel, *, strides, padding, fusions):   # XLA's input gradient (of the unfused conv)
  assert not fusions, "a fused convolution is never transposed: its tangents are unfused convolutions"
  return jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), jnp.zeros(x.aval.shape, x.aval.dtype))[1](ct)[0]


def _conv_ct_kernel(ct, x, kernel, *, strides, padding, fusions):   # XLA's weight gradient (unfused)
  assert not fusions, "a fused convolution is never transposed: its tangents are unfused convolutions"
  k = jnp.zeros(kernel.aval.shape, kernel.aval.dtype)
  return jax.vjp(lambda k: _xla_conv(x, k, strides, padding), k)[1](ct)[0]


def conv(x, kernel, strides, padding, bias=None, add=None):
  """``lax.conv_general_dilated(x, kernel, strides, padding)`` (NHWC/HWIO) by oneDNN; ``padding`` is
  ((top, bottom), (left, right)), each at least 0. With ``bias`` (C_out,) and ``add`` (the output's shape),
  ``(conv + bias) + add`` in the same call: oneDNN adds them as the convolution writes its output (its bias
  and a binary-add post-op), where XLA would read and write the output once more to add them."""
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if min(min(p) for p in padding) < 0:
    raise ValueError(f"onednn.conv: padding must be non-negative, got {padding}")
  strides = tuple(int(s) for s in strides)
  out_shape = _conv_shape(x.shape, kernel.shape, strides, padding)
  if bias is not None and tuple(bias.shape) != out_shape[3:]:
    raise ValueError(f"onednn.conv: bias must have shape {out_shape[3:]}, got {tuple(bias.shape)}")
  if add is not None and tuple(add.shape) != out_shape:
    raise ValueError(f"onednn.conv: add must have the output's shape {out_shape}, got {tuple(add.shape)}")
  if any(v is not None and v.dtype != x.dtype for v in (bias, add)):   # oneDNN reads them as x's dtype
    raise ValueError(f"onednn.conv: bias and add must have x's dtype {x.dtype}")
  extras = [(op, v) for op, v in (("BIAS", bias), ("BINARY_ADD", add)) if v is not None]
  return conv_p.bind(x, kernel, *(v for _, v in extras), strides=strides, padding=padding,
                     fusions=tuple(op for op, _ in extras))


def _conv_jvp(primals, tangents, *, strides, padding, fusions):
  """conv(x, k) (+ bias) (+ add) is bilinear in (x, k) plus linear terms: its tangent is the unfused
  convolution (whose transposes are XLA's gradients) on each side, the bias's broadcast and add's own
  tangent, so it differentiates to any order."""
  out = conv_p.bind(*primals, strides=strides, padding=padding, fusions=fusions)
  (x, k), (dx, dk) = primals[:2], tangents[:2]
  terms = []
  if type(dx) is not ad.Zero:
    terms.append(conv_p.bind(dx, k, strides=strides, padding=padding, fusions=()))
  if type(dk) is not ad.Zero:
    terms.append(conv_p.bind(x, dk, strides=strides, padding=padding, fusions=()))
  for op, t in zip(fusions, tangents[2:]):
    if type(t) is not ad.Zero:
      terms.append(jnp.broadcast_to(t, out.shape) if op == "BIAS" else t)
  return out, functools.reduce(jnp.add, terms)    # JAX calls a JVP rule only with some tangent not zero


# ---- matmul: a (M, K) @ b (K, N), either operand stored transposed

def _mm_shape(a_shape, b_shape, ta, tb):
  return (a_shape[1] if ta else a_shape[0], b_shape[0] if tb else b_shape[1])


def _mm_ct_a(ct, a, b, *, ta, tb):
  # c = op(a) @ op(b): d op(a) = ct @ op(b)^T; stored transposed (ta), da = op(b) @ ct^T = (ct @ op(b)^T)^T
  if ta:
    return matmul_p.bind(b, ct, ta=tb, tb=True)
  return matmul_p.bind(ct, b, ta=False, tb=not tb)


def _mm_ct_b(ct, a, b, *, ta, tb):
  # d op(b) = op(a)^T @ ct; stored transposed (tb), db = ct^T @ op(a)
  if tb:
    return matmul_p.bind(ct, a, ta=True, tb=ta)
  return matmul_p.bind(a, ct, ta=not ta, tb=False)


def matmul(a, b):
  """``a @ b`` for 2-D a (M, K) and b (K, N) by oneDNN; its gradients are oneDNN products too."""
  return matmul_p.bind(a, b, ta=False, tb=False)


def _define():
  """The two primitives: abstract evaluation, eager evaluation (jitted), the CPU lowering to the custom
  calls, and their transposes (``ad.defbilinear``: linear in either operand)."""
  conv = Primitive("zoo_onednn_conv")     # operands x, kernel and one per fused op (bias, add)
  conv.def_abstract_eval(lambda x, k, *extras, strides, padding, fusions: jax.core.ShapedArray(
      _conv_shape(x.shape, k.shape, strides, padding), x.dtype))
  conv.def_impl(functools.partial(jax.jit, static_argnames=("strides", "padding", "fusions"))(
      lambda x, k, *extras, strides, padding, fusions: conv.bind(x, k, *extras, strides=strides,
                                                                 padding=padding, fusions=fusions)))
  mlir.register_lowering(conv, lambda ctx, *operands, strides, padding, fusions: _custom_call(
      ctx, "__onednn$convolution", operands, _conv_config(strides, padding, fusions)), platform="cpu")
  ad.defbilinear(conv, _conv_ct_x, _conv_ct_kernel)   # the transposes of the unfused one ...
  ad.primitive_jvps[conv] = _conv_jvp                   # ... which is what every tangent is made of
  mm = Primitive("zoo_onednn_matmul")
  mm.def_abstract_eval(lambda a, b, *, ta, tb: jax.core.ShapedArray(_mm_shape(a.shape, b.shape, ta, tb), a.dtype))
  mm.def_impl(functools.partial(jax.jit, static_argnames=("ta", "tb"))(
      lambda a, b, *, ta, tb: mm.bind(a, b, ta=ta, tb=tb)))
  mlir.register_lowering(mm, lambda ctx, a, b, *, ta, tb: _custom_call(
      ctx, "__onednn$matmul", (a, b), {"onednn_matmul_config": {"transpose_a": ta, "transpose_b": tb}}),
      platform="cpu")
  ad.defbilinear(mm, _mm_ct_a, _mm_ct_b)
  return conv, mm


conv_p = matmul_p = None
if _UNSUPPORTED is None:
  try:
    conv_p, matmul_p = _define()
  except (AttributeError, TypeError) as e:      # a JAX whose primitive API moved
    _UNSUPPORTED = f"{type(e).__name__}: {e}"


# ---- where they may be used

def uncached():
  """A context in which JAX writes nothing it compiles to its persistent compilation cache (it still reads
  it): what compiles a program holding oneDNN's custom calls does so in it (see the warning filter above).
  Thread-local, like JAX's other configuration contexts."""
  if _UNSUPPORTED is not None:
    return contextlib.nullcontext()
  return _MIN_CACHED_COMPILE_SECS(math.inf)


class UncachedJit:
  """A jitted function (or its ``lower()``'s result) whose compilations run under ``uncached()``: calling
  it, and ``lower(...).compile()``; everything else is the wrapped object's."""

  def __init__(self, wrapped):
    self._wrapped = wrapped

  def __call__(self, *args, **kwargs):
    with uncached():
      return self._wrapped(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return UncachedJit(self._wrapped.lower(*args, **kwargs))

  def compile(self, *args, **kwargs):
    with uncached():
      return self._wrapped.compile(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._wrapped, name)


def _probe() -> bool:
  """``_probe_child()``, once per jaxlib, XLA flags and version of this file on this machine (a pass is
  remembered: ``zoo.native.checked_once``; the child takes seconds, in every process that would use oneDNN)."""
  key = [Path(__file__).read_bytes(), jax.__version__.encode(), jaxlib.__version__.encode(),
         os.environ.get("XLA_FLAGS", "").encode()]
  return native.checked_once("onednn", key, lambda: None if _probe_child() else "failed") is None


def _probe_child() -> bool:
  """Both custom calls against XLA's own convolution and product, in a child process (a configuration
  oneDNN rejects aborts the process that runs it). The child keeps a persistent compilation cache of its
  own that takes every program, so that it also proves ``uncached()`` keeps oneDNN's programs out of one
  on this jaxlib (where it did not, a crashing write would end the child, and oneDNN stays off)."""
  with tempfile.TemporaryDirectory(prefix="zoo_onednn_probe_") as cache:
    env = {**os.environ, _ENV: "probing", "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    try:
      done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
      return False
  return done.returncode == 0 and b"onednn ok" in done.stdout


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether ``conv`` and ``matmul`` may be used in this process (see the module's docstring)."""
  state = os.environ.get(_ENV)
  if state in ("0", "probing") or _UNSUPPORTED or not jaxlib.__version__.startswith(TESTED_JAXLIB):
    return False
  if state != "1":
    state = "1" if _probe() else "0"
    os.environ[_ENV] = state      # child processes (data workers, the CLI's subprocesses) inherit it
  return state == "1"


def _check() -> None:
  """The probe: each custom call on small random operands against XLA's, at several strides and paddings,
  with its gradients, compiled under ``uncached()``; prints 'onednn ok' when every one agrees."""
  with uncached():
    _compare_with_xla()
  print("onednn ok")


def _compare_with_xla() -> None:
  import numpy as np
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 9, 8, 5), np.float32))
  k = jnp.asarray(rng.standard_normal((3, 2, 5, 4), np.float32))
  for strides, padding in (((1, 1), ((1, 1), (0, 1))), ((2, 1), ((2, 0), (1, 1))), ((1, 2), ((0, 0), (0, 0)))):
    f = jax.jit(lambda x, k: conv(x, k, strides, padding))
    want = _xla_conv(x, k, strides, padding)
    got = f(x, k)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5):
      raise SystemExit(f"onednn.conv differs from XLA's at strides {strides}, padding {padding}")
    bias = jnp.asarray(rng.standard_normal(want.shape[3:], np.float32))
    add = jnp.asarray(rng.standard_normal(want.shape, np.float32))
    for b, a in ((bias, None), (None, add), (bias, add)):
      got = jax.jit(lambda x, k, b, a: conv(x, k, strides, padding, b, a))(x, k, b, a)
      fused_want = np.asarray(want) + (0 if b is None else np.asarray(b)) + (0 if a is None else np.asarray(a))
      if not np.allclose(got, fused_want, rtol=1e-5, atol=1e-5):
        raise SystemExit(f"onednn.conv with a fused bias / add differs from XLA's at strides {strides}")
  a = jnp.asarray(rng.standard_normal((7, 5), np.float32))
  b = jnp.asarray(rng.standard_normal((5, 3), np.float32))
  loss = lambda mm: lambda a, b: jnp.sum(jnp.sin(mm(a, b)))   # noqa: E731
  got = jax.jit(jax.grad(loss(matmul), (0, 1)))(a, b)
  want = jax.grad(loss(jnp.dot), (0, 1))(a, b)
  if not all(np.allclose(g, w, rtol=1e-5, atol=1e-5) for g, w in zip(got, want)):
    raise SystemExit("onednn.matmul's gradients differ from XLA's")
