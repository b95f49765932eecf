"""Convolution weight gradients on CPU by a kernel of the zoo's own (``zoo/_native/convgrad.cc``), an XLA FFI
custom call (issue 7).

    weight_grad(P, R, offsets, stride)[t, p, r] = sum over (b, i, j) of
        P[b, stride * i + offsets[t][0], stride * j + offsets[t][1], p] * R[b, i, j, r]

P is the side read at the taps (a convolution's input, padded so that every tap lies inside it; for a
transposed convolution dy, padded), R the side read as whole rows of channels (dy; for a transposed
convolution x), whose channels must be a multiple of 16. The kernel makes no per-tap copies of P (no im2col):
for each pixel it broadcasts a block of (tap, channel) entries of P and multiplies them into R's row of 64
channels, the block's sums in vector registers over a tile of ~128 pixels; the cores split the pixels. On
the 2-core AVX-512 CPU of issue 7 (batch 64; GFLOP/s of useful work against XLA's own weight gradient under
the train step's options, and PyTorch's oneDNN): the PixelCNN's 3x3 mask B 64 -> 64 189 against 81 (PyTorch
145), its 7x7 mask A 1 -> 64 200 against 50 (73), the DCGAN's 32x32x3 -> 16x16x64 strided convolution 143
against 65 (170) and its 16x16x64 -> 32x32x3 transposed one 161 against 53 (165).

Built from its source with the system's C++ compiler at first use (about 2.5 s; ``zoo.native``) against the
XLA FFI headers jaxlib ships, registered for the CPU platform, and used only after it has matched XLA's
weight gradient on small strided, padded and masked cases in this process (``available()``). Without a
compiler, or with ``ZOO_NATIVE_CONV=0``, the layers keep XLA's gradients. The layers call it only where the
train step traces them under ``zoo.kernels.native_kernels()`` (one CPU device: XLA cannot split a custom call
over a batch-sharded mesh).
"""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import native

SOURCE = native.SOURCES / "convgrad.cc"
TARGET = "zoo_conv_weight_grad"
ENV_OFF = "ZOO_NATIVE_CONV"
# R's channels are taken 16 at a time (a vector of floats)
ROW_MULTIPLE = 16


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _command(compiler: str, out: str) -> list[str]:
  return [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
          "-o", out, str(SOURCE), "-lpthread"]


def build(directory=None, quiet: bool = False):
  """The library, compiled into ``directory`` (default ``zoo.native.cache_dir()``) if it is not there yet;
  None where it cannot be (a one-line reason on stderr unless ``quiet``)."""
  def fail(why: str) -> None:
    if not quiet:
      print(f"zoo: native convolution weight gradients off ({why})", file=sys.stderr)
    return None

  compiler = _compiler()
  if compiler is None:
    return fail("no C++ compiler: set CXX or install one")
  return native.build("convgrad", SOURCE, lambda out: _command(compiler, out),
                      lambda lib: native.child_check(f"import ctypes; ctypes.CDLL({str(lib)!r}).ZooConvWeightGrad"),
                      directory, fail)


def weight_grad(p, r, offsets: Sequence[tuple[int, int]], strides: tuple[int, int], threads: int = 0):
  """(len(offsets), C_P, C_R) float32: the sums above, at strides (s_h, s_w). ``threads`` 0: as many as this
  process may run on. Bilinear in P and R, differentiable to any order (its transposes are XLA's
  convolutions: a GAN's gradient penalty differentiates through it)."""
  offsets = tuple((int(di), int(dj)) for di, dj in offsets)
  strides = tuple(int(s) for s in strides)
  if p.ndim != 4 or r.ndim != 4 or p.shape[0] != r.shape[0] or r.shape[3] % ROW_MULTIPLE:
    raise ValueError(f"convgrad.weight_grad: P {p.shape} and R {r.shape} must be 4-D with one batch, R's "
                     f"channels a multiple of {ROW_MULTIPLE}")
  if p.dtype != jnp.float32 or r.dtype != jnp.float32:
    raise ValueError(f"convgrad.weight_grad: float32 only, got {p.dtype} and {r.dtype}")
  if not offsets or min(strides) < 1:
    raise ValueError(f"convgrad.weight_grad: no taps, or strides {strides} below 1")
  for di, dj in offsets:
    if (min(di, dj) < 0 or strides[0] * (r.shape[1] - 1) + di >= p.shape[1]
        or strides[1] * (r.shape[2] - 1) + dj >= p.shape[2]):
      raise ValueError(f"convgrad.weight_grad: tap offset {(di, dj)} at strides {strides} reads outside P {p.shape}")
  if not _checking and not available():
    raise RuntimeError("convgrad.weight_grad: the kernel is not available here (zoo.convgrad.available())")
  return _prim.bind(p, r, offsets=offsets, strides=strides, threads=int(threads))


_checking = False     # set while available() runs the kernel before it is known to be available


