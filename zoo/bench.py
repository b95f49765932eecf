"""Train-step throughput of the shared step on the current devices (``zoo bench``), and the timing
helpers of the scripts that compare it with other implementations (experiments/benchmarks/compare_*.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from typing import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from zoo import config as config_lib
from zoo import data as data_lib
from zoo import bigalloc, sharding, step as step_lib
from zoo.errors import ConfigError
from zoo.train import build_run


def step_inputs(config: ml_collections.ConfigDict, batch_size: int | None = None, stage: int | None = None):
  """The shared step jitted as ``zoo train`` jits it (not yet lowered), a fresh state and one real batch on
  the devices: ``prepare`` compiles it; experiments/benchmarks/trace_step.py times its trace, lowering and
  compile apart.

  ``stage``: a family trained in stages (the Progressive GAN) steps at that stage (default: its first, where
  training starts); 0 to ``len(family.stage_steps)``.

  Returns:
    (step, state, batch, info, options): ``info`` holds the config's names and batch_size, ``options`` the
    XLA options the step compiles with (``zoo.step.compiler_options``).
  """
  config = config_lib.with_defaults(config)
  batch_size = int(batch_size or config.batch_size)
  dataset = data_lib.load(config.data)
  local = dataset.batch(config.train_split, 0, batch_size, seed=int(config.seed),
                        process_index=jax.process_index(), process_count=jax.process_count())
  run = build_run(config, local, dataset.image_shape)
  family = run.family
  if stage is not None:
    last = len(family.stage_steps)
    if not 0 <= stage <= last:
      raise ConfigError(f"stage {stage}: {config.family} trains in stages 0 to {last}" if last else
                        f"stage {stage}: {config.family} trains in one stage, 0")
    family = family.at_stage(stage)
  sharding.check_batch_size(batch_size, run.mesh)
  batch = sharding.global_batch(local, run.mesh)
  train_step = step_lib.jit_train_step(family, run.txs, run.mesh, config.ema.to_dict())
  info = {"experiment": config.experiment, "family": config.family, "batch_size": batch_size,
          **({} if stage is None else {"stage": int(stage)})}
  return train_step, run.init_state(), batch, info, step_lib.compiler_options(run.mesh)


def prepare(config: ml_collections.ConfigDict, batch_size: int | None = None, stage: int | None = None):
  """The compiled shared step, a fresh state and one real batch on the devices, for timing.

  ``stage``: as ``step_inputs``'s.

  Returns:
    (step, state, batch, info): ``step(state, batch) -> (state, metrics)`` is compiled (state
    donated); ``info`` holds batch_size, compile_s, the config's names and ``program``, a hash of the
    step's StableHLO text and XLA options (two steps with the same hash are the same program).
  """
  train_step, state, batch, info, options = step_inputs(config, batch_size, stage)
  t0 = time.perf_counter()
  lowered = train_step.lower(state, batch)
  compiled = lowered.compile()
  info = {**info, "compile_s": round(time.perf_counter() - t0, 3), "program": program_hash(lowered, options)}
  return compiled, state, batch, info


def program_hash(lowered, options: dict | None) -> str:
  """A hash of a lowered function's StableHLO text and the XLA options it compiles with: two functions
  with the same hash are the same program. (Not of the compiled text: one read back from the persistent
  compilation cache prints differently.)"""
  return hashlib.sha256((lowered.as_text() + repr(options)).encode()).hexdigest()[:16]


def report(result: dict, out: str | None = None) -> None:
  """Prints a benchmark's result as one JSON line and appends that line to ``out`` if given."""
  print(json.dumps(result), flush=True)
  if out:
    with open(out, "a") as f:
      f.write(json.dumps(result) + "\n")


def benchmark(config: ml_collections.ConfigDict, batch_size: int | None = None, steps: int = 300,
              warmup: int = 10, stage: int | None = None) -> dict:
  """Times ``steps`` calls of the shared train step on one real batch kept on the devices.

  The batch is the first training batch of the config's data set, placed once, so the figure is the
  step's own throughput (compute and dispatch), not the input pipeline's.

  Returns:
    {examples_per_s, steps_per_s, compile_s, batch_size, steps, family, experiment, platform,
     device_kind, device_count, process_count}, and ``stage`` where one is given (``prepare``).
  """
  compiled, state, batch, info = prepare(config, batch_size, stage)
  for _ in range(max(warmup, 1)):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  elapsed = time.perf_counter() - t0
  host = sharding.to_host(metrics)
  loss = float(np.asarray(next((v for k, v in host.items() if k.endswith("loss")), np.nan)))
  d = jax.devices()[0]
  b = info["batch_size"]
  return {
      **info, "steps": steps, "examples_per_s": round(b * steps / elapsed, 1),
      "steps_per_s": round(steps / elapsed, 2), "final_loss": loss, "platform": d.platform,
      "device_kind": d.device_kind, "device_count": jax.device_count(),
      "process_count": jax.process_count(),
  }


# ---- comparing implementations (experiments/benchmarks/compare_*.py) --------------------------------
# A runner is ``run(n)``: it takes n train steps and returns when they are done.

