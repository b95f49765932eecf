"""zoo.onednn: oneDNN's convolution and matmul, through XLA:CPU's own oneDNN runtime, compute XLA's
functions to the second order; the layers emit them only where the train step says so (one CPU device),
and never for GPU; an unchecked jaxlib is neither probed nor used."""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from jax.sharding import Mesh

from helpers import assert_close_scaled as _close, lowered_for
from zoo import kernels, onednn
from zoo import step as step_lib
from zoo.models import _layers

DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _no_cache_writes():
  """This module's own jits of oneDNN's calls compile as the step's do: the suite keeps a persistent
  compilation cache that takes every program, and writing one holding oneDNN's thunks crashes jaxlib 0.11.2."""
  with onednn.uncached():
    yield


def _require():
  """oneDNN's custom calls where this jaxlib is one whose encoding was checked (there they must work)."""
  if not jaxlib.__version__.startswith(onednn.TESTED_JAXLIB):
    pytest.skip(f"jaxlib {jaxlib.__version__}: the encoding of its oneDNN custom calls is not checked")
  assert onednn.available(), "a checked jaxlib whose oneDNN custom calls disagree with XLA: python -c '%s'" % onednn.CHECK


def _same_to_second_order(ours, ref, *args):
  """Values, the first derivatives in every argument and a second derivative (the gradient in the second
  argument of the first one's gradient norm, as a GAN penalty takes it) of ours and ref agree."""
  _close(jax.jit(ours)(*args), ref(*args))
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))   # noqa: E731
  every = tuple(range(len(args)))
  for g, h in zip(jax.jit(jax.grad(loss(ours), every))(*args), jax.grad(loss(ref), every)(*args)):
    _close(g, h)
  first, second, rest = args[0], args[1], args[2:]
  penalty = lambda f: lambda b, a: jnp.sum(jnp.square(jax.grad(lambda a: loss(f)(a, b, *rest))(a)))   # noqa: E731
  _close(jax.jit(jax.grad(penalty(ours)))(second, first), jax.grad(penalty(ref))(second, first))


# (x shape, kernel shape, strides, padding): batch 1, odd sizes, one input channel, strides above 1,
# asymmetric and zero padding
CONVS = [
    ((1, 7, 5, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    ((3, 8, 9, 1), (4, 7, 1, 5), (1, 1), ((3, 0), (3, 3))),
    ((2, 9, 8, 4), (4, 4, 4, 3), (2, 2), ((1, 2), (0, 1))),
    ((2, 6, 7, 2), (2, 3, 2, 6), (2, 1), ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CONVS)
def test_conv_is_xlas_convolution_to_the_second_order(x_shape, k_shape, strides, padding):
  _require()
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) / np.sqrt(np.prod(k_shape[:3]))
  _same_to_second_order(lambda x, k: onednn.conv(x, k, strides, padding),
                        lambda x, k: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN), x, k)


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CONVS[:3])
@pytest.mark.parametrize("with_bias,with_add", [(True, True), (True, False), (False, True)])
def test_conv_with_a_fused_bias_and_add_is_xlas_to_the_second_order(x_shape, k_shape, strides, padding,
                                                                    with_bias, with_add):
  """(conv + bias) + add in one oneDNN call: values, the gradients in all four operands, and a second
  derivative equal XLA's convolution plus the two additions."""
  _require()
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  k = jax.random.normal(jax.random.PRNGKey(1), k_shape) / np.sqrt(np.prod(k_shape[:3]))
  out_shape = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN))
  b = jax.random.normal(jax.random.PRNGKey(2), out_shape.shape[3:])
  a = jax.random.normal(jax.random.PRNGKey(3), out_shape.shape)

  def ours(x, k, b, a):
    return onednn.conv(x, k, strides, padding, b if with_bias else None, a if with_add else None)

  def ref(x, k, b, a):
    y = jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DN)
    return (y + b[None, None, None, :] if with_bias else y) + (a if with_add else 0.0)
  _same_to_second_order(ours, ref, x, k, b, a)


