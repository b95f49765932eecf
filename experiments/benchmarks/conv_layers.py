"""Convolution layers of the zoo's families on this machine: XLA's native path against ``_layers``' (issue 7).

For each layer shape the families use, the forward pass, the input gradient, the weight gradient and the
two gradients together (as a training step takes them) are timed separately (jit, a warm-up, the median
of ``--repeats`` timings) for XLA's native convolution (``lax.conv_general_dilated`` /
``lax.conv_transpose``), the zoo's ``conv2d`` / ``conv_transpose2d`` and, where torch is installed,
PyTorch's (oneDNN's) convolution and ``convolution_backward`` on the same values, in GFLOP/s of useful
work: 2 * N * Ho * Wo * kh * kw * C_in * C_out for a convolution (twice that for both gradients), and for
a transposed convolution the same count as the convolution it transposes (no multiplications by the
dilation's zeros). Beside them, the float32 matmul ceiling (2048^3), timed in the same rounds as each
layer's op, and the zoo's share of it: the median over the rounds of (the zoo's GFLOP/s / the ceiling's),
as issue 7's target reads (at least 0.5); the ceiling is also measured before and after the run.

Shapes: the DCGAN 32x32 benchmark architecture (experiments/benchmarks/dcgan32.py) at batch 64 and 256,
G's 4x4 stride-2 transposed convolutions 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3 and D's 4x4 stride-2
convolutions 32x32x3 -> 16x16x64 -> 8x8x128 -> 4x4x256; and PixelCNN's convolutions at 28x28, batch 64:
a 3x3 64 -> 64 unmasked (all 9 taps), the same with mask B (5 open taps; useful work counts those, and XLA
convolves the masked 3x3 kernel), the first layer's 7x7 mask A from 1 channel to 64 (24 open taps) and
the 1x1 64 -> 64 of the output layers.

With ``--step-options`` every JAX function (the matmul ceiling included) compiles as the shared train step
does on CPU: with ``zoo.step.CPU_COMPILER_OPTIONS`` (XLA's own dot and convolution kernels) and traced
under ``zoo.kernels.xla_own_kernels()``; without it, with XLA's defaults (YNNPACK), as a caller's own ``jit``.

  python experiments/benchmarks/conv_layers.py [--batches 64 256] [--repeats 7] [--no-torch] [--step-options]
      [--layers NAME ...] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from zoo import memory, sharding
from zoo import step as step_lib
from zoo.bench import load_average, machine_info
from zoo.models import _layers

DN = ("NHWC", "HWIO", "NHWC")

# (name, kind, (H, W, C_in), kernel, stride, C_out, batches or None for --batches)
LAYERS = [
    ("G deconv_0", "convT", (4, 4, 256), 4, 2, 128, None),
    ("G deconv_1", "convT", (8, 8, 128), 4, 2, 64, None),
    ("G deconv_2", "convT", (16, 16, 64), 4, 2, 3, None),
    ("D conv_0", "conv", (32, 32, 3), 4, 2, 64, None),
    ("D conv_1", "conv", (16, 16, 64), 4, 2, 128, None),
    ("D conv_2", "conv", (8, 8, 128), 4, 2, 256, None),
    ("PixelCNN 3x3", "conv", (28, 28, 64), 3, 1, 64, (64,)),
    ("PixelCNN 3x3 B", "maskB", (28, 28, 64), 3, 1, 64, (64,)),
    ("PixelCNN 7x7 A", "maskA", (28, 28, 1), 7, 1, 64, (64,)),
    ("PixelCNN 1x1", "conv", (28, 28, 64), 1, 1, 64, (64,)),
]


def raster_mask(k: int, kind: str) -> np.ndarray:
  """The (k, k, 1, 1) PixelCNN mask of one data channel: 'maskA' or 'maskB'."""
  return _layers.causal_mask((k, k), np.zeros(1, int), np.zeros(1, int), kind[-1])


def timed(fns: dict, *args, repeats: int, options: dict | None = None, per_round: bool = False) -> dict:
  """Median seconds of one call of each f in ``fns`` (a JAX function, jitted and called on ``args``, or a
  ``torch_*`` entry called with none), compiled and warmed up first, their timings taken in turns so that
  a change in the machine's load falls on all of them alike (``per_round``: each one's seconds per round,
  in order, instead of their median). ``options``: XLA's compiler options."""
  calls, inner, times = {}, {}, {}
  for name, f in fns.items():
    if name.startswith("torch"):
      calls[name] = f
    else:
      calls[name] = functools.partial(jax.jit(f, compiler_options=options), *args)
    jax.block_until_ready(calls[name]())
    t0 = time.perf_counter()
    jax.block_until_ready(calls[name]())
    inner[name] = max(1, int(0.05 / max(time.perf_counter() - t0, 1e-6)))   # calls per timing: ~50 ms
    times[name] = []
  for _ in range(repeats):
    for name, call in calls.items():
      t0 = time.perf_counter()
      for _ in range(inner[name]):
        out = call()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - t0) / inner[name])
  if per_round:
    return times
  return {name: statistics.median(t) for name, t in times.items()}


