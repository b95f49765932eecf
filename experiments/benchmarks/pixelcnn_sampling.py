"""Sampling speed of an autoregressive family: the fast sampler against the naive one, same run.

The issue's measurement: a batch of 64 binarized 28x28 images from the PixelCNN of
experiments/vandenoord2016/pixelcnn.py (7x7 mask A to 64 channels, 10 residual 3x3 mask-B blocks, 1x1
layers). The naive sampler evaluates the whole network once per pixel (784 passes over 28x28 images);
the fast one keeps every layer's activations and computes each layer at the new pixel only (one pass in
all). Both are jitted end to end (one ``lax.fori_loop`` over the pixels) and draw with the same keys; the
script checks that their samples are identical on the positions both drew.

The naive loop does the same work at every pixel, so it is timed over the first ``--naive-pixels``
pixels (default: two rows) and its time for a whole image is that times 784 / naive_pixels (printed as
``extrapolated``; ``--naive-pixels 784`` times it all, about a quarter of an hour on 2 CPU cores).

  python experiments/benchmarks/pixelcnn_sampling.py [--batch 64] [--config experiments/vandenoord2016/gated_pixelcnn.py]
  python experiments/benchmarks/pixelcnn_sampling.py --workdir runs/vandenoord2016_pixelcnn   # trained weights
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from zoo import config as config_lib, registry

ROOT = Path(__file__).resolve().parents[2]


def _family_and_variables(args):
  if args.workdir:
    import zoo
    loaded = zoo.load(args.workdir)
    return loaded.family, loaded.variables
  cfg = config_lib.load(args.config)
  family = registry.build(cfg.family, cfg.model.to_dict(), (28, 28, 1))
  x = jnp.zeros((1, 28, 28, 1))
  return family, family.init(jax.random.PRNGKey(0), {"image": x})


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default=str(ROOT / "experiments/vandenoord2016/pixelcnn.py"))
  p.add_argument("--workdir", default=None)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--naive-pixels", type=int, default=56)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args(argv)
  family, variables = _family_and_variables(args)
  b, d = args.batch, family.num_dims
  n = min(args.naive_pixels, d)
  v0 = jnp.zeros((b, d), jnp.int32)
  observed = jnp.zeros((b, d), bool)
  order = np.asarray(family.order())
  rng = jax.random.PRNGKey(0)

  def timed(fn, *a):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*a))
    return out, time.perf_counter() - t0

  fast = jax.jit(lambda v, r: family._sample_loop(v, r, v0, observed, order, fast=True))
  naive = jax.jit(lambda v, r: family._sample_loop(v, r, v0, observed, order[:n], fast=False))
  _, fast_first = timed(fast, variables, rng)                  # compile + run
  fast_out, fast_s = timed(fast, variables, rng)
  _, naive_first = timed(naive, variables, rng)
  naive_out, naive_s = timed(naive, variables, rng)
  drawn = order[:n]
  same = bool(np.array_equal(np.asarray(fast_out)[:, drawn], np.asarray(naive_out)[:, drawn]))
  naive_full = naive_s * d / n
  result = {
      "family": family.name, "batch": b, "pixels": d, "naive_pixels_timed": n,
      "fast_s": round(fast_s, 3), "fast_samples_per_s": round(b / fast_s, 2),
      "naive_s_extrapolated": round(naive_full, 1), "naive_samples_per_s": round(b / naive_full, 4),
      "speedup": round(naive_full / fast_s, 1), "identical_on_timed_pixels": same,
      "fast_compile_s": round(fast_first - fast_s, 2), "naive_compile_s": round(naive_first - naive_s, 2),
      "device": jax.devices()[0].device_kind, "machine": f"{platform.machine()} {os.cpu_count()} cores",
      "jax": jax.__version__,
  }
  print(json.dumps(result))
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  if not same:
    raise SystemExit("the fast and the naive sampler drew different values")


if __name__ == "__main__":
  main()
