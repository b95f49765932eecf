"""The zoo's convolutions (_layers.conv2d, conv_transpose2d, Conv, ConvTranspose) compute XLA's functions.

On CPU they run their own formulations (tap-matmul weight gradients, phase decomposition); every case
here compares outputs and both gradients with lax.conv_general_dilated / lax.conv_transpose, the modules
with flax's, and checks that what would run on GPU is XLA's convolution alone.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import assert_close_scaled as _close, lowered_for as _lowered
from zoo import convgrad, kernels
from zoo.models import _layers

DN = ("NHWC", "HWIO", "NHWC")
ASYM = ((2, 0), (1, 3))


def _use(path, monkeypatch):
  """Make the small test channels take one CPU formulation: 'phases' (phase decomposition, one matmul per
  tap, and the stride-1 and transposed convolutions' gradients from dy's shifted copies, whatever their
  channels) or 'native' (XLA's forward and input gradient, the taps' matmuls on x's copies concatenated)."""
  big = path == "native"
  monkeypatch.setattr(_layers, "_PHASE_MIN_FEATURES", 10 ** 6 if big else 1)
  monkeypatch.setattr(_layers, "_CONCAT_MAX_FEATURES", 10 ** 6 if big else 0)
  monkeypatch.setattr(_layers, "_DY_COPIES_MAX_RATIO", 0 if big else 10 ** 6)
  # the custom VJPs' rules are traced once per shape and kept: forget them, or a case traced before under
  # the other formulation would run that one again
  jax.clear_caches()


def _check(ours, ref, x_shape, k_shape):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) / np.sqrt(np.prod(k_shape[:3]))
  y = ref(x, k)
  assert y.size, "an empty case tests nothing"
  _close(jax.jit(ours)(x, k), y)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))
  for a, b in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, k), jax.jit(jax.grad(loss(ref), (0, 1)))(x, k)):
    _close(a, b)


# (batch, (H, W), kernel, strides, padding, C_in, C_out, CPU formulation): odd and even sizes, kernels
# 1 to 5, a stride above the kernel size (phases that no tap meets), VALID with unused rows, an
# asymmetric explicit padding, unequal strides.
CASES = [
    (1, (5, 7), 3, 1, "SAME", 2, 3, "phases"),
    (3, (8, 8), 3, 2, "SAME", 3, 5, "native"),
    (1, (5, 7), 4, 2, "SAME", 4, 2, "phases"),
    (3, (8, 8), 4, 2, "VALID", 2, 4, "phases"),
    (1, (5, 7), 5, 2, "VALID", 3, 3, "native"),
    (3, (5, 7), 1, 2, "SAME", 5, 2, "phases"),
    (1, (8, 8), 5, 1, ASYM, 2, 5, "native"),
    (3, (5, 7), 4, 2, ASYM, 3, 4, "phases"),
    (1, (5, 7), 3, (2, 1), ASYM, 2, 3, "phases"),
    (3, (8, 8), 4, 2, "SAME", 4, 3, "native"),
    (2, (5, 7), 1, 1, "VALID", 3, 4, "native"),   # 1x1, stride 1, unpadded: a matmul on CPU
]


@pytest.mark.parametrize("b,hw,k,s,padding,c_in,c_out,path", CASES, ids=[
    f"b{c[0]}-{c[1][0]}x{c[1][1]}-k{c[2]}-s{c[3]}-{c[4] if isinstance(c[4], str) else 'asym'}-{c[7]}"
    for c in CASES])
@pytest.mark.parametrize("kind", ["conv", "conv_transpose"])
@pytest.mark.parametrize("own", [False, True], ids=["custom", "xla-own"])
def test_layers_equal_xla(own, kind, b, hw, k, s, padding, c_in, c_out, path, monkeypatch):
  """... traced as a caller's own jit traces them, or as the shared step does under XLA's own CPU kernels
  (``xla_own_kernels()``: XLA's gradients where they are the faster there)."""
  _use(path, monkeypatch)
  s = (s, s) if isinstance(s, int) else s
  if kind == "conv":
    ours = lambda x, w: _layers.conv2d(x, w, padding, strides=s)
    ref = lambda x, w: jax.lax.conv_general_dilated(x, w, s, padding, dimension_numbers=DN)
  else:
    ours = lambda x, w: _layers.conv_transpose2d(x, w, s, padding)
    ref = lambda x, w: jax.lax.conv_transpose(x, w, s, padding, dimension_numbers=DN)
  with kernels.xla_own_kernels(own):
    _check(ours, ref, (b, *hw, c_in), (k, k, c_in, c_out))