def test_conv_refuses_a_bias_or_add_of_the_wrong_shape():
  x, k = jnp.ones((1, 4, 4, 2)), jnp.ones((2, 2, 2, 3))
  with pytest.raises(ValueError, match="bias must have shape"):
    onednn.conv(x, k, (1, 1), ((0, 0), (0, 0)), bias=jnp.ones((2,)))
  with pytest.raises(ValueError, match="add must have the output's shape"):
    onednn.conv(x, k, (1, 1), ((0, 0), (0, 0)), add=jnp.ones((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="x's dtype"):
    onednn.conv(x, k, (1, 1), ((0, 0), (0, 0)), bias=jnp.ones((3,), jnp.bfloat16))


def test_conv_refuses_a_negative_padding():
  with pytest.raises(ValueError, match="non-negative"):
    onednn.conv(jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1)), (1, 1), ((-1, 1), (0, 0)))


@pytest.mark.parametrize("m,k,n", [(7, 5, 3), (1, 4, 6), (50, 64, 64)])
def test_matmul_is_a_matrix_product_to_the_second_order(m, k, n):
  _require()
  a = jax.random.normal(jax.random.PRNGKey(0), (m, k))
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n))
  _same_to_second_order(onednn.matmul, jnp.dot, a, b)


def _targets(f, platform, *args):
  """The oneDNN custom calls and XLA convolutions in jit(f) lowered for ``platform``: for this CPU as jit
  lowers it (jax.export refuses custom calls without a compatibility guarantee), for CUDA by exporting."""
  text = jax.jit(f).lower(*args).as_text() if platform == "cpu" else lowered_for(f, platform, *args)
  return sorted(set(re.findall(r'__onednn\$\w+', text))), len(re.findall(r"stablehlo\.convolution", text))


@pytest.mark.parametrize("onednn_on", [False, True])
def test_the_layers_emit_onednn_only_under_the_steps_context_and_never_for_gpu(onednn_on, monkeypatch):
  """A PixelCNN block's 3x3 mask-B convolution and a 1x1 convolution, traced as the train step traces
  them: with its oneDNN context, the CPU program's forward convolution and the 1x1 products are oneDNN's
  (the 3x3's gradients stay XLA's convolutions); without it, none; for CUDA, XLA's convolutions alone."""
  _require()
  monkeypatch.setattr(_layers, "_ONEDNN_MIN_PIXELS", 1)
  mask = _layers.causal_mask((3, 3), np.zeros(4, int), np.zeros(5, int), "B")
  x, k3, k1 = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 5)) * mask, jnp.ones((1, 1, 5, 3))

  def loss(x, k3, k1):
    with kernels.xla_own_kernels(), kernels.onednn_kernels(onednn_on):
      h = _layers.conv2d(x, k3, ((1, 1), (1, 1)), mask)
      return jnp.sum(jnp.sin(_layers.conv2d(h, k1, "VALID")))
  grad = jax.grad(loss, (0, 1, 2))
  cpu_targets, cpu_convs = _targets(grad, "cpu", x, k3, k1)
  gpu_targets, gpu_convs = _targets(grad, "cuda", x, k3, k1)
  if onednn_on:
    assert cpu_targets == ["__onednn$convolution", "__onednn$matmul"] and cpu_convs == 2
  else:
    assert cpu_targets == [] and cpu_convs == 3
  assert gpu_targets == [] and gpu_convs == 6      # each layer's forward pass and both gradients


@pytest.mark.parametrize("kernel,mask_type,c_in,c_out", [(3, "B", 4, 5), (7, "A", 1, 6), (1, None, 5, 3)])
def test_the_layers_with_onednn_compute_xlas_function(kernel, mask_type, c_in, c_out, monkeypatch):
  """The PixelCNN's convolutions (3x3 mask B, 7x7 mask A from one channel, 1x1) under the step's oneDNN
  context equal XLA's convolution of the masked kernel, values and both gradients."""
  _require()
  monkeypatch.setattr(_layers, "_ONEDNN_MIN_PIXELS", 1)
  if mask_type:
    mask = _layers.causal_mask((kernel, kernel), np.zeros(c_in, int), np.zeros(c_out, int), mask_type)
  else:
    mask = np.ones((1, 1, c_in, c_out), np.float32)
  pad = ((kernel // 2,) * 2,) * 2

  def ours(x, k):
    with kernels.xla_own_kernels(), kernels.onednn_kernels():
      return _layers.conv2d(x, k * mask, pad, mask if mask_type else None)
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k * mask, (1, 1), pad, dimension_numbers=DN)   # noqa: E731
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 9, 7, c_in))
  k = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, c_in, c_out)) / np.sqrt(kernel * kernel * c_in)
  _close(jax.jit(ours)(x, k), ref(x, k))
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))   # noqa: E731
  for g, h in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, k), jax.grad(loss(ref), (0, 1))(x, k)):
    _close(g, h)


