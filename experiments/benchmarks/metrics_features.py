"""Feature extraction and FID for 10,000 images, beside the machine's matmul and conv ceilings.

Measured in one run on the current default device:

- the ceilings: a float32 (2048 x 2048) @ (2048 x 2048) matmul and a 3x3 convolution of Inception's
  35x35 stage (batch 32, 192 -> 192 channels), both jitted, at HIGHEST precision as the metrics run;
- feature extraction through ``zoo.metrics.extract`` (quantize, preprocess, network, fetch) of
  ``--num`` 28x28 digits by the digit classifier, and of ``--inception-num`` of them by the FID
  Inception network (resized to 299x299); its FLOPs per image are XLA's cost analysis of the jitted
  forward pass, so the achieved GFLOP/s stand beside the ceilings;
- FID (statistics of 10,000 x 2048 features, float64 Fréchet distance), and with ``--metrics`` also
  KID (100 subsets of 1,000), IS (10 splits) and precision/recall (k=3), on random features.

The Inception weights are random unless ``--inception-weights`` names the FID file: the time does not
depend on them. Compile time is reported apart (a warm-up batch). The end-to-end FID of 10,000 images
(``fid_10k``) is their feature extraction, their statistics and the Fréchet distance, the reference's
statistics being cached; for Inception on a CPU the extraction is extrapolated from ``--inception-num``
images (10,000 take over an hour on 2 cores) and says so.

The ceilings and the throughputs are measured in the same run, under the same load: the JSON records
the load average before and after, and ``--note`` says what else the machine was doing.

  python experiments/benchmarks/metrics_features.py [--num 10000] [--inception-num 200]
      [--metrics fid,kid,is,pr] [--note TEXT] [--out FILE]

Recorded: ``results/metrics_features_cpu2.json``, CONTENDED: the 2 CPU cores were shared with training
runs and other jobs (load average 6.6 to 8.9) and the benchmark, at nice 5, got about 40% of one core,
so every figure there, the ceilings included, is a fraction of what an idle machine gives. Digits:
1,001 images/s (13 GFLOP/s beside 41 GFLOP/s matmul and conv ceilings measured in the same run);
Inception: 1.4 images/s (15.6 GFLOP/s), so FID of 10,000 images ~2 hours on this CPU under that load.
No GPU was lent to this work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from zoo.metrics import features as features_lib
from zoo.metrics import inception
from zoo.metrics.fid import feature_stats, frechet_distance
from zoo.metrics.inception_score import inception_score
from zoo.metrics.kid import kernel_inception_distance
from zoo.metrics.precision_recall import precision_recall

HP = jax.lax.Precision.HIGHEST


def _best_time(fn, *args, repeats: int = 5) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def ceilings() -> dict:
  """GFLOP/s of a large float32 matmul and of an Inception-sized 3x3 convolution."""
  n = 2048
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  mm = jax.jit(lambda x, y: jnp.dot(x, y, precision=HP))
  t_mm = _best_time(mm, a, a)
  x = jax.random.normal(jax.random.PRNGKey(1), (32, 35, 35, 192))
  w = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 192, 192))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                           precision=HP))
  t_conv = _best_time(conv, x, w)
  return {"matmul_gflops": round(2 * n ** 3 / t_mm / 1e9, 1),
          "conv3x3_gflops": round(2 * 32 * 35 * 35 * 9 * 192 * 192 / t_conv / 1e9, 1)}


def _flops_per_image(extractor: features_lib.FeatureExtractor) -> float:
  """XLA's count of the forward pass's FLOPs per image, taken on the CPU backend whatever the device:
  on a GPU the convolutions are cuDNN custom calls that its cost analysis does not count (an H100 run
  reported 0.04 GFLOP per Inception image, a three-hundredth of the CPU's count)."""
  cpu = jax.devices("cpu")[0]
  images = jax.device_put(jnp.zeros((extractor.batch_size, *(extractor.image_shape or (28, 28, 1)))), cpu)
  variables = jax.device_put(extractor.variables, cpu)
  lowered = jax.jit(lambda v, x: extractor.apply(v, x, False)).lower(variables, images)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) / extractor.batch_size


def time_extraction(extractor: features_lib.FeatureExtractor, images: np.ndarray) -> dict:
  t = time.perf_counter()
  features_lib.extract(extractor, images[:extractor.batch_size])      # compile and warm up
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  out = features_lib.extract(extractor, images)
  seconds = time.perf_counter() - t
  flops = _flops_per_image(extractor)
  return {"extractor": extractor.name, "images": len(images), "batch_size": extractor.batch_size,
          "seconds": round(seconds, 2), "images_per_s": round(len(images) / seconds, 1),
          "compile_s": round(compile_s, 1), "gflop_per_image": round(flops / 1e9, 4),
          "achieved_gflops": round(flops * len(images) / seconds / 1e9, 1),
          "features": list(out["features"].shape)}


