"""zoo.convgrad: the zoo's own kernels (XLA FFI custom calls built at first use), the weight gradient and the
convolution of few input channels, are the sums they document, over strides, channel counts, row lengths,
tap sets and thread counts, to the second order; bad input fails with one clear line; they can be turned
off."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close_scaled as _close, experiment_module
from zoo import convgrad, native

pytestmark = pytest.mark.skipif(convgrad._compiler() is None, reason="no C++ compiler to build the kernel")


def _case(rng, b, hw, cp, cr, strides, offsets):
  (h, w), (sh, sw) = hw, strides
  hp = sh * (h - 1) + max(o[0] for o in offsets) + 1 + int(rng.integers(0, 3))
  wp = sw * (w - 1) + max(o[1] for o in offsets) + 1 + int(rng.integers(0, 3))
  p = jnp.asarray(rng.standard_normal((b, hp, wp, cp), np.float32))
  r = jnp.asarray(rng.standard_normal((b, h, w, cr), np.float32))
  return p, r


# (batch, R's (H, W), C_P, C_R, strides, offsets): one and three tapped channels and 16; rows of one pixel,
# of 5 and of 150 (tiles of ~128 pixels cut inside a row's run); R's channels 16 (a tile of one vector),
# 64 and 80 (64 then 16); unequal strides; a single tap; a batch of one
CASES = [
    (1, (1, 1), 1, 16, (1, 1), ((0, 0),)),
    (3, (4, 5), 3, 64, (2, 2), ((0, 0), (1, 2), (2, 1), (3, 3), (0, 3))),
    (2, (6, 7), 16, 80, (1, 1), ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1))),
    (2, (3, 150), 1, 32, (2, 1), ((2, 0), (0, 2), (1, 1))),
    (1, (5, 4), 7, 48, (1, 3), tuple((i, j) for i in range(3) for j in range(4))),
    # the VAE's first layer (1 -> 32, 4x4 at stride 2): rows of 14 pixels into 32 channels as 7 + 7
    (2, (2, 14), 1, 32, (2, 2), tuple((i, j) for i in range(4) for j in range(4))),
]


@pytest.mark.parametrize("b,hw,cp,cr,strides,offsets", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_weight_grad_is_the_sum_over_pixels_of_tap_times_row(b, hw, cp, cr, strides, offsets, threads):
  assert convgrad.available()
  p, r = _case(np.random.default_rng(0), b, hw, cp, cr, strides, offsets)
  got = jax.jit(lambda p, r: convgrad.weight_grad(p, r, offsets, strides, threads))(p, r)
  assert got.shape == (len(offsets), cp, cr)
  _close(got, convgrad._reference(p, r, offsets, strides))


@pytest.mark.parametrize("b,hw,cp,cr,strides,offsets", CASES, ids=[f"case{i}" for i in range(len(CASES))])
@pytest.mark.parametrize("threads", [1, 2, 5])
def test_conv_taps_is_xlas_convolution_with_those_taps(b, hw, cp, cr, strides, offsets, threads):
  """conv_taps(P, w) is XLA's convolution of P with a kernel holding w[t] at offsets[t] (zeros elsewhere),
  cropped to the output size asked for; rows of 1 to 150 pixels cut into blocks of 6 (64 channels) or 24."""
  assert convgrad.available()
  rng = np.random.default_rng(2)
  p, _ = _case(rng, b, hw, cp, cr, strides, offsets)
  w = jnp.asarray(rng.standard_normal((len(offsets), cp, cr), np.float32))
  want = jax.lax.conv_general_dilated(p, convgrad._taps_kernel(w, offsets), strides, "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  got = jax.jit(lambda p, w: convgrad.conv_taps(p, w, offsets, strides, hw, threads))(p, w)
  assert got.shape == (b, *hw, cr)
  _close(got, want[:, :hw[0], :hw[1]])


@pytest.mark.parametrize("b,hw,cp,cr,strides,offsets", [c for c in CASES if c[2] % 16 == 0] + [
    (2, (5, 150), 32, 16, (1, 1), ((0, 0), (1, 1), (2, 0))), (1, (3, 4), 16, 16, (2, 3), ((1, 2),)),
    (2, (4, 37), 64, 16, (1, 1), ((0, 0), (0, 3), (1, 1), (2, 2))),    # 64 channels: the kernel's constant sizes
    # 64 channels into one at stride 1 (by runs of a row's taps): a row of 11 taps (runs of 8 and 3, taps
    # given out of order), blocks of 16 pixels and of fewer
    (2, (3, 37), 64, 16, (1, 1), tuple((0, j) for j in range(10, -1, -1)) + ((2, 4), (1, 0), (1, 2))),
    # 128 channels into one (the Gated PixelCNN's first layer's input gradient): a 4x7 box by runs of 7
    (2, (4, 21), 128, 16, (1, 1), tuple((i, j) for i in range(4) for j in range(7))),
    # 32 channels into one (the PixelRNNs' 7x7 mask A's input gradient): runs of 3 and 7, blocks of fewer pixels
    (2, (3, 23), 32, 16, (1, 1), tuple((0, j) for j in range(7)) + ((1, 0), (1, 1), (1, 2)))],
    ids=["case2", "long-rows", "strided", "64-channels", "runs", "runs-128", "runs-32"])
@pytest.mark.parametrize("outputs", [1, 3, 4])
def test_thin_conv_is_xlas_convolution_into_few_channels(b, hw, cp, cr, strides, offsets, outputs):
  """thin_conv(P, v) is XLA's convolution of P into 1 to 4 channels with v[t] (transposed) at offsets[t]:
  blocks of up to 16 / C pixels as even as can be, two threads."""
  assert convgrad.available()
  rng = np.random.default_rng(4)
  p, _ = _case(rng, b, hw, cp, cr, strides, offsets)
  # sums of order 1 (sin's derivative below would magnify their rounding by their size)
  v = jnp.asarray(rng.standard_normal((len(offsets), outputs, cp), np.float32) / np.sqrt(len(offsets) * cp))
  got = jax.jit(lambda p, v: convgrad.thin_conv(p, v, offsets, strides, hw, 2))(p, v)
  assert got.shape == (b, *hw, outputs)
  _close(got, convgrad._as_conv(p, v.swapaxes(1, 2), hw, offsets, strides))
  loss = lambda f: lambda p, v: jnp.sum(jnp.sin(f(p, v)))      # noqa: E731
  ours = lambda p, v: convgrad.thin_conv(p, v, offsets, strides, hw)    # noqa: E731
  ref = lambda p, v: convgrad._as_conv(p, v.swapaxes(1, 2), hw, offsets, strides)     # noqa: E731
  for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(p, v), jax.grad(loss(ref), (0, 1))(p, v)):
    _close(g, h)


@pytest.mark.parametrize("cp,w,kw,pad", [
    (32, 28, 7, 3),     # the PixelRNNs' 7x7 input gradient: up to 3 zero positions a run, read from x itself
    (64, 19, 11, 5),    # 5 of them: such blocks read x padded; blocks of 10 and 9 (14 sums each)
    (128, 16, 3, 1),    # one block of 16
    (64, 7, 5, 2),      # 14 sums, 7 kept
    (32, 37, 2, 0),     # blocks of 12-13 pixels (14 sums), zeros at the right only
])
def test_runs_read_the_edges_as_zeros_from_x_or_from_x_padded(cp, w, kw, pad):
  """A stride-1 convolution into one channel (by runs of a kernel row's taps) whose rows run off x's
  columns (its pads: 'SAME' input gradients): the same as on x padded by XLA, on one and two threads."""
  rng = np.random.default_rng(8)
  offsets = tuple((i, j) for i in range(3) for j in range(kw))
  a = jnp.asarray(rng.standard_normal((2, 4, w, cp), np.float32))
  pads = ((1, 1), (pad, kw - 1 - pad))
  out_hw = (4, w)
  v = jnp.asarray(rng.standard_normal((len(offsets), 1, cp), np.float32) / np.sqrt(len(offsets) * cp))
  want = convgrad._as_conv(convgrad._pad(a, pads), v.swapaxes(1, 2), out_hw, offsets, (1, 1))
  for threads in (1, 2):
    _close(jax.jit(lambda a, v: convgrad.thin_conv(a, v, offsets, (1, 1), out_hw, threads, pads))(a, v), want)


@pytest.mark.parametrize("x_shape,k,c,strides,lo", [
    ((2, 5, 7, 16), (4, 4), 3, (2, 2), (2, 2)),       # a DCGAN's last layer, 'SAME'
    ((1, 6, 5, 32), (3, 5), 2, (2, 1), (1, 3)),
    ((3, 4, 4, 16), (3, 3), 1, (1, 1), (1, 1)),
    ((1, 3, 9, 16), (5, 2), 4, (3, 2), (0, 4)),       # lo beyond the kernel: edge columns with no taps
    ((2, 30, 40, 16), (4, 4), 3, (2, 2), (1, 2)),     # 40-41 pixels per column parity: blocks of 4-5, edges
    ((2, 6, 21, 64), (4, 4), 3, (2, 2), (2, 2)),      # 64 channels into 3 or 1: the kernel's constant sizes
    ((1, 5, 19, 64), (3, 3), 1, (1, 1), (1, 1)),
    # into one channel from 32, 64 or 128: by runs of a kernel row's taps (2 per parity at 4x4 stride 2, 1-3 at
    # 5x5 stride 2, up to 3 at 3x3 stride 1), blocks of 16 pixels and fewer, edges
    ((2, 7, 21, 128), (4, 4), 1, (2, 2), (2, 2)),     # the DCGAN MNIST generator's last layer, 'SAME'
    ((1, 9, 37, 64), (5, 5), 1, (2, 2), (1, 3)),
    ((2, 5, 19, 32), (3, 3), 1, (1, 1), (1, 1)),
    # 4 wide at stride 2 along a row, into one channel, rows of x of at most 16 pixels: by tap vectors (below)
    ((2, 14, 14, 32), (4, 4), 1, (2, 2), (2, 2)),
    ((1, 5, 9, 64), (4, 4), 1, (2, 2), (1, 1)),
    ((1, 3, 10, 128), (4, 4), 1, (1, 2), (3, 3)),
    ((1, 3, 12, 32), (2, 4), 1, (2, 2), (0, 0)),
    ((1, 4, 11, 64), (4, 4), 1, (2, 2), (2, 8)),
    # rows of x of at most 16 pixels and of y of at most 32: by tap vectors (the five above too); a row of 15
    # (two blocks of tap sums), of 3, kernels 1 to 3 tall, stride 1 down the columns, lo 0 (taps before y)
    ((3, 6, 15, 64), (4, 4), 1, (2, 2), (2, 1)),
    ((1, 4, 3, 32), (1, 4), 1, (1, 2), (0, 0)),
    ((2, 3, 8, 128), (3, 4), 1, (1, 2), (2, 5)),
    # rows wider than 16: by pairs (lo odd: parity 1's taps at parity 0's columns; even: a column after)
    ((1, 5, 18, 32), (4, 4), 1, (2, 2), (1, 1)),
    ((2, 4, 17, 64), (4, 4), 1, (2, 2), (3, 2)),
])
def test_thin_transposed_is_xlas_transposed_convolution(x_shape, k, c, strides, lo):
  assert convgrad.available()
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal(x_shape, np.float32))
  v = jnp.asarray(rng.standard_normal((*k, c, x_shape[3]), np.float32))
  out_hw = tuple((n - 1) * s + 3 for n, s in zip(x_shape[1:3], strides))
  want = convgrad._transposed_reference(x, v, strides, lo, out_hw)
  for threads in (1, 3):
    _close(jax.jit(lambda x, v: convgrad.thin_transposed(x, v, strides, lo, out_hw, threads))(x, v), want)
  loss = lambda f: lambda x, v: jnp.sum(jnp.sin(f(x, v)))      # noqa: E731
  ours = lambda x, v: convgrad.thin_transposed(x, v, strides, lo, out_hw)      # noqa: E731
  ref = lambda x, v: convgrad._transposed_reference(x, v, strides, lo, out_hw)     # noqa: E731
  for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, v), jax.grad(loss(ref), (0, 1))(x, v)):
    _close(g, h)
  with pytest.raises(ValueError, match="1 to 4 outputs"):
    convgrad.thin_transposed(x, jnp.zeros((*k, 5, x_shape[3])), strides, lo, out_hw)


def test_conv_taps_to_the_second_order():
  """Its transposes (XLA's convolution for P, weight_grad for w) give the first derivatives and a gradient
  penalty's second derivative, as XLA's convolution does."""
  assert convgrad.available()
  offsets, strides, hw = ((0, 0), (1, 2), (2, 1)), (2, 1), (3, 4)
  rng = np.random.default_rng(3)
  p, _ = _case(rng, 2, hw, 3, 16, strides, offsets)
  w = jnp.asarray(rng.standard_normal((3, 3, 16), np.float32))
  loss = lambda f: lambda p, w: jnp.sum(jnp.sin(f(p, w)))      # noqa: E731
  ours = lambda p, w: convgrad.conv_taps(p, w, offsets, strides, hw)    # noqa: E731
  ref = lambda p, w: convgrad._as_conv(p, w, hw, offsets, strides)     # noqa: E731
  for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(p, w), jax.grad(loss(ref), (0, 1))(p, w)):
    _close(g, h)
  penalty = lambda f: lambda p, w: jnp.sum(jnp.square(jax.grad(loss(f), 0)(p, w)))   # noqa: E731
  for g, h in zip(jax.jit(jax.grad(penalty(ours), (0, 1)))(p, w), jax.grad(penalty(ref), (0, 1))(p, w)):
    _close(g, h)


def test_conv_taps_adds_a_bias_in_its_sums():
  """With a bias: XLA's convolution plus the bias, and the derivatives of that (the bias's: y's sums)."""
  assert convgrad.available()
  offsets, strides, hw, pads = ((0, 0), (1, 2), (2, 1)), (1, 1), (5, 6), ((1, 0), (2, -1))
  rng = np.random.default_rng(8)
  a = jnp.asarray(rng.standard_normal((3, 6, 7, 1), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 1, 80), np.float32))
  bias = jnp.asarray(rng.standard_normal((80,), np.float32))
  ours = lambda a, w, b: convgrad.conv_taps(a, w, offsets, strides, hw, pads=pads, bias=b)     # noqa: E731
  ref = lambda a, w, b: convgrad._as_conv(a, w, hw, offsets, strides, pads) + b.reshape(1, 1, 1, -1)     # noqa: E731
  _close(jax.jit(ours)(a, w, bias), ref(a, w, bias))
  loss = lambda f: lambda a, w, b: jnp.sum(jnp.sin(f(a, w, b)))      # noqa: E731
  for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1, 2)))(a, w, bias), jax.grad(loss(ref), (0, 1, 2))(a, w, bias)):
    _close(g, h)
  with pytest.raises(ValueError, match=r"bias must be float32 of shape \(80,\)"):
    convgrad.conv_taps(a, w, offsets, strides, hw, pads=pads, bias=bias[:16])