@pytest.mark.parametrize("onednn_on", [False, True])
def test_a_layers_bias_and_residual_are_added_in_its_onednn_call(onednn_on, monkeypatch):
  """conv2d(..., bias, add) is (conv + bias) + add, values and all four gradients, on either path; under the
  oneDNN context the two additions are inside the one custom call (its fusions), and no XLA add is left."""
  _require()
  monkeypatch.setattr(_layers, "_ONEDNN_MIN_PIXELS", 1)
  mask = _layers.causal_mask((3, 3), np.zeros(4, int), np.zeros(4, int), "B")

  def ours(x, k, b, a):
    with kernels.xla_own_kernels(), kernels.onednn_kernels(onednn_on):
      return _layers.conv2d(x, k * mask, "SAME", mask, bias=b, add=a)

  def ref(x, k, b, a):
    return jax.lax.conv_general_dilated(x, k * mask, (1, 1), "SAME", dimension_numbers=DN) + b[None, None, None, :] + a
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 4))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 4)) / 6
  b, a = jax.random.normal(jax.random.PRNGKey(2), (4,)), jax.random.normal(jax.random.PRNGKey(3), (2, 6, 5, 4))
  _close(jax.jit(ours)(x, k, b, a), ref(x, k, b, a))
  loss = lambda f: lambda *args: jnp.sum(jnp.sin(f(*args)))   # noqa: E731
  grads = jax.jit(jax.grad(loss(ours), (0, 1, 2, 3)))(x, k, b, a)
  for g, h in zip(grads, jax.grad(loss(ref), (0, 1, 2, 3))(x, k, b, a)):
    _close(g, h)
  text = jax.jit(ours).lower(x, k, b, a).as_text()
  fusions = re.findall(r"BIAS|BINARY_ADD", text)
  assert fusions == (["BIAS", "BINARY_ADD"] if onednn_on else [])
  assert len(re.findall(r"stablehlo\.add", text)) == (0 if onednn_on else 2)
  with pytest.raises(ValueError, match="bias must have shape"):
    _layers.conv2d(x, k, "SAME", bias=jnp.ones((3,)))


@pytest.mark.parametrize("transposed,c_in,c_out,size", [(True, 5, 16, 4), (True, 3, 17, 5), (False, 16, 4, 8),
                                                         (False, 17, 3, 7)])
def test_phases_in_onednn_compute_xlas_function(transposed, c_in, c_out, size, monkeypatch):
  """A transposed convolution's forward pass and a strided one's input gradient by phases, each phase a
  oneDNN convolution (``_ONEDNN_PHASES``), equal XLA's: values, both gradients, and a second derivative
  (a GAN's gradient penalty); four phase convolutions at stride 2, odd sizes included."""
  _require()
  monkeypatch.setattr(_layers, "_ONEDNN_PHASE_MIN_PIXELS", 1)

  def ours(x, k):
    with kernels.xla_own_kernels(), kernels.onednn_kernels():
      if transposed:
        return _layers.conv_transpose2d(x, k, (2, 2), "SAME")
      return _layers.conv2d(x, k, "SAME", strides=(2, 2))

  def ref(x, k):
    if transposed:
      return jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=DN)
    return jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=DN)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, c_in))
  k = jax.random.normal(jax.random.PRNGKey(1), (4, 4, c_in, c_out)) / np.sqrt(16 * c_in)
  _same_to_second_order(ours, ref, x, k)
  step_like = jax.jit(jax.value_and_grad(lambda x, k: ours(x, k).sum(), (0, 1)))
  assert len(re.findall(r'__onednn\$convolution', step_like.lower(x, k).as_text())) == 4