Runner = Callable[[int], None]


def step_runner(config: ml_collections.ConfigDict, batch_size: int | None = None,
                stage: int | None = None) -> tuple[Runner, dict]:
  """The shared step (at ``stage``: ``prepare``) as a runner on one real batch kept on the devices (what
  ``zoo bench`` times).

  Returns:
    (run, info): ``info`` is ``prepare``'s.
  """
  compiled, state, batch, info = prepare(config, batch_size, stage)
  return runner_of(compiled, state, batch), info


def runner_of(compiled, state, batch) -> Runner:
  """``prepare``'s compiled step as a runner: ``run(n)`` takes n steps on ``batch`` from the state it
  holds (the step donates it) and waits for the last."""
  box = [state]

  def run(n):
    state = box[0]
    for _ in range(n):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    box[0] = state
  return run


def call_runner(compiled, *args) -> Runner:
  """A compiled function of no state as a runner: ``run(n)`` calls ``compiled(*args)`` n times and waits for
  the last (ab_options.py's eval steps and samplers, ab_features.py's extraction)."""
  def run(n):
    for _ in range(n):
      out = compiled(*args)
    jax.block_until_ready(out)
  return run


def torch_runner(step: Callable[[], None], threads: int = 0, device: str = "cpu") -> Runner:
  """A runner of a PyTorch ``step()`` on ``threads`` intra-op threads (0: PyTorch's default, one per
  core); PyTorch's thread count is put back after each call, so runners of different counts interleave.
  On a CUDA ``device`` each call waits for the queued kernels, as the zoo's runner waits for its state."""
  import torch
  default_threads = torch.get_num_threads()

  def run(n):
    torch.set_num_threads(threads or default_threads)
    try:
      for _ in range(n):
        step()
      if device != "cpu":
        torch.cuda.synchronize(device)
    finally:
      torch.set_num_threads(default_threads)
  return run