def test_weight_grad_to_the_second_order():
  """Its transposes (XLA's convolutions) give the first derivatives in P and R, and a gradient penalty's
  second derivative, as the einsum's."""
  assert convgrad.available()
  offsets, strides = ((0, 0), (1, 2), (2, 1)), (2, 1)
  p, r = _case(np.random.default_rng(1), 2, (3, 4), 3, 16, strides, offsets)
  loss = lambda f: lambda p, r: jnp.sum(jnp.sin(f(p, r)))      # noqa: E731
  ours = lambda p, r: convgrad.weight_grad(p, r, offsets, strides)   # noqa: E731
  ref = lambda p, r: convgrad._reference(p, r, offsets, strides)     # noqa: E731
  for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(p, r), jax.grad(loss(ref), (0, 1))(p, r)):
    _close(g, h)
  penalty = lambda f: lambda p, r: jnp.sum(jnp.square(jax.grad(loss(f), 1)(p, r)))   # noqa: E731
  for g, h in zip(jax.jit(jax.grad(penalty(ours), (0, 1)))(p, r), jax.grad(penalty(ref), (0, 1))(p, r)):
    _close(g, h)


# CASES, and: tiles of weight_grad's ~128 pixels over many batch items of 6 pixels (the kernel pads several
# items into its buffer at once, and reuses them across tiles); a PixelCNN's 7x7 mask A input gradient's
# taps over 64 channels padded by 3 (blocks of 16 pixels with edge taps on both sides)
PAD_CASES = CASES + [
    (40, (3, 2), 16, 16, (1, 1), ((0, 0), (2, 1), (1, 2))),
    (2, (9, 21), 64, 16, (1, 1),
     tuple((6 - i, 6 - j) for i in range(7) for j in range(7) if i < 3 or i == 3 and j < 3)),
]


