"""The ``zoo`` command: train | eval | sample | bench | import | export | list. ``main()`` only parses flags."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from zoo.errors import ZooError

USAGE_EXAMPLES = """examples:
  zoo train --config experiments/kingma2013/vae.py:quick --workdir runs/vae_quick
  zoo train --config experiments/kingma2013/vae.py --workdir runs/vae --config.steps=1000
  zoo eval --workdir runs/vae --split test --k 5000
  zoo eval --workdir runs/vae --metrics fid,is,kid,pr,ppl --features digits --num-samples 10000
  zoo sample --workdir runs/vae --num 64 --out grid.png
  zoo bench --config experiments/benchmarks/vae_mlp.py --batch 128 --steps 300
  zoo import --from pytorch vae.pth --config experiments/kingma2013/vae.py --workdir runs/vae_imported
  zoo export --workdir runs/vae --to safetensors --out vae.safetensors
  zoo list
"""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="zoo", description="A JAX model zoo of generative models.",
                              epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cpu-devices", type=int, default=0, metavar="N",
                 help="on a CPU, split it into N XLA devices (one per core) that the shared step's data "
                      "parallelism keeps busy; batch sizes must divide by N. Give it before the command")
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train (or resume) an experiment config in a workdir")
  t.add_argument("--config", required=True, help="experiments/<paper>/<file>.py[:variant]")
  t.add_argument("--workdir", required=True)
  t.add_argument("--no-progress", action="store_true", help="no progress bar")
  e = sub.add_parser("eval", help="evaluate a run's newest checkpoint; prints one JSON object last")
  e.add_argument("--workdir", required=True)
  e.add_argument("--split", default=None, help="default: the config's eval_split")
  e.add_argument("--k", type=int, default=None, help="importance samples of a bound (e.g. IWAE-5000)")
  e.add_argument("--estimator", action="append", default=[], metavar="KEY=VALUE",
                 help="an option of the family's likelihood estimator (repeatable), e.g. temperatures=14500")
  e.add_argument("--examples", type=int, default=0, help="evaluate on the first N examples (0: all)")
  e.add_argument("--batch-size", type=int, default=None)
  _checkpoint_args(e)
  e.add_argument("--seed", type=int, default=0)
  e.add_argument("--metrics", default=None, metavar="LIST",
                 help="comma-separated: likelihood (the family's likelihood metrics, the default when "
                      "--metrics is not given) and sample-quality metrics fid,is,kid,pr,ppl")
  e.add_argument("--num-samples", type=int, default=10_000,
                 help="samples drawn for the sample-quality metrics (and latent pairs for ppl)")
  e.add_argument("--features", choices=("digits", "inception"), default="digits",
                 help="feature extractor of the sample-quality metrics: the zoo's digit classifier "
                      "(28x28 grey images, offline) or the FID Inception network")
  e.add_argument("--inception-weights", default=None, metavar="PATH",
                 help="the FID weights file pt_inception-2015-12-05-6726825d.pth (--features inception; "
                      "default: $ZOO_INCEPTION_WEIGHTS, else ~/.cache/zoo/, downloaded there when online)")
  e.add_argument("--sample-option", action="append", default=[], metavar="KEY=VALUE",
                 help="an option of the family's sampler for the sample-quality metrics (repeatable), "
                      "e.g. use_mean=false for a VAE's Bernoulli draws instead of its decoder means")
  e.add_argument("--ppl-interpolation", choices=("slerp", "lerp"), default=None,
                 help="latent interpolation of ppl (default: slerp; lerp for uniform latents)")
  e.add_argument("--reference-split", default=None,
                 help="the data split the samples are compared with (default: test when the data set "
                      "has one, else the config's eval_split)")
  s = sub.add_parser("sample", help="write a PNG grid of samples from a run")
  s.add_argument("--workdir", required=True)
  s.add_argument("--num", type=int, default=64)
  s.add_argument("--out", default="samples.png")
  s.add_argument("--seed", type=int, default=0)
  s.add_argument("--npy", default=None, help="also save the raw samples to this .npy file")
  _checkpoint_args(s)
  s.add_argument("--complete", default=None, metavar="MASK",
                 help="complete (inpaint) --num images of --split instead of sampling: MASK is the part "
                      "that is missing (bottom, top, right, left, center, random); the grid's rows are "
                      "the observed part, the completions and the originals")
  s.add_argument("--split", default=None, help="the split of the images to complete (default: test "
                 "when the data set has one, else the config's eval_split)")
  s.add_argument("--naive", action="store_true",
                 help="autoregressive families: the whole network per pixel instead of the fast sampler")
  b = sub.add_parser("bench", help="train-step throughput on the current devices, as one JSON line")
  b.add_argument("--config", required=True)
  b.add_argument("--batch", type=int, default=None, help="default: the config's batch_size")
  b.add_argument("--steps", type=int, default=300)
  b.add_argument("--warmup", type=int, default=10)
  b.add_argument("--stage", type=int, default=None,
                 help="a family trained in stages (the Progressive GAN): the step at this stage, 0 to the last "
                      "(default: the first)")
  i = sub.add_parser("import", help="a PyTorch or safetensors checkpoint -> a new run's Orbax checkpoint")
  i.add_argument("--from", dest="fmt", choices=("pytorch", "safetensors"), default=None,
                 help="the file's format (default: from its suffix)")
  i.add_argument("file", help="the .pth/.pt or .safetensors file")
  i.add_argument("--config", required=True, help="the experiment whose family and architecture it fits")
  i.add_argument("--workdir", required=True, help="a new run folder")
  layouts = "zoo (the zoo's PyTorch twin, the default), gan_zoo_dcgan, gan_zoo_pgan (pytorch_GAN_zoo's)"
  i.add_argument("--layout", default="zoo", help=f"the foreign layout: {layouts}")
  i.add_argument("--key", default=None, help="the state dict inside a training checkpoint, e.g. netG")
  x = sub.add_parser("export", help="a run's checkpoint -> a PyTorch or safetensors file")
  x.add_argument("--workdir", required=True)
  x.add_argument("--to", dest="fmt", choices=("pytorch", "safetensors"), default=None,
                 help="the format (default: from the suffix of --out)")
  x.add_argument("--out", required=True)
  x.add_argument("--layout", default="zoo", help=f"the foreign layout: {layouts}")
  x.add_argument("--step", type=int, default=None, help="this checkpoint instead of the newest")
  sub.add_parser("list", help="families and experiments")
  return p


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates ``--config.key=value`` (or ``--config.key value``) overrides from the other flags."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      if "=" in a:
        overrides.append(a[len("--config."):])
      elif i + 1 < len(argv):
        overrides.append(f"{a[len('--config.'):]}={argv[i + 1]}")
        i += 1
      else:
        raise ZooError(f"{a} needs a value: {a}=VALUE")
    else:
      rest.append(a)
    i += 1
  return rest, overrides


def _quiet_logs() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("zoo").setLevel(logging.INFO)
  for name in ("absl", "orbax", "jax", "tensorflow_datasets"):
    logging.getLogger(name).setLevel(logging.ERROR)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass


def _compilation_cache() -> None:
  """A persistent XLA compilation cache, so a resumed run, an eval or a sample does not recompile.

  ~/.cache/zoo/jax unless JAX_COMPILATION_CACHE_DIR names another; ZOO_COMPILATION_CACHE=0 turns it off.
  """
  if os.environ.get("ZOO_COMPILATION_CACHE") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", str(Path.home() / ".cache" / "zoo" / "jax"))


def cmd_train(args, overrides) -> int:
  from zoo import config as config_lib, sharding
  from zoo.train import train_and_evaluate
  cfg = config_lib.load(args.config, overrides)
  sharding.maybe_initialize_distributed()
  results = train_and_evaluate(cfg, args.workdir, progress=not args.no_progress)
  ev = results["eval"]
  print(f"trained {results['family']} ({results['experiment']}) for {results['steps']} steps in "
        f"{results['wall_time_s']:.1f}s; {', '.join(f'{s} {k}={v:.4f}' for s, m in ev.items() for k, v in m.items() if k != 'num_examples')}")
  print(f"checkpoints: {results['checkpoints']}")
  if results["samples"]:
    print(f"samples:     {results['samples']}")
  print(f"tensorboard: {results['tensorboard']}  (tensorboard --logdir {results['tensorboard']})")
  print(f"results:     {Path(results['workdir']) / 'results.json'}")
  return 0


def _checkpoint_args(parser) -> None:
  parser.add_argument("--step", type=int, default=None, help="a given checkpoint step instead of the newest")
  parser.add_argument("--best", action="store_true",
                      help="the checkpoint that was best on the validation metric instead of the newest")


def _checkpoint(args) -> dict:
  """``train.load``'s choice of checkpoint from --step and --best (neither: the newest)."""
  if args.best and args.step is not None:
    raise ZooError("--best and --step name a checkpoint each; give one")
  return {"step": args.step, "best": args.best}