@pytest.mark.parametrize("path", ["phases", "native"])
@pytest.mark.parametrize("own", [False, True], ids=["custom", "xla-own"])
def test_second_order_gradients_equal_xla(own, path, monkeypatch):
  """A gradient penalty differentiates the input gradient again, through the custom backward passes."""
  _use(path, monkeypatch)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  for ours, ref, k_shape in [
      (lambda x, w: _layers.conv2d(x, w, "SAME", strides=(2, 2)),
       lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=DN), (4, 4, 3, 4)),
      (lambda x, w: _layers.conv_transpose2d(x, w, (2, 2), "SAME"),
       lambda x, w: jax.lax.conv_transpose(x, w, (2, 2), "SAME", dimension_numbers=DN), (4, 4, 3, 4))]:
    k = jax.random.normal(jax.random.PRNGKey(1), k_shape) * 0.3
    penalty = lambda f: lambda w: jnp.sum(jnp.square(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w))))(x)))
    with kernels.xla_own_kernels(own):
      _close(jax.jit(jax.grad(penalty(ours)))(k), jax.jit(jax.grad(penalty(ref)))(k))


@pytest.mark.parametrize("kw", [
    dict(features=4, kernel_size=(4, 4), strides=(2, 2), padding="SAME"),
    dict(features=3, kernel_size=(4, 4), strides=(2, 2), padding="SAME", use_bias=False,
         kernel_init=nn.initializers.normal(0.02)),
    dict(features=5, kernel_size=(3, 3), padding="VALID"),
    dict(features=2, kernel_size=(3, 5), strides=2, padding=((1, 0), (2, 1))),
    dict(features=2, kernel_size=(3, 3), padding=1),
])
@pytest.mark.parametrize("ours,theirs", [(_layers.Conv, nn.Conv), (_layers.ConvTranspose, nn.ConvTranspose)],
                         ids=["Conv", "ConvTranspose"])
def test_modules_are_flax_modules(ours, theirs, kw):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 3))
  v_ours = ours(**kw).init(jax.random.PRNGKey(1), x)
  v_theirs = theirs(**kw).init(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_theirs)
  for a, b in zip(jax.tree_util.tree_leaves(v_ours), jax.tree_util.tree_leaves(v_theirs)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  _close(ours(**kw).apply(v_ours, x), theirs(**kw).apply(v_theirs, x))
  x3 = x.reshape(1, *x.shape)       # flax treats every leading axis as a batch axis
  _close(ours(**kw).apply(v_ours, x3), theirs(**kw).apply(v_theirs, x3))


@pytest.mark.parametrize("module,kw,error", [
    (_layers.Conv, dict(kernel_size=3), "2-D"),
    (_layers.Conv, dict(kernel_size=(3, 3, 3)), "2-D"),
    (_layers.Conv, dict(kernel_size=(3, 3), feature_group_count=3), "feature_group_count"),
    (_layers.Conv, dict(kernel_size=(3, 3), kernel_dilation=2), "kernel_dilation"),
    (_layers.Conv, dict(kernel_size=(3, 3), input_dilation=(1, 2)), "input_dilation"),
    (_layers.Conv, dict(kernel_size=(3, 3), padding="CIRCULAR"), "CIRCULAR"),
    (_layers.ConvTranspose, dict(kernel_size=(3, 3), transpose_kernel=True), "transpose_kernel"),
    (_layers.ConvTranspose, dict(kernel_size=(3, 3), kernel_dilation=(2, 2)), "kernel_dilation"),
])
def test_modules_refuse_what_they_do_not_compute(module, kw, error):
  with pytest.raises((ValueError, NotImplementedError), match=error):
    module(features=2, **kw).init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)))