def _padded_case(rng, b, hw, cp, cr, strides, offsets):
  """An operand A, pads ((lo_h, hi_h), (lo_w, hi_w)) from -1 to 3 (negative: a crop) such that A padded is as
  large as the taps read, and R."""
  p, r = _case(rng, b, hw, cp, cr, strides, offsets)
  pads = []
  for n in p.shape[1:3]:
    lo, hi = (int(v) for v in rng.integers(-1, 4, 2))
    while n - lo - hi < 1:
      lo, hi = lo - 1, hi - 1
    pads.append((lo, hi))
  a = jnp.asarray(rng.standard_normal((b, p.shape[1] - sum(pads[0]), p.shape[2] - sum(pads[1]), cp), np.float32))
  return a, tuple(pads), r


@pytest.mark.parametrize("b,hw,cp,cr,strides,offsets", PAD_CASES, ids=[f"case{i}" for i in range(len(PAD_CASES))])
def test_the_kernels_read_their_operand_padded_and_cropped_inside(b, hw, cp, cr, strides, offsets):
  """With ``pads``, each kernel on A is the same kernel on A padded by XLA (zeros before and after each axis,
  a crop where negative), on one and two threads, and so are its first derivatives."""
  assert convgrad.available()
  rng = np.random.default_rng(7)
  for trial in range(2):
    a, pads, r = _padded_case(rng, b, hw, cp, cr, strides, offsets)
    p = convgrad._pad(a, pads)
    w = jnp.asarray(rng.standard_normal((len(offsets), cp, cr), np.float32))
    nop = convgrad.NO_PADS
    # each kernel as f(operand, other, threads, pads)
    kernels = [(r, lambda a, o, t=0, pads=nop: convgrad.weight_grad(a, o, offsets, strides, t, pads)),
               (w, lambda a, o, t=0, pads=nop: convgrad.conv_taps(a, o, offsets, strides, hw, t, pads))]
    if cp % 16 == 0:
      v = jnp.asarray(rng.standard_normal((len(offsets), 1 + trial * 2, cp), np.float32))
      kernels.append((v, lambda a, o, t=0, pads=nop: convgrad.thin_conv(a, o, offsets, strides, hw, t, pads)))
    for other, kernel in kernels:
      want = kernel(p, other, 1)
      for threads in (1, 2):
        _close(jax.jit(lambda a, o: kernel(a, o, threads, pads))(a, other), want)
      loss = lambda f: lambda a, o: jnp.sum(jnp.sin(f(a, o)))      # noqa: E731
      ours = lambda a, o: kernel(a, o, 0, pads)      # noqa: E731
      ref = lambda a, o: kernel(convgrad._pad(a, pads), o)      # noqa: E731
      for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(a, other), jax.grad(loss(ref), (0, 1))(a, other)):
        _close(g, h)


