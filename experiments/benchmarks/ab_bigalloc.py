"""A config's shared train step with XLA's large buffers from glibc (A) and from the zoo's large-block cache
(B, ``zoo/bigalloc.py``), timed in interleaved rounds in one process (issue 7).

The cache is preloaded when the script re-executes itself (``zoo.memory.ensure()``); it is switched per
round (``bigalloc.set_enabled``): the same compiled program, the same state, only where its large blocks
come from. Also reports each side's kernel (system) CPU time and minor page faults per step.

  python experiments/benchmarks/ab_bigalloc.py --config experiments/benchmarks/pixelcnn28.py --batch 256 \\
      [--steps 3] [--repeats 7] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import resource
import statistics

from zoo import bench, bigalloc, memory
from zoo import config as config_lib


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--batch", type=int, required=True)
  ap.add_argument("--steps", type=int, default=3, help="steps per side per round")
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--out", help="append the result as a JSON line here")
  args = ap.parse_args()
  memory.ensure()
  if not bigalloc.active():
    raise SystemExit("ab_bigalloc: the large-block cache is not preloaded here (no C compiler, no glibc, "
                     "ZOO_BIGALLOC=0 or a user's LD_PRELOAD): nothing to compare")
  cfg = config_lib.with_defaults(config_lib.load(args.config))
  run, info = bench.step_runner(cfg, args.batch)
  kernel = {"glibc": [], "cache": []}

  def side(on: bool):
    name, switched = ("cache" if on else "glibc"), bench.with_bigalloc(run, on)

    def timed(n):
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      switched(n)
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      kernel[name].append(((r1.ru_stime - r0.ru_stime) / n * 1e3, (r1.ru_minflt - r0.ru_minflt) / n))
    return timed

  rounds = bench.interleaved_rounds({"glibc": side(False), "cache": side(True)}, args.batch, args.steps,
                                    args.repeats, warmup=2)
  per_step = {k: {"kernel_ms_per_step": round(statistics.median(s for s, _ in v), 1),
                  "minor_faults_per_step": round(statistics.median(f for _, f in v))} for k, v in kernel.items()}
  result = {"config": args.config, "batch_size": args.batch, "program": info["program"],
            "steps_per_round": args.steps, **bench.machine_info(), **bench.round_figures(rounds),
            "glibc": per_step["glibc"], "cache": per_step["cache"], "cache_stats": bigalloc.stats(),
            "cache_over_glibc": round(bench.within_round_ratio(rounds, "cache", "glibc"), 3)}
  bench.report(result, args.out)


if __name__ == "__main__":
  main()