@pytest.mark.parametrize("layer", ["conv", "conv_transpose"])
def test_gpu_runs_xla_convolutions_and_cpu_the_tap_matmuls(layer):
  """Lowered for CUDA (possible on a CPU-only machine), the layer's gradient is XLA's convolutions and no
  dot_general; lowered for CPU, its weight gradient is the tap matmuls."""
  module = (_layers.Conv if layer == "conv" else _layers.ConvTranspose)(16, (4, 4), strides=(2, 2))
  x = jnp.ones((2, 8, 8, 16))
  v = module.init(jax.random.PRNGKey(0), x)
  grad = jax.jit(jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), (0, 1)))

  def ops(platform):
    return re.findall(r"stablehlo\.(convolution|dot_general)", _lowered(grad, platform, v, x))
  gpu, cpu = ops("cuda"), ops("cpu")
  assert gpu.count("convolution") == 3 and "dot_general" not in gpu   # forward, input and weight gradients
  assert "dot_general" in cpu                                          # the taps' matmuls


def _tap_mask(k, open_taps, c_in, c_out):
  mask = np.zeros((*k, c_in, c_out), np.float32)
  for i, j in open_taps:
    mask[i, j] = 1
  return mask


# (kernel, open taps, strides, padding): the PixelCNN's 3x3 mask B and 7x7 mask A; a box inside the kernel
# under 'VALID' (the cut rows and columns exceed the padding: x is cropped); a strided one; no tap open.
MASKS = [
    ((3, 3), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], (1, 1), "SAME"),
    ((7, 7), [(i, j) for i in range(4) for j in range(7) if i < 3 or j < 3], (1, 1), "SAME"),
    ((5, 5), [(1, 2), (2, 1), (3, 3)], (1, 1), "VALID"),
    ((4, 3), [(1, 0), (2, 2)], (2, 2), ASYM),
    ((1, 3), [(0, 0), (0, 1)], (1, 1), "SAME"),
    ((3, 3), [], (1, 1), "SAME"),
]


@pytest.mark.parametrize("k,open_taps,s,padding", MASKS, ids=[f"{m[0][0]}x{m[0][1]}-{len(m[1])}taps-s{m[2][0]}"
                                                             for m in MASKS])
@pytest.mark.parametrize("path", ["phases", "native"])
@pytest.mark.parametrize("own", [False, True], ids=["custom", "xla-own"])
def test_masked_conv_equals_xla_on_the_masked_kernel(own, k, open_taps, s, padding, path, monkeypatch):
  """conv2d(x, kernel * mask, mask=mask) convolves over the box of open taps only (on CPU): the output
  and both gradients (from dy's copies at the open taps, XLA's input gradient over the box, or under
  XLA's own kernels XLA's gradients over the box) are XLA's convolution of the masked kernel."""
  _use(path, monkeypatch)
  mask = _tap_mask(k, open_taps, 3, 4)
  ours = lambda x, w: _layers.conv2d(x, w * mask, padding, mask=mask, strides=s)
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w * mask, s, padding, dimension_numbers=DN)
  with kernels.xla_own_kernels(own):
    _check(ours, ref, (2, 9, 8, 3), (*k, 3, 4))


def test_masked_conv_lowers_on_cpu_to_the_open_box():
  """A 3x3 mask-B convolution runs forward as a 2x3 one on CPU (its gradients are matmuls on dy's copies
  at the five open taps), and as XLA's 3x3 convolution on GPU."""
  mask = _tap_mask((3, 3), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 4, 4)
  x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(_layers.conv2d(x, w * mask, "SAME", mask))), (0, 1)))

  def kernels(platform):
    return re.findall(r"stablehlo\.convolution.*?tensor<[^>]*>, tensor<(\d+x\d+)x4x4xf32>",
                      _lowered(grad, platform, x, w))
  assert kernels("cpu") == ["2x3"]           # forward; both gradients are matmuls
  assert kernels("cuda") == ["3x3", "3x3"]   # and the weight gradient, a convolution with dy as its kernel