def test_pads_that_leave_a_tap_outside_fail_with_one_clear_line():
  a, r = jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 3, 3, 16))
  convgrad.weight_grad(a, r, ((0, 0), (2, 2)), (1, 1), pads=((1, 0), (0, 1)))    # 5x5: inside
  with pytest.raises(ValueError, match=r"reads outside P \(1, 4, 5, 3\)"):
    convgrad.weight_grad(a, r, ((0, 0), (2, 2)), (1, 1), pads=((1, -1), (0, 1)))
  with pytest.raises(ValueError, match="leave nothing"):
    convgrad.conv_taps(a, jnp.zeros((1, 3, 16)), ((0, 0),), (1, 1), (1, 1), pads=((-2, -2), (0, 0)))
  with pytest.raises(ValueError, match="two pairs"):
    convgrad.thin_conv(jnp.zeros((1, 4, 4, 16)), jnp.zeros((1, 1, 16)), ((0, 0),), (1, 1), (3, 3), pads=((1, 1),))


@pytest.mark.parametrize("p_shape,r_shape,offsets,strides,dtype,error", [
    ((1, 5, 5, 3), (1, 3, 3, 12), ((0, 0),), (1, 1), np.float32, "multiple of 16"),
    ((1, 5, 5, 3), (2, 3, 3, 16), ((0, 0),), (1, 1), np.float32, "one batch"),
    ((1, 5, 5, 3), (1, 3, 3, 16), ((0, 3),), (1, 1), np.float32, "reads outside P"),
    ((1, 5, 5, 3), (1, 4, 3, 16), ((0, 0),), (2, 2), np.float32, "reads outside P"),
    ((1, 5, 5, 3), (1, 3, 3, 16), ((-1, 0),), (1, 1), np.float32, "reads outside P"),
    ((1, 5, 5, 3), (1, 3, 3, 16), (), (1, 1), np.float32, "no taps"),
    ((1, 5, 5, 3), (1, 3, 3, 16), ((0, 0),), (1, 1), np.float16, "float32 only"),
])
def test_bad_input_fails_with_one_clear_line(p_shape, r_shape, offsets, strides, dtype, error):
  p, r = jnp.zeros(p_shape, dtype), jnp.zeros(r_shape, dtype)
  with pytest.raises(ValueError, match=error):
    convgrad.weight_grad(p, r, offsets, strides)