def layer_fns(kind: str, k: int, s: int):
  """{'native': f, 'zoo': f} with f(x, kernel) the layer ('SAME' padding, as the families use it)."""
  if kind in ("maskA", "maskB"):
    m = raster_mask(k, kind)
    return {"native": lambda x, w: jax.lax.conv_general_dilated(x, w * m, (1, 1), "SAME", dimension_numbers=DN),
            "zoo": lambda x, w: _layers.conv2d(x, w * m, "SAME", mask=m)}
  if kind == "conv":
    return {"native": lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=DN),
            "zoo": lambda x, w: _layers.conv2d(x, w, "SAME", strides=(s, s))}
  return {"native": lambda x, w: jax.lax.conv_transpose(x, w, (s, s), "SAME", dimension_numbers=DN),
          "zoo": lambda x, w: _layers.conv_transpose2d(x, w, (s, s), "SAME")}


def ops(f):
  """Forward, input gradient, weight gradient and both gradients (as training takes them: the zoo's
  stride-1 and transposed convolutions compute the two from one copy of dy) of f(x, w) as separate
  functions (x, w, dy) -> array(s)."""
  return {"forward": lambda x, w, dy: f(x, w),
          "input_grad": lambda x, w, dy: jax.vjp(lambda x: f(x, w), x)[1](dy)[0],
          "weight_grad": lambda x, w, dy: jax.vjp(lambda w: f(x, w), w)[1](dy)[0],
          "gradients": lambda x, w, dy: jax.vjp(f, x, w)[1](dy)}


def torch_ops(kind: str, k: int, s: int, x, kern, dy):
  """PyTorch's (oneDNN's) forward, input gradient, weight gradient and both gradients of the same layer
  on the same values (NCHW, float32, default threads), as functions of nothing; None without torch.
  A masked layer convolves its whole masked kernel, as the PyTorch twins of the compare scripts do."""
  try:
    import torch
  except ImportError:
    return None
  x_t = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  dy_t = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())
  w = np.asarray(kern) * (raster_mask(k, kind) if kind in ("maskA", "maskB") else 1)
  transposed = kind == "convT"
  # HWIO -> OIHW for a convolution, IOHW for a transposed one; 'SAME' here is symmetric padding
  w_t = torch.from_numpy(w.transpose((2, 3, 0, 1) if transposed else (3, 2, 0, 1)).copy())
  pad = (k - 1) // 2 if not transposed else (k - s + 1) // 2
  conv = (lambda: torch.nn.functional.conv_transpose2d(x_t, w_t, stride=s, padding=pad)) if transposed else (
      lambda: torch.nn.functional.conv2d(x_t, w_t, stride=s, padding=pad))
  if tuple(conv().shape) != tuple(dy_t.shape):     # no tensor here requires grad: no graph is recorded
    raise ValueError(f"the PyTorch layer's output {tuple(conv().shape)} is not dy's {tuple(dy_t.shape)}")

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(dy_t, x_t, w_t, None, [s, s], [pad, pad], [1, 1],
                                                       transposed, [0, 0], 1, mask)
  return {"forward": conv, "input_grad": backward([True, False, False]),
          "weight_grad": backward([False, True, False]), "gradients": backward([True, True, False])}


def chosen_layers(parts) -> list:
  """The entries of LAYERS whose names contain one of ``parts`` (all of them where ``parts`` is empty)."""
  return [layer for layer in LAYERS if not parts or any(part in layer[0] for part in parts)]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", help="write one JSON line per measurement here")
  ap.add_argument("--no-torch", action="store_true", help="leave out PyTorch's column")
  ap.add_argument("--step-options", action="store_true", help="compile as the shared train step does on CPU")
  ap.add_argument("--layers", nargs="+", metavar="NAME",
                  help="only the layers whose names contain one of these (e.g. 'deconv_2' '7x7')")
  args = ap.parse_args()
  if not chosen_layers(args.layers):
    raise SystemExit(f"--layers {args.layers}: no layer matches; the layers are {[name for name, *_ in LAYERS]}")
  memory.ensure()     # as the `zoo` command does: huge pages and the large-block cache (zoo/memory.py)
  options = None
  if args.step_options:
    options = step_lib.compiler_options(sharding.make_mesh(1))
    if options is None:
      raise SystemExit("--step-options: the shared step compiles this backend with XLA's defaults")
  with step_lib.own_kernels_for(options):
    run(args, options)