def cmd_eval(args, overrides) -> int:
  from zoo import sharding
  from zoo.train import load
  if overrides:
    raise ZooError("eval takes no --config.* overrides; it uses the run's own config")
  sharding.maybe_initialize_distributed()
  checkpoint = _checkpoint(args)
  metric_names = ["likelihood"]
  if args.metrics is not None:
    metric_names = [m.strip().lower() for m in args.metrics.split(",") if m.strip()]
    if not metric_names:
      raise ZooError("--metrics names no metric; e.g. --metrics fid,is,kid,pr,ppl")
  sample_metrics = [m for m in metric_names if m != "likelihood"]
  sample_options = _sample_options(args.sample_option)
  if sample_metrics:
    from zoo.metrics.sample_quality import parse_metrics
    parse_metrics(sample_metrics)     # an unknown name fails before the checkpoint loads
    if args.num_samples < 1:
      raise ZooError(f"--num-samples must be >= 1, got {args.num_samples}")
  elif sample_options:
    raise ZooError("--sample-option is for the sample-quality metrics; name them with --metrics")
  loaded = load(args.workdir, **checkpoint)
  split = args.split or loaded.config.eval_split
  out = {"workdir": str(Path(args.workdir).absolute()), "family": loaded.family.name,
         "step": int(loaded.meta["step"])}
  if "likelihood" in metric_names:
    out.update(_likelihood_metrics(args, loaded, split))
  if sample_metrics:
    from zoo.metrics.sample_quality import evaluate_model
    out.update(evaluate_model(loaded, sample_metrics, num_samples=args.num_samples, features=args.features,
                              inception_weights=args.inception_weights,
                              reference_split=args.reference_split, seed=args.seed,
                              sample_options=sample_options, ppl_interpolation=args.ppl_interpolation))
  print(json.dumps(out))
  return 0


