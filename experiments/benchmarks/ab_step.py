"""A config's shared train step under two settings of one of the zoo's CPU switches, timed in interleaved
rounds in one process (issue 7).

The thresholds choose between formulations of the same function (``_DY_COPIES_MAX_RATIO``,
``_CONCAT_MAX_FEATURES``, ``_PHASE_MIN_FEATURES``; under XLA's own kernels ``USE_XLA_OWN_GRADIENTS``,
``_XLA_OWN_STRIDED_GRADIENTS``, ``_MATERIALIZE_CONV_INPUT``, ``zoo.step.USE_ONEDNN`` and
``zoo.step.USE_NATIVE_CONV_GRADS``, 0 or 1, and
``_ONEDNN_MIN_PIXELS``), or compile it with XLA's options or the zoo's (``zoo.step.USE_CPU_COMPILER_OPTIONS``,
0 or 1) and with which preferred vector width (``zoo.step.CPU_PREFER_VECTOR_WIDTH``, 0 for XLA's default, or
512); each is read when the step is built,
so two step runners built under the two values run the two programs side by side. This machine's speed drifts
by up to 2x over minutes, so only the within-round ratio B / A is reported as the comparison.

  python experiments/benchmarks/ab_step.py --config experiments/benchmarks/pixelcnn28.py --batch 64 \\
      --threshold _DY_COPIES_MAX_RATIO --values 0 1 [--steps 6] [--repeats 5] [--out FILE.jsonl] \\
      [--set KEY=VALUE ...] [--stage N]

``--stage``: a family trained in stages (the Progressive GAN) at that stage's resolution, not its first.

``--out`` appends one JSON line per run.
"""
from __future__ import annotations

import argparse

import jax

from zoo import bench, memory
from zoo import config as config_lib
from zoo import step as step_lib
from zoo.models import _layers

# each switch and the module that reads it
THRESHOLDS = {"_DY_COPIES_MAX_RATIO": _layers, "_CONCAT_MAX_FEATURES": _layers, "_PHASE_MIN_FEATURES": _layers,
              "_XLA_OWN_STRIDED_GRADIENTS": _layers, "_MATERIALIZE_CONV_INPUT": _layers,
              "_ONEDNN_MIN_PIXELS": _layers, "_ONEDNN_FUSED_ADDS": _layers,
              "_ONEDNN_PHASES": _layers, "_ONEDNN_PHASE_MIN_PIXELS": _layers, "_ONEDNN_1X1_MIN_IN_CHANNELS": _layers, "_NATIVE_STRIDED_MAX_TAPPED": _layers,
              "_NATIVE_MIN_PIXELS": _layers, "_NATIVE_STRIDED_MIN_PIXELS": _layers,
              "_NATIVE_STRIDED_THIN_MAX": _layers, "_NATIVE_THIN_STRIDE1_FORWARD": _layers,
              "USE_CPU_COMPILER_OPTIONS": step_lib, "USE_XLA_OWN_GRADIENTS": step_lib,
              "CPU_PREFER_VECTOR_WIDTH": step_lib, "USE_ONEDNN": step_lib, "USE_NATIVE_CONV_GRADS": step_lib}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                  help="config overrides, as `zoo train`'s --config.KEY=VALUE (e.g. model.encoder='conv')")
  ap.add_argument("--batch", type=int, required=True)
  ap.add_argument("--stage", type=int, default=None,
                  help="a family trained in stages (the Progressive GAN): its step at this stage (default: the first)")
  ap.add_argument("--threshold", required=True, choices=THRESHOLDS)
  ap.add_argument("--values", type=int, nargs=2, required=True, metavar=("A", "B"))
  ap.add_argument("--steps", type=int, default=4, help="steps per runner per round")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", help="append the result as a JSON line here")
  args = ap.parse_args()
  memory.ensure()     # as the `zoo` command does
  cfg = config_lib.with_defaults(config_lib.load(args.config, args.set))
  runners, programs = {}, []
  for value in args.values:
    setattr(THRESHOLDS[args.threshold], args.threshold, value)   # read when step_runner builds the step
    # JAX keeps the functions it has traced, keyed by the function and its arguments' shapes, not by this
    # module's thresholds: without this the second runner reuses the first's trace, the same program twice
    jax.clear_caches()
    runners[f"{args.threshold}={value}"], info = bench.step_runner(cfg, args.batch, args.stage)
    programs.append(info["program"])
  if programs[0] == programs[1]:
    raise SystemExit(f"{args.threshold} = {args.values[0]} and {args.values[1]} compile this config's step to "
                     "the same program: there is nothing to compare")
  rounds = bench.interleaved_rounds(runners, args.batch, args.steps, args.repeats, warmup=2)
  a, b = runners
  result = {"config": args.config, "batch_size": args.batch, **({} if args.stage is None else {"stage": args.stage}),
            "threshold": args.threshold,
            "values": args.values, "programs": programs, "steps_per_round": args.steps, **bench.machine_info(),
            **bench.round_figures(rounds),
            "b_over_a": round(bench.within_round_ratio(rounds, b, a), 3)}
  bench.report(result, args.out)


if __name__ == "__main__":
  main()