def test_with_xlas_own_kernels_the_gradients_are_xlas_convolutions():
  """Traced under ``xla_own_kernels()`` (as zoo.step traces a step it compiles with XLA's own CPU kernels),
  the mask-B layer is XLA's convolution over its 2x3 box, differentiated by XLA, and the strided and
  transposed convolutions' weight gradients are XLA's convolutions too: no matmuls on CPU (the layers'
  functions under the block: test_layers_equal_xla). Outside the block, the tap matmuls again."""
  mask = _tap_mask((3, 3), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 16, 16)
  x, w = jnp.ones((2, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
  layers = {"mask B": lambda x, w: _layers.conv2d(x, w * mask, "SAME", mask),
            "strided": lambda x, w: _layers.conv2d(x, w, "SAME", strides=(2, 2)),
            "transposed": lambda x, w: _layers.conv_transpose2d(x, w, (2, 2), "SAME")}

  def ops(f):
    grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1))
    return re.findall(r"stablehlo\.(convolution|dot_general)", _lowered(grad, "cpu", x, w))
  jax.clear_caches()
  with kernels.xla_own_kernels():
    assert ops(layers["mask B"]) == ["convolution"] * 3
    for name, f in layers.items():
      assert "dot_general" not in ops(f), name
  jax.clear_caches()
  for name, f in layers.items():
    assert "dot_general" in ops(f), name    # outside the block: the custom gradients' tap matmuls


def test_where_the_caller_compiles_for_cpu_only_the_cpu_branch_is_traced(monkeypatch):
  """Under ``kernels.cpu_only()`` (what ``zoo.step.own_kernels_for`` sets where the step compiles for a CPU
  mesh) a layer's gradient is traced without ``lax.platform_dependent`` (no platform index in its jaxpr, so no
  XLA branch and no conditional to differentiate) and gives the same values; outside the block, and in the
  step's context for no CPU options (a GPU mesh), the switch is there."""
  from zoo import step as step_lib
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 16))
  layers = {"strided": lambda x, w: _layers.conv2d(x, w, "SAME", strides=(2, 2)),
            "transposed": lambda x, w: _layers.conv_transpose2d(x, w, (2, 2), "SAME"),
            "stride 1": lambda x, w: _layers.conv2d(x, w[:3, :3], "SAME")}
  for name, layer in layers.items():
    def grad(x, w, layer=layer):
      return jax.grad(lambda x, w: jnp.sum(jnp.sin(layer(x, w))), (0, 1))(x, w)
    with kernels.cpu_only():   # each trace of a new function: JAX caches traces by function, not by context
      alone = jax.make_jaxpr(lambda x, w: grad(x, w))(x, w)
      values = jax.jit(lambda x, w: grad(x, w))(x, w)
    assert "platform_index" not in str(alone), name
    assert "platform_index" in str(jax.make_jaxpr(lambda x, w: grad(x, w))(x, w)), name
    for got, want in zip(values, jax.jit(lambda x, w: grad(x, w))(x, w)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)
  monkeypatch.setattr(step_lib, "USE_ONEDNN", False)   # no oneDNN probe for the context alone
  with step_lib.own_kernels_for(None):
    assert not kernels.cpu_only_on()
  with step_lib.own_kernels_for(step_lib.cpu_compiler_options()):
    assert kernels.cpu_only_on()
  assert not kernels.cpu_only_on()


def test_materialized_is_x_bit_for_bit_and_passes_gradients_through():
  """``_materialized`` returns x exactly (NaN, infinities, signed zeros, bfloat16 kept), whichever branch a
  NaN in the kernel picks, and its gradient is the identity; a layer with no input channels still runs."""
  x = jnp.array([[jnp.nan, -0.0, 0.0, jnp.inf, -jnp.inf, 1e-38, -3.5]])
  for dtype in (jnp.float32, jnp.bfloat16):
    for first in (1.0, jnp.nan):
      k = jnp.array([first, 2.0], dtype)
      y = jax.jit(_layers._materialized)(x.astype(dtype), k)
      assert y.dtype == dtype
      np.testing.assert_array_equal(np.asarray(y).view(np.uint16 if dtype == jnp.bfloat16 else np.uint32),
                                    np.asarray(x.astype(dtype)).view(np.uint16 if dtype == jnp.bfloat16
                                                                     else np.uint32))
  g = jax.grad(lambda x: jnp.sum(jnp.arange(3.0) * _layers._materialized(x, jnp.ones(2))))(jnp.ones(3))
  np.testing.assert_array_equal(g, np.arange(3.0))
  # no channels in: the kernel has no first entry to take the index from, and the layer is still XLA's
  x, w = jnp.ones((2, 5, 5, 0)), jnp.ones((3, 3, 0, 4))
  with kernels.xla_own_kernels():
    y = jax.jit(lambda x, w: _layers.conv2d(x, w, "SAME"))(x, w)
  np.testing.assert_array_equal(y, jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN))


