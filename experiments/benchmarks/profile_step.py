"""Where a config's shared train step spends its time on CPU, operation by operation (issue 7).

Compiles the step as ``zoo train`` does (``zoo.bench.prepare``), runs ``--steps`` steps under
``jax.profiler`` and reads the trace back in-process (``jax.profiler.ProfileData``; no TensorBoard). XLA:CPU
marks each operation it runs with a begin event and an ``end: <name>`` event; library calls (convolutions,
dots) finish asynchronously, so the begin event's own duration says nothing and the span from begin to end
is the operation's wall time. XLA runs independent operations concurrently, so spans overlap and sum to
more than the step: each operation is also given its share of the wall clock (every instant divided
evenly among the operations running then), and those shares sum to the time anything ran. Each operation
is named with the JAX operation it came from (the HLO's ``op_name`` metadata, where it has one).

  python experiments/benchmarks/profile_step.py --config experiments/benchmarks/pixelcnn28.py --batch 64 \\
      [--steps 5] [--top 30] [--out FILE.json]

Prints the operations by their share, then the same grouped by kind (``convolution``, ``dot``,
``transpose_copy_fusion``, ...), in ms per step; ``--out`` writes all of it as JSON.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import tempfile
import time
from pathlib import Path

import jax

from zoo import bench, memory
from zoo import config as config_lib


def op_spans(profile, prefix: str = "tf_XLA") -> list[tuple[int, int, str]]:
  """(begin_ns, end_ns, name) of every XLA operation in a ``jax.profiler.ProfileData``: a begin event
  paired with the next ``end: <name>`` event of that name (on any thread), on the threads whose name starts
  with ``prefix`` (XLA:CPU's thread pools); the executor's own events are left out."""
  events = []
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith(prefix):
        continue
      for e in line.events:
        if not e.name.startswith(("ThreadpoolListener", "ThunkExecutor")):
          events.append((e.start_ns, e.name))
  events.sort()
  open_, spans = collections.defaultdict(list), []
  for t, name in events:
    if name.startswith("end: "):
      begun = open_.get(name[5:])
      if begun:
        spans.append((begun.pop(0), t, name[5:]))
    else:
      open_[name].append(t)
  return sorted(spans)


def shares(spans: list[tuple[int, int, str]]) -> tuple[dict[str, float], int]:
  """Each operation's share of the wall clock in ns (every instant split evenly among the operations
  running then) and the total time any operation ran."""
  points = sorted({t for s, e, _ in spans for t in (s, e)})
  share: dict[str, float] = collections.defaultdict(float)
  starts = collections.defaultdict(list)
  for s, e, name in spans:
    starts[s].append((e, name))
  active: list[tuple[int, str]] = []
  busy = 0
  for a, b in zip(points, points[1:]):
    active = [(e, n) for e, n in active if e > a] + starts.get(a, [])
    if active:
      busy += b - a
      for _, name in active:
        share[name] += (b - a) / len(active)
  return dict(share), busy


def kind_of(name: str) -> str:
  """An operation's kind: its name without XLA's numeric suffixes and ``.clone``."""
  return re.sub(r"(\.(\d+|clone))+$", "", name)


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (its result shape and opcode, the JAX operation it came from: its ``op_name``
  metadata, or '' where XLA made the instruction itself), from compiled HLO text."""
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? ([\w\-]+)\((.*)$", hlo_text, re.M):
    meta = re.search(r'metadata=\{op_name="([^"]*)"', m.group(4))
    out[m.group(1)] = (f"{m.group(2)} {m.group(3)}", meta.group(1) if meta else "")
  return out


def profile_step(config, batch_size: int, steps: int) -> dict:
  """Runs ``steps`` steps of ``config``'s shared step under the profiler; the per-step breakdown."""
  step, state, batch, info = bench.prepare(config, batch_size)
  run = bench.runner_of(step, state, batch)
  run(2)
  t0 = time.perf_counter()
  run(steps)
  wall = time.perf_counter() - t0
  with tempfile.TemporaryDirectory(prefix="zoo_profile_") as d:
    jax.profiler.start_trace(d)
    run(steps)
    jax.profiler.stop_trace()
    traces = sorted(Path(d).rglob("*.xplane.pb"))
    if not traces:
      raise SystemExit("profile_step: the profiler wrote no trace")
    spans = op_spans(jax.profiler.ProfileData.from_file(str(traces[-1])))
  if not spans:
    raise SystemExit("profile_step: the trace holds no XLA:CPU operations (is the step running on CPU?)")
  share, busy = shares(spans)
  span_ns, count = collections.Counter(), collections.Counter()
  for s, e, name in spans:
    span_ns[name] += e - s
    count[name] += 1
  hlo = hlo_ops(step.as_text())
  ms = lambda ns: round(ns / steps / 1e6, 3)   # noqa: E731
  ops = [{"name": n, "kind": kind_of(n), "hlo": hlo.get(n, ("", ""))[0], "jax_op": hlo.get(n, ("", ""))[1],
          "share_ms": ms(share[n]), "span_ms": ms(span_ns[n]), "per_step": count[n] / steps}
         for n in sorted(share, key=share.get, reverse=True)]
  kinds: dict[str, dict] = {}
  for op in ops:
    k = kinds.setdefault(op["kind"], {"kind": op["kind"], "share_ms": 0.0, "span_ms": 0.0, "ops": 0})
    k["share_ms"] += op["share_ms"]
    k["span_ms"] += op["span_ms"]
    k["ops"] += 1
  return {**info, "steps": steps, "wall_ms_per_step": round(wall / steps * 1e3, 2),
          "traced_ms_per_step": ms(max(e for _, e, _ in spans) - spans[0][0]),
          "busy_ms_per_step": ms(busy), **bench.machine_info(),
          "kinds": sorted(kinds.values(), key=lambda k: -k["share_ms"]), "ops": ops}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--batch", type=int, required=True)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--top", type=int, default=30, help="operations to print")
  ap.add_argument("--out", help="write the whole breakdown here as JSON")
  args = ap.parse_args(argv)
  if args.steps < 1:
    raise SystemExit("--steps must be at least 1")
  result = profile_step(config_lib.with_defaults(config_lib.load(args.config)), args.batch, args.steps)
  print(f"{result['experiment']} batch {result['batch_size']}: {result['wall_ms_per_step']} ms per step untraced, "
        f"{result['traced_ms_per_step']} traced, operations running {result['busy_ms_per_step']} ms of it")
  print(f"{'share ms':>9} {'span ms':>9}  operation: result and opcode (JAX op)")
  for op in result["ops"][:args.top]:
    print(f"{op['share_ms']:9.2f} {op['span_ms']:9.2f}  {op['name']}: {op['hlo']} ({op['jax_op'][-60:]})")
  print(f"{'share ms':>9} {'span ms':>9}  kind (operations)")
  for k in result["kinds"]:
    print(f"{k['share_ms']:9.2f} {k['span_ms']:9.2f}  {k['kind']} ({k['ops']})")
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  memory.ensure()     # as the `zoo` command does (it re-executes the process, so not inside main)
  main()