def _sample_options(items: list[str]) -> dict:
  """``--sample-option key=value`` items as a dict (true/false in any case are booleans)."""
  from zoo import config as config_lib
  options = {}
  for item in items:
    key, eq, raw = item.partition("=")
    if not eq or not key.isidentifier():
      raise ZooError(f"--sample-option {item!r} is not of the form key=value")
    low = raw.strip().lower()
    options[key] = low == "true" if low in ("true", "false") else config_lib._parse_value(raw)
  return options


def _likelihood_metrics(args, loaded, split: str) -> dict:
  """The family's own evaluation metrics (likelihood or bound, ...) over ``split``."""
  from zoo import config as config_lib, data as data_lib
  from zoo.train import evaluate
  cfg = loaded.config
  dataset = data_lib.load(cfg.data)
  estimator = {"k": args.k} if args.k else {}
  for item in args.estimator:
    key, eq, raw = item.partition("=")
    if not eq or not key.isidentifier():
      raise ZooError(f"--estimator {item!r} is not of the form key=value")
    estimator[key] = config_lib._parse_value(raw)
  if estimator and loaded.family.likelihood_kind is None:
    raise ZooError(f"--k: the {loaded.family.name} family has no likelihood estimator")
  batch_size = args.batch_size or int(cfg.eval_batch_size)
  if args.k and not args.batch_size:
    batch_size = max(len(loaded.run.mesh.devices.flat), min(batch_size, 100))
  metrics = evaluate(loaded.run, loaded.variables, dataset, split, batch_size=batch_size,
                     max_examples=args.examples, seed=args.seed, **estimator)
  return {"split": split, "likelihood": loaded.family.likelihood_kind, **estimator, **metrics}


