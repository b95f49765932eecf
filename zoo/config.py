"""Experiment configs: Python files whose ``get_config(variant)`` returns an ml_collections ConfigDict.

``experiments/kingma2013/vae.py:quick`` loads ``experiments/kingma2013/vae.py`` and calls
``get_config("quick")``. Overrides ``model.latent_dim=10`` are typed by the value they replace, and an
unknown key fails with the nearest valid names. Config files are the user's own code (like big_vision's
and Flax's examples); data and checkpoints are the untrusted inputs, never configs.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from zoo.errors import ConfigError, nearest

# Every experiment config has these at its top level; the family's fields live under ``model``.
REQUIRED = ("family", "seed", "batch_size", "steps", "checkpoint_every", "eval_every", "data", "model")

# Defaults that a config may leave out.
DEFAULTS = dict(
    log_every=50,
    keep_checkpoints=3,
    eval_batch_size=500,
    eval_examples=0,           # 0: the whole evaluation split
    eval_split="valid",
    train_split="train",
    num_samples=64,            # the size of the PNG sample grid at each evaluation
    ema={},                    # {player: decay}
    optim={},
    num_devices=0,             # 0: every device; n: the first n (tests of 1 vs 8 devices)
    experiment="",             # the config file it came from, filled in by load()
    # Warm start: a fresh run copies players' params (and their non-trainable state, e.g. an RBM's data
    # statistics) from another run's checkpoint, {new player: source player}; step -1 is the newest.
    init_from=dict(workdir="", step=-1, players={}),
)


def repo_root() -> Path:
  return Path(__file__).resolve().parent.parent


def experiments_dir() -> Path:
  """Where experiment configs live: $ZOO_EXPERIMENTS, else experiments/ beside the package."""
  return Path(os.environ.get("ZOO_EXPERIMENTS", repo_root() / "experiments"))


def list_experiments() -> list[str]:
  """Every experiment config under experiments/, as paths relative to it (benchmarks included)."""
  root = experiments_dir()
  if not root.is_dir():
    return []
  return sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                if not p.name.startswith("_") and "def get_config" in p.read_text())


def sibling(config_file: str, name: str):
  """Imports ``name`` (e.g. '_rbm.py') from the folder of ``config_file``: a paper's configs share one.

  Config files are loaded by path, not as a package, so ``from . import x`` has no package to import
  from; each sibling is loaded under a name unique to its path, so two folders' helpers never clash.
  """
  file = Path(config_file).resolve().parent / name
  module_name = "zoo_experiment_" + "_".join(file.with_suffix("").parts[-3:])
  spec = importlib.util.spec_from_file_location(module_name, file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _resolve(path: str) -> Path:
  p = Path(path)
  for candidate in (p, experiments_dir() / p, experiments_dir() / (str(p) + ".py")):
    if candidate.is_file():
      return candidate
  known = list_experiments()
  raise ConfigError(f"no experiment config {path!r}{nearest(path.removeprefix('experiments/'), known)}"
                    f"; see `zoo list`")


def with_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills in DEFAULTS for the keys a config leaves out, and checks REQUIRED keys are there."""
  cfg = ml_collections.ConfigDict(cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg)
  missing = [k for k in REQUIRED if k not in cfg]
  if missing:
    raise ConfigError(f"config lacks required key(s): {', '.join(missing)}")
  for key, value in DEFAULTS.items():
    if key not in cfg:
      cfg[key] = value
  return cfg


def load(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads ``path/to/config.py[:variant]`` and applies ``key=value`` overrides.

  Args:
    spec: a config file path (absolute, relative to the cwd, or relative to experiments/), optionally
      followed by ``:variant`` which is passed to ``get_config``.
    overrides: strings ``dotted.key=value``; values parse as Python literals, else as strings.

  Returns:
    The config with defaults filled in.
  """
  path, _, variant = spec.partition(":")
  file = _resolve(path)
  module_spec = importlib.util.spec_from_file_location(f"zoo_experiment_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # the user's file: say where it broke in one line
    raise ConfigError(f"{file}: failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{file} has no get_config()")
  try:
    cfg = module.get_config(variant or None)
  except TypeError:
    if variant:
      raise ConfigError(f"{file}: get_config() takes no variant, but {variant!r} was given") from None
    cfg = module.get_config()
  except (KeyError, ValueError) as e:
    raise ConfigError(f"{file}: {e}") from e
  cfg = with_defaults(cfg)
  cfg.experiment = f"{path}{':' + variant if variant else ''}"
  return apply_overrides(cfg, overrides)


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies ``dotted.key=value`` strings; an unknown key names the nearest valid ones.

  Keys under ``model``, ``data``, ``optim`` and ``ema`` may be new (a family's field left at its
  default in the config file); the family and data layers check those names themselves.
  """
  open_sections = ("model", "data", "optim", "ema")
  for item in overrides:
    key, eq, raw = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not eq or not key:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
      if part not in node:
        if node is cfg or parts[0] not in open_sections:
          raise ConfigError(f"unknown config key {'.'.join(parts[:depth + 1])}"
                            f"{nearest(part, node.keys())}")
        node[part] = ml_collections.ConfigDict()
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):
        raise ConfigError(f"config key {'.'.join(parts[:depth + 1])} is not a section")
    leaf = parts[-1]
    value = _parse_value(raw)
    if leaf not in node:
      if node is cfg or parts[0] not in open_sections:
        raise ConfigError(f"unknown config key {key}{nearest(leaf, node.keys())}")
      node[leaf] = value
      continue
    old = node[leaf]
    if isinstance(old, bool) and not isinstance(value, bool):
      raise ConfigError(f"config key {key} must be bool; got {raw!r}")
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if isinstance(old, (tuple, list)) and isinstance(value, (tuple, list)):
      value = type(old)(value)
    if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
      value = ml_collections.ConfigDict(value)     # a section given whole, e.g. a {player: ...} map
    if old is not None and value is not None and not isinstance(value, type(old)):
      raise ConfigError(f"config key {key} must be {type(old).__name__}; got {raw!r}")
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f"config key {key}: {e}") from None
  return cfg


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
  return with_defaults(ml_collections.ConfigDict(json.loads(text)))
