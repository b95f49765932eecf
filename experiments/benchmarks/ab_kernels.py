"""Two builds of the zoo's convolution kernels (``zoo/_native/convgrad.cc``) on the families' layers, timed in
interleaved rounds in one process (issue 7).

Each of A and B is a git revision (its ``zoo/_native/convgrad.cc``) or a path to a source file. Both are
compiled (into a temporary directory), registered with XLA under their own FFI target names
(``zoo.convgrad.register(lib, suffix)``) and checked against XLA on ``zoo.convgrad``'s own cases. Then for
each layer and pass (forward, input gradient, weight gradient; the layer as ``conv_layers.py`` times it,
under the train step's CPU options) the function is compiled twice, once lowered to each build's targets
(``zoo.convgrad.suffixed``), the compiled program's custom calls are checked to be that build's, the two
outputs to agree, and the two are timed in turns. This machine's speed drifts by up to 40% between runs
minutes apart, as much for XLA's own figures as for ours; a change to the kernels is judged by the ratio of
the two builds within each round (the median over the rounds, and in how many rounds B was faster), which
holds still where one-run tables do not. Passes that call none of the zoo's kernels are left out.

  python experiments/benchmarks/ab_kernels.py A B [--families [CONFIG ...]] [--layers NAME ...]
      [--batch 128] [--repeats 9] [--out FILE.jsonl]

e.g. ``ab_kernels.py HEAD zoo/_native/convgrad.cc --families experiments/kingma2013/vae.py`` (the working
tree's kernels against the last commit's, on the conv VAE's layers: ``conv_layers.family_spec``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

import conv_layers
from zoo import convgrad, memory, sharding
from zoo import step as step_lib
from zoo.bench import load_average, machine_info

ROOT = Path(__file__).resolve().parents[2]
SOURCE_IN_REPO = "zoo/_native/convgrad.cc"
OPS = ("forward", "input_grad", "weight_grad")


def source_of(spec: str, directory: Path, tag: str) -> Path:
  """``spec`` as a source file: the file itself where it is one, else that git revision's kernels written
  into ``directory``; SystemExit in one line where it is neither."""
  if Path(spec).is_file():
    return Path(spec).resolve()
  proc = subprocess.run(["git", "show", f"{spec}:{SOURCE_IN_REPO}"], cwd=ROOT, capture_output=True)
  if proc.returncode:
    raise SystemExit(f"{spec!r}: neither a file nor a git revision with {SOURCE_IN_REPO} "
                     f"({proc.stderr.decode().strip()})")
  path = directory / f"convgrad_{tag}.cc"
  path.write_bytes(proc.stdout)
  return path


def zoo_targets(compiled) -> list[str]:
  """The custom-call targets of the zoo's kernels that the compiled program calls."""
  found = re.findall(r'custom_call_target="([A-Za-z0-9_]+)"', compiled.as_text())
  return [t for t in found if any(t.startswith(name) for name in convgrad.HANDLERS)]


