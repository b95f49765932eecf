"""Config -> optax chain and learning-rate schedule, one per player.

``config.optim.<player>`` holds that player's optimizer; a player with no section gets Adam at 1e-3.
Weight decay is a transformation in the chain (decoupled), never a term hidden in a loss.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import optax

from zoo.errors import ConfigError, nearest

DEFAULT = dict(
    name="adam",          # adam | adamw | sgd | rmsprop | adamax | adagrad
    lr=1e-3,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    momentum=0.0,         # sgd and rmsprop
    nesterov=False,
    decay=0.9,            # rmsprop's moving-average decay
    initial_accumulator=0.1,  # adagrad's starting sum of squared gradients
    weight_decay=0.0,     # decoupled weight decay
    decay_mask="all",     # all | matrices: decay every param, or only those of 2+ dimensions (not biases)
    clip_norm=0.0,        # global-norm gradient clipping; 0 for none
    schedule="constant",  # constant | cosine | warmup_cosine | exponential | linear
    warmup_steps=0,
    decay_steps=0,        # 0: the run's total steps
    decay_rate=0.1,       # exponential: lr * decay_rate ** (step / decay_steps)
    end_lr=0.0,
)

_OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adamax", "adagrad")
_SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential", "linear")


def options(section: Mapping[str, Any] | None, player: str) -> dict[str, Any]:
  """The player's optimizer options with defaults filled in; unknown keys fail with the nearest."""
  opts = dict(DEFAULT)
  for key, value in dict(section or {}).items():
    if key not in DEFAULT:
      raise ConfigError(f"unknown config key optim.{player}.{key}{nearest(key, DEFAULT)}")
    opts[key] = value
  if opts["name"] not in _OPTIMIZERS:
    raise ConfigError(f"optim.{player}.name: unknown optimizer {opts['name']!r}"
                      f"{nearest(opts['name'], _OPTIMIZERS)}; known: {', '.join(_OPTIMIZERS)}")
  if opts["schedule"] not in _SCHEDULES:
    raise ConfigError(f"optim.{player}.schedule: unknown schedule {opts['schedule']!r}"
                      f"{nearest(opts['schedule'], _SCHEDULES)}; known: {', '.join(_SCHEDULES)}")
  return opts


def schedule(opts: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  lr = float(opts["lr"])
  steps = int(opts["decay_steps"]) or max(int(total_steps), 1)
  kind = opts["schedule"]
  if kind == "constant":
    sched = optax.constant_schedule(lr)
  elif kind == "cosine":
    sched = optax.cosine_decay_schedule(lr, steps, alpha=float(opts["end_lr"]) / lr if lr else 0.0)
  elif kind == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, int(opts["warmup_steps"]), steps,
                                              end_value=float(opts["end_lr"]))
  elif kind == "exponential":
    sched = optax.exponential_decay(lr, steps, float(opts["decay_rate"]))
  else:
    sched = optax.linear_schedule(lr, float(opts["end_lr"]), steps)
  warmup = int(opts["warmup_steps"])
  if warmup:
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
  return sched


def build(section: Mapping[str, Any] | None, player: str, total_steps: int
          ) -> optax.GradientTransformation:
  """The optax chain of one player from its config section."""
  o = options(section, player)
  lr = schedule(o, total_steps)
  parts = []
  if float(o["clip_norm"]) > 0:
    parts.append(optax.clip_by_global_norm(float(o["clip_norm"])))
  name = o["name"]
  if name in ("adam", "adamw"):
    parts.append(optax.scale_by_adam(b1=float(o["b1"]), b2=float(o["b2"]), eps=float(o["eps"])))
  elif name == "adamax":
    parts.append(optax.scale_by_adamax(b1=float(o["b1"]), b2=float(o["b2"]), eps=float(o["eps"])))
  elif name == "adagrad":     # lr / sqrt(initial + sum of squared gradients + eps)
    parts.append(optax.scale_by_rss(initial_accumulator_value=float(o["initial_accumulator"]),
                                    eps=float(o["eps"])))
  elif name == "rmsprop":
    parts.append(optax.scale_by_rms(decay=float(o["decay"]), eps=float(o["eps"])))
    if float(o["momentum"]):
      parts.append(optax.trace(decay=float(o["momentum"]), nesterov=bool(o["nesterov"])))
  elif float(o["momentum"]):  # sgd
    parts.append(optax.trace(decay=float(o["momentum"]), nesterov=bool(o["nesterov"])))
  if float(o["weight_decay"]):
    mask = None
    if o["decay_mask"] == "matrices":
      mask = lambda params: jax.tree_util.tree_map(lambda x: x.ndim >= 2, params)
    elif o["decay_mask"] != "all":
      raise ConfigError(f"optim.{player}.decay_mask must be 'all' or 'matrices', not {o['decay_mask']!r}")
    parts.append(optax.add_decayed_weights(float(o["weight_decay"]), mask=mask))
  parts.append(optax.scale_by_learning_rate(lr))
  return optax.chain(*parts)


def build_all(optim_config: Mapping[str, Any] | None, players: Sequence[str], total_steps: int
              ) -> dict[str, optax.GradientTransformation]:
  """One optax chain per player name; a section for a player the family does not have is an error."""
  optim_config = dict(optim_config or {})
  names = list(players)
  for key in optim_config:
    if key not in names:
      raise ConfigError(f"optim.{key}: this family has no player {key!r}{nearest(key, names)}; "
                        f"its players: {', '.join(names)}")
  return {p: build(optim_config.get(p), p, total_steps) for p in names}