def _taps_kernel(g, offsets):
  """The (max di + 1, max dj + 1, C_P, C_R) kernel holding g[t] at offsets[t], zeros elsewhere."""
  kh, kw = max(o[0] for o in offsets) + 1, max(o[1] for o in offsets) + 1
  k = jnp.zeros((kh, kw, *g.shape[1:]), g.dtype)
  return k.at[tuple(np.array(offsets).T)].set(g)


def _as_conv(p, g, r_hw, offsets, strides):
  """sum_{t,p} P[b, s_h i + di_t, s_w j + dj_t, p] g[t, p, r]: XLA's convolution of P with g's taps,
  cropped to R's (H, W). <weight_grad(P, R), g> = <this, R>: it is the transpose for R, and its transpose
  for P is the one for P."""
  y = jax.lax.conv_general_dilated(p, _taps_kernel(g, offsets), strides, "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  return y[:, :r_hw[0], :r_hw[1]]


def _ct_p(ct, p, r, *, offsets, strides, threads):
  shape = p.aval.shape
  return jax.linear_transpose(lambda p: _as_conv(p, ct, r.shape[1:3], offsets, strides),
                              jax.ShapeDtypeStruct(shape, ct.dtype))(r)[0]


def _ct_r(ct, p, r, *, offsets, strides, threads):
  return _as_conv(p, ct, r.aval.shape[1:3], offsets, strides)


def _define():
  from jax.extend.core import Primitive
  from jax.interpreters import ad, mlir
  prim = Primitive("zoo_conv_weight_grad")
  prim.def_abstract_eval(lambda p, r, *, offsets, strides, threads: jax.core.ShapedArray(
      (len(offsets), p.shape[3], r.shape[3]), p.dtype))
  prim.def_impl(functools.partial(jax.jit, static_argnames=("offsets", "strides", "threads"))(
      lambda p, r, **params: prim.bind(p, r, **params)))
  lowering = jax.ffi.ffi_lowering(TARGET)
  mlir.register_lowering(prim, lambda ctx, p, r, *, offsets, strides, threads: lowering(
      ctx, p, r, strides=np.asarray(strides, np.int64), offsets=np.asarray(offsets, np.int64).reshape(-1),
      threads=np.int64(threads)), platform="cpu")
  ad.defbilinear(prim, _ct_p, _ct_r)
  return prim


_prim = None
_UNSUPPORTED = None
try:
  _prim = _define()
except (ImportError, AttributeError, TypeError) as e:     # a JAX whose primitive or FFI API moved
  _UNSUPPORTED = f"{type(e).__name__}: {e}"


def _reference(p, r, offsets, strides):
  (h, w), (sh, sw) = r.shape[1:3], strides
  return jnp.stack([jnp.einsum("bijp,bijr->pr", p[:, di:di + sh * (h - 1) + 1:sh, dj:dj + sw * (w - 1) + 1:sw],
                               r, precision="highest") for di, dj in offsets])


def _check() -> str | None:
  """None where the kernel matches an einsum on small cases (stride 1 and 2, channels 1, 3 and 16 on the
  tapped side, 16 and 80 on the rows' side, rows of 5 and 7 pixels, one and two threads), else why not."""
  rng = np.random.default_rng(0)
  cpu = jax.devices("cpu")[0]
  for (b, hp, wp, cp), (h, w, cr), strides, offsets in (
      ((2, 9, 11, 3), (4, 5, 16), (2, 2), ((0, 0), (1, 2), (2, 1), (1, 0))),
      ((3, 8, 9, 16), (6, 7, 80), (1, 1), ((0, 0), (2, 2), (1, 1))),
      ((1, 9, 7, 1), (4, 5, 32), (2, 1), ((2, 0), (0, 2)))):
    p = jax.device_put(rng.standard_normal((b, hp, wp, cp), np.float32), cpu)
    r = jax.device_put(rng.standard_normal((b, h, w, cr), np.float32), cpu)
    want = np.asarray(_reference(p, r, offsets, strides))
    for threads in (1, 2):
      got = np.asarray(jax.jit(lambda p, r: weight_grad(p, r, offsets, strides, threads))(p, r))
      if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        return f"differs from an einsum at P {p.shape}, R {r.shape}, strides {strides}, {threads} thread(s)"
  return None


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether ``weight_grad`` may be used in this process: not turned off (``ZOO_NATIVE_CONV=0``), built,
  loaded, registered with XLA for the CPU, and matching the einsum of ``_check`` here."""
  if os.environ.get(ENV_OFF) == "0" or _UNSUPPORTED is not None:
    return False
  lib = build()
  if lib is None:
    return False
  try:
    handler = ctypes.CDLL(str(lib)).ZooConvWeightGrad
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
    global _checking
    _checking = True
    try:
      with jax.ensure_compile_time_eval():     # a layer asks while it is being traced
        why = _check()
    finally:
      _checking = False
  except Exception as e:       # a JAX whose FFI API moved, a library that does not load
    why = f"{type(e).__name__}: {e}"
  if why is not None:
    print(f"zoo: native convolution weight gradients off ({why})", file=sys.stderr)
    return False
  return True
