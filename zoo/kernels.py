"""Which CPU kernels the computation being traced will be compiled with, for layers whose fastest
formulation depends on it.

zoo.step compiles its train step on CPU with XLA's own dot and convolution kernels
(``zoo.step.CPU_COMPILER_OPTIONS``: YNNPACK for reductions only), under which XLA's own convolution
gradients beat the layers' custom ones; under XLA's default YNNPACK kernels (a caller's own ``jit``) they
are 10-30x slower. A layer cannot see the options its caller compiles with, so the step says so while it
traces (``xla_own_kernels()``) and the layers read it (``xla_own_kernels_on()``): this module, not the
step or the layers, holds that flag, so that neither imports the other for it.
"""
from __future__ import annotations

import contextlib
import contextvars

_XLA_OWN_KERNELS = contextvars.ContextVar("zoo_xla_own_kernels", default=False)
_ONEDNN_KERNELS = contextvars.ContextVar("zoo_onednn_kernels", default=False)
_NATIVE_KERNELS = contextvars.ContextVar("zoo_native_kernels", default=False)
_CPU_ONLY = contextvars.ContextVar("zoo_cpu_only", default=False)


@contextlib.contextmanager
def _set(flag: contextvars.ContextVar, on: bool):
  token = flag.set(bool(on))
  try:
    yield
  finally:
    flag.reset(token)


def xla_own_kernels(on: bool = True):
  """Within this block, what is traced will be compiled with XLA's own CPU kernels (if ``on``)."""
  return _set(_XLA_OWN_KERNELS, on)


def xla_own_kernels_on() -> bool:
  """Whether the computation being traced will be compiled with XLA's own CPU kernels."""
  return _XLA_OWN_KERNELS.get()


def onednn_kernels(on: bool = True):
  """Within this block, the layers may emit oneDNN's convolution and matmul (``zoo.onednn``) on CPU (if
  ``on``): set by the train step on one CPU device where ``zoo.onednn.available()``."""
  return _set(_ONEDNN_KERNELS, on)


def onednn_kernels_on() -> bool:
  """Whether the layers may emit oneDNN's convolution and matmul for the computation being traced."""
  return _ONEDNN_KERNELS.get()


def native_kernels(on: bool = True):
  """Within this block, the layers may emit the zoo's own weight-gradient kernel (``zoo.convgrad``) on CPU,
  where it is available (if ``on``): set by the train step on one CPU device."""
  return _set(_NATIVE_KERNELS, on)


def native_kernels_on() -> bool:
  """Whether the layers may emit ``zoo.convgrad``'s kernel for the computation being traced."""
  return _NATIVE_KERNELS.get()


def cpu_only(on: bool = True):
  """Within this block, what is traced will be compiled for CPU devices only (if ``on``): set by the train
  step where it compiles for a mesh of CPUs with its CPU options. The layers then trace their CPU formulation
  alone, where they would otherwise trace it and XLA's native convolution as the two branches of
  ``lax.platform_dependent`` (and differentiate both). JAX caches a jitted function's trace by its
  arguments, not by this flag: a function traced in the block must not be lowered for another platform."""
  return _set(_CPU_ONLY, on)


def cpu_only_on() -> bool:
  """Whether the computation being traced will be compiled for CPU devices only."""
  return _CPU_ONLY.get()