def test_small_layers_stay_xlas(monkeypatch):
  """Below ``_ONEDNN_MIN_PIXELS`` pixels (batch x H x W) a layer is XLA's even under the oneDNN context:
  each oneDNN call costs more than a small layer gains."""
  _require()
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))

  def targets(min_pixels):
    monkeypatch.setattr(_layers, "_ONEDNN_MIN_PIXELS", min_pixels)

    def f(x, k):
      with kernels.xla_own_kernels(), kernels.onednn_kernels():
        return _layers.conv2d(x, k, "SAME") + _layers.conv2d(x, k[1:2, 1:2], "VALID").sum()
    return _targets(f, "cpu", x, k)[0]
  assert targets(2 * 8 * 8 + 1) == []
  assert targets(2 * 8 * 8) == ["__onednn$convolution", "__onednn$matmul"]


def test_the_step_emits_onednn_on_one_cpu_device_only(monkeypatch):
  """own_kernels_for: oneDNN with the step's CPU options on one device; not on a mesh of several (an XLA
  partitioner cannot split the custom calls), not without the options, not with USE_ONEDNN off."""
  _require()
  options = step_lib.cpu_compiler_options()
  one = Mesh(np.array(jax.devices()[:1]), ("data",))
  several = Mesh(np.array(jax.devices()[:2]), ("data",))
  assert len(jax.devices()) >= 2       # the suite's 8 forced CPU devices

  def flags(options, mesh):
    with step_lib.own_kernels_for(options, mesh):
      return kernels.xla_own_kernels_on(), kernels.onednn_kernels_on()
  assert flags(options, one) == (True, True) and flags(options, None) == (True, True)
  assert flags(options, several) == (True, False) and flags(None, one) == (False, False)
  monkeypatch.setattr(step_lib, "USE_ONEDNN", False)
  assert flags(options, one) == (True, False)
  assert kernels.onednn_kernels_on() is False      # the context is left as it was


@pytest.fixture
def fresh_availability(monkeypatch):
  onednn.available.cache_clear()
  yield monkeypatch
  monkeypatch.undo()
  onednn.available.cache_clear()


def test_a_jax_without_the_internals_it_needs_never_probes(fresh_availability):
  """Where the JAX internals zoo.onednn emits custom calls through have moved (recorded at import as
  ``_UNSUPPORTED``), oneDNN is off without a probe."""
  fresh_availability.setattr(onednn, "_probe", lambda: pytest.fail("probed without the JAX internals"))
  fresh_availability.setattr(onednn, "_UNSUPPORTED", "ImportError: moved")
  fresh_availability.delenv("ZOO_ONEDNN", raising=False)
  assert onednn.available() is False


def test_an_unchecked_jaxlib_is_neither_probed_nor_used(fresh_availability):
  def no_probe():
    raise AssertionError("probed an unchecked jaxlib")
  fresh_availability.setattr(onednn, "_probe", no_probe)
  fresh_availability.setattr(jaxlib, "__version__", "99.0.0")
  fresh_availability.delenv("ZOO_ONEDNN", raising=False)
  assert onednn.available() is False


def test_zoo_onednn_0_turns_it_off_and_a_probe_passes_its_answer_on(fresh_availability):
  fresh_availability.setenv("ZOO_ONEDNN", "0")
  assert onednn.available() is False
  onednn.available.cache_clear()
  if not jaxlib.__version__.startswith(onednn.TESTED_JAXLIB):
    return
  fresh_availability.delenv("ZOO_ONEDNN")
  probes = []
  fresh_availability.setattr(onednn, "_probe", lambda: probes.append(1) or True)
  assert onednn.available() is True and probes == [1]
  assert os.environ["ZOO_ONEDNN"] == "1"       # child processes take the answer without probing again
  onednn.available.cache_clear()
  assert onednn.available() is True and probes == [1]


def test_the_probe_runs_both_custom_calls_in_a_child_process():
  """The probe (``python -c onednn.CHECK``), as available() runs it, on this machine's jaxlib: 'onednn ok'."""
  _require()
  assert onednn._probe_child() is True
