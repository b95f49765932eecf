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
as issue 7's target reads (at least 0.5); the ceiling is also measured before and after the run. And the
zoo's share of the roofline (Williams, Waterman & Patterson 2009): an op takes at least its work at the
ceiling's rate or the bytes it must move (its operands read and its results written, once) at the memory's,
whichever is longer; the memory's rate (GB/s) is an array of that many bytes read and written, timed in the
same rounds. A layer of few multiply-adds per byte (the Gated PixelCNN's first horizontal layer, three per
output) is bound by the memory far below the ceiling: "< half (memory-bound)" marks a share of the ceiling
under half where the share of the roofline is at least half.

Shapes: the DCGAN 32x32 benchmark architecture (experiments/benchmarks/dcgan32.py) at batch 64 and 256,
G's 4x4 stride-2 transposed convolutions 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3 and D's 4x4 stride-2
convolutions 32x32x3 -> 16x16x64 -> 8x8x128 -> 4x4x256; and PixelCNN's convolutions at 28x28, batch 64:
a 3x3 64 -> 64 unmasked (all 9 taps), the same with mask B (5 open taps; useful work counts those, and XLA
convolves the masked 3x3 kernel), the first layer's 7x7 mask A from 1 channel to 64 (24 open taps) and
the 1x1 64 -> 64 of the output layers; and the Gated PixelCNN's (``gated_layers``) at 28x28, batch 64: the
first layer's vertical 4x7 and horizontal 1x4 (mask A) from the image, and every later layer's vertical 2x3
and horizontal 1x2 from 64 channels, all into 128 (two gates of 64).