def test_conv_taps_fails_with_one_clear_line_on_bad_input():
  p = jnp.zeros((1, 5, 5, 3))
  with pytest.raises(ValueError, match="multiple of 16"):
    convgrad.conv_taps(p, jnp.zeros((1, 3, 12)), ((0, 0),), (1, 1), (3, 3))
  with pytest.raises(ValueError, match="P's channels"):
    convgrad.conv_taps(p, jnp.zeros((2, 3, 16)), ((0, 0),), (1, 1), (3, 3))
  with pytest.raises(ValueError, match="reads outside P"):
    convgrad.conv_taps(p, jnp.zeros((1, 3, 16)), ((0, 0),), (1, 1), (6, 3))


def test_thin_conv_fails_with_one_clear_line_on_bad_input():
  p = jnp.zeros((1, 5, 5, 16))
  with pytest.raises(ValueError, match="1 to 4 outputs"):
    convgrad.thin_conv(p, jnp.zeros((1, 5, 16)), ((0, 0),), (1, 1), (3, 3))
  with pytest.raises(ValueError, match="multiple of 16"):
    convgrad.thin_conv(jnp.zeros((1, 5, 5, 8)), jnp.zeros((1, 3, 8)), ((0, 0),), (1, 1), (3, 3))
  with pytest.raises(ValueError, match="reads outside P"):
    convgrad.thin_conv(p, jnp.zeros((1, 3, 16)), ((3, 0),), (1, 1), (3, 3))