def torch_device(name: str) -> str:
  """The PyTorch device a twin runs on: ``name``, or for 'auto' the kind JAX's first device is ('cuda'
  on a GPU, else 'cpu'). On CUDA, PyTorch is set up as JAX runs float32 there by default (TF32 in
  matmuls and convolutions) and lets cuDNN pick its fastest algorithms (``cudnn.benchmark``)."""
  if name == "auto":
    name = "cuda" if jax.default_backend() == "gpu" else "cpu"
  if name not in ("cpu", "cuda"):
    raise ValueError(f"torch device must be auto, cpu or cuda, got {name!r}")
  if name == "cuda":
    try:
      import torch
    except ImportError:     # no twin will run (the compare scripts report the zoo's figures alone)
      return name
    if not torch.cuda.is_available():
      raise SystemExit("--torch-device cuda: this PyTorch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  return name


def timed(run: Runner, n: int) -> float:
  """Seconds that ``run(n)`` takes."""
  t0 = time.perf_counter()
  run(n)
  return time.perf_counter() - t0


def interleaved_rounds(runners: Mapping[str, Runner], examples_per_call: int, steps: int, repeats: int,
                       warmup: int = 3) -> dict[str, list[float]]:
  """Examples/s of each runner in ``repeats`` rounds of ``steps`` steps, after ``warmup`` steps each.

  The machine's speed drifts (by about 10% over seconds on a shared CPU), so each round times every
  runner back to back and comparisons should be taken within a round (``within_round_ratio``).

  Returns:
    {name: [examples/s of round 1, ...]}, ``examples_per_call`` examples per step (the batch size).
  """
  for run in runners.values():   # compile and warm up
    run(warmup)
  rounds = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      rounds[name].append(examples_per_call * steps / timed(run, steps))
  return rounds


def round_figures(rounds: Mapping[str, Sequence[float]]) -> dict:
  """{name_examples_per_s: the median, name_rounds: every round's figure} of ``interleaved_rounds``' result,
  as the results files record them."""
  return {**{f"{k}_examples_per_s": round(statistics.median(v), 1) for k, v in rounds.items()},
          **{f"{k}_rounds": [round(x, 1) for x in v] for k, v in rounds.items()}}


def within_round_ratio(rounds: Mapping[str, Sequence[float]], a: str, b: str | Sequence[str]) -> float:
  """The median over rounds of a's throughput over b's in the same round; ``b`` a list of names: over
  the fastest of them in each round."""
  others = [b] if isinstance(b, str) else list(b)
  return statistics.median(x / max(rounds[o][i] for o in others) for i, x in enumerate(rounds[a]))


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages, or None where the OS has none."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> dict:
  """{cpu_model, cpu_vector_isa}: the CPU's model name and its widest vector extensions (of avx2, avx512f,
  amx_tile), from Linux's cpuinfo; empty strings where it cannot be read. The same machine name has
  been different CPUs from one session to the next: PyTorch's PixelCNN step ran 2.2x faster on one than on
  another, the zoo's 1.4x, so a ratio means little without them."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return {"cpu_model": "", "cpu_vector_isa": ""}
  fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = set(fields.get("flags", "").split())
  model = fields.get("model name", "")
  if fields.get("cpu family") and fields.get("model"):      # a virtual CPU's name is often generic
    model += f" (family {fields['cpu family']} model {fields['model']})"
  return {"cpu_model": model, "cpu_vector_isa": " ".join(f for f in ("avx2", "avx512f", "amx_tile") if f in flags)}


def machine_info() -> dict:
  """{machine, cpu_count, cpu_model, cpu_vector_isa, device_kind, platform, device_count, jax,
  glibc_tunables, bigalloc}: what a timing ran on (the tunables say whether malloc asked for huge pages,
  zoo/hugepages.py; bigalloc whether the large-block cache was in use, zoo/bigalloc.py)."""
  d = jax.devices()[0]
  return {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpu_count": os.cpu_count(),
          **cpu_model(), "device_kind": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
          "jax": jax.__version__, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "bigalloc": bigalloc.active()}


def with_bigalloc(run: Runner, on: bool) -> Runner:
  """``run`` with the large-block cache switched on or off for it, where the cache is in use."""
  if not bigalloc.active():
    return run

  def switched(n):
    bigalloc.set_enabled(on)
    run(n)
  return switched


def compare_with_torch(argv: Sequence[str] | None, *, description: str, config: str, benchmark: str,
                       pytorch_eager: Callable, examples: int = 2048) -> dict:
  """The command line of a compare script: the shared step of ``config`` against its PyTorch eager twin.

  ``pytorch_eager(cfg, batch_size, threads, device)`` gives ``(runner, torch)`` for a twin on ``threads``
  intra-op threads (0: PyTorch's default) on ``device`` ('cpu' or 'cuda'), or None without torch. Each
  batch size is timed in interleaved rounds; a row per batch size has the median examples/s of each
  runner, every round's figure, and the within-round ratios zoo / twin (and zoo / the faster twin).
  """
  import argparse
  import json
  from pathlib import Path
  from zoo import config as config_lib, memory

  if argv is None:          # a script's command line: huge pages for both sides of the comparison
    memory.ensure()
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--examples", type=int, default=examples, help="examples per timed measurement")
  p.add_argument("--torch-threads", type=int, nargs="+", default=None,
                 help="PyTorch twins to time, by intra-op threads (0: its default, one per core; "
                      "default: 0 and 1 on the CPU, 0 on CUDA)")
  p.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                 help="where the PyTorch twin runs (auto: CUDA where JAX runs on a GPU, else the CPU)")
  p.add_argument("--torch-allocator", default="glibc", choices=("glibc", "cache"),
                 help="where the PyTorch twins' large blocks come from while they run, where the zoo's "
                      "large-block cache is preloaded (zoo/bigalloc.py): glibc's malloc, as PyTorch runs by "
                      "default (the default), or the same cache as the zoo's step")
  p.add_argument("--note", default="", help="a remark stored with the results (e.g. other load)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                 help="split the CPU into N devices for the shared step (as `zoo --cpu-devices N`)")
  args = p.parse_args(argv)
  if args.cpu_devices:
    from zoo.sharding import set_cpu_devices
    set_cpu_devices(args.cpu_devices)
  device = torch_device(args.torch_device)
  if args.torch_threads is None:
    args.torch_threads = [0, 1] if device == "cpu" else [0]
  cfg = config_lib.with_defaults(config_lib.load(config))
  rows = []
  torch_version = torch_threads = None
  load_before = load_average()
  for b in args.batches:
    steps = max(args.examples // b, 4)
    zoo_run, info = step_runner(cfg, b)
    runners = {"zoo": with_bigalloc(zoo_run, True)}
    for threads in args.torch_threads:
      twin = pytorch_eager(cfg, b, threads, device)
      if twin is not None:
        runners["torch" if not threads else f"torch_{threads}thread"] = with_bigalloc(
            twin[0], args.torch_allocator == "cache")
        torch = twin[1]
        torch_version, torch_threads = torch.__version__, torch.get_num_threads()
    rounds = interleaved_rounds(runners, b, steps, args.repeats, warmup=3)
    torches = [k for k in rounds if k.startswith("torch")]
    row = {"batch_size": b, "steps_per_round": steps, "rounds": args.repeats, "zoo_compile_s": info["compile_s"],
           **round_figures(rounds),
           **{f"zoo_over_{k}": round(within_round_ratio(rounds, "zoo", k), 3) for k in torches}}
    if torches:   # against the faster PyTorch configuration, round by round
      row["zoo_over_best_torch"] = round(within_round_ratio(rounds, "zoo", torches), 3)
    rows.append(row)
    print(json.dumps(row), flush=True)
  repo = Path(__file__).resolve().parent.parent
  where = Path(config).resolve()
  result = {"benchmark": benchmark, "config": str(where.relative_to(repo) if where.is_relative_to(repo) else where),
            **machine_info(),
            "torch": torch_version, "torch_default_threads": torch_threads, "torch_device": device,
            "torch_allocator": args.torch_allocator if bigalloc.active() else "glibc",
            "load_average_before": load_before, "load_average_after": load_average(),
            "note": args.note, "rows": rows}
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result
