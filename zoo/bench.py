"""Train-step throughput of the shared step on the current devices (``zoo bench``)."""
from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from zoo import config as config_lib
from zoo import data as data_lib
from zoo import sharding, step as step_lib
from zoo.train import build_run


def prepare(config: ml_collections.ConfigDict, batch_size: int | None = None):
  """The compiled shared step, a fresh state and one real batch on the devices, for timing.

  Returns:
    (step, state, batch, info): ``step(state, batch) -> (state, metrics)`` is compiled (state
    donated); ``info`` holds batch_size, compile_s and the config's names.
  """
  config = config_lib.with_defaults(config)
  batch_size = int(batch_size or config.batch_size)
  dataset = data_lib.load(config.data)
  local = dataset.batch(config.train_split, 0, batch_size, seed=int(config.seed),
                        process_index=jax.process_index(), process_count=jax.process_count())
  run = build_run(config, local, dataset.image_shape)
  sharding.check_batch_size(batch_size, run.mesh)
  batch = sharding.global_batch(local, run.mesh)
  train_step = step_lib.jit_train_step(run.family, run.txs, run.mesh, config.ema.to_dict())
  state = run.init_state()
  t0 = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  info = {"experiment": config.experiment, "family": config.family, "batch_size": batch_size,
          "compile_s": round(time.perf_counter() - t0, 3)}
  return compiled, state, batch, info


def benchmark(config: ml_collections.ConfigDict, batch_size: int | None = None, steps: int = 300,
              warmup: int = 10) -> dict:
  """Times ``steps`` calls of the shared train step on one real batch kept on the devices.

  The batch is the first training batch of the config's data set, placed once, so the figure is the
  step's own throughput (compute and dispatch), not the input pipeline's.

  Returns:
    {examples_per_s, steps_per_s, compile_s, batch_size, steps, family, experiment, platform,
     device_kind, device_count, process_count}.
  """
  compiled, state, batch, info = prepare(config, batch_size)
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
