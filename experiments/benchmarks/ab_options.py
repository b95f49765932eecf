"""One of the shared jitted functions besides the train step (the eval step, the sampler, the
once-per-evaluation context) compiled with the zoo's CPU options and with XLA's defaults, timed in
interleaved rounds in one process (issue 7; ``zoo.step.CPU_OPTIONS_FOR`` says which take the options).

Each is built through ``zoo.step`` (``jit_eval_step``, ``jit_sample``, ``jit_eval_context``) with the
function left out of and put into ``CPU_OPTIONS_FOR``, on a fresh state's variables and one real batch;
as in ab_step.py only the within-round ratio (options / defaults) is the comparison.

``--compare A B`` names the two builds, of ``defaults`` (XLA's defaults), ``options`` (the CPU options, the
layers traced plainly: the function left out of ``OWN_KERNELS_FOR``) and ``kernels`` (the CPU options, the
layers traced for them as the train step is: the function put into ``CPU_OPTIONS_FOR`` and
``OWN_KERNELS_FOR``; on one CPU device oneDNN's convolutions and the zoo's own kernels); the ratio is B / A
(default: defaults options).

  python experiments/benchmarks/ab_options.py --config experiments/vandenoord2016/pixelcnn.py --fn eval \\
      [sample context] --batch 64 [--k 1000] [--repeats 5] [--compare A B] [--set KEY=VALUE ...]
      [--out FILE.jsonl]

Several ``--fn`` are timed one after the other in the one process (one data load, one state); ``--out``
appends one JSON line per function.
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from zoo import bench, memory, sharding
from zoo import config as config_lib
from zoo import data as data_lib
from zoo import step as step_lib
from zoo.train import build_run

BUILDERS = {"eval": step_lib.jit_eval_step, "sample": step_lib.jit_sample, "context": step_lib.jit_eval_context}
# a build: (in step.CPU_OPTIONS_FOR, in step.OWN_KERNELS_FOR)
VARIANTS = {"defaults": (False, False), "options": (True, False), "kernels": (True, True)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                  help="config overrides, as `zoo train`'s --config.KEY=VALUE (e.g. model.encoder='conv')")
  ap.add_argument("--fn", required=True, nargs="+", choices=BUILDERS)
  ap.add_argument("--batch", type=int, required=True, help="the eval batch, or the number of samples")
  ap.add_argument("--k", type=int, help="the likelihood estimator's samples (eval, context)")
  ap.add_argument("--calls", type=int, default=1, help="calls per runner per round")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--compare", nargs=2, choices=VARIANTS, default=["defaults", "options"], metavar="BUILD",
                  help=f"the two builds, of {', '.join(VARIANTS)} (see above)")
  ap.add_argument("--out", help="append the result as a JSON line here")
  args = ap.parse_args()
  memory.ensure()     # as the `zoo` command does
  cfg = config_lib.with_defaults(config_lib.load(args.config, args.set))
  dataset = data_lib.load(cfg.data)
  local = dataset.batch(cfg.train_split, 0, args.batch, seed=0)
  run = build_run(cfg, local, dataset.image_shape)
  variables = run.init_state().variables()
  for fn_name in args.fn:
    compare(args, fn_name, run, local, variables)


def compare(args, fn_name, run, local, variables):
  """``fn_name``'s function built as ``args.compare`` names (with and without the CPU options by default),
  timed in interleaved rounds, reported."""
  rng = jax.random.PRNGKey(0)
  estimator = {"k": args.k} if args.k else {}
  if fn_name == "eval":
    batch = sharding.global_batch({**local, "mask": np.ones(args.batch, np.float32)}, run.mesh)
    fn_args = (variables, batch, rng)
  else:
    fn_args = (variables, rng)
  build_args = (run.family, run.mesh, args.batch) if fn_name == "sample" else (run.family, run.mesh)
  build_kwargs = {} if fn_name == "sample" else estimator     # the sampler takes the number of samples
  a, b = args.compare
  if a == b:
    raise SystemExit(f"--compare names {a} twice")
  runners, programs, given = {}, [], (step_lib.CPU_OPTIONS_FOR, step_lib.OWN_KERNELS_FOR)
  try:
    for name in (a, b):
      step_lib.CPU_OPTIONS_FOR, step_lib.OWN_KERNELS_FOR = (
          (s | {fn_name}) if on else (s - {fn_name}) for s, on in zip(given, VARIANTS[name]))
      BUILDERS[fn_name].cache_clear()   # the jit_* functions are cached per family and mesh
      jax.clear_caches()
      lowered = BUILDERS[fn_name](*build_args, **build_kwargs).lower(*fn_args)
      programs.append(bench.program_hash(lowered, step_lib.compiler_options(run.mesh, fn_name)))
      runners[name] = bench.call_runner(lowered.compile(), *fn_args)
  finally:
    step_lib.CPU_OPTIONS_FOR, step_lib.OWN_KERNELS_FOR = given   # the next function's builds see them as given
  if programs[0] == programs[1]:
    raise SystemExit(f"{fn_name} compiles to the same program as {a} and as {b} on this backend")
  per_call = args.batch if fn_name != "context" else 1
  rounds = bench.interleaved_rounds(runners, per_call, args.calls, args.repeats, warmup=1)
  result = {"config": args.config, "set": args.set, "fn": fn_name, "batch_size": args.batch, **estimator,
            "programs": programs, "calls_per_round": args.calls, **bench.machine_info(), **bench.round_figures(rounds),
            f"{b}_over_{a}": round(bench.within_round_ratio(rounds, b, a), 3)}
  bench.report(result, args.out)


if __name__ == "__main__":
  main()
