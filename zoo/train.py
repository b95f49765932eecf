"""``train_and_evaluate(config, workdir)``: the one trainer every family plugs into.

Data, the shared step, checkpoints, logs, a progress bar, periodic evaluation, PNG sample grids and a
results JSON. Resumes when the workdir holds a checkpoint; a resumed run ends bit-identical to an
unbroken one (the data position and the run's key are in the checkpoint, and step ``s`` draws its
randomness from ``fold_in(key, s)``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zoo import config as config_lib
from zoo import data as data_lib
from zoo import bigalloc, events, images, optim, registry, sharding, step as step_lib
from zoo.checkpoint import Checkpointer, abstract_like
from zoo.errors import CheckpointError, ConfigError, TrainingError, ZooError
from zoo.family import Family
from zoo.state import TrainState

log = logging.getLogger("zoo")

SAMPLE_SEED_SALT = 0x5A3D  # the fixed latents of the sample grids: the same at every evaluation


@dataclasses.dataclass
class Run:
  """Everything built from a config: the family, its optimizers, the mesh and the shapes of the state.

  Attributes:
    config: the run's config (defaults filled in).
    family: the Family instance.
    txs: {player: optax chain}.
    mesh: the device mesh.
    example: a batch of one example (numpy zeros) with the data's feature shapes.
    abstract_state: TrainState of ShapeDtypeStructs, replicated over the mesh.
  """
  config: ml_collections.ConfigDict
  family: Family
  txs: dict
  mesh: jax.sharding.Mesh
  example: dict
  abstract_state: Any

  @property
  def meta(self) -> dict:
    """What a checkpoint records about the run, and what a restore checks against."""
    return {"family": self.config.family, "model": self.config.model.to_dict(),
            "image_shape": list(self.family.image_shape),
            "example": {k: [list(v.shape[1:]), str(v.dtype)] for k, v in self.example.items()}}

  def at_step(self, step: int) -> Family:
    """The family at the training stage of ``step``."""
    return self.family.at_stage(self.family.stage_at(int(step)))

  def init_state(self, seed: int | None = None) -> TrainState:
    """A fresh state in its replicated layout, from the config's seed or ``seed``.

    In one process it is computed once, on one device, and copied to the others: compiled with a
    replicated output, every device would compute all of it (8 times the work on a CPU split into 8
    devices). Across processes each computes it in place (the same values: the same seed).
    """
    seed = jnp.asarray(int(self.config.seed) if seed is None else int(seed), jnp.uint32)
    if jax.process_count() == 1:
      return jax.device_put(self._init_fns[0](seed), sharding.replicated(self.mesh))
    return self._init_fns[1](seed)

  @functools.cached_property
  def _init_fns(self):
    # Jitted once per Run, the seed an argument: a new function per call (or per seed) would trace and
    # compile the init again (seconds for the MLP GAN on CPU; the conformance suite initialises each
    # family a dozen times). [0]: on the default device; [1]: replicated over the mesh.
    fn = lambda seed: step_lib.init_state(self.family, self.txs, seed, self.example,
                                          self.config.ema.to_dict())
    return jax.jit(fn), jax.jit(fn, out_shardings=sharding.replicated(self.mesh))


def example_from_spec(spec: Mapping[str, Any]) -> dict:
  return {k: np.zeros([1, *shape], dtype) for k, (shape, dtype) in spec.items()}


def build_run(config: ml_collections.ConfigDict, example: Mapping[str, np.ndarray],
              image_shape) -> Run:
  """Builds the Run for ``config`` on the current devices, for data like ``example``."""
  mesh = sharding.make_mesh(int(config.num_devices))
  family = registry.build(config.family, config.model.to_dict(), image_shape)
  txs = optim.build_all(config.optim.to_dict(), family.all_players, int(config.steps))
  ema = config.ema.to_dict()
  players = list(family.all_players)
  for p, decay in ema.items():
    if p not in players:
      raise ConfigError(f"ema.{p}: this family has no player {p!r}; its players: {', '.join(players)}")
    if not 0.0 < float(decay) < 1.0:
      raise ConfigError(f"ema.{p} must be a decay in (0, 1), got {decay}")
  example = {k: np.asarray(v)[:1] for k, v in example.items() if k != "mask"}
  try:
    shapes = jax.eval_shape(lambda: step_lib.init_state(family, txs, int(config.seed), example, ema))
  except ZooError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"family {config.family!r} cannot be built for data of shape "
                      f"{ {k: v.shape[1:] for k, v in example.items()} }: {str(e).splitlines()[0]}") from e
  return Run(config, family, txs, mesh, example, abstract_like(shapes, sharding.replicated(mesh)))


def _check_workdir(workdir: Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".zoo_write_test.{os.getpid()}.{jax.process_index()}"  # one per process
    probe.write_text("ok")
    probe.unlink(missing_ok=True)
  except OSError as e:
    raise TrainingError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _first_nonfinite(history: list[tuple[int, dict]]) -> tuple[int, str] | None:
  for step, metrics in history:
    for name, value in metrics.items():
      if not np.all(np.isfinite(value)):
        return step, name
  return None


class _Logger:
  """TensorBoard scalars and a JSON-lines log of every metric, written by process 0 only."""

  def __init__(self, workdir: Path):
    self.enabled = jax.process_index() == 0
    self.writer = None
    if self.enabled:
      self.writer = events.EventWriter(workdir / "tensorboard")
      self.jsonl = open(workdir / "metrics.jsonl", "a")

  def scalars(self, step: int, prefix: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    self.writer.add_scalars(step, {f"{prefix}/{k}": float(v) for k, v in metrics.items()})
    self.jsonl.write(json.dumps({"step": step, "split": prefix,
                                 **{k: float(v) for k, v in metrics.items()}}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.writer.close()
      self.jsonl.close()


def evaluate(run: Run, variables: Mapping[str, Any], dataset, split: str, *, batch_size: int,
             max_examples: int = 0, seed: int = 0, family: Family | None = None,
             **estimator) -> dict[str, float]:
  """Averages the family's per-example ``eval_metrics`` over ``split`` (or its first examples).

  Args:
    run: the Run.
    variables: the family's variables (replicated).
    dataset: a zoo.data Dataset.
    split: the split to evaluate on.
    batch_size: the global evaluation batch size.
    max_examples: evaluate on the first this many examples (0: all).
    seed: the seed of the evaluation's randomness (e.g. the posterior samples of a bound).
    family: the family at the stage to evaluate (default: the run's).
    **estimator: options for the family's likelihood estimator (e.g. ``k=5000``).

  Returns:
    {metric: mean over the examples}, plus ``num_examples``.
  """
  sharding.check_batch_size(batch_size, run.mesh, "eval_batch_size")
  family = family or run.family
  fn = step_lib.jit_eval_step(family, run.mesh, **estimator)
  totals: dict[str, float] = {}
  count = 0.0
  context_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  context_fn = step_lib.jit_eval_context(family, run.mesh, **estimator)
  variables = {**variables, **context_fn(variables, context_rng)}
  batches = dataset.eval_batches(split, batch_size, process_index=jax.process_index(),
                                 process_count=jax.process_count(), max_examples=max_examples or None)
  for i, local in enumerate(batches):
    sums, n = fn(variables, sharding.global_batch(local, run.mesh), jax.random.fold_in(rng, i))
    sums, n = sharding.to_host((sums, n))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    count += float(n)
  if not count:
    raise ZooError(f"evaluation split {split!r} yielded no examples")
  out = {k: v / count for k, v in totals.items()}
  out["num_examples"] = int(count)
  return out


def sample_images(run: Run, variables, num: int, seed: int, family: Family | None = None,
                  **conditioning) -> np.ndarray:
  """``num`` samples (num, H, W, C) in [0, 1] as numpy, from a fixed key for ``seed``."""
  fn = step_lib.jit_sample(family or run.family, run.mesh, num, **conditioning)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), SAMPLE_SEED_SALT)
  return np.asarray(sharding.to_host(fn(variables, key)))


def _write_samples(run: Run, variables, workdir: Path, step: int, family: Family) -> Path | None:
  n = int(run.config.num_samples)
  if not n:
    return None
  imgs = sample_images(run, variables, n, int(run.config.seed), family)
  if jax.process_index() != 0:
    return None
  path = images.save_png(imgs, workdir / "samples" / f"step_{step:07d}.png")
  images.save_png(imgs, workdir / "samples.png")
  return path


def _device_info() -> dict:
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
          "process_count": jax.process_count(), "bigalloc": bigalloc.active()}


def warm_start(state: TrainState, init_from: ml_collections.ConfigDict) -> TrainState:
  """``state`` with players' params and per-player non-trainable state copied from another run.

  ``init_from.players`` maps a player of this run to one of the source run (``{"layer0": "model"}``
  starts a DBN's first layer from a trained RBM); every non-trainable collection keyed by players (an
  RBM's data statistics, persistent chains) follows its player, and so does the player's EMA. Shapes
  must agree leaf by leaf; a mismatch fails naming the player and the leaves, before any step is taken.
  Optimizer states stay fresh. Checkpoints of the new run record where it started from.
  """
  players = dict(init_from.players.to_dict() if hasattr(init_from.players, "to_dict") else init_from.players)
  if not players:
    raise ConfigError("init_from.workdir is set but init_from.players is empty; name the players to "
                      "copy, e.g. --config.init_from.players=\"{'layer0': 'model'}\"")
  step = int(init_from.step)
  source = load(init_from.workdir, step=None if step < 0 else step)
  src = source.state

  def copy(dst_tree, src_tree, what):
    want = jax.tree_util.tree_structure(dst_tree)
    got = jax.tree_util.tree_structure(src_tree)
    if want != got:
      raise ConfigError(f"init_from: {what} of {init_from.workdir} has another structure than this run's")
    bad = [f"{jax.tree_util.keystr(p)} {np.shape(a)} vs {np.shape(b)}" for (p, a), b in
           zip(jax.tree_util.tree_flatten_with_path(dst_tree)[0], jax.tree_util.tree_leaves(src_tree))
           if np.shape(a) != np.shape(b)]
    if bad:
      raise ConfigError(f"init_from: {what} does not fit this run: " + "; ".join(bad[:4]))
    return jax.tree_util.tree_map(lambda a, b: jax.device_put(jnp.asarray(b, a.dtype), a.sharding),
                                  dst_tree, src_tree)

  params, nontrainable, ema = dict(state.params), dict(state.nontrainable), dict(state.ema)
  for dst, src_player in players.items():
    if dst not in params:
      raise ConfigError(f"init_from.players: this run has no player {dst!r}; its players: "
                        f"{', '.join(params)}")
    if src_player not in src.params:
      raise ConfigError(f"init_from.players: {init_from.workdir} has no player {src_player!r}; its "
                        f"players: {', '.join(src.params)}")
    params[dst] = copy(params[dst], src.params[src_player], f"player {src_player!r}")
    for name, coll in nontrainable.items():
      mine, theirs = _player_part(coll, dst, params), _player_part(src.nontrainable.get(name), src_player,
                                                                    src.params)
      if mine is None or theirs is None:
        continue
      try:
        part = copy(mine, theirs, f"{name} of player {src_player!r}")
      except ConfigError as e:    # e.g. another number of persistent chains: those start afresh
        log.warning("%s; keeping this run's fresh %s for %s", e, name, dst)
        continue
      nontrainable[name] = {**coll, dst: part} if _keyed(coll, params) else part
    if dst in ema:
      ema[dst] = params[dst]
  log.info("warm start from %s (step %d): %s", init_from.workdir, int(source.meta["step"]),
           ", ".join(f"{d} <- {s}" for d, s in players.items()))
  return state.replace(params=params, nontrainable=nontrainable, ema=ema)


def _keyed(coll, params) -> bool:
  return isinstance(coll, Mapping) and bool(coll) and set(coll) <= set(params)


def _player_part(coll, player: str, params):
  """A player's part of a non-trainable collection: ``coll[player]`` where the collection is keyed by
  players (a DBN's per-layer statistics), the whole collection where the run has that one player."""
  if coll is None:
    return None
  if _keyed(coll, params):
    return coll.get(player)
  return coll if list(params) == [player] else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       progress: bool = True) -> dict:
  """Trains ``config`` in ``workdir``, resuming from its newest loadable checkpoint.

  Args:
    config: an experiment config (see ``zoo.config``).
    workdir: the run's folder: checkpoints/, tensorboard/, samples/, metrics.jsonl, results.json.
    progress: show a progress bar.

  Returns:
    The results dict that is also written to ``workdir/results.json``.
  """
  t_start = time.time()
  config = config_lib.with_defaults(config)
  workdir = Path(workdir).absolute()
  _check_workdir(workdir)
  dataset = data_lib.load(config.data)
  for split in (config.train_split, config.eval_split):
    dataset.num_examples(split)  # an unknown split fails here, naming the available ones
  batch_size = int(config.batch_size)
  example = dataset.batch(config.train_split, 0, jax.process_count(), seed=int(config.seed))
  run = build_run(config, example, dataset.image_shape)
  sharding.check_batch_size(batch_size, run.mesh)
  sharding.check_batch_size(int(config.eval_batch_size), run.mesh, "eval_batch_size")
  if batch_size % jax.process_count():
    raise ConfigError(f"batch_size={batch_size} must divide over {jax.process_count()} processes")

  family_name = config.family
  ckpt = Checkpointer(workdir, keep=int(config.keep_checkpoints), best_metric=f"eval/{run.family.eval_metric}")
  restored = ckpt.restore(run.abstract_state, run.meta)
  prior_elapsed = 0.0
  best = None
  provenance = {}      # where an imported run's weights came from, kept in every later checkpoint
  if restored is None:
    state = run.init_state()
    if config.init_from.workdir:
      state = warm_start(state, config.init_from)
    data_position = 0
  else:
    state, meta = restored
    data_position = int(meta["data_position"])
    prior_elapsed = float(meta.get("elapsed_s", 0.0))
    best = meta.get("best")
    provenance = {"imported": meta["imported"]} if "imported" in meta else {}
    log.info("resuming %s from step %d in %s", family_name, int(meta["step"]), ckpt.directory)
  start_step = int(jax.device_get(state.step))
  total_steps = int(config.steps)
  config_json = config_lib.to_json(config)

  def stage_step(family: Family):
    return step_lib.jit_train_step(family, run.txs, run.mesh, config.ema.to_dict())

  family = run.at_step(start_step)
  train_step = stage_step(family)
  logger = _Logger(workdir)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config_json)

  log_every = max(int(config.log_every), 1)
  eval_every = int(config.eval_every)
  ckpt_every = int(config.checkpoint_every)
  history: list[tuple[int, dict]] = []   # device metrics not yet checked for finiteness
  last_train: dict[str, float] = {}
  last_eval: dict[str, float] = {}
  last_saved = start_step if restored is not None else None
  samples_path = None
  examples_per_s = None

  def check_finite():
    """Fetches the pending metrics; stops the run at the first non-finite one."""
    nonlocal history, last_train
    fetched = [(s, sharding.to_host(m)) for s, m in history]
    history = []
    bad = _first_nonfinite(fetched)
    if bad is not None:
      ckpt.wait()
      where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
               if last_saved is not None else "no checkpoint was written")
      raise TrainingError(f"{bad[1]} became non-finite at step {bad[0]}; stopped, {where}")
    if fetched:
      last_train = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
    return fetched

  def save(step: int, position: int):
    nonlocal last_saved
    check_finite()
    # The metrics of step s come from the params before its update; the update itself can make them
    # non-finite, so the params are checked too: no checkpoint ever holds a NaN.
    if not bool(sharding.to_host(_all_finite(state.params))):
      ckpt.wait()
      where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
               if last_saved is not None else "no checkpoint was written")
      raise TrainingError(f"params became non-finite at step {step} (in its update); stopped, {where}")
    meta = {**run.meta, "step": step, "data_position": position, "seed": int(config.seed),
            "stage": family.stage, "elapsed_s": prior_elapsed + time.time() - t_start, "best": best,
            **provenance}
    metrics = {f"eval/{k}": v for k, v in last_eval.items()} if last_eval_step == step else None
    ckpt.save(step, state, meta, config_json, metrics=metrics)
    last_saved = step

  it = dataset.iterate(config.train_split, batch_size, seed=int(config.seed), start=data_position,
                       process_index=jax.process_index(), process_count=jax.process_count())
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm import tqdm
    bar = tqdm(total=total_steps, initial=start_step, desc=f"{family_name}", unit="step",
               dynamic_ncols=True, leave=True)
  last_eval_step = None
  t_window, steps_window = time.time(), 0
  compile_s = None
  try:
    for step in range(start_step, total_steps):
      if family.stage_at(step) != family.stage:   # a new stage: the step is traced once more
        family = family.at_stage(family.stage_at(step))
        train_step = stage_step(family)
        log.info("step %d: stage %d", step, family.stage)
      batch = sharding.global_batch(next(it), run.mesh)
      t0 = time.time()
      state, metrics = train_step(state, batch)
      if compile_s is None:
        jax.block_until_ready(metrics)
        compile_s = time.time() - t0
        t_window, steps_window = time.time(), 0
      else:
        steps_window += 1
      done = step + 1
      history.append((done, metrics))
      data_position += 1
      if done % log_every == 0 or done == total_steps:
        check_finite()
        elapsed = time.time() - t_window
        if steps_window and elapsed > 0:
          examples_per_s = steps_window * batch_size / elapsed
        logger.scalars(done, "train", {**last_train, **({"examples_per_s": examples_per_s}
                                                        if examples_per_s else {})})
        if bar is not None:
          bar.set_postfix({"loss": f"{last_train.get('loss', float('nan')):.4g}",
                           "steps/s": f"{(steps_window / elapsed) if elapsed and steps_window else 0:.1f}"})
        t_window, steps_window = time.time(), 0
      if (eval_every and done % eval_every == 0) or done == total_steps:
        check_finite()
        variables = state.variables(use_ema=bool(config.ema.to_dict()))
        last_eval = evaluate(run, variables, dataset, config.eval_split,
                             batch_size=int(config.eval_batch_size),
                             max_examples=int(config.eval_examples), seed=int(config.seed), family=family)
        last_eval_step = done
        value = last_eval.get(run.family.eval_metric)
        if value is not None and (best is None or value < best["value"]):
          best = {"step": done, "metric": f"{config.eval_split}/{run.family.eval_metric}", "value": value}
        logger.scalars(done, config.eval_split, last_eval)
        samples_path = _write_samples(run, variables, workdir, done, family) or samples_path
        line = (f"step {done}: {config.eval_split} "
                + " ".join(f"{k}={v:.4f}" for k, v in last_eval.items() if k != "num_examples"))
        if bar is not None:
          bar.write(line)
        elif jax.process_index() == 0:
          log.info(line)
        t_window, steps_window = time.time(), 0
      if (ckpt_every and done % ckpt_every == 0) or done == total_steps:
        save(done, data_position)
      if bar is not None:
        bar.update(1)
    ckpt.wait()
  finally:
    if bar is not None:
      bar.close()
    logger.close()
    close = getattr(it, "close", None)
    if close:
      close()
    ckpt.wait()
    ckpt.close()

  if not last_eval and start_step >= total_steps:   # a finished run asked to train again
    variables = state.variables(use_ema=bool(config.ema.to_dict()))
    last_eval = evaluate(run, variables, dataset, config.eval_split, batch_size=int(config.eval_batch_size),
                         max_examples=int(config.eval_examples), seed=int(config.seed), family=family)
  results = {
      "family": family_name,
      "experiment": config.experiment,
      "workdir": str(workdir),
      "steps": total_steps,
      "examples_seen": total_steps * batch_size,
      "epochs": total_steps * batch_size / dataset.num_examples(config.train_split),
      "wall_time_s": prior_elapsed + time.time() - t_start,
      "compile_s": compile_s,
      "examples_per_s": examples_per_s,
      **_device_info(),
      "train": last_train,
      "eval": {config.eval_split: last_eval},
      "best": best,
      "checkpoints": str(ckpt.directory),
      "samples": str(workdir / "samples.png") if samples_path or (workdir / "samples.png").exists() else None,
      "tensorboard": str(workdir / "tensorboard"),
  }
  if jax.process_index() == 0:
    (workdir / "results.json").write_text(json.dumps(results, indent=2, default=float))
  return results