def test_weight_grad_refuses_to_run_where_the_kernel_is_not_available(monkeypatch):
  monkeypatch.setattr(convgrad, "available", lambda: False)
  with pytest.raises(RuntimeError, match="not available"):
    convgrad.weight_grad(jnp.zeros((1, 3, 3, 1)), jnp.zeros((1, 3, 3, 16)), ((0, 0),), (1, 1))


def test_the_library_is_built_once_and_can_be_turned_off(monkeypatch, capsys):
  # in the session's cache (tests/conftest.py), built by whichever test needed it first: a build of its own
  # takes 20-25 s on 2 cores, and the tests of the bigalloc library build theirs into empty folders
  first = convgrad.build()
  assert first is not None and first.parent == native.cache_dir()
  mtime = first.stat().st_mtime_ns
  assert convgrad.build() == first and first.stat().st_mtime_ns == mtime      # not built again
  try:
    convgrad.available.cache_clear()
    monkeypatch.setenv(convgrad.ENV_OFF, "0")
    assert convgrad.available() is False
    convgrad.available.cache_clear()
    monkeypatch.delenv(convgrad.ENV_OFF)
    monkeypatch.setattr(convgrad, "_compiler", lambda: None)
    assert convgrad.available() is False
    assert "no C++ compiler" in capsys.readouterr().err
  finally:
    monkeypatch.undo()
    convgrad.available.cache_clear()
  assert convgrad.available() is True


