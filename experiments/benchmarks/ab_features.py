"""The sample-quality metrics' feature extraction (``zoo.metrics.features``: the digit classifier or the FID
Inception) compiled with the zoo's CPU options and with XLA's defaults, timed in interleaved rounds in one
process (``zoo.step.CPU_OPTIONS_FOR``'s 'features'); as in ab_options.py only the within-round ratio
(options / defaults) is the comparison.

  python experiments/benchmarks/ab_features.py --extractor inception --batch 16 [--inception-weights FILE]
      [--repeats 5] [--out FILE.jsonl]

The Inception's weights are random unless ``--inception-weights`` names the FID file (the time does not
depend on them: ``metrics_features.py`` does the same); the images are uniform noise of the extractor's shape
(Inception: 64x64x3, resized to 299x299 inside the function, as a GAN's samples are).
"""
from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from zoo import bench, memory
from zoo import step as step_lib
from zoo.metrics import features, inception


def extractor(name: str, weights: str | None, batch: int) -> features.FeatureExtractor:
  if name == "digits" or weights:
    return features.get_extractor(name, weights, batch)
  net = inception.FIDInceptionV3()
  variables = jax.jit(net.init)(jax.random.PRNGKey(0), np.zeros((1, 299, 299, 3), np.float32))
  return features.inception_extractor(variables, "random", batch)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--extractor", choices=features.EXTRACTORS, default="inception")
  ap.add_argument("--inception-weights", help="the FID weights file (default: random weights)")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", help="append the result as a JSON line here")
  args = ap.parse_args(argv)
  memory.ensure()     # as the `zoo` command does
  base = extractor(args.extractor, args.inception_weights, args.batch)
  shape = base.image_shape or (64, 64, 3)
  images = np.random.default_rng(0).uniform(size=(args.batch, *shape)).astype(np.float32)
  runners, programs, given = {}, [], step_lib.CPU_OPTIONS_FOR
  try:
    for name, on in (("defaults", False), ("options", True)):
      step_lib.CPU_OPTIONS_FOR = (given | {"features"}) if on else (given - {"features"})
      ex = dataclasses.replace(base)      # a fresh instance: its jitted function is built once per instance
      lowered = ex._features_fn.lower(ex.variables, images, True)
      programs.append(bench.program_hash(lowered, ex.compiler_options))
      runners[name] = bench.call_runner(lowered.compile(), ex.variables, images)
  finally:
    step_lib.CPU_OPTIONS_FOR = given
  if programs[0] == programs[1]:
    raise SystemExit("the extraction compiles to the same program with and without the options on this backend")
  rounds = bench.interleaved_rounds(runners, args.batch, 1, args.repeats, warmup=1)
  weights = (args.inception_weights or "random") if args.extractor == "inception" else "shipped"
  result = {"extractor": args.extractor, "weights": weights, "batch_size": args.batch, "image_shape": list(shape),
            "programs": programs, **bench.machine_info(), **bench.round_figures(rounds),
            "options_over_defaults": round(bench.within_round_ratio(rounds, "options", "defaults"), 3)}
  bench.report(result, args.out)
  return result


if __name__ == "__main__":
  main()