def test_stacked_taps_are_the_kernels_taps_in_order_in_one_op():
  """``_stacked_taps`` is the stack of kernel[i, j] over the taps in their order: all taps, a mask A's run,
  a flipped kernel's (a run backwards), one tap, and taps out of order (a gather); a run lowers to no
  concatenation and no gather."""
  kernel = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 2, 4))
  mask_a = [(i, j) for i in range(5) for j in range(3)][:7]
  cases = {"all": (_layers._all_taps(kernel.shape), True), "mask A": (mask_a, True),
           "flipped": ([(4 - i, 2 - j) for i, j in mask_a], True), "one": ([(3, 1)], True),
           "out of order": ([(0, 2), (4, 0), (1, 1), (0, 0)], False)}
  for name, (taps, run) in cases.items():
    got = _layers._stacked_taps(kernel, taps)
    np.testing.assert_array_equal(got, jnp.stack([kernel[i, j] for i, j in taps]), err_msg=name)
    text = jax.jit(lambda k, taps=taps: _layers._stacked_taps(k, taps)).lower(kernel).as_text()
    assert ("concatenate" in text or "gather" in text) != run, name
  assert _layers._stacked_taps(kernel, []).shape == (0, 2, 4)      # every tap closed: nothing stacked


@pytest.mark.parametrize("materialize", [1, 0])
def test_under_xla_own_kernels_the_weight_gradient_transposes_x_not_its_producer(materialize, monkeypatch):
  """Compiled as the shared step compiles (XLA's own kernels, its CPU options), a mask-B layer's weight
  gradient transposes x = relu(h) as it is in memory: no fused loop recomputes the relu inside a transpose
  (XLA does, 2.7x slower than the plain transpose, where ``_MATERIALIZE_CONV_INPUT`` is 0, which the
  second case shows). Lowered for CUDA, the same program either way: the materializing is CPU-only."""
  from zoo import step
  monkeypatch.setattr(_layers, "_MATERIALIZE_CONV_INPUT", materialize)
  jax.clear_caches()
  mask = _tap_mask((3, 3), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 16, 16)
  h, w = jnp.ones((16, 8, 8, 16)), jnp.ones((3, 3, 16, 16))
  grad = jax.grad(lambda h, w: jnp.sum(jnp.sin(_layers.conv2d(jax.nn.relu(h), w * mask, "SAME", mask))), (0, 1))

  def cuda_ops():
    return sorted(re.findall(r"stablehlo\.[a-z_]+", _lowered(grad, "cuda", h, w)))
  with kernels.xla_own_kernels():
    hlo = jax.jit(grad, compiler_options=step.cpu_compiler_options()).lower(h, w).compile().as_text()
    cuda = cuda_ops()
    monkeypatch.setattr(_layers, "_MATERIALIZE_CONV_INPUT", 1 - materialize)
    jax.clear_caches()
    assert cuda_ops() == cuda
  computations = re.split(r"\n(?=\S)", hlo)
  fused_relu_transposes = [c for c in computations if c.startswith("%fused")
                           and " maximum(" in c and " transpose(" in c]
  assert bool(fused_relu_transposes) == (not materialize)
  assert (" conditional(" in hlo) == bool(materialize)


def test_dy_copies_beyond_their_byte_limit_take_the_per_tap_path(monkeypatch):
  """A stride-1 convolution whose matrix of dy's copies would exceed _DY_COPIES_MAX_BYTES keeps XLA's input
  gradient (a second convolution on CPU) and per-tap weight-gradient matmuls, and still computes XLA's
  function."""
  mask = _tap_mask((3, 3), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)], 4, 4)
  x, w = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 4))
  ours = lambda x, w: _layers.conv2d(x, w * mask, "SAME", mask)

  def convolutions():      # traced afresh each time: the limit is read when tracing
    grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), (0, 1))
    return len(re.findall(r"stablehlo\.convolution", _lowered(grad, "cpu", x, w)))
  assert convolutions() == 1                                  # 2*36 rows x 5 taps x 4 channels: 5,760 bytes
  monkeypatch.setattr(_layers, "_DY_COPIES_MAX_BYTES", 5_759)
  assert convolutions() == 2
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w * mask, (1, 1), "SAME", dimension_numbers=DN)
  _check(ours, ref, (2, 6, 6, 4), (3, 3, 4, 4))