def test_a_build_registered_under_a_suffix_is_what_a_function_lowered_inside_suffixed_calls():
  """experiments/benchmarks/ab_kernels.py's mechanism: a build of the kernels registered beside the zoo's
  (here the same library again, under "_ab") is what a function compiled inside ``suffixed`` calls, and
  only there; a function jitted once keeps its first lowering (JAX caches it), which ``compiled_for``
  avoids by tracing afresh and catches by reading the compiled program's targets."""
  assert convgrad.available()
  convgrad.register(convgrad.build(quiet=True), "_ab")
  ab_kernels = experiment_module("ab_kernels")
  rng = np.random.default_rng(0)
  x, v = rng.standard_normal((2, 5, 7, 16), np.float32), rng.standard_normal((4, 4, 3, 16), np.float32)
  fn = lambda x, v: convgrad.thin_transposed(x, v, (2, 2), (2, 2), (10, 13))   # noqa: E731
  jitted = jax.jit(fn)
  plain = jitted.lower(x, v).compile()
  with convgrad.suffixed("_ab"):
    assert ab_kernels.zoo_targets(jitted.lower(x, v).compile()) == ["zoo_thin_transposed"]   # cached
  other = ab_kernels.compiled_for(fn, (x, v), None, "_ab")
  assert ab_kernels.zoo_targets(plain) == ["zoo_thin_transposed"]
  assert ab_kernels.zoo_targets(other) == ["zoo_thin_transposed_ab"]
  np.testing.assert_array_equal(np.asarray(other(x, v)), np.asarray(plain(x, v)))
  assert ab_kernels.zoo_targets(jax.jit(lambda x, v: fn(x, v)).lower(x, v).compile()) == ["zoo_thin_transposed"]
  assert ab_kernels.compiled_for(lambda x, v: x * 2.0, (x, v), None, "_ab") is None     # no kernel of the zoo's
  with pytest.raises(SystemExit, match="neither a file nor a git revision"):
    ab_kernels.source_of("no-such-revision-or-file", None, "a")


def test_builds_that_start_together_compile_the_library_once(tmp_path):
  """Two builds of one library at once (a suite's two workers, two runs): the second waits for the first's
  and loads it, instead of compiling its own (~20 s for the kernels on 2 cores)."""
  import threading
  compiler = tmp_path / "cc"
  compiler.write_text(f'#!/bin/sh\necho built >> {tmp_path / "log"}\nsleep 1\n: > "$1"\n')
  compiler.chmod(0o755)
  source = tmp_path / "k.c"
  source.write_text("int k;")
  got = []

  def build():
    got.append(native.build("k", source, str(compiler), lambda cc, out: [cc, out], lambda lib: None,
                            tmp_path / "cache", False, "off", "missing"))

  threads = [threading.Thread(target=build) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert got[0] is not None and got == [got[0]] * 2 and got[0].exists()
  assert (tmp_path / "log").read_text().split() == ["built"]


def test_a_passed_check_is_remembered_per_key_and_a_failed_one_is_not(monkeypatch, tmp_path):
  """The kernels' self-checks (seconds of compiling in each process) run once per library, JAX, XLA flags
  and CPU on a machine: a pass leaves a file in the cache that later processes trust as a library's."""
  monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
  runs = []

  def passing():
    runs.append("pass")
    return None

  assert native.checked_once("k", [b"lib", b"jax 1"], passing) is None
  assert native.checked_once("k", [b"lib", b"jax 1"], passing) is None and runs == ["pass"]   # remembered
  assert native.checked_once("k", [b"lib", b"jax 2"], passing) is None and runs == ["pass"] * 2  # new key
  monkeypatch.setattr(native, "cpu_identity", lambda: b"x86_64|flags : fpu sse sse2")
  assert native.checked_once("k", [b"lib", b"jax 1"], passing) is None and runs == ["pass"] * 3  # other CPU
  assert native.checked_once("f", [b"lib"], lambda: runs.append("fail") or "differs") == "differs"
  assert native.checked_once("f", [b"lib"], lambda: runs.append("fail") or "differs") == "differs"
  assert runs.count("fail") == 2                                # a failure runs (and says why) each time
  (tmp_path / "native").chmod(0o777)         # a directory anyone can write: its files prove nothing
  assert native.checked_once("k", [b"lib", b"jax 2"], passing) is None and runs.count("pass") == 4
  (tmp_path / "native").chmod(0o700)


def test_the_library_is_named_by_the_cpu_it_was_built_for(monkeypatch):
  """Built with -march=native, the library runs only on CPUs with this one's instruction sets: a cache
  directory shared by two machines (a home directory on a cluster) holds one library per CPU."""
  here = native.library_name("convgrad", b"source", ["c++", "-march=native"])
  assert here == native.library_name("convgrad", b"source", ["c++", "-march=native"])
  monkeypatch.setattr(native, "cpu_identity", lambda: b"x86_64|flags : fpu sse sse2")
  assert native.library_name("convgrad", b"source", ["c++", "-march=native"]) != here
