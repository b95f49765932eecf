"""A config's shared train step with and without the native-transpose probe in its stride-1 convolutions'
weight gradients, timed in interleaved rounds in one process (issue 7; not part of the library).

Under the step's CPU options the layers differentiate a stride-1 convolution with XLA's autodiff
(``_layers._open_box_conv``), whose weight gradient transposes x to (C_in, H, W, B) in a loop that also
recomputes x's producer (the PixelCNN's relu), several times slower than a plain transpose. Runner B
replaces ``_open_box_conv`` for the time its step is traced with a custom VJP: XLA's input gradient as
before, and the weight gradient as XLA's convolution of the probe's custom-call transpose of x
(experiments/native/transpose_bhwc.cc, built here) where stride is 1, B and C_in are multiples of 16 and no
padding is negative; XLA's own gradient elsewhere. One device only (the custom call has no sharding rule).

Since the layers read x through ``_layers._materialized`` (``_layers._MATERIALIZE_CONV_INPUT = 1``), XLA's
transpose no longer recomputes the relu, and both runners here see that x: the probe then measured 0.97x
on the PixelCNN at batch 64 (the last line of results/native_transpose_cpu2_steps.jsonl; before, 1.10x and
1.14x at batch 64 and 256). Its gain was the unfused transpose, which pure XLA now has.

  python experiments/native/ab_step_native.py --config experiments/benchmarks/pixelcnn28.py --batch 64 \\
      [--steps 3] [--repeats 9] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transpose import build, register, transpose_ffi  # noqa: E402

from zoo import bench, memory  # noqa: E402
from zoo import config as config_lib  # noqa: E402
from zoo.models import _layers  # noqa: E402

XLA_OPEN_BOX_CONV = _layers._open_box_conv


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def open_box_conv_native(x, kernel, padding, strides, taps):
  return XLA_OPEN_BOX_CONV(x, kernel, padding, strides, taps)


def _fwd(x, kernel, padding, strides, taps):
  return XLA_OPEN_BOX_CONV(x, kernel, padding, strides, taps), (x, kernel)


def _bwd(padding, strides, taps, residuals, dy):
  x, kernel = residuals
  conv = lambda x, k: XLA_OPEN_BOX_CONV(x, k, padding, strides, taps)  # noqa: E731
  dx = jax.vjp(lambda x: conv(x, kernel), x)[1](dy)[0]
  if tuple(strides) == (1, 1) and taps and not x.shape[0] % 16 and not x.shape[3] % 16 and x.dtype == jnp.float32:
    box, pads = _layers._open_box(kernel.shape, padding, taps)
    if min(min(p) for p in pads) >= 0:
      g = jax.lax.conv_general_dilated(transpose_ffi(x), dy, (1, 1), pads,
                                       dimension_numbers=("NHWC", "IHWO", "NHWC"))   # (C_in, bh, bw, C_out)
      return dx, jnp.pad(g.transpose(1, 2, 0, 3), (*box, (0, 0), (0, 0))).astype(kernel.dtype)
  return dx, jax.vjp(lambda k: conv(x, k), kernel)[1](dy)[0]


open_box_conv_native.defvjp(_fwd, _bwd)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--batch", type=int, required=True)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--out", help="append the result as a JSON line here")
  args = ap.parse_args()
  memory.ensure()
  cfg = config_lib.with_defaults(config_lib.load(args.config))
  with tempfile.TemporaryDirectory() as tmp:
    register(build(Path(tmp)))
    runners, programs = {}, []
    for name in ("xla", "native_transpose"):
      _layers._open_box_conv = open_box_conv_native if name == "native_transpose" else XLA_OPEN_BOX_CONV
      jax.clear_caches()
      try:
        runners[name], info = bench.step_runner(cfg, args.batch)   # traced and compiled here
      finally:
        _layers._open_box_conv = XLA_OPEN_BOX_CONV
      programs.append(info["program"])
    if programs[0] == programs[1]:
      raise SystemExit("the probe changes nothing in this config's step (no stride-1 convolution it takes)")
    rounds = bench.interleaved_rounds(runners, args.batch, args.steps, args.repeats, warmup=2)
  result = {"config": args.config, "batch_size": args.batch, "probe": "native transpose (issue 7)",
            "programs": programs, "steps_per_round": args.steps, **bench.machine_info(),
            **bench.round_figures(rounds),
            "b_over_a": round(bench.within_round_ratio(rounds, "native_transpose", "xla"), 3)}
  bench.report(result, args.out)


if __name__ == "__main__":
  main()