def cmd_sample(args, overrides) -> int:
  import numpy as np
  from zoo import images
  from zoo.train import load
  if args.num < 1:
    raise ZooError(f"--num must be >= 1, got {args.num}")
  loaded = load(args.workdir, **_checkpoint(args))
  options = {"fast": False} if args.naive else {}
  if args.naive and not hasattr(loaded.family, "_sample_loop"):
    raise ZooError(f"--naive: the {loaded.family.name} family is not autoregressive")
  if args.complete:
    return _complete(args, loaded, options)
  imgs = loaded.sample(args.num, seed=args.seed, **options)
  path = images.save_png(imgs, args.out)
  if args.npy:
    np.save(args.npy, imgs)
  print(f"wrote {args.num} samples of {loaded.family.name} (step {loaded.meta['step']}) to {path}")
  return 0


def _complete(args, loaded, options) -> int:
  """``zoo sample --complete MASK``: observed part, completions and originals of --num test images."""
  import jax
  import numpy as np
  from zoo import data as data_lib, images
  from zoo.models._autoregressive import completion_mask
  dataset = data_lib.load(loaded.config.data)
  split = args.split or ("test" if "test" in dataset.splits else loaded.config.eval_split)
  batch = dataset.batch(split, 0, args.num, seed=args.seed)
  mask = completion_mask(args.complete, loaded.family.image_shape, args.num, seed=args.seed)
  family = loaded.family
  fn = jax.jit(lambda v, b, m, r: family.complete(v, b, m, r, **options))
  filled = np.asarray(fn(loaded.variables, batch, mask, jax.random.PRNGKey(args.seed)))
  shown = np.where(mask > 0.5, batch["image"], 0.5)          # missing pixels grey
  path = images.save_png(np.concatenate([shown, filled, batch["image"]]), args.out, ncols=args.num)
  if args.npy:
    np.save(args.npy, filled)
  exact = getattr(family, "completion_is_exact", None)
  how = ""
  if exact is not None:
    how = (" (the exact conditional: every observed pixel precedes every missing one in the model's order)"
           if exact(mask[0]) else " (conditioned on the observed pixels that precede each missing one "
           "in the model's order; later evidence is not used)")
  print(f"wrote {args.num} completions of {split} images with the {args.complete} missing by "
        f"{family.name} (step {loaded.meta['step']}) to {path}{how}")
  return 0


def cmd_bench(args, overrides) -> int:
  from zoo import config as config_lib
  from zoo.bench import benchmark
  cfg = config_lib.load(args.config, overrides)
  print(json.dumps(benchmark(cfg, args.batch, args.steps, args.warmup, args.stage)))
  return 0


def cmd_list(args, overrides) -> int:
  from zoo import config as config_lib, data as data_lib, registry
  print("families:")
  for name in registry.names():
    cls = registry.get(name)
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    print(f"  {name:14s} {cls.likelihood_kind or 'no likelihood':12s} {doc}")
  print("experiments:")
  for e in config_lib.list_experiments():
    print(f"  {e}")
  print("data sets (offline): " + ", ".join(data_lib.available()))
  import jax
  print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})")
  return 0


def cmd_import(args, overrides) -> int:
  from zoo.interop import import_checkpoint
  path = import_checkpoint(args.file, args.config, args.workdir, fmt=args.fmt, layout=args.layout,
                           key=args.key, overrides=overrides)
  print(f"imported {args.file} into {path}; sample with `zoo sample --workdir {args.workdir}`")
  return 0


def cmd_export(args, overrides) -> int:
  from zoo.interop import export_checkpoint
  path = export_checkpoint(args.workdir, args.out, fmt=args.fmt, layout=args.layout, step=args.step)
  print(f"wrote {path}")
  return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "bench": cmd_bench,
            "import": cmd_import, "export": cmd_export, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
  if argv is None:          # the command line, not a call from Python: may re-execute (zoo/memory.py)
    from zoo import memory
    memory.ensure()
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    if overrides and args.command not in ("train", "bench", "import"):
      raise ZooError(f"--config.* overrides are for train, bench and import, not {args.command}")
    _quiet_logs()
    if args.cpu_devices:
      from zoo.sharding import set_cpu_devices
      set_cpu_devices(args.cpu_devices)
    _compilation_cache()
    return COMMANDS[args.command](args, overrides)
  except ZooError as e:
    print(f"zoo: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("zoo: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