@dataclasses.dataclass
class Loaded:
  """A trained model from a workdir: ``zoo.load(workdir)``.

  Attributes:
    family: the Family instance.
    config: the run's config.
    variables: the family's variables (EMA params for players that keep an EMA).
    state: the whole TrainState.
    meta: the checkpoint's metadata (step, data position, ...).
    run: the Run (mesh, optimizers, shapes).
  """
  family: Family
  config: ml_collections.ConfigDict
  variables: dict
  state: TrainState
  meta: dict
  run: Run

  def sample(self, num: int, seed: int = 0, **conditioning) -> np.ndarray:
    """``num`` samples, (num, H, W, C) numpy in [0, 1]."""
    return sample_images(self.run, self.variables, num, seed, **conditioning)


def _read_meta(ckpt: Checkpointer, workdir: Path, step: int | None, steps: list[int]) -> tuple[dict, dict]:
  """(meta, config) of checkpoint ``step``, or of the newest of ``steps`` (those on disk) whose metadata
  reads."""
  if not steps:
    raise CheckpointError(f"no checkpoint under {workdir}/checkpoints; train first with "
                          f"`zoo train --config ... --workdir {workdir}`")
  for s in ([step] if step is not None else steps[::-1]):
    try:
      return ckpt.read_meta(s)
    except Exception as e:  # fall back to an older checkpoint, as restore does
      log.warning("checkpoint %s/%d does not load: %s", ckpt.directory, s, str(e).splitlines()[0])
  raise CheckpointError(f"no checkpoint under {workdir}/checkpoints loads")


