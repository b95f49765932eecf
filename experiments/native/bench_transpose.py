"""A native-kernel probe for issue 7 (not part of the library): XLA's weight-gradient convolution on x
transposed by an XLA FFI custom call (transpose_bhwc.cc) against XLA's own, on the CPU.

XLA:CPU computes a convolution's weight gradient with x laid out (C_in, H, W, B) and transposes x into it
element by element first. This builds transpose_bhwc.cc with the system's C++ compiler against
``jax.ffi.include_dir()`` (AVX-512 only), registers it, checks that it is the exact transpose, then times,
interleaved in one process and compiled with the shared step's CPU options:

- the transpose of one activation: XLA's of x, XLA's of relu(x) (as the PixelCNN's blocks feed their
  convolutions: XLA fuses the relu into the transpose, and that fused loop runs several times slower than
  its plain transpose), the custom call's, and a plain copy for scale;
- the PixelCNN's 3x3 mask-B weight gradient at relu(x) (its 2x3 box of open taps, 'SAME'): XLA's autodiff
  of the convolution against XLA's convolution fed the custom call's (C_in, H, W, B) output (which XLA reads
  as it is: no transpose of x left in the program), checked equal.

  python experiments/native/bench_transpose.py [--batch 64] [--rounds 25] [--out FILE.json]

Wiring it into the layers (the stride-1 convolutions' custom VJP under ``xla_own_kernels()``) is what the
README reports as the step-level figure; that wiring is not committed: a native kernel needs a build and
packaging decision, and a custom call needs sharding rules before the shared step may hold one.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("transpose_bhwc.cc")
TARGET = "zoo_transpose_bhwc"


def build(out_dir: Path) -> Path:
  """Compiles transpose_bhwc.cc into out_dir/libzoo_transpose.so; SystemExit with one line where it cannot."""
  compiler = shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise SystemExit("no C++ compiler (g++ or c++) on PATH: cannot build the probe")
  try:
    flags = Path("/proc/cpuinfo").read_text()
  except OSError:
    flags = ""
  if "avx512f" not in flags:
    raise SystemExit("no AVX-512 seen in /proc/cpuinfo: the probe's kernel needs it")
  lib = out_dir / "libzoo_transpose.so"
  cmd = [compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w",
         f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(lib)]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f"building {SOURCE.name} failed: {done.stderr.strip().splitlines()[-1:]}")
  return lib


def register(lib: Path) -> None:
  handler = ctypes.cdll.LoadLibrary(str(lib)).ZooTransposeBHWC
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")


def transpose_ffi(x):
  """(B, H, W, C) -> (C, H, W, B) by the custom call."""
  b, h, w, c = x.shape
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((c, h, w, b), x.dtype))(x)


PAD = ((1, 0), (1, 1))     # the 3x3 mask B's open taps as a 2x3 box, 'SAME' (zoo.models._layers)


def weight_grad_xla(x, dy):
  r = jax.nn.relu(x)
  def conv(k):
    return jax.lax.conv_general_dilated(r, k, (1, 1), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.vjp(conv, jnp.zeros((2, 3, x.shape[3], dy.shape[3]), x.dtype))[1](dy)[0]


def weight_grad_ffi(x, dy):
  """dk[i, j] = sum_{b,h,w} r[b, h + i - 1, w + j - 1]^T dy[b, h, w] with r = relu(x): a convolution of
  r^T (C_in as its batch, B as its feature) with dy as the kernel (B in, C_out out), (C_in, 2, 3, C_out)."""
  g = jax.lax.conv_general_dilated(transpose_ffi(jax.nn.relu(x)), dy, (1, 1), PAD,
                                   dimension_numbers=("NHWC", "IHWO", "NHWC"))
  return g.transpose(1, 2, 0, 3)


def interleaved(fns: dict, args, rounds: int) -> dict[str, list[float]]:
  for f in fns.values():
    jax.block_until_ready(f(*args))
  ms = {k: [] for k in fns}
  for _ in range(rounds):
    for k, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(*args))
      ms[k].append((time.perf_counter() - t) * 1e3)
  return ms


def summary(ms: dict[str, list[float]], a: str, b: str) -> dict:
  return {**{f"{k}_ms_median": round(statistics.median(v), 3) for k, v in ms.items()},
          f"{b}_over_{a}_within_round": round(statistics.median(y / x for x, y in zip(ms[a], ms[b])), 3)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--rounds", type=int, default=25)
  ap.add_argument("--out", help="write the figures as JSON here")
  args = ap.parse_args(argv)
  from zoo import bench, memory, sharding, step as step_lib
  if argv is None:
    memory.ensure()       # as the zoo command and the other benchmarks do
  with tempfile.TemporaryDirectory() as tmp:
    register(build(Path(tmp)))
    for shape in ((16, 3, 5, 16), (32, 7, 7, 48), (args.batch, 28, 28, 64)):
      x = np.random.default_rng(0).standard_normal(shape, np.float32)
      if not np.array_equal(np.asarray(jax.jit(transpose_ffi)(x)), x.transpose(3, 1, 2, 0)):
        raise SystemExit(f"the custom call is not the transpose at {shape}")
    options = step_lib.compiler_options(sharding.make_mesh(1))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((args.batch, 28, 28, 64), np.float32))
    dy = jnp.asarray(rng.standard_normal((args.batch, 28, 28, 64), np.float32))
    jit = lambda f: jax.jit(f, compiler_options=options)  # noqa: E731
    transposes = interleaved({"xla": jit(lambda x: jnp.transpose(x, (3, 1, 2, 0))),
                              "xla_relu": jit(lambda x: jnp.transpose(jax.nn.relu(x), (3, 1, 2, 0))),
                              "ffi": jit(transpose_ffi), "copy": jit(lambda x: x + 0.0)}, (x,), args.rounds)
    grads = {"xla": jit(weight_grad_xla), "ffi": jit(weight_grad_ffi)}
    a, b = (np.asarray(f(x, dy)) for f in grads.values())
    err = float(np.abs(a - b).max() / np.abs(a).max())
    program = grads["ffi"].lower(x, dy).compile().as_text()
    direct = "convolution(%ffi_call" in program       # XLA reads the custom call's output as it is
    result = {"probe": "XLA FFI transpose for the weight gradient (issue 7)", **bench.machine_info(),
              "batch": args.batch, "rounds": args.rounds, "compiler_options": options,
              "transpose": summary(transposes, "xla_relu", "ffi"),
              "weight_grad_2x3_box": {**summary(interleaved(grads, (x, dy), args.rounds), "xla", "ffi"),
                                      "max_rel_diff": err, "convolution_reads_the_custom_call": direct}}
  print(json.dumps(result, indent=2))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