def compiled_for(fn, args, options, suffix: str):
  """``fn`` compiled on ``args`` (the train step's options, traced as it traces) with the zoo's primitives
  lowered to the build registered under ``suffix``; None where it calls none of the zoo's kernels. Raises
  where it calls another build's (a lowering cached across the two: the comparison would be void)."""
  with step_lib.own_kernels_for(options), convgrad.suffixed(suffix):
    compiled = jax.jit(lambda *a: fn(*a), compiler_options=options).lower(*args).compile()
  targets = zoo_targets(compiled)
  if not targets:
    return None
  wrong = [t for t in targets if not (t.endswith(suffix) and t[:-len(suffix)] in convgrad.HANDLERS)]
  if wrong:
    raise RuntimeError(f"compiled for the build {suffix!r} but calls {wrong}")
  return compiled


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("a", help="build A: a git revision or a path to a convgrad.cc")
  ap.add_argument("b", help="build B: the same")
  ap.add_argument("--families", nargs="*", metavar="CONFIG",
                  help="the layers of these configs' train steps (none named: conv_layers.FAMILY_CONFIGS); "
                       "default: conv_layers.py's benchmark layers")
  ap.add_argument("--layers", nargs="+", metavar="NAME", help="only the layers whose names contain one of these")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--out", help="write one JSON line per measurement here")
  args = ap.parse_args()
  memory.ensure()     # as the `zoo` command does
  options = step_lib.compiler_options(sharding.make_mesh(1))
  if options is None or not convgrad.available():
    raise SystemExit("the zoo's kernels are not used on this backend (or could not be built): nothing to compare")
  layers = conv_layers.LAYERS if args.families is None else conv_layers.family_layers(
      args.families or conv_layers.FAMILY_CONFIGS)
  layers = conv_layers.chosen_layers(args.layers, layers)
  if not layers:
    raise SystemExit(f"--layers {args.layers}: no layer matches")
  with tempfile.TemporaryDirectory(prefix="zoo_ab_kernels_") as tmp:
    tmp = Path(tmp)
    sources = {"a": source_of(args.a, tmp, "a"), "b": source_of(args.b, tmp, "b")}
    print(f"building A ({args.a}) and B ({args.b}) ...", flush=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:     # each build is a compiler process
      libs = dict(zip(sources, pool.map(lambda s: convgrad.build(tmp, source=s), sources.values())))
    for tag, lib in libs.items():
      if lib is None:
        raise SystemExit(f"build {tag.upper()} ({getattr(args, tag)}) failed (the line above says why)")
      convgrad.register(lib, f"_{tag}")
      with convgrad.suffixed(f"_{tag}"):
        why = convgrad._check()
      if why is not None:
        raise SystemExit(f"build {tag.upper()} ({getattr(args, tag)}) is wrong: {why}")
    rows = compare(layers, args, options)
  if args.out:
    env = {**machine_info(), "a": args.a, "b": args.b, "load_average_after": load_average()}
    with open(args.out, "w") as f:
      for r in rows:
        f.write(json.dumps({**env, **r}) + "\n")


def compare(layers, args, options) -> list[dict]:
  print(f"{'layer':<40} {'op':<11} {'A GF/s':>7} {'B GF/s':>7} {'B/A':>6}  B faster in")
  rows = []
  for layer in layers:
    x, kern = conv_layers.operands(layer, args.batch)
    y = jax.jit(conv_layers.layer_fns(layer)["native"])(x, kern)
    dy = jax.random.normal(jax.random.PRNGKey(3), y.shape, y.dtype)
    flops = layer.flops(args.batch, y.shape[1:3])
    for op in OPS:
      fn = conv_layers.ops(conv_layers.layer_fns(layer)["zoo"])[op]
      fns = {tag: compiled_for(fn, (x, kern, dy), options, f"_{tag}") for tag in ("a", "b")}
      if fns["a"] is None:
        continue
      out_a, out_b = fns["a"](x, kern, dy), fns["b"](x, kern, dy)
      scale = float(np.abs(np.asarray(out_a)).max()) or 1.0
      if not np.allclose(np.asarray(out_a), np.asarray(out_b), rtol=1e-4, atol=1e-4 * scale):
        raise SystemExit(f"{layer.name} {op}: the builds' results differ")
      rounds = conv_layers.timed(fns, x, kern, dy, repeats=args.repeats, per_round=True)
      ratios = [a / b for a, b in zip(rounds["a"], rounds["b"])]       # B's speed over A's, round by round
      gf = {tag: flops / statistics.median(t) / 1e9 for tag, t in rounds.items()}
      faster = sum(r > 1 for r in ratios)
      print(f"{layer.name[:40]:<40} {op:<11} {gf['a']:>7.1f} {gf['b']:>7.1f} {statistics.median(ratios):>5.2f}x"
            f"  {faster}/{len(ratios)}", flush=True)
      rows.append(dict(layer=layer.name, op=op, batch=args.batch, flops=flops, a_gflops=round(gf["a"], 2),
                       b_gflops=round(gf["b"], 2), b_over_a=round(statistics.median(ratios), 3),
                       b_faster_rounds=faster, rounds=len(ratios)))
  if not rows:
    print("none of these layers' passes calls the zoo's kernels", file=sys.stderr)
  return rows


if __name__ == "__main__":
  main()