def test_a_1x1_convolution_is_a_matmul_on_cpu():
  x, w = jnp.ones((2, 5, 5, 4)), jnp.ones((1, 1, 4, 3))
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(_layers.conv2d(x, w, "SAME"))), (0, 1)))

  def ops(platform):
    return sorted(set(re.findall(r"stablehlo\.(convolution|dot_general)", _lowered(grad, platform, x, w))))
  assert ops("cpu") == ["dot_general"] and ops("cuda") == ["convolution"]


_MASK_B = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
_MASK_A = [(i, j) for i in range(4) for j in range(7) if i < 3 or j < 3]
# (kind, batch, (H, W), kernel, strides, padding, C_in, C_out, open taps or None for all): the PixelCNN's
# 3x3 mask B and 7x7 mask A from 1 channel, the DCGAN's strided 4x4 from 3 channels and its transposed 4x4
# into 3; VALID with unused rows, asymmetric padding, unequal strides, a box of taps under VALID (x
# cropped), R's channels 16 and 32, inputs (or a transposed one's outputs) of 1 to 5 and 8 channels (the
# thin kernel takes up to 4); batch 1
NATIVE = [
    ("conv", 2, (9, 8), 3, (1, 1), "SAME", 3, 16, _MASK_B),
    ("conv", 1, (8, 8), 7, (1, 1), "SAME", 1, 16, _MASK_A),
    ("conv", 3, (8, 8), 4, (2, 2), "SAME", 3, 16, None),
    ("conv", 1, (5, 7), 5, (2, 2), "VALID", 2, 32, None),
    ("conv", 1, (8, 8), 5, (1, 1), ASYM, 2, 16, None),
    ("conv", 1, (5, 7), 3, (2, 1), ASYM, 2, 16, None),
    ("conv", 2, (9, 8), 5, (1, 1), "VALID", 3, 16, [(1, 2), (2, 1), (3, 3)]),
    ("conv", 1, (7, 6), 3, (1, 1), "SAME", 8, 16, None),
    ("conv_transpose", 3, (8, 8), 4, (2, 2), "SAME", 16, 3, None),
    ("conv_transpose", 1, (5, 7), 5, (2, 2), "VALID", 16, 2, None),
    ("conv_transpose", 2, (5, 7), 3, (2, 1), ASYM, 32, 4, None),
    ("conv_transpose", 1, (5, 7), 3, (1, 1), "SAME", 16, 5, None),
    # from 16 to 63 channels on the tapped side, only the weight gradient (``_native_strided``)
    ("conv", 2, (9, 9), 4, (2, 2), "SAME", 32, 16, None),
    ("conv_transpose", 2, (5, 5), 4, (2, 2), "SAME", 16, 32, None),
]


@pytest.mark.skipif(convgrad._compiler() is None, reason="no C++ compiler to build zoo.convgrad's kernel")
def test_a_masked_layer_from_one_channel_adds_its_bias_and_residual_in_the_native_kernel(monkeypatch):
  """A PixelCNN's first layer (7x7 mask A from one channel) with a bias and an added array, as the step
  traces it: its forward pass is the kernel of few input channels with the bias in its sums, and the layer
  and all four gradients are XLA's convolution plus the bias plus the array's."""
  assert convgrad.available()
  monkeypatch.setattr(_layers, "_NATIVE_MIN_PIXELS", 0)
  mask = _tap_mask((7, 7), _MASK_A, 1, 32)
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  x, k = jax.random.normal(keys[0], (2, 9, 8, 1)), jax.random.normal(keys[1], (7, 7, 1, 32)) * mask / 5
  bias, add = jax.random.normal(keys[2], (32,)), jax.random.normal(keys[3], (2, 9, 8, 32))
  ours = lambda x, k, b, a: _layers.conv2d(x, k * mask, "SAME", mask=mask, bias=b, add=a)     # noqa: E731
  ref = lambda x, k, b, a: (      # noqa: E731
      jax.lax.conv_general_dilated(x, k * mask, (1, 1), "SAME", dimension_numbers=DN) + b.reshape(1, 1, 1, -1) + a)
  loss = lambda f: lambda *args: jnp.sum(jnp.sin(f(*args)))      # noqa: E731
  jax.clear_caches()
  with kernels.xla_own_kernels(), kernels.native_kernels():
    _close(jax.jit(ours)(x, k, bias, add), ref(x, k, bias, add))
    for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1, 2, 3)))(x, k, bias, add),
                    jax.grad(loss(ref), (0, 1, 2, 3))(x, k, bias, add)):
      _close(g, h)
    assert convgrad.CONV_BIAS_TARGET in jax.jit(ours).lower(x, k, bias, add).as_text()
  jax.clear_caches()


