"""Convolutions on CPU by kernels of the zoo's own (``zoo/_native/convgrad.cc``), XLA FFI custom calls, for the
shapes where XLA:CPU's are far below its matrix speed (issue 7). Each reads P, the side read at kernel taps
(a convolution's input, padded so that every tap lies inside it; for a transposed convolution dy), at tap t
of output pixel (i, j) at (s_h * i + offsets[t][0], s_w * j + offsets[t][1]), and makes no copies of P per
tap (no im2col). The first three take P's operand as it is and its padding (``pads``), and pad inside the
kernel: no padded copy in memory (1.19-1.75x against the same kernels after XLA's pad, README, Speed).

- ``weight_grad(P, R)[t, p, r] = sum over (b, i, j) of P[b, tap t of (i, j), p] * R[b, i, j, r]``: a
  convolution's weight gradient (R = dy; for a transposed convolution R = x and P = dy). For each pixel a
  block of (tap, channel) entries of P is broadcast and multiplied into R's row of 64 channels, the block's
  sums held in vector registers over a tile of ~128 pixels; the cores split the pixels.
- ``conv_taps(P, w)[b, i, j, r] = sum over (t, p) of P[b, tap t of (i, j), p] * w[t, p, r]``: a convolution
  of few input channels (a DCGAN's 3-channel images, a transposed convolution's input gradient into them,
  a PixelCNN's first layer): a block of output pixels and 64 channels in registers, w's row loaded once per
  block; a bias, if given, is where the sums start.
- ``thin_conv(P, v)[b, i, j, c] = sum over (t, p) of P[b, tap t of (i, j), p] * v[t, c, p]``: a stride-1
  convolution into 1 to 4 channels (a PixelCNN's first layer's input gradient): sums over P's channels, 16
  at a time, for a block of pixels and every output at once; into one channel from 64 at stride 1, by runs
  of a kernel row's neighbouring taps, each x vector loaded once for all the run's taps that read it.
- ``thin_transposed(x, v)``: a transposed convolution into 1 to 4 channels read from x directly (no padded
  copy, no phases; a DCGAN's last layer, and a strided convolution's input gradient into 3 channels): the
  output pixels of one row and column parity share their taps, blocks of them summed as in ``thin_conv``.

The side read as rows (R, w's outputs, P for ``thin_conv``) must have a multiple of 16 channels. On the 2-core
AVX-512 CPU of issue 7 (batch 64; GFLOP/s of useful work, against XLA's own under the train step's options,
and PyTorch's oneDNN): weight gradients of the PixelCNN's 3x3 mask B 64 -> 64 168 against 63-93 (PyTorch
119-145), its 7x7 mask A 1 -> 64 148-168 against 22-49 (63-83), the DCGAN's 32x32x3 -> 16x16x64 strided
convolution 139-165 against 53-70 (143-170) and its 16x16x64 -> 32x32x3 transposed one 149-183 against
5-7 (141-180); that strided convolution's forward pass 110-153 against 70-103 (96-175) and the transposed
one's input gradient 122-137 against 94-109 (132-156); the 7x7 mask A's input gradient 34-49 against 7-10;
the transposed one's forward pass 104-174 against 33-65 (21-38) and the strided one's input gradient
110-159 against 35-61 (21-37) (README, Speed: the thin kernels, again). Later, with the padding inside and
the runs: the mask A's input gradient 138-176, its forward pass (from oneDNN's) 185 (README, Speed:
padding inside the kernels).

Built from its source with the system's C++ compiler at first use (about 10 s; ``zoo.native``) against the
XLA FFI headers jaxlib ships, registered for the CPU platform, and used only after all of them have matched
an einsum or XLA's convolution on small strided, padded and masked cases in this process (``available()``).
Without a compiler, or with ``ZOO_NATIVE_CONV=0``, the layers keep XLA's convolutions. The layers call them
only where the train step traces them under ``zoo.kernels.native_kernels()`` (one CPU device: XLA cannot
split a custom call over a batch-sharded mesh); which layers: ``zoo/models/_layers.py``.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import native

SOURCE = native.SOURCES / "convgrad.cc"
TARGET = "zoo_conv_weight_grad"
CONV_TARGET = "zoo_conv_taps"
CONV_BIAS_TARGET = "zoo_conv_taps_bias"
THIN_TARGET = "zoo_thin_conv"
TRANSPOSED_TARGET = "zoo_thin_transposed"
# thin_conv's outputs: at most this many channels
THIN_MAX = 4
ENV_OFF = "ZOO_NATIVE_CONV"
# R's channels are taken 16 at a time (a vector of floats)
ROW_MULTIPLE = 16


def _compiler() -> str | None:
  return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _command(compiler: str, out: str, source: Path = SOURCE) -> list[str]:
  return [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
          "-o", out, str(source), "-lpthread"]


# each FFI target and the library's handler for it
HANDLERS = {TARGET: "ZooConvWeightGrad", CONV_TARGET: "ZooConvTaps", CONV_BIAS_TARGET: "ZooConvTapsBias",
            THIN_TARGET: "ZooThinConv", TRANSPOSED_TARGET: "ZooThinTransposed"}


def build(directory=None, quiet: bool = False, source: Path = SOURCE):
  """The library, compiled from ``source`` (default: the zoo's) into ``directory`` (default
  ``zoo.native.cache_dir()``) if it is not there yet; None where it cannot be (a one-line reason on stderr
  unless ``quiet``)."""
  check = "import ctypes; l = ctypes.CDLL({!r}); " + "; ".join(f"l.{h}" for h in HANDLERS.values())
  return native.build("convgrad", Path(source), _compiler(), functools.partial(_command, source=Path(source)),
                      lambda lib: native.child_check(check.format(str(lib))), directory, quiet,
                      "native convolution kernels off", "no C++ compiler: set CXX or install one")


def register(lib, suffix: str = "") -> None:
  """Registers the library ``lib``'s handlers with XLA for the CPU, each under its target's name plus
  ``suffix``: another build of the kernels (``suffix`` not empty) beside the zoo's, which the primitives
  lower to inside ``suffixed(suffix)`` (experiments/benchmarks/ab_kernels.py times two builds so)."""
  handlers = ctypes.CDLL(str(lib))
  for target, handler in HANDLERS.items():
    jax.ffi.register_ffi_target(target + suffix, jax.ffi.pycapsule(getattr(handlers, handler)), platform="cpu")


# the suffix of the FFI targets that the primitives lower to (``suffixed``)
_suffix = ""


@contextlib.contextmanager
def suffixed(suffix: str):
  """Inside the block, the primitives lower to the FFI targets registered with ``suffix`` (``register``): a
  function compiled (lowered) here calls that build of the kernels."""
  global _suffix
  before, _suffix = _suffix, suffix
  try:
    yield
  finally:
    _suffix = before


NO_PADS = ((0, 0), (0, 0))


def weight_grad(p, r, offsets: Sequence[tuple[int, int]], strides: tuple[int, int], threads: int = 0,
                pads=NO_PADS):
  """(len(offsets), C_P, C_R) float32: the sums above, at strides (s_h, s_w), P the operand ``p`` padded by
  ``pads`` ((lo_h, hi_h), (lo_w, hi_w)) zeros (each may be negative: a crop), padded inside the kernel, a
  few batch items at a time (no padded copy in memory). ``threads`` 0: as many as this process may run on.
  Differentiable in reverse mode to any order (its cotangents are XLA's convolutions: a GAN's gradient
  penalty differentiates through it), not in forward mode (a custom VJP)."""
  offsets, strides, pads = _taps_params(offsets, strides, pads)
  if p.ndim != 4 or r.ndim != 4 or p.shape[0] != r.shape[0] or r.shape[3] % ROW_MULTIPLE:
    raise ValueError(f"convgrad.weight_grad: P {p.shape} and R {r.shape} must be 4-D with one batch, R's "
                     f"channels a multiple of {ROW_MULTIPLE}")
  _validate(p, r, offsets, strides, r.shape[1:3], pads, "weight_grad")
  return _weight_grad(p, r, _taps_static(offsets, strides, tuple(r.shape[1:3]), pads, threads))


def _taps_params(offsets, strides, pads):
  """offsets, strides and pads as tuples of ints (hashable: static parameters)."""
  return (tuple((int(di), int(dj)) for di, dj in offsets), tuple(int(s) for s in strides),
          tuple((int(lo), int(hi)) for lo, hi in pads))


def _padded_shape(shape, pads) -> tuple[int, ...]:
  """The shape of an NHWC operand padded by ``pads`` ((lo_h, hi_h), (lo_w, hi_w))."""
  return (shape[0], shape[1] + sum(pads[0]), shape[2] + sum(pads[1]), shape[3])


def _validate(p, other, offsets, strides, out_hw, pads, what: str) -> None:
  """A kernel reading P at taps: ``_require`` and every tap of every output pixel inside P (``p`` padded)."""
  if not offsets or min(strides) < 1 or len(pads) != 2:
    raise ValueError(f"convgrad.{what}: no taps, strides {strides} below 1, or pads {pads} not two pairs")
  shape = _padded_shape(p.shape, pads)
  if min(shape[1:3]) < 1:
    raise ValueError(f"convgrad.{what}: pads {pads} leave nothing of P {p.shape}")
  for di, dj in offsets:
    if (min(di, dj) < 0 or strides[0] * (out_hw[0] - 1) + di >= shape[1]
        or strides[1] * (out_hw[1] - 1) + dj >= shape[2]):
      raise ValueError(f"convgrad.{what}: tap offset {(di, dj)} at strides {strides} reads outside P {shape} "
                       f"(the operand {p.shape} padded by {pads})")
  _require(p, other, what)


def _require(a, b, what: str) -> None:
  """Every kernel: float32 operands, and the kernels available here (but while ``available()`` checks them)."""
  if a.dtype != jnp.float32 or b.dtype != jnp.float32:
    raise ValueError(f"convgrad.{what}: float32 only, got {a.dtype} and {b.dtype}")
  if not _checking and not available():
    raise RuntimeError(f"convgrad.{what}: the kernel is not available here (zoo.convgrad.available())")


_checking = False     # set while available() runs the kernel before it is known to be available


def conv_taps(p, w, offsets: Sequence[tuple[int, int]], strides: tuple[int, int], out_hw: tuple[int, int],
              threads: int = 0, pads=NO_PADS, bias=None):
  """The convolution of P whose taps are ``w`` (len(offsets), C_P, C_R):

      y[b, i, j, r] = sum over (t, p) of  P[b, s_h * i + offsets[t][0], s_w * j + offsets[t][1], p] * w[t, p, r]

  for (i, j) < ``out_hw``, P the operand ``p`` padded by ``pads`` (as ``weight_grad``), by the zoo's kernel:
  a block of output pixels and 64 of y's channels summed in registers, w's row loaded once for the block
  (an implicit matrix product, no copies of P per tap); C_R a multiple of 16. For convolutions of few input
  channels (a DCGAN's 3), which XLA runs as thin matmuls. ``bias`` (C_R,), if given, is added where the sums
  start (no pass over y after the call). Differentiable in reverse mode (cotangents: XLA's convolution for
  P, ``weight_grad`` for w, y's sums for the bias)."""
  offsets, strides, pads = _taps_params(offsets, strides, pads)
  out_hw = tuple(int(n) for n in out_hw)
  if p.ndim != 4 or w.ndim != 3 or w.shape != (len(offsets), p.shape[3], w.shape[2]) or w.shape[2] % ROW_MULTIPLE:
    raise ValueError(f"convgrad.conv_taps: P {p.shape} must be 4-D and w {w.shape} (taps, P's channels, C) "
                     f"with C a multiple of {ROW_MULTIPLE}")
  _validate(p, w, offsets, strides, out_hw, pads, "conv_taps")
  params = _taps_static(offsets, strides, out_hw, pads, threads)
  if bias is None:
    return _conv_taps(p, w, params)
  if bias.shape != (w.shape[2],) or bias.dtype != jnp.float32:
    raise ValueError(f"convgrad.conv_taps: the bias must be float32 of shape ({w.shape[2]},), got {bias.dtype} "
                     f"{bias.shape}")
  return _conv_taps_bias(p, w, bias, params)


def thin_conv(p, v, offsets: Sequence[tuple[int, int]], strides: tuple[int, int], out_hw: tuple[int, int],
              threads: int = 0, pads=NO_PADS):
  """The convolution of P into at most ``THIN_MAX`` channels, its taps' kernels given transposed as ``v``
  (len(offsets), C, C_P):

      y[b, i, j, c] = sum over (t, p) of  P[b, s_h * i + offsets[t][0], s_w * j + offsets[t][1], p] * v[t, c, p]

  P the operand ``p`` padded by ``pads`` (as ``weight_grad``; the kernel reads zeros for taps outside ``p``,
  no padded copy), by the zoo's kernel (sums over P's channels, 16 at a time, for a block of output pixels
  and every output channel at once); C_P a multiple of 16. For the convolutions into an image's 1 or 3
  channels, which XLA runs as thin matmuls. Differentiable in reverse mode (its cotangents XLA's
  convolutions)."""
  offsets, strides, pads = _taps_params(offsets, strides, pads)
  out_hw = tuple(int(n) for n in out_hw)
  if (p.ndim != 4 or v.ndim != 3 or v.shape[0] != len(offsets) or v.shape[2] != p.shape[3]
      or not 1 <= v.shape[1] <= THIN_MAX or p.shape[3] % ROW_MULTIPLE):
    raise ValueError(f"convgrad.thin_conv: P {p.shape} must be 4-D with a multiple of {ROW_MULTIPLE} channels "
                     f"and v {v.shape} (taps, 1 to {THIN_MAX} outputs, P's channels)")
  _validate(p, v, offsets, strides, out_hw, pads, "thin_conv")
  return _thin_conv(p, v, _taps_static(offsets, strides, out_hw, pads, threads))


def thin_transposed(x, v, strides: tuple[int, int], lo: tuple[int, int], out_hw: tuple[int, int], threads: int = 0):
  """``lax.conv_transpose`` of x into at most ``THIN_MAX`` channels, read from x directly (no padded copy,
  no phases): y[o] = sum over taps i of x[u] v[i] where o = s * u + lo - i on each axis (the dilated input
  padded by lo before, as lax.conv_transpose's explicit padding), v (kh, kw, C, C_x) the kernel with its
  channels swapped, C_x a multiple of 16, y's size ``out_hw``. A DCGAN's last layer into 3 channels, and a
  strided convolution's input gradient into them (its kernel flipped, lo = k - 1 - its padding).
  Differentiable in reverse mode (its cotangents XLA's convolutions)."""
  strides, lo, out_hw = (tuple(int(a) for a in t) for t in (strides, lo, out_hw))
  if (x.ndim != 4 or v.ndim != 4 or v.shape[3] != x.shape[3] or not 1 <= v.shape[2] <= THIN_MAX
      or x.shape[3] % ROW_MULTIPLE or min(strides) < 1):
    raise ValueError(f"convgrad.thin_transposed: x {x.shape} must be 4-D with a multiple of {ROW_MULTIPLE} "
                     f"channels and v {v.shape} (kh, kw, 1 to {THIN_MAX} outputs, x's channels), strides >= 1")
  _require(x, v, "thin_transposed")
  return _thin_transposed(x, v, (("strides", strides), ("lo", lo), ("out_hw", out_hw), ("threads", int(threads))))


def _transposed_reference(x, v, strides, lo, out_hw):
  """``thin_transposed``'s function as XLA's convolution of x dilated by the strides."""
  pads = [(l, o - (n - 1) * s - 1 - l + k - 1) for n, k, s, l, o in zip(x.shape[1:3], v.shape[:2], strides, lo, out_hw)]
  return jax.lax.conv_general_dilated(x, v.swapaxes(2, 3), (1, 1), pads, strides,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")


def _taps_kernel(g, offsets):
  """The (max di + 1, max dj + 1, C_P, C_R) kernel holding g[t] at offsets[t], zeros elsewhere."""
  kh, kw = max(o[0] for o in offsets) + 1, max(o[1] for o in offsets) + 1
  k = jnp.zeros((kh, kw, *g.shape[1:]), g.dtype)
  return k.at[tuple(np.array(offsets).T)].set(g, unique_indices=True)


def _pad(p, pads):
  """The operand as the kernels read it: P."""
  return jax.lax.pad(p, jnp.zeros((), p.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)))


def _as_conv(p, g, r_hw, offsets, strides, pads=NO_PADS):
  """sum_{t,p} P[b, s_h i + di_t, s_w j + dj_t, p] g[t, p, r] (P: ``p`` padded by ``pads``): XLA's
  convolution of P with g's taps, cropped to R's (H, W). <weight_grad(p, R), g> = <this, R>: it is the
  transpose for R, and its transpose for p is the one for p."""
  y = jax.lax.conv_general_dilated(_pad(p, pads), _taps_kernel(g, offsets), strides, "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  return y[:, :r_hw[0], :r_hw[1]]


def _as_conv_ct_p(ct, p_shape, w, out_hw, offsets, strides, pads):
  """The transpose of p -> ``_as_conv(p, w)`` at ``ct``: XLA's."""
  return jax.linear_transpose(lambda p: _as_conv(p, w, out_hw, offsets, strides, pads),
                              jax.ShapeDtypeStruct(p_shape, ct.dtype))(ct)[0]


def _as_conv_ct_w(ct, p, w_shape, out_hw, offsets, strides, pads):
  """The transpose of w -> ``_as_conv(p, w)`` at ``ct``: XLA's."""
  return jax.linear_transpose(lambda w: _as_conv(p, w, out_hw, offsets, strides, pads),
                              jax.ShapeDtypeStruct(w_shape, ct.dtype))(ct)[0]


# The kernels' derivatives: custom VJPs whose cotangents are XLA's convolutions (or the weight-gradient
# kernel), differentiable in turn for a gradient penalty. Each kernel is bilinear:
# <weight_grad(P, R), g> = <_as_conv(P, g), R>, conv_taps(P, w) = _as_conv(P, w),
# thin_conv(P, v) = _as_conv(P, v^T), and thin_transposed is ``_transposed_reference``.
def _weight_grad_cts(p, r, g, *, offsets, strides, out_hw, pads, threads):
  return (_as_conv_ct_p(r, p.shape, g, out_hw, offsets, strides, pads),
          _as_conv(p, g, out_hw, offsets, strides, pads))


def _conv_taps_cts(p, w, ct, *, offsets, strides, out_hw, pads, threads):
  return (_as_conv_ct_p(ct, p.shape, w, out_hw, offsets, strides, pads),
          _weight_grad(p, ct, _taps_static(offsets, strides, out_hw, pads, threads)))


def _conv_taps_bias_cts(p, w, bias, ct, **params):
  return (*_conv_taps_cts(p, w, ct, **params), jnp.sum(ct, (0, 1, 2)))


def _thin_conv_cts(p, v, ct, *, offsets, strides, out_hw, pads, threads):
  w = v.swapaxes(1, 2)
  return (_as_conv_ct_p(ct, p.shape, w, out_hw, offsets, strides, pads),
          _as_conv_ct_w(ct, p, w.shape, out_hw, offsets, strides, pads).swapaxes(1, 2))


def _thin_transposed_cts(x, v, ct, *, strides, lo, out_hw, threads):
  return jax.vjp(lambda x, v: _transposed_reference(x, v, strides, lo, out_hw), x, v)[1](ct)


def _with_vjp(prim_of, cotangents, operands: int = 2):
  """f(a, b, [c,] params) = the primitive (``prim_of()``, bound when called) on its 2 or 3 ``operands`` with
  ``params`` (a tuple of (name, value) pairs), its VJP ``cotangents(a, b, [c,] ct, **params)``."""
  @functools.partial(jax.custom_vjp, nondiff_argnums=(operands,))
  def f(*args):
    return prim_of().bind(*args[:-1], **dict(args[-1]))

  def fwd(*args):
    return f(*args), args[:-1]

  def bwd(params, residuals, ct):
    return cotangents(*residuals, ct, **dict(params))

  f.defvjp(fwd, bwd)
  return f


_weight_grad = _with_vjp(lambda: _prim, _weight_grad_cts)
_conv_taps = _with_vjp(lambda: _conv_prim, _conv_taps_cts)
_conv_taps_bias = _with_vjp(lambda: _conv_bias_prim, _conv_taps_bias_cts, operands=3)
_thin_conv = _with_vjp(lambda: _thin_prim, _thin_conv_cts)
_thin_transposed = _with_vjp(lambda: _transposed_prim, _thin_transposed_cts)


def _define(name: str, target: str, shape, static: tuple[str, ...], attrs):
  """A primitive of float32 operands and the static parameters named ``static``, of output shape
  ``shape(*operand shapes, **params)``, lowered on CPU to the FFI ``target`` with the attributes
  ``attrs(**params)`` (its derivatives: the custom VJPs above)."""
  prim = Primitive(name)
  prim.def_abstract_eval(lambda *ops, **params: jax.core.ShapedArray(
      shape(*(o.shape for o in ops), **params), ops[0].dtype))
  prim.def_impl(functools.partial(jax.jit, static_argnames=static)(lambda *ops, **params: prim.bind(*ops, **params)))
  mlir.register_lowering(prim, lambda ctx, *ops, **params: jax.ffi.ffi_lowering(target + _suffix)(
      ctx, *ops, **attrs(**params)), platform="cpu")
  return prim


# the kernels that read P at taps: (P, other[, bias]; offsets, strides, out_hw, pads, threads)
_TAPS_PARAMS = ("offsets", "strides", "out_hw", "pads", "threads")


def _taps_static(offsets, strides, out_hw, pads, threads):
  """Those parameters as the (name, value) pairs the primitives' custom VJPs take as one static argument."""
  return tuple(zip(_TAPS_PARAMS, (offsets, strides, out_hw, pads, int(threads))))


def _taps_attrs(offsets, strides, out_hw, pads, threads):
  return dict(strides=np.asarray(strides, np.int64), offsets=np.asarray(offsets, np.int64).reshape(-1),
              pads=np.asarray(pads, np.int64).reshape(-1), threads=np.int64(threads))


def _transposed_attrs(strides, lo, out_hw, threads):
  return dict(strides=np.asarray(strides, np.int64), pads=np.asarray(lo, np.int64), threads=np.int64(threads))


_prim = _conv_prim = _conv_bias_prim = _thin_prim = _transposed_prim = None
_UNSUPPORTED = None
try:
  from jax.extend.core import Primitive
  from jax.interpreters import mlir
  _prim = _define("zoo_conv_weight_grad", TARGET, lambda p, r, *, offsets, **_: (len(offsets), p[3], r[3]),
                  _TAPS_PARAMS, _taps_attrs)
  _conv_prim = _define("zoo_conv_taps", CONV_TARGET, lambda p, w, *, out_hw, **_: (p[0], *out_hw, w[2]),
                       _TAPS_PARAMS, _taps_attrs)
  _conv_bias_prim = _define("zoo_conv_taps_bias", CONV_BIAS_TARGET,
                            lambda p, w, bias, *, out_hw, **_: (p[0], *out_hw, w[2]), _TAPS_PARAMS, _taps_attrs)
  _thin_prim = _define("zoo_thin_conv", THIN_TARGET, lambda p, v, *, out_hw, **_: (p[0], *out_hw, v[1]),
                       _TAPS_PARAMS, _taps_attrs)
  _transposed_prim = _define("zoo_thin_transposed", TRANSPOSED_TARGET,
                             lambda x, v, *, out_hw, **_: (x[0], *out_hw, v[2]), ("strides", "lo", "out_hw", "threads"),
                             _transposed_attrs)
except (ImportError, AttributeError, TypeError) as e:     # a JAX whose primitive or FFI API moved
  _UNSUPPORTED = f"{type(e).__name__}: {e}"


def _reference(p, r, offsets, strides, pads=NO_PADS):
  (h, w), (sh, sw), p = r.shape[1:3], strides, _pad(p, pads)
  return jnp.stack([jnp.einsum("bijp,bijr->pr", p[:, di:di + sh * (h - 1) + 1:sh, dj:dj + sw * (w - 1) + 1:sw],
                               r, precision="highest") for di, dj in offsets])


def _check() -> str | None:
  """None where the four kernels match an einsum / XLA's convolution on small cases (strides 1 and 2 and
  unequal, channels 1, 3, 16, 64 and 128 on the tapped side, 16, 32 and 80 on the other, P padded, cropped
  and as it is, one and two threads), else why not."""
  rng = np.random.default_rng(0)
  cpu = jax.devices("cpu")[0]
  for (b, hp, wp, cp), (h, wd, cr), strides, offsets, pads in (
      ((2, 8, 10, 3), (4, 5, 16), (2, 2), ((0, 0), (1, 2), (2, 1), (1, 0)), ((1, 0), (1, 0))),
      ((3, 6, 7, 16), (6, 7, 80), (1, 1), ((0, 0), (2, 2), (1, 1)), ((1, 1), (2, 0))),
      ((1, 9, 7, 1), (4, 5, 32), (2, 1), ((2, 0), (0, 2)), ((2, -1), (-1, 2))),
      ((2, 5, 6, 16), (3, 4, 16), (1, 1), ((0, 0), (1, 2)), NO_PADS),
      # 64 channels into one at stride 1: thin_conv by runs of a row's taps, blocks of 16 pixels and of fewer
      ((1, 4, 40, 64), (2, 38, 16), (1, 1), ((0, 0), (0, 1), (0, 2), (1, 1)), ((0, 0), (1, -1))),
      ((1, 3, 20, 128), (2, 18, 16), (1, 1), ((0, 0), (0, 1), (1, 2)), ((0, 0), (0, 0))),
      ((2, 3, 19, 32), (2, 18, 32), (1, 1), ((0, 0), (0, 1), (1, 1)), ((0, 0), (0, 0)))):
    p = jax.device_put(rng.standard_normal((b, hp, wp, cp), np.float32), cpu)
    r = jax.device_put(rng.standard_normal((b, h, wd, cr), np.float32), cpu)
    w = jax.device_put(rng.standard_normal((len(offsets), cp, cr), np.float32), cpu)
    want_grad = np.asarray(_reference(p, r, offsets, strides, pads))
    want_conv = np.asarray(_as_conv(p, w, (h, wd), offsets, strides, pads))
    case = f"P {p.shape} padded by {pads}, R {r.shape}, strides {strides}"
    for threads in (1, 2):
      got = np.asarray(jax.jit(lambda p, r: weight_grad(p, r, offsets, strides, threads, pads))(p, r))
      if got.shape != want_grad.shape or not np.allclose(got, want_grad, rtol=1e-4, atol=1e-4):
        return f"weight_grad differs from an einsum at {case}, {threads} thread(s)"
      got = np.asarray(jax.jit(lambda p, w: conv_taps(p, w, offsets, strides, (h, wd), threads, pads))(p, w))
      if got.shape != want_conv.shape or not np.allclose(got, want_conv, rtol=1e-4, atol=1e-4):
        return f"conv_taps differs from XLA's convolution at {case}, {threads} thread(s)"
      got = np.asarray(jax.jit(lambda p, w: conv_taps(p, w, offsets, strides, (h, wd), threads, pads, w[0, 0]))(p, w))
      if not np.allclose(got, want_conv + np.asarray(w[0, 0]), rtol=1e-4, atol=1e-4):
        return f"conv_taps with a bias differs from XLA's convolution plus the bias at {case}, {threads} thread(s)"
      if cp % ROW_MULTIPLE == 0:
        outputs = 1 if cp in (32, 64, 128) else 3
        v = w[:, :, :outputs].swapaxes(1, 2)
        got = np.asarray(jax.jit(lambda p, v: thin_conv(p, v, offsets, strides, (h, wd), threads, pads))(p, v))
        if not np.allclose(got, want_conv[..., :outputs], rtol=1e-4, atol=1e-4):
          return f"thin_conv differs from XLA's convolution at {case}, {threads} thread(s)"
  for (b, h, wd, cx), (kh, kw, c), strides, lo in (((2, 5, 7, 16), (4, 4, 3), (2, 2), (2, 2)),
                                                  ((1, 6, 5, 32), (3, 5, 2), (2, 1), (1, 3)),
                                                  ((2, 4, 19, 64), (4, 4, 1), (2, 2), (2, 2)),    # by pairs
                                                  ((2, 5, 14, 32), (4, 4, 1), (2, 2), (2, 1))):   # tap vectors
    x = jax.device_put(rng.standard_normal((b, h, wd, cx), np.float32), cpu)
    v = jax.device_put(rng.standard_normal((kh, kw, c, cx), np.float32), cpu)
    out_hw = ((h - 1) * strides[0] + 2, (wd - 1) * strides[1] + 1)
    want = np.asarray(_transposed_reference(x, v, strides, lo, out_hw))
    for threads in (1, 2):
      got = np.asarray(jax.jit(lambda x, v: thin_transposed(x, v, strides, lo, out_hw, threads))(x, v))
      if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        return f"thin_transposed differs from XLA's at x {x.shape}, v {v.shape}, strides {strides}, {threads} thread(s)"
  return None


def _checked() -> str | None:
  global _checking
  _checking = True
  try:
    with jax.ensure_compile_time_eval():     # a layer asks while it is being traced
      return _check()
  finally:
    _checking = False


def _check_key(lib) -> list[bytes]:
  """What ``_check``'s answer depends on: the library's bytes, this file (the wrappers and the cases), the
  JAX versions and XLA's flags."""
  import jaxlib
  return [Path(lib).read_bytes(), Path(__file__).read_bytes(), jax.__version__.encode(),
          jaxlib.__version__.encode(), os.environ.get("XLA_FLAGS", "").encode()]


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether ``weight_grad`` may be used in this process: not turned off (``ZOO_NATIVE_CONV=0``), built,
  loaded, registered with XLA for the CPU, and matching the einsum of ``_check`` here (checked once per
  library, JAX and XLA flags on this machine: ``zoo.native.checked_once``)."""
  if os.environ.get(ENV_OFF) == "0" or _UNSUPPORTED is not None:
    return False
  lib = build()
  if lib is None:
    return False
  try:
    register(lib)
    why = native.checked_once("convgrad", _check_key(lib), _checked)
  except Exception as e:       # a JAX whose FFI API moved, a library that does not load
    why = f"{type(e).__name__}: {e}"
  if why is not None:
    print(f"zoo: native convolution kernels off ({why})", file=sys.stderr)
    return False
  return True
