"""Train several experiment configs side by side on one machine within a wall-clock budget.

For a lent accelerator with a fixed time allowance: each config's train step is timed first, alone
(``zoo bench``, one config after another), then all configs train at once, each for the steps that its
share of the device fits into the budget (so a learning-rate schedule runs to its end instead of being
cut), evaluating on the validation split ``--evals`` times and keeping the best checkpoint, and finally
``zoo eval --best`` scores that checkpoint on the test split. Every training is killed at the budget's
end whatever its rate promised; a killed run still has its best checkpoint so far.

The share: N runs on one device each get about 1/N of their solo rate. Measured on one H200 with five
runs (PixelCNN, MADE, Row LSTM, Diagonal BiLSTM, NADE): their rates during training were 0.22, 0.10,
0.20, 0.22 and 0.25 of their solo rates, 0.99 in all (the GPU time-slices between processes).

  python experiments/run_budget.py --minutes 8 --root runs/gpu \\
      experiments/vandenoord2016/pixelcnn.py experiments/germain2015/made.py

A config may carry overrides after ``@`` (each a ``--config.key=value`` of ``zoo train``), so that one
config's variants (a sweep on the validation split) train side by side, each in its own workdir:

  python experiments/run_budget.py --minutes 7 --root runs/gpu --bench-together \\
      experiments/vandenoord2016/pixelcnn.py@model.dropout=0.15 experiments/vandenoord2016/pixelcnn.py@model.dropout=0.3

With ``--resume``, a config whose workdir under ``--root`` already holds a checkpoint (a run cut short at
an earlier session's deadline, its workdir carried over) is not timed again: it continues to the step
count its ``config.json`` planned, so its learning-rate schedule is the one it started with, evaluating
``--evals`` times over the steps left; the others are planned as above, sharing the device with it.

  python experiments/run_budget.py --minutes 7 --root runs/gpu --resume \\
      experiments/vandenoord2016/pixelcnn.py experiments/vandenoord2016/diagonal_bilstm.py

Writes ``<root>/summary.json``: per config the measured step rate, the steps planned and done, the wall
time, the best validation figure and the test-split metrics, and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _last_json(text: str) -> dict | None:
  for line in reversed(text.strip().splitlines()):
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        return None
  return None


def _last_line(text: str) -> str:
  return text.strip().splitlines()[-1] if text.strip() else "no output"


def _split(spec: str) -> tuple[str, list[str]]:
  """``path[:variant][@key=value...]`` -> the config and its ``--config.key=value`` overrides."""
  config, *sets = spec.split("@")
  for s in sets:
    if "=" not in s:
      raise SystemExit(f"{spec}: an override after @ is key=value, got {s!r}")
  return config, [f"--config.{s}" for s in sets]


def _name(spec: str) -> str:
  """A workdir name for a config spec: ``vandenoord2016_pixelcnn``, ``..._model.dropout=0.2``."""
  return (spec.replace("experiments/", "").replace(".py", "").replace("/", "_").replace(":", "_")
          .replace("@", "_"))


def _checkpointed_step(workdir: Path) -> int | None:
  """The newest checkpoint step under a workdir, None when it has none."""
  steps = [int(d.name) for d in (workdir / "checkpoints").glob("*") if d.name.isdigit()]
  return max(steps) if steps else None


def _zoo(*args: str) -> list[str]:
  return [sys.executable, "-m", "zoo", *args]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("configs", nargs="+",
                 help="experiment configs, path[:variant][@key=value...] (each @ adds a --config override)")
  p.add_argument("--minutes", type=float, required=True, help="the whole budget, timing and tests included")
  p.add_argument("--root", default="runs/budget", help="a folder for the runs (one workdir per config)")
  p.add_argument("--bench-steps", type=int, default=100)
  p.add_argument("--bench-together", action="store_true",
                 help="time every config at once (saves the sequential timings' minutes; noisier rates)")
  p.add_argument("--bench-timeout-s", type=float, default=150.0,
                 help="a config whose timing (compilation included) takes longer is left out")
  p.add_argument("--evals", type=int, default=5, help="validation evaluations per run")
  p.add_argument("--eval-reserve-s", type=float, default=100.0,
                 help="seconds kept at the end for the test-split evaluations")
  p.add_argument("--safety", type=float, default=0.75,
                 help="fraction of the measured rate to plan on (evaluations and checkpoints take time)")
  p.add_argument("--resume", action="store_true",
                 help="continue the configs whose workdir under --root has a checkpoint, to their planned steps")
  args = p.parse_args(argv)

  t0 = time.time()
  deadline = t0 + 60 * args.minutes
  root = Path(args.root)
  root.mkdir(parents=True, exist_ok=True)
  env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "PYTHONUNBUFFERED": "1"}
  runs = {}
  for spec in args.configs:
    config, sets = _split(spec)
    runs[_name(spec)] = {"config": config, "overrides": sets}

  def log(msg):
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

  if args.resume:
    for n, r in runs.items():
      done = _checkpointed_step(root / n)
      if done is not None:
        planned = int(json.loads((root / n / "config.json").read_text())["steps"])
        r.update(resumed_from=done, steps_planned=planned)
        log(f"{n}: resuming at step {done} of {planned}")

  # 1. The step rate of each config, alone on the device (or all at once with --bench-together).
  def start_bench(r):
    return subprocess.Popen(_zoo("bench", "--config", r["config"], *r["overrides"], "--steps",
                                 str(args.bench_steps), "--warmup", "10"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

  timing = {n: r for n, r in runs.items() if "resumed_from" not in r}
  started = {n: start_bench(r) for n, r in timing.items()} if args.bench_together else {}
  for n, r in timing.items():
    proc = started.get(n) or start_bench(r)
    try:
      out, _ = proc.communicate(timeout=args.bench_timeout_s)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, _ = proc.communicate()
      out += f"\ntiming took over {args.bench_timeout_s:.0f}s"
    bench = _last_json(out)
    if proc.returncode or bench is None:
      runs[n]["error"] = f"bench failed (rc {proc.returncode}): {_last_line(out)}"
      log(f"{n}: {runs[n]['error']}")
      continue
    runs[n]["bench"] = bench
    log(f"{n}: {bench['examples_per_s']:.1f} examples/s at batch {bench['batch_size']} "
        f"(compile {bench['compile_s']:.1f}s, {bench.get('device_kind', '?')})")

  # 2. Train each for the steps its share of the device fits into what is left, killed at the deadline.
  train_s = deadline - time.time() - args.eval_reserve_s
  # Timed together, the rates are still about the solo ones (the timings overlap the others' compilation
  # more than their steps: on an H100, four timed together gave 194 steps/s for the Gated PixelCNN, which
  # then made 150 alone and 34 beside three others), so the share is 1/N either way.
  sharing = sum("bench" in r or "resumed_from" in r for r in runs.values())
  procs = {}
  for n, r in runs.items():
    if "resumed_from" in r:
      steps = r["steps_planned"]
      every = max(100, (steps - r["resumed_from"]) // args.evals // 100 * 100)
    elif "bench" in r:
      rate = r["bench"]["examples_per_s"] / r["bench"]["batch_size"] / sharing
      steps = max(100, int(rate * train_s * args.safety) // 100 * 100)
      every = max(100, steps // args.evals // 100 * 100)
      r["steps_per_s_shared"] = rate
    else:
      continue
    r.update(steps_planned=steps, workdir=str(root / n))
    cmd = _zoo("train", "--config", r["config"], *r["overrides"], "--workdir", r["workdir"], "--no-progress",
               f"--config.steps={steps}", f"--config.eval_every={every}",
               f"--config.checkpoint_every={every}")
    log(f"{n}: training {steps} steps, evaluating every {every}")
    r["log"] = str(root / f"{n}.log")
    procs[n] = (subprocess.Popen(cmd, env=env, stdout=open(r["log"], "w"), stderr=subprocess.STDOUT),
                time.time())
  for n, (proc, start) in procs.items():
    try:
      proc.wait(timeout=max(1.0, deadline - args.eval_reserve_s - time.time()))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      runs[n]["killed_at_deadline"] = True
    runs[n]["train_wall_s"] = round(time.time() - start, 1)
    runs[n]["train_returncode"] = proc.returncode
    metrics = Path(runs[n]["workdir"]) / "metrics.jsonl"
    if metrics.exists():
      lines = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
      train = [l for l in lines if l.get("split") == "train"]
      valid = [l for l in lines if l.get("split") not in ("train", None)]
      # A resumed workdir's log also holds the lines its killed run wrote past its last checkpoint: the
      # steps done are the checkpoint's, and a step evaluated twice keeps its newest figure.
      runs[n]["steps_logged"] = max((l["step"] for l in lines), default=0)
      runs[n]["valid_curve"] = sorted({l["step"]: l.get("nll") for l in valid}.items())
      if train:
        runs[n]["last_train"] = train[-1]
    runs[n]["steps_done"] = _checkpointed_step(Path(runs[n]["workdir"])) or 0
    log(f"{n}: stopped after {runs[n]['train_wall_s']}s (rc {proc.returncode}), "
        f"{runs[n]['steps_done']} steps checkpointed")

  # 3. The best checkpoint of each on the test split.
  procs = {n: subprocess.Popen(_zoo("eval", "--workdir", r["workdir"], "--split", "test", "--best"), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for n, r in runs.items() if "workdir" in r}
  for n, proc in procs.items():
    try:
      out, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      proc.kill()
      out = "test evaluation killed at the deadline"
    runs[n]["test"] = _last_json(out) or {"error": _last_line(out)}
    log(f"{n}: test {runs[n]['test']}")

  summary = {"wall_s": round(time.time() - t0, 1), "budget_s": 60 * args.minutes, "runs": runs}
  (root / "summary.json").write_text(json.dumps(summary, indent=1))
  log(f"wrote {root / 'summary.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