def fid_end_to_end(extraction: dict, d: int, n: int = 10_000) -> dict:
  """FID of ``n`` images: their extraction (timed above, scaled to n) + statistics + Fréchet distance."""
  rng = np.random.default_rng(1)
  feats = np.abs(rng.normal(size=(n, d))).astype(np.float32)
  mu_r, s_r = feature_stats(np.abs(rng.normal(size=(n, d))).astype(np.float32))   # the cached reference
  t = time.perf_counter()
  mu, s = feature_stats(feats)
  frechet_distance(mu_r, s_r, mu, s)
  metric_s = time.perf_counter() - t
  extract_s = extraction["seconds"] * n / extraction["images"]
  out = {"images": n, "extract_s": round(extract_s, 1), "stats_and_frechet_s": round(metric_s, 2),
         "total_s": round(extract_s + metric_s, 1), "images_per_s": round(n / (extract_s + metric_s), 1)}
  if extraction["images"] < n:
    out["extract_extrapolated_from"] = extraction["images"]
  return out


def time_metrics(names: list[str], n: int, d: int = 2048) -> dict:
  rng = np.random.default_rng(0)
  real = np.abs(rng.normal(size=(n, d))).astype(np.float32)    # pool3-like: non-negative
  fake = np.abs(rng.normal(size=(n, d)) + 0.05).astype(np.float32)
  out = {}
  if "fid" in names:
    t = time.perf_counter()
    mu1, s1 = feature_stats(real)
    t_stats = time.perf_counter() - t
    mu2, s2 = feature_stats(fake)
    t = time.perf_counter()
    frechet_distance(mu1, s1, mu2, s2)
    out["fid"] = {"stats_s_per_set": round(t_stats, 2), "frechet_s": round(time.perf_counter() - t, 2)}
  if "kid" in names:
    t = time.perf_counter()
    kernel_inception_distance(real, fake)
    out["kid_100x1000_s"] = round(time.perf_counter() - t, 2)
  if "is" in names:
    t = time.perf_counter()
    inception_score(rng.normal(size=(n, 1008)).astype(np.float32))
    out["is_s"] = round(time.perf_counter() - t, 2)
  if "pr" in names:
    t = time.perf_counter()
    precision_recall(real, fake)
    out["pr_s"] = round(time.perf_counter() - t, 2)
  return {"features": [n, d], **out}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--num", type=int, default=10_000, help="digits through the digit classifier")
  p.add_argument("--inception-num", type=int, default=200,
                 help="digits through the Inception network (10,000 take ~30 min on 2 CPU cores)")
  p.add_argument("--inception-weights", default=None)
  p.add_argument("--inception-batch", type=int, default=50)
  p.add_argument("--metrics", default="fid,kid,is,pr", help="comma-separated among fid,kid,is,pr")
  p.add_argument("--note", default="", help="what else the machine was doing")
  p.add_argument("--out", default=None)
  args = p.parse_args()
  load_before = [round(x, 2) for x in os.getloadavg()]
  from zoo import data as data_lib
  ds = data_lib.load({"name": "binarized_mnist"})
  digits = next(iter(ds.eval_batches("train", max(args.num, args.inception_num))))["image"]
  row = {"command": "python " + " ".join(sys.argv), "note": args.note, "cpu_count": os.cpu_count(),
         "machine": platform.machine(), "processor": platform.processor(),
         "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
         "jax": jax.__version__, **ceilings()}
  row["digits"] = time_extraction(features_lib.get_extractor("digits"), digits[:args.num])
  row["digits"]["fid_10k"] = fid_end_to_end(row["digits"], 128)
  if args.inception_num:
    if args.inception_weights:
      ex = features_lib.get_extractor("inception", args.inception_weights, args.inception_batch)
    else:
      v = jax.device_put(jax.jit(inception.FIDInceptionV3().init)(
          jax.random.PRNGKey(0), jnp.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3))))
      net = inception.FIDInceptionV3()
      ex = features_lib.FeatureExtractor(
          "inception", "random", 2048, inception.NUM_CLASSES, None, args.inception_batch, v,
          lambda v, x, taps: {"features": (o := net.apply(v, inception.preprocess(x)))["pool"],
                              "logits": o["logits_unbiased"]})
    row["inception"] = time_extraction(ex, digits[:args.inception_num])
    row["inception"]["weights"] = "FID file" if args.inception_weights else "random"
    row["inception"]["fid_10k"] = fid_end_to_end(row["inception"], 2048)
  row["metrics"] = time_metrics([m.strip() for m in args.metrics.split(",") if m.strip()], 10_000)
  row["load_average_before"] = load_before
  row["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
  text = json.dumps(row, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