def _native_layer(kind, k, s, padding, c_in, c_out, taps):
  """The layer and XLA's reference, (x, kernel) -> y."""
  if kind == "conv_transpose":
    return (lambda x, w: _layers.conv_transpose2d(x, w, s, padding),
            lambda x, w: jax.lax.conv_transpose(x, w, s, padding, dimension_numbers=DN))
  mask = _tap_mask((k, k), taps if taps is not None else _layers._all_taps((k, k)), c_in, c_out)
  return (lambda x, w: _layers.conv2d(x, w * mask, padding, mask=None if taps is None else mask, strides=s),
          lambda x, w: jax.lax.conv_general_dilated(x, w * mask, s, padding, dimension_numbers=DN))


@pytest.mark.skipif(convgrad._compiler() is None, reason="no C++ compiler to build zoo.convgrad's kernel")
@pytest.mark.parametrize("kind,b,hw,k,s,padding,c_in,c_out,taps", NATIVE, ids=[
    f"{c[0]}-b{c[1]}-k{c[3]}-s{c[4][0]}{c[4][1]}-{c[5] if isinstance(c[5], str) else 'asym'}-{c[6]}to{c[7]}"
    f"-{'all' if c[8] is None else len(c[8])}" for c in NATIVE])
def test_native_weight_gradients_equal_xla(kind, b, hw, k, s, padding, c_in, c_out, taps, monkeypatch):
  """Traced as the step traces them on one CPU device (XLA's own kernels and the zoo's native ones), the
  layers take their weight gradients from zoo.convgrad's kernel, a convolution of few input channels its
  forward pass and a transposed one into few channels its input gradient from the second, a
  stride-1 convolution from few channels its input gradient from the third, and a transposed convolution
  into few channels its forward pass and a strided one from few its input gradient from the fourth (custom
  calls in the CPU program, none in the CUDA one), and compute XLA's function and both gradients."""
  assert convgrad.available()
  monkeypatch.setattr(_layers, "_NATIVE_MIN_PIXELS", 0)      # these small cases take the kernels too
  monkeypatch.setattr(_layers, "_NATIVE_STRIDED_MIN_PIXELS", 0)
  ours, ref = _native_layer(kind, k, s, padding, c_in, c_out, taps)
  jax.clear_caches()
  with kernels.xla_own_kernels(), kernels.native_kernels():
    _check(ours, ref, (b, *hw, c_in), (k, k, c_in, c_out))
    x, w = jnp.ones((b, *hw, c_in)), jnp.ones((k, k, c_in, c_out))
    grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), (0, 1))
    text = jax.jit(grad).lower(x, w).as_text()        # (export refuses such a custom call)
    assert convgrad.TARGET in text
    # the convolution of few input channels: a strided one's forward pass (a stride-1 one's from few
    # channels too), a transposed one's input gradient, each from fewer than _NATIVE_STRIDED_THIN_MAX
    tapped = c_out if kind == "conv_transpose" else c_in
    assert (convgrad.CONV_TARGET in text) == (
        (kind == "conv_transpose" or s != (1, 1)) and tapped < _layers._NATIVE_STRIDED_THIN_MAX
        or (kind == "conv" and c_in <= convgrad.THIN_MAX))
    # the convolution into few channels: a stride-1 convolution's input gradient
    assert (convgrad.THIN_TARGET in text) == (kind == "conv" and s == (1, 1) and c_in <= convgrad.THIN_MAX)
    # a transposed convolution into few channels: its forward pass, and a strided convolution's input gradient
    assert (convgrad.TRANSPOSED_TARGET in text) == (
        (kind == "conv" and s != (1, 1) and c_in <= convgrad.THIN_MAX)
        or (kind == "conv_transpose" and c_out <= convgrad.THIN_MAX))
    assert convgrad.TARGET not in _lowered(grad, "cuda", x, w)
  jax.clear_caches()        # the layers read the context while tracing; JAX's trace caches do not
  assert convgrad.TARGET not in jax.jit(grad).lower(x, w).as_text()   # outside the step's context: not used
  monkeypatch.setattr(_layers, "_NATIVE_MIN_PIXELS", b * hw[0] * hw[1] * 4 + 1)
  monkeypatch.setattr(_layers, "_NATIVE_STRIDED_MIN_PIXELS", b * hw[0] * hw[1] * 4 + 1)
  jax.clear_caches()
  with kernels.xla_own_kernels(), kernels.native_kernels():
    assert convgrad.TARGET not in jax.jit(grad).lower(x, w).as_text()  # under the pixel floor: XLA's