def _best_step(meta: dict, steps: list[int], workdir: Path) -> int:
  """The step of the checkpoint best on the validation metric, as the newest checkpoint's metadata names it."""
  best = meta.get("best")
  if not best:
    raise CheckpointError(f"{workdir}: no evaluation has chosen a best checkpoint yet")
  step = int(best["step"])
  if step not in steps:
    raise CheckpointError(f"{workdir}: the best checkpoint, step {step} ({best['metric']} {best['value']:.4f}), "
                          f"is no longer on disk (kept: {steps}); name one with --step")
  return step


def load(workdir: str | os.PathLike, step: int | None = None, num_devices: int = 0, best: bool = False) -> Loaded:
  """Loads the newest loadable checkpoint of the run in ``workdir``, the given ``step``, or with ``best``
  the one that was best on the validation metric (``step`` must then be None)."""
  workdir = Path(workdir).absolute()
  if best and step is not None:
    raise CheckpointError("the best checkpoint and a given step name a checkpoint each; give one")
  ckpt = Checkpointer(workdir, read_only=True)
  try:
    steps = ckpt.steps()
    if best:
      step = _best_step(_read_meta(ckpt, workdir, None, steps)[0], steps, workdir)
    meta, config_dict = _read_meta(ckpt, workdir, step, steps)
    config = config_lib.with_defaults(ml_collections.ConfigDict(config_dict))
    config.num_devices = num_devices
    run = build_run(config, example_from_spec(meta["example"]), meta["image_shape"])
    state, meta = ckpt.restore(run.abstract_state, run.meta, step=step)
  finally:     # also on a failed load: an Orbax manager left open fails later, in its event loop
    ckpt.close()
  # the stage the checkpoint was written in (at a stage boundary, the one just finished)
  family = run.family.at_stage(int(meta.get("stage", run.family.stage_at(int(meta["step"])))))
  run = dataclasses.replace(run, family=family)
  return Loaded(family, config, state.variables(use_ema=bool(config.ema.to_dict())), state, meta, run)