def run(args, options):
  a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
  matmul = {"matmul": lambda a: a @ a}
  ceiling = 2 * 2048 ** 3 / timed(matmul, a, repeats=args.repeats, options=options)["matmul"] / 1e9
  env = {**machine_info(), "backend": jax.default_backend(), "load_average_before": load_average(),
         "compiler_options": options}
  try:
    if not args.no_torch:
      import torch
      env.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  print(f"float32 matmul 2048^3: {ceiling:.1f} GFLOP/s ({jax.default_backend()}, {os.cpu_count()} cores, "
        f"load {env['load_average_before']})")
  print(f"{'layer':<15} {'batch':>5} {'shape':<22} {'op':<11} {'native':>8} {'zoo':>8} {'torch':>8} "
        f"{'zoo/nat':>7} {'ceiling':>8} {'zoo/ceil':>8}  GFLOP/s")
  rows = [dict(env, kind="matmul", gflops=round(ceiling, 2))]
  for name, kind, (h, w, c_in), k, s, c_out, batches in chosen_layers(args.layers):
    for b in batches or args.batches:
      x = jax.random.normal(jax.random.PRNGKey(1), (b, h, w, c_in), jnp.float32)
      kern = jax.random.normal(jax.random.PRNGKey(2), (k, k, c_in, c_out), jnp.float32) * 0.05
      fns = layer_fns(kind, k, s)
      y = jax.jit(fns["native"])(x, kern)
      dy = jax.random.normal(jax.random.PRNGKey(3), y.shape, jnp.float32)
      torch_fns = None if args.no_torch else torch_ops(kind, k, s, x, kern, dy)
      # useful FLOPs: every (input pixel, tap) pair of a transposed conv is one of the conv it transposes
      pixels = b * h * w if kind == "convT" else b * y.shape[1] * y.shape[2]
      taps = int(raster_mask(k, kind).sum()) if kind in ("maskA", "maskB") else k * k
      flops = 2 * pixels * taps * c_in * c_out
      shape = f"{h}x{w}x{c_in}->{y.shape[1]}x{y.shape[2]}x{c_out}"
      for op in ("forward", "input_grad", "weight_grad", "gradients"):
        # the matmul ceiling timed in the same rounds: this machine's speed drifts by up to 2x within minutes,
        # so a layer's share of the ceiling is taken round by round (the median of the rounds' ratios)
        impls = {impl: (lambda g: lambda x, w, dy, a: g(x, w, dy))(ops(f)[op]) for impl, f in fns.items()}
        impls["ceiling"] = lambda x, w, dy, a: a @ a
        if torch_fns:
          impls["torch"] = torch_fns[op]
        rounds = timed(impls, x, kern, dy, a, repeats=args.repeats, options=options, per_round=True)
        work = {impl: (2 * 2048 ** 3 if impl == "ceiling" else flops * (2 if op == "gradients" else 1))
                for impl in rounds}
        gf = {impl: work[impl] / statistics.median(t) / 1e9 for impl, t in rounds.items()}
        share = statistics.median(work["zoo"] / z / (work["ceiling"] / c)
                                  for z, c in zip(rounds["zoo"], rounds["ceiling"]))
        print(f"{name:<15} {b:>5} {shape:<22} {op:<11} {gf['native']:>8.1f} {gf['zoo']:>8.1f} "
              f"{gf.get('torch', float('nan')):>8.1f} {gf['zoo'] / gf['native']:>6.2f}x {gf['ceiling']:>8.1f} "
              f"{share:>8.2f}{'' if share >= 0.5 else '  < half'}", flush=True)
        rows.append(dict(kind=kind, layer=name, batch=b, shape=shape, kernel=k, stride=s, op=op,
                         flops=flops * (2 if op == "gradients" else 1),
                         native_gflops=round(gf["native"], 2), zoo_gflops=round(gf["zoo"], 2),
                         **({"torch_gflops": round(gf["torch"], 2)} if "torch" in gf else {}),
                         matmul_gflops=round(ceiling, 2), matmul_gflops_in_rounds=round(gf["ceiling"], 2),
                         zoo_over_ceiling=round(share, 3)))
  after = 2 * 2048 ** 3 / timed(matmul, a, repeats=args.repeats, options=options)["matmul"] / 1e9
  rows[0].update(gflops_after=round(after, 2), load_average_after=load_average())
  print(f"float32 matmul 2048^3 after: {after:.1f} GFLOP/s (load {rows[0]['load_average_after']})")
  if args.out:
    with open(args.out, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