@pytest.mark.skipif(convgrad._compiler() is None, reason="no C++ compiler to build zoo.convgrad's kernel")
def test_native_weight_gradients_with_a_bias_and_a_residual_and_to_the_second_order(monkeypatch):
  """The stride-1 layer's bias and residual (``add``) get their gradients beside the native weight
  gradient, and a gradient penalty differentiates through the strided, transposed and masked layers' native
  weight gradients again."""
  mask = _tap_mask((3, 3), _MASK_B, 16, 16)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 16)) * 0.1
  bias, add = jax.random.normal(jax.random.PRNGKey(2), (16,)), jax.random.normal(jax.random.PRNGKey(3), x.shape)
  ours = lambda x, w, b, a: _layers.conv2d(x, w * mask, "SAME", mask, bias=b, add=a)   # noqa: E731
  ref = lambda x, w, b, a: (jax.lax.conv_general_dilated(x, w * mask, (1, 1), "SAME", dimension_numbers=DN)  # noqa: E731
                            + b.reshape(1, 1, 1, -1) + a)
  loss = lambda f: lambda *args: jnp.sum(jnp.sin(f(*args)))   # noqa: E731
  assert convgrad.available()
  monkeypatch.setattr(_layers, "_NATIVE_MIN_PIXELS", 0)
  monkeypatch.setattr(_layers, "_NATIVE_STRIDED_MIN_PIXELS", 0)
  jax.clear_caches()
  with kernels.xla_own_kernels(), kernels.native_kernels():
    for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1, 2, 3)))(x, w, bias, add),
                    jax.grad(loss(ref), (0, 1, 2, 3))(x, w, bias, add)):
      _close(g, h)
    for kind, k, s, c_in, c_out, taps in (("conv", 4, (2, 2), 3, 16, None), ("conv_transpose", 4, (2, 2), 16, 3, None),
                                          ("conv", 3, (1, 1), 3, 16, _MASK_B)):
      layer, layer_ref = _native_layer(kind, k, s, "SAME", c_in, c_out, taps)
      x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 6, c_in))
      w = jax.random.normal(jax.random.PRNGKey(5), (k, k, c_in, c_out)) * 0.3
      penalty = lambda f: lambda w: jnp.sum(jnp.square(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, w))))(x)))  # noqa: E731
      _close(jax.jit(jax.grad(penalty(layer)))(w), jax.grad(penalty(layer_ref))(w))


@pytest.mark.skipif(convgrad._compiler() is None, reason="no C++ compiler to build zoo.convgrad's kernel")
def test_how_much_of_a_strided_layer_the_native_kernels_take():
  """By the tapped side's channels: all of it from few (the DCGAN's 3), the weight gradient alone from 16 to
  63 (the VAE's 32), none from 64 (XLA's own is as fast there); none under the pixel floor or outside the
  step's kernels, or where the side read as rows is not a multiple of 16."""
  floor = _layers._NATIVE_STRIDED_MIN_PIXELS
  with kernels.native_kernels():
    assert [_layers._native_strided(True, c, 64, floor) for c in (3, 15, 16, 32, 63, 64, 128)] == [2, 2, 1, 1, 1, 0, 0]
    assert _layers._native_strided(True, 32, 64, floor - 1) == 0
    assert _layers._native_strided(True, 32, 24, floor) == 0
    assert _layers._native_strided(False, 32, 64, floor) == 0
  assert _layers._native_strided(True, 32, 64, floor) == 0