With ``--families``, instead of those: every convolution that the experiment configs' train steps make
(``FAMILY_CONFIGS``, or the configs named: the DCGAN and Progressive GAN on MNIST, the PixelCNN, the Gated
PixelCNN, both PixelRNNs and the VAE with its convolutional encoder), recorded from ``_layers.conv2d`` and
``conv_transpose2d`` while tracing each step (every stage of a family trained in stages), each shape once,
timed at max(64, the config's batch).

With ``--step-options`` every JAX function (the matmul ceiling included) compiles as the shared train step
does on CPU: with ``zoo.step.CPU_COMPILER_OPTIONS`` (XLA's own dot and convolution kernels) and traced
under ``zoo.kernels.xla_own_kernels()``; without it, with XLA's defaults (YNNPACK), as a caller's own ``jit``.

  python experiments/benchmarks/conv_layers.py [--batches 64 256] [--repeats 7] [--no-torch] [--step-options]
      [--layers NAME ...] [--families [CONFIG ...]] [--out FILE.jsonl | --save-layers FILE.npz]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import os
import statistics
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zoo import memory, sharding
from zoo import step as step_lib
from zoo.bench import load_average, machine_info
from zoo.models import _layers
from zoo.models.pixelcnn import _horizontal_mask

DN = ("NHWC", "HWIO", "NHWC")


class Layer(NamedTuple):
  """One layer shape of a family: ``kind`` 'conv' or 'convT' (transposed), ``kernel`` (kh, kw), ``padding``
  'SAME' or ((top, bottom), (left, right)) and, for a masked convolution, its (kh, kw, C_in, C_out) 0/1
  ``mask`` (the kernel is multiplied by it and the zoo's layer is told, as ``MaskedConv`` does)."""
  name: str
  kind: str
  in_shape: tuple[int, int, int]
  kernel: tuple[int, int]
  stride: int
  c_out: int
  batches: tuple[int, ...] | None = None      # None: --batches
  padding: Any = "SAME"
  mask: np.ndarray | None = None

  def flops(self, batch: int, out_hw: tuple[int, int]) -> int:
    """Useful multiply-adds x 2: of a convolution 2 N Ho Wo kh kw C_in C_out (of a masked one only the open
    kernel entries'), of a transposed one the same count as the convolution it transposes (its input
    pixels for output pixels: no multiplications by the dilation's zeros)."""
    h, w, c_in = self.in_shape
    pixels = batch * h * w if self.kind == "convT" else batch * out_hw[0] * out_hw[1]
    entries = int(self.mask.sum()) if self.mask is not None else math.prod(self.kernel) * c_in * self.c_out
    return 2 * pixels * entries


def raster_mask(k: int, kind: str, c_in: int, c_out: int) -> np.ndarray:
  """The (k, k, C_in, C_out) mask of a PixelCNN convolution of one data channel: 'A' or 'B'."""
  return _layers.causal_mask((k, k), np.zeros(c_in, int), np.zeros(c_out, int), kind)


def gated_layers(features: int = 64, first_kernel: int = 7, kernel: int = 3) -> list[Layer]:
  """The Gated PixelCNN's convolutions of one data channel (experiments/vandenoord2016/gated_pixelcnn.py)
  at 28x28, batch 64: each layer's vertical stack, an (n//2 + 1) x n kernel over the rows at and above,
  and its horizontal stack, a 1 x (n//2 + 1) kernel over the pixels at and left, masked at the centre (A in
  the first layer), both into 2 x ``features``; the first layer's from the image. Its 1x1 layers are the
  PixelCNN's shapes."""
  f2, rows = 2 * features, []
  for first, n, c_in in ((True, first_kernel, 1), (False, kernel, features)):
    tag = "A" if first else "B"
    rows.append(Layer(f"Gated v {n // 2 + 1}x{n}{' 1st' if first else ''}", "conv", (28, 28, c_in),
                      (n // 2 + 1, n), 1, f2, (64,), ((n // 2, 0), (n // 2, n // 2))))
    rows.append(Layer(f"Gated h 1x{n // 2 + 1} {tag}", "conv", (28, 28, c_in), (1, n // 2 + 1), 1, f2, (64,),
                      ((0, 0), (n // 2, 0)), _horizontal_mask(n, c_in, f2, 1, first)))
  return rows


LAYERS = [
    Layer("G deconv_0", "convT", (4, 4, 256), (4, 4), 2, 128),
    Layer("G deconv_1", "convT", (8, 8, 128), (4, 4), 2, 64),
    Layer("G deconv_2", "convT", (16, 16, 64), (4, 4), 2, 3),
    Layer("D conv_0", "conv", (32, 32, 3), (4, 4), 2, 64),
    Layer("D conv_1", "conv", (16, 16, 64), (4, 4), 2, 128),
    Layer("D conv_2", "conv", (8, 8, 128), (4, 4), 2, 256),
    Layer("PixelCNN 3x3", "conv", (28, 28, 64), (3, 3), 1, 64, (64,)),
    Layer("PixelCNN 3x3 B", "conv", (28, 28, 64), (3, 3), 1, 64, (64,), mask=raster_mask(3, "B", 64, 64)),
    Layer("PixelCNN 7x7 A", "conv", (28, 28, 1), (7, 7), 1, 64, (64,), mask=raster_mask(7, "A", 1, 64)),
    Layer("PixelCNN 1x1", "conv", (28, 28, 64), (1, 1), 1, 64, (64,)),
    *gated_layers(),
]


# The experiment configs of the convolutional families (``--families``); a config with overrides is
# (path, [key=value, ...]): the VAE's experiment is an MLP, so its convolutional encoder is this one.
FAMILY_CONFIGS = (
    "experiments/radford2015/dcgan_mnist.py", "experiments/karras2017/progan_mnist.py",
    "experiments/vandenoord2016/pixelcnn.py", "experiments/vandenoord2016/gated_pixelcnn.py",
    "experiments/vandenoord2016/row_lstm.py", "experiments/vandenoord2016/diagonal_bilstm.py",
    ("experiments/kingma2013/vae.py", ["model.encoder='conv'"]),
)


@contextlib.contextmanager
def _recording(calls: list):
  """Records the outermost ``_layers.conv2d`` / ``conv_transpose2d`` calls made inside: (kind, x's shape,
  the kernel's shape, strides, padding, mask) each. Every convolutional family calls one of the two
  through the module (``Conv``, ``ConvTranspose``, ``MaskedConv``, the Gated PixelCNN's stacks)."""
  conv, conv_t, depth = _layers.conv2d, _layers.conv_transpose2d, [0]

  def recorded(kind, f):
    def call(x, kernel, *args, **kwargs):
      if depth[0] == 0:
        bound = inspect.signature(f).bind(x, kernel, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        calls.append((kind, tuple(x.shape), tuple(kernel.shape), tuple(int(s) for s in a["strides"]),
                       a["padding"], a.get("mask")))
      depth[0] += 1
      try:
        return f(x, kernel, *args, **kwargs)
      finally:
        depth[0] -= 1
    return call
  _layers.conv2d, _layers.conv_transpose2d = recorded("conv", conv), recorded("convT", conv_t)
  try:
    yield calls
  finally:
    _layers.conv2d, _layers.conv_transpose2d = conv, conv_t


def recorded_layers(spec, min_batch: int = 64) -> list[Layer]:
  """The distinct convolutions of an experiment config's train step (every stage's, for a family trained in
  stages), as ``Layer`` s timed at max(``min_batch``, the config's batch): issue 7's target is for batches
  of 64 or more, and a family's shapes but for the batch do not depend on it. ``spec``: a config path, or
  (path, overrides). Traced only (no compilation), on the config's own data."""
  from zoo import config as config_lib
  from zoo import data as data_lib
  from zoo.train import build_run
  path, overrides = (spec, []) if isinstance(spec, str) else spec
  config = config_lib.with_defaults(config_lib.load(path, overrides))
  batch = max(min_batch, int(config.batch_size))
  dataset = data_lib.load(config.data)
  local = dataset.batch(config.train_split, 0, batch, seed=0, process_index=0, process_count=1)
  run = build_run(config, local, dataset.image_shape)
  state_shapes = jax.eval_shape(run.init_state)
  calls = []
  with _recording(calls):
    for stage in range(len(run.family.stage_steps) + 1):
      step = step_lib.jit_train_step(run.family.at_stage(stage), run.txs, run.mesh, config.ema.to_dict())
      step.trace(state_shapes, jax.eval_shape(lambda: local))
  tag = os.path.splitext(os.path.basename(path))[0]
  layers = []
  for kind, x_shape, k_shape, strides, padding, mask in calls:
    if len(set(strides)) != 1:
      raise ValueError(f"{path}: a convolution of strides {strides}; the benchmark's layers have one stride")
    mask = None if mask is None else np.asarray(mask, np.float32)
    kh, kw, c_in, c_out = k_shape
    tap = f" {int(mask.reshape(kh, kw, -1).any(-1).sum())} taps" if mask is not None else ""
    name = f"{tag} {'T' if kind == 'convT' else ''}{kh}x{kw}/{strides[0]} {c_in}->{c_out} @{x_shape[1]}{tap}"
    layers.append(Layer(name, kind, x_shape[1:], (kh, kw), strides[0], c_out, (batch,),
                        padding if isinstance(padding, str) else tuple(map(tuple, padding)), mask))
  return distinct(layers)


def distinct(layers) -> list[Layer]:
  """``layers`` with each shape (all but the name and the batches) once, the first of each kept, in order."""
  out, seen = [], set()
  for layer in layers:
    key = (layer.kind, layer.in_shape, layer.kernel, layer.stride, layer.c_out, repr(layer.padding),
           None if layer.mask is None else layer.mask.tobytes())
    if key not in seen:
      seen.add(key)
      out.append(layer)
  return out


def timed(fns: dict, *args, repeats: int, options: dict | None = None, per_round: bool = False) -> dict:
  """Median seconds of one call of each f in ``fns`` (a JAX function, jitted and called on ``args``, a
  function compiled already (``jax.stages.Compiled``) called on them, or a ``torch_*`` entry called with
  none), compiled and warmed up first, their timings taken in turns so that a change in the machine's load
  falls on all of them alike (``per_round``: each one's seconds per round, in order, instead of their
  median). ``options``: XLA's compiler options."""
  calls, inner, times = {}, {}, {}
  for name, f in fns.items():
    if name.startswith("torch"):
      calls[name] = f
    elif isinstance(f, jax.stages.Compiled):      # compiled already (ab_kernels.py: under a build's targets)
      calls[name] = functools.partial(f, *args)
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


def layer_fns(layer: Layer):
  """{'native': f, 'zoo': f} with f(x, kernel) the layer."""
  s, pad, m = (layer.stride,) * 2, layer.padding, layer.mask
  if layer.kind == "convT":
    return {"native": lambda x, w: jax.lax.conv_transpose(x, w, s, pad, dimension_numbers=DN),
            "zoo": lambda x, w: _layers.conv_transpose2d(x, w, s, pad)}
  if m is not None:
    return {"native": lambda x, w: jax.lax.conv_general_dilated(x, w * m, s, pad, dimension_numbers=DN),
            "zoo": lambda x, w: _layers.conv2d(x, w * m, pad, mask=m, strides=s)}
  return {"native": lambda x, w: jax.lax.conv_general_dilated(x, w, s, pad, dimension_numbers=DN),
          "zoo": lambda x, w: _layers.conv2d(x, w, pad, strides=s)}


def operands(layer: Layer, batch: int):
  """x and the kernel of ``layer`` at ``batch`` (random, fixed seeds)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, *layer.in_shape), jnp.float32)
  kern = jax.random.normal(jax.random.PRNGKey(2), (*layer.kernel, layer.in_shape[2], layer.c_out), jnp.float32)
  return x, kern * 0.05


def ops(f):
  """Forward, input gradient, weight gradient and both gradients (as training takes them: the zoo's
  stride-1 and transposed convolutions compute the two from one copy of dy) of f(x, w) as separate
  functions (x, w, dy) -> array(s)."""
  return {"forward": lambda x, w, dy: f(x, w),
          "input_grad": lambda x, w, dy: jax.vjp(lambda x: f(x, w), x)[1](dy)[0],
          "weight_grad": lambda x, w, dy: jax.vjp(lambda w: f(x, w), w)[1](dy)[0],
          "gradients": lambda x, w, dy: jax.vjp(f, x, w)[1](dy)}


def torch_ops(layer: Layer, x, kern, dy):
  """PyTorch's (oneDNN's) forward, input gradient, weight gradient and both gradients of the same layer
  on the same values (NCHW, float32, default threads), as functions of nothing; None without torch.
  A masked layer convolves its whole masked kernel, as the PyTorch twins of the compare scripts do; a
  convolution padded unevenly reads x padded beforehand (not timed; its input gradient is then x padded's)."""
  try:
    import torch
  except ImportError:
    return None
  s, kh = layer.stride, layer.kernel[0]
  transposed = layer.kind == "convT"
  x = np.asarray(x)
  if transposed:      # 'SAME', square kernels only (the DCGAN's G)
    pad = [(kh - s + 1) // 2] * 2
  else:
    pads = (jax.lax.padtype_to_pads(x.shape[1:3], layer.kernel, (s, s), layer.padding)
            if isinstance(layer.padding, str) else layer.padding)
    pad = [lo for lo, _ in pads]
    if any(lo != hi for lo, hi in pads):
      x, pad = np.pad(x, ((0, 0), *pads, (0, 0))), [0, 0]
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  dy_t = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())
  w = np.asarray(kern) * (layer.mask if layer.mask is not None else 1)
  # HWIO -> OIHW for a convolution, IOHW for a transposed one
  w_t = torch.from_numpy(w.transpose((2, 3, 0, 1) if transposed else (3, 2, 0, 1)).copy())
  conv = (lambda: torch.nn.functional.conv_transpose2d(x_t, w_t, stride=s, padding=pad)) if transposed else (
      lambda: torch.nn.functional.conv2d(x_t, w_t, stride=s, padding=pad))
  if tuple(conv().shape) != tuple(dy_t.shape):     # no tensor here requires grad: no graph is recorded
    raise ValueError(f"the PyTorch layer's output {tuple(conv().shape)} is not dy's {tuple(dy_t.shape)}")

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(dy_t, x_t, w_t, None, [s, s], pad, [1, 1],
                                                       transposed, [0, 0], 1, mask)
  return {"forward": conv, "input_grad": backward([True, False, False]),
          "weight_grad": backward([False, True, False]), "gradients": backward([True, True, False])}


def family_spec(spec):
  """``spec`` (a config path, or (path, overrides)) as ``recorded_layers`` takes it: a path named alone that is
  in ``FAMILY_CONFIGS`` with overrides takes them from there (the VAE's convolutional encoder)."""
  if isinstance(spec, str):
    return next((known for known in FAMILY_CONFIGS if not isinstance(known, str) and known[0] == spec), spec)
  return spec


def family_layers(specs) -> list[Layer]:
  """``recorded_layers`` of each config in ``specs`` (``family_spec``), each shape once (named after its
  first config)."""
  return distinct([layer for spec in specs for layer in recorded_layers(family_spec(spec))])


def save_layers(layers, path) -> None:
  """Writes ``layers`` to ``path`` as an .npz (their fields as JSON, each mask an array) that ``load_layers``
  reads back without pickle: for a machine that lacks the configs' data (TFDS), such as a lent accelerator."""
  meta = [dict(layer._asdict(), mask=None) for layer in layers]
  masks = {f"mask{i}": layer.mask for i, layer in enumerate(layers) if layer.mask is not None}
  with open(path, "wb") as f:       # the name as given (np.savez would add .npz to a name without it)
    np.savez(f, layers=np.array(json.dumps(meta)), **masks)


def load_layers(path) -> list[Layer]:
  """The layers that ``save_layers`` wrote to ``path``, checked: each entry Layer's fields, a known kind, and
  a mask (if any) of the kernel's (kh, kw, C_in, C_out) shape; otherwise one ValueError naming the file."""
  def tup(v):
    return tuple(tup(e) for e in v) if isinstance(v, list) else v
  try:
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f["layers"]))
      layers = []
      for i, m in enumerate(meta):
        mask = f[f"mask{i}"].astype(np.float32) if f"mask{i}" in f.files else None
        layer = Layer(**{**{k: tup(v) for k, v in m.items()}, "mask": mask})
        shape = (*layer.kernel, layer.in_shape[2], layer.c_out)
        if layer.kind not in ("conv", "convT") or (mask is not None and mask.shape != shape):
          raise ValueError(f"entry {i} ({layer.name!r}): kind {layer.kind!r}, mask "
                           f"{None if mask is None else mask.shape} for a kernel of {shape}")
        layers.append(layer)
      return layers
  except (OSError, KeyError, TypeError, ValueError, IndexError) as e:
    raise ValueError(f"{path}: not a layers file of conv_layers.py --save-layers ({e})") from None


def chosen_layers(parts, layers=None) -> list:
  """The entries of ``layers`` (LAYERS) whose names contain one of ``parts`` (all where ``parts`` is empty)."""
  return [layer for layer in (LAYERS if layers is None else layers)
          if not parts or any(part in layer.name for part in parts)]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", type=int, nargs="+", default=[64, 256])
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", help="write one JSON line per measurement here")
  ap.add_argument("--no-torch", action="store_true", help="leave out PyTorch's column")
  ap.add_argument("--step-options", action="store_true", help="compile as the shared train step does on CPU")
  ap.add_argument("--layers", nargs="+", metavar="NAME",
                  help="only the layers whose names contain one of these (e.g. 'deconv_2' '7x7')")
  ap.add_argument("--families", nargs="*", metavar="CONFIG",
                  help="instead of the benchmark architectures' layers, every convolution that these experiment "
                       "configs' train steps make (recorded while tracing them; none named: FAMILY_CONFIGS), "
                       "each at max(64, the config's batch)")
  ap.add_argument("--save-layers", metavar="FILE.npz",
                  help="write the chosen layers here (for cpu_gpu_parity.py --layers-file) and time nothing")
  args = ap.parse_args()
  if args.families is None and not chosen_layers(args.layers):
    raise SystemExit(f"--layers {args.layers}: no layer matches; the layers are {[layer.name for layer in LAYERS]}")
  memory.ensure()     # as the `zoo` command does: huge pages and the large-block cache (zoo/memory.py)
  layers = LAYERS
  if args.families is not None:     # after the re-execution above: recording the configs' steps takes ~1 minute
    layers = family_layers(args.families or FAMILY_CONFIGS)
  args.chosen = chosen_layers(args.layers, layers)
  if not args.chosen:
    raise SystemExit(f"--layers {args.layers}: no layer matches; the layers are {[layer.name for layer in layers]}")
  if args.save_layers:
    save_layers(args.chosen, args.save_layers)
    print(f"{len(args.chosen)} layers written to {args.save_layers}")
    return
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
  width = max(16, *(len(layer.name) for layer in args.chosen))
  print(f"{'layer':<{width}} {'batch':>5} {'shape':<22} {'op':<11} {'native':>8} {'zoo':>8} {'torch':>8} "
        f"{'zoo/nat':>7} {'ceiling':>8} {'zoo/ceil':>8} {'GB/s':>6} {'roof':>5}  (GFLOP/s; GB/s: memory)")
  rows = [dict(env, kind="matmul", gflops=round(ceiling, 2))]
  for layer in args.chosen:
    name, (h, w, c_in) = layer.name, layer.in_shape
    for b in layer.batches or args.batches:
      x, kern = operands(layer, b)
      fns = layer_fns(layer)
      y = jax.jit(fns["native"])(x, kern)
      dy = jax.random.normal(jax.random.PRNGKey(3), y.shape, jnp.float32)
      torch_fns = None if args.no_torch else torch_ops(layer, x, kern, dy)
      flops = layer.flops(b, y.shape[1:3])
      shape = f"{h}x{w}x{c_in}->{y.shape[1]}x{y.shape[2]}x{layer.c_out}"
      # the fewest bytes each op must move: its operands read once and its results written once
      nbytes = {"forward": x.nbytes + kern.nbytes + dy.nbytes, "input_grad": dy.nbytes + kern.nbytes + x.nbytes,
                "weight_grad": x.nbytes + dy.nbytes + kern.nbytes,
                "gradients": 2 * (x.nbytes + kern.nbytes) + dy.nbytes}
      for op in ("forward", "input_grad", "weight_grad", "gradients"):
        # the matmul ceiling timed in the same rounds: this machine's speed drifts by up to 2x within minutes,
        # so a layer's share of the ceiling is taken round by round (the median of the rounds' ratios);
        # so is the memory's: an array read and written (m * 2 + 1) that moves as many bytes as the op must
        impls = {impl: (lambda g: lambda x, w, dy, a, m: g(x, w, dy))(ops(f)[op]) for impl, f in fns.items()}
        impls["ceiling"] = lambda x, w, dy, a, m: a @ a
        impls["stream"] = lambda x, w, dy, a, m: m * 2.0 + 1.0
        if torch_fns:
          impls["torch"] = torch_fns[op]
        m = jnp.ones((max(1, nbytes[op] // 8),), jnp.float32)
        rounds = timed(impls, x, kern, dy, a, m, repeats=args.repeats, options=options, per_round=True)
        work = {impl: (2 * 2048 ** 3 if impl == "ceiling" else flops * (2 if op == "gradients" else 1))
                for impl in rounds}
        gf = {impl: work[impl] / statistics.median(t) / 1e9 for impl, t in rounds.items() if impl != "stream"}
        share = statistics.median(work["zoo"] / z / (work["ceiling"] / c)
                                  for z, c in zip(rounds["zoo"], rounds["ceiling"]))
        # the roofline: the op can take no less than its work at the ceiling's rate or its bytes at the
        # memory's, whichever is longer (Williams et al. 2009); the zoo's share of that bound, round by round
        gbps = 8 * m.size / statistics.median(rounds["stream"]) / 1e9
        roof = statistics.median(max(work["zoo"] * c / work["ceiling"], nbytes[op] * t / (8 * m.size)) / z
                                 for z, c, t in zip(rounds["zoo"], rounds["ceiling"], rounds["stream"]))
        flag = "" if share >= 0.5 else "  < half" + (" (memory-bound)" if roof >= 0.5 else "")
        print(f"{name:<{width}} {b:>5} {shape:<22} {op:<11} {gf['native']:>8.1f} {gf['zoo']:>8.1f} "
              f"{gf.get('torch', float('nan')):>8.1f} {gf['zoo'] / gf['native']:>6.2f}x {gf['ceiling']:>8.1f} "
              f"{share:>8.2f} {gbps:>6.1f} {roof:>5.2f}{flag}", flush=True)
        rows.append(dict(kind=layer.kind, layer=name, batch=b, shape=shape, kernel=layer.kernel,
                         stride=layer.stride, padding=layer.padding, masked=layer.mask is not None, op=op,
                         flops=flops * (2 if op == "gradients" else 1), bytes=nbytes[op],
                         native_gflops=round(gf["native"], 2), zoo_gflops=round(gf["zoo"], 2),
                         **({"torch_gflops": round(gf["torch"], 2)} if "torch" in gf else {}),
                         matmul_gflops=round(ceiling, 2), matmul_gflops_in_rounds=round(gf["ceiling"], 2),
                         zoo_over_ceiling=round(share, 3), stream_gbps=round(gbps, 2),
                         zoo_over_roofline=round(roof, 3)))
  after = 2 * 2048 ** 3 / timed(matmul, a, repeats=args.repeats, options=options)["matmul"] / 1e9
  rows[0].update(gflops_after=round(after, 2), load_average_after=load_average())
  print(f"float32 matmul 2048^3 after: {after:.1f} GFLOP/s (load {rows[0]['load_average_after']})")
  if args.out:
    with open(args.out, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
