"""The zoo's CPU convolution paths against XLA's accelerator convolutions, in one process (issue 7).

On a machine with an accelerator, each layer shape of ``conv_layers.py`` (batch 8 or ``--batch``; with
``--layers-file``, also the layers saved there, such as every convolution of the families' experiment
configs) and the PixelCNN and Gated PixelCNN losses' parameter gradients (28x28 binary images, batch 8)
are computed with inputs on the CPU device, where ``_layers`` takes its CPU formulations (tap matmuls, phases, open boxes, 1x1 as
matmuls), and on the accelerator, where it lowers to XLA's native convolutions. The CPU side is computed
twice: as a caller's own ``jit`` compiles it ("zoo": XLA's default kernels) and as the shared train step
does ("zoo_step": the step's CPU compiler options, traced under ``zoo.step.own_kernels_for``: XLA's own
gradients for most strided and transposed convolutions, the zoo's C++ kernels (``zoo.convgrad``) and oneDNN
where the step takes them). All at
``jax.default_matmul_precision("highest")`` (no TF32). The reference for the difference is XLA's own
native convolution run on the two devices, so a ratio near 1 says the CPU formulations add no error of
their own beyond what two backends' float32 arithmetic differ by anyway.

  python experiments/benchmarks/cpu_gpu_parity.py [--batch 8] [--layers-file FILE.npz] [--out FILE.jsonl]

Prints one line per (layer, op): the max |cpu - accelerator| over max |value| for the zoo's layer (both
CPU compilations) and for XLA's native convolution; exits 1 when a zoo difference exceeds 1e-4
(relative).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_layers import LAYERS, distinct, layer_fns, load_layers, ops  # noqa: E402
from conv_layers import operands as layer_operands  # noqa: E402

from zoo import sharding, step as step_lib  # noqa: E402
from zoo.models.pixelcnn import GatedPixelCNN, PixelCNN  # noqa: E402

TOLERANCE = 1e-4


def one_device_mesh(device) -> Mesh:
  return Mesh(np.array([device]), (sharding.DATA,))


def on(device, f, *args, as_step: bool = False):
  """f(*args) jitted with the arguments committed to ``device``, as a float64 NumPy array (or a tree);
  ``as_step``: compiled and traced as the shared train step would on a mesh of that one device."""
  options = step_lib.compiler_options(one_device_mesh(device)) if as_step else None

  def traced(*a):
    with step_lib.own_kernels_for(options):
      return f(*a)
  out = jax.jit(traced, compiler_options=options)(*jax.device_put(args, device))
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), out)


def rel_diff(a, b) -> float:
  leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  scale = max(float(np.abs(x).max()) for x in leaves_a) or 1.0
  return max(float(np.abs(x - y).max()) for x, y in zip(leaves_a, leaves_b)) / scale


def family_grads(family):
  x = (jax.random.uniform(jax.random.PRNGKey(4), (8, 28, 28, 1)) > 0.5).astype(jnp.float32)
  variables = jax.jit(family.init)(jax.random.PRNGKey(0), {"image": x[:1]})

  def grad(params, x):
    return jax.grad(lambda p: family.loss("model", {"params": p}, {"image": x}, None, 0)[0])(params)
  return grad, variables["params"], x


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", help="write one JSON line per comparison here")
  ap.add_argument("--layers-file", metavar="FILE.npz",
                  help="also these layers (conv_layers.py --families --save-layers FILE.npz: every convolution "
                       "of the families' experiment configs, recorded where their data is)")
  ap.add_argument("--batch", type=int, default=8,
                  help="the layers' batch (the zoo's own kernels take a stride-1 layer from 16,384 pixels of "
                       "batch x H x W: 64 at 28x28, ``_layers._NATIVE_MIN_PIXELS``)")
  args = ap.parse_args()
  layers = distinct(LAYERS + (load_layers(args.layers_file) if args.layers_file else []))
  cpu = jax.devices("cpu")[0]
  acc = jax.devices()[0]
  if acc.platform == "cpu":
    raise SystemExit("no accelerator here: this compares the CPU paths with an accelerator's convolutions")
  if step_lib.compiler_options(one_device_mesh(cpu)) is None:
    print("note: the shared step compiles the CPU with XLA's defaults here, so zoo_step = zoo")
  # a line per comparison as it is made: a run cut short keeps them
  with open(args.out, "w") if args.out else contextlib.nullcontext() as out:
    worst = compare(layers, args.batch, cpu, acc, out)
  print(f"worst zoo difference {worst:.2e} (tolerance {TOLERANCE:.0e})")
  return 0 if worst <= TOLERANCE else 1


def compare(layers, batch, cpu, acc, out) -> float:
  """Prints (and writes to ``out``, where not None) each comparison; the worst zoo difference."""
  worst = 0.0

  def record(row):
    if out:
      out.write(json.dumps(row) + "\n")
      out.flush()
  print(f"cpu vs {acc.device_kind}; max |cpu - {acc.platform}| / max |value|, zoo's and XLA's native")
  with jax.default_matmul_precision("highest"):
    for layer in layers:
      name = layer.name
      x, kern = layer_operands(layer, batch)
      fns = layer_fns(layer)
      dy = jax.random.normal(jax.random.PRNGKey(3), jax.eval_shape(fns["native"], x, kern).shape, jnp.float32)
      for op in ("forward", "input_grad", "weight_grad"):
        operands = (x, kern, dy)
        on_acc = {impl: on(acc, ops(f)[op], *operands) for impl, f in fns.items()}
        d = {impl: rel_diff(on(cpu, ops(f)[op], *operands), on_acc[impl]) for impl, f in fns.items()}
        d["zoo_step"] = rel_diff(on(cpu, ops(fns["zoo"])[op], *operands, as_step=True), on_acc["zoo"])
        worst = max(worst, d["zoo"], d["zoo_step"])
        record(dict(layer=name, op=op, **d, device=acc.device_kind))
        print(f"{name:<16} {op:<11} zoo {d['zoo']:.2e}  zoo_step {d['zoo_step']:.2e}  "
              f"native {d['native']:.2e}", flush=True)
    for family in (PixelCNN(image_shape=(28, 28, 1)), GatedPixelCNN(image_shape=(28, 28, 1))):
      grad, params, x = family_grads(family)
      on_acc = on(acc, grad, params, x)
      d = {"zoo": rel_diff(on(cpu, grad, params, x), on_acc),
           "zoo_step": rel_diff(on(cpu, grad, params, x, as_step=True), on_acc)}
      worst = max(worst, *d.values())
      record(dict(layer=f"{family.name} loss", op="param_grad", **d, device=acc.device_kind))
      print(f"{family.name + ' loss':<16} param_grad  zoo {d['zoo']:.2e}  zoo_step {d['zoo_step']:.2e}",
            flush=True)
  return worst


if __name__ == "__main__":
  sys.exit(main())
