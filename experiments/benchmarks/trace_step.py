"""How long a config's shared train step takes to trace, lower and compile on CPU with the layers' CPU
formulations traced alone (``zoo.kernels.cpu_only()``, as the train step traces on a CPU mesh) and with
them beside XLA's native convolutions under ``lax.platform_dependent`` (``_layers._TRACE_CPU_ONLY = 0``),
each measurement in a fresh process without the persistent compilation cache, the two settings
alternating, each first in every other pair (issue 7); and whether the two compile to the same program
(the compiled HLO's instructions, names and metadata aside).

  python experiments/benchmarks/trace_step.py --config experiments/benchmarks/pixelcnn28.py \\
      [--set KEY=VALUE ...] [--stage N] [--batch N] [--repeats 3] [--out FILE.jsonl]

Prints, and with ``--out`` appends, one JSON line: the median seconds of each phase (and of their total)
per setting, the ratios (platform_dependent / alone: the median over the pairs of the ratio within each
pair, the project's convention for A/B rounds, ``zoo.bench.within_round_ratio``) and ``programs``: whether
the runs compiled to identical instructions, the same instructions reordered, or different ones.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import time

PHASES = ("trace_s", "lower_s", "compile_s")
TIMES = (*PHASES, "total_s")


def instructions(hlo_text: str) -> str:
  """A compiled module's HLO instructions without their metadata or the numbers XLA appends to names
  (``%add.12``: ``%add``; a constant's digits stay)."""
  text = re.sub(r"%[\w.\-]+", lambda m: re.sub(r"\.\d+", "", m.group()),
                re.sub(r"metadata=\{[^}]*\}", "", hlo_text))
  return "\n".join(line for line in text.splitlines() if " = " in line)


def measure(args) -> dict:
  """One setting's phases in this process (``--child``)."""
  from zoo import bench, onednn
  from zoo import config as config_lib
  from zoo.models import _layers
  _layers._TRACE_CPU_ONLY = args.child
  cfg = config_lib.load(args.config, args.set)
  step, state, batch, info, _ = bench.step_inputs(cfg, args.batch, args.stage)
  t0 = time.perf_counter()
  traced = step.trace(state, batch)
  t1 = time.perf_counter()
  lowered = traced.lower()
  t2 = time.perf_counter()
  with onednn.uncached():
    compiled = lowered.compile()
  t3 = time.perf_counter()
  text = instructions(compiled.as_text())
  return {**info, "trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2, "total_s": t3 - t0,
          "program": _hash(text), "unordered": _hash("\n".join(sorted(text.splitlines())))}


def _hash(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def sameness(runs: list[dict]) -> str:
  """'identical' where every run compiled to the same instructions in the same order, 'reordered' where to the
  same instructions in another order (e.g. a constant placed elsewhere), else 'different'."""
  if len({r["program"] for r in runs}) == 1:
    return "identical"
  return "reordered" if len({r["unordered"] for r in runs}) == 1 else "different"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                  help="config overrides, as `zoo train`'s --config.KEY=VALUE (e.g. model.encoder='conv')")
  ap.add_argument("--batch", type=int, default=None, help="default: the config's")
  ap.add_argument("--stage", type=int, default=None, help="a family trained in stages: its step at this stage")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", help="append the result as a JSON line here")
  ap.add_argument("--child", type=int, choices=(0, 1), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child is not None:
    print(json.dumps(measure(args)))
    return
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_PLATFORMS": "cpu"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  runs = {0: [], 1: []}
  for r in range(args.repeats):
    for setting in ((0, 1) if r % 2 == 0 else (1, 0)):   # ABBA: neither setting always runs first
      cmd = [sys.executable, __file__, "--config", args.config, "--child", str(setting), "--set", *args.set]
      cmd += [f"--batch={args.batch}"] * (args.batch is not None) + [f"--stage={args.stage}"] * (args.stage is not None)
      out = subprocess.run(cmd, env=env, capture_output=True, text=True)
      if out.returncode:
        sys.exit(f"trace_step: the measuring process failed:\n{out.stderr[-2000:]}")
      runs[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
  from zoo import bench   # here, not at the top: the parent process imports JAX only to report
  result = {k: v for k, v in runs[1][0].items() if k not in (*TIMES, "program", "unordered")}
  for setting, name in ((1, "alone"), (0, "platform_dependent")):
    result[name] = {p: round(statistics.median(r[p] for r in runs[setting]), 3) for p in TIMES}
  # pair r's two runs are a round: time with the switch over time without it, within each pair
  result["ratio"] = {p: round(bench.within_round_ratio(
      {"pd": [r[p] for r in runs[0]], "alone": [r[p] for r in runs[1]]}, "pd", "alone"), 3) for p in TIMES}
  result["programs"] = sameness(runs[0] + runs[1])
  result["repeats"] = args.repeats
  bench.report(result, args.out)


if __name__ == "__main__":
  main()
