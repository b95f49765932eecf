"""Orbax checkpoints: one format for every family.

A checkpoint is a step folder under ``<workdir>/checkpoints`` with three items:
``state`` (the whole TrainState: params, optimizer moments, rng, non-trainable collections, EMA),
``meta`` (JSON: family, model hyper-parameters, image shape, step, data position) and
``config`` (JSON: the run's whole config). Orbax writes each save into a temporary folder and renames it
when complete, so a crash mid-save never leaves a checkpoint that loads wrong. The last ``keep`` and the
best by a chosen metric are kept. Restoring reads into the current mesh's layout, so a checkpoint saved
on 8 devices restores on 1 and the reverse.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from zoo.errors import CheckpointError

log = logging.getLogger("zoo")


def _path_name(path) -> str:
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(k.name)
    else:
      parts.append(str(getattr(k, "key", k)))
  return ".".join(parts)


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{dotted name: (shape, dtype)} of every array leaf of a tree of arrays or ShapeDtypeStructs."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): (tuple(x.shape), str(x.dtype)) for p, x in leaves}


def _stored_shapes(metadata_tree) -> dict[str, tuple[tuple[int, ...], str]]:
  out = {}

  def visit(node):
    if isinstance(node, Mapping):
      for v in node.values():
        visit(v)
    elif isinstance(node, (list, tuple)):
      for v in node:
        visit(v)
    elif node is not None and hasattr(node, "shape"):
      out[node.name] = (tuple(node.shape), str(node.dtype))

  visit(metadata_tree)
  return out


def describe_mismatch(expected: Mapping[str, tuple], stored: Mapping[str, tuple], limit: int = 4) -> str:
  """One line naming the missing, unexpected and wrongly shaped arrays ('' when they agree)."""
  missing = sorted(set(expected) - set(stored))
  extra = sorted(set(stored) - set(expected))
  wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
  bits = []
  if missing:
    bits.append(f"missing {', '.join(missing[:limit])}{' ...' if len(missing) > limit else ''}")
  if extra:
    bits.append(f"unexpected {', '.join(extra[:limit])}{' ...' if len(extra) > limit else ''}")
  if wrong:
    bits.append("wrong shape " + ", ".join(
        f"{k} {stored[k][0]}{stored[k][1]} != {expected[k][0]}{expected[k][1]}" for k in wrong[:limit])
        + (" ..." if len(wrong) > limit else ""))
  return "; ".join(bits)


def _on_host(state: Any) -> Any:
  """In a single process, the state's arrays as NumPy arrays (restore puts them back on the devices).

  Orbax saves a device array replica by replica, compiling a slice for each shape on each device: the
  first save of a small state replicated over 8 CPU devices took 7 s, 240 compilations (0.4 s as
  NumPy). Across processes the arrays stay as they are, so each process writes its own shards.
  """
  return state if jax.process_count() > 1 else jax.device_get(state)


class Checkpointer:
  """Saves and restores TrainStates under ``<workdir>/checkpoints`` with Orbax's CheckpointManager.

  Args:
    workdir: the run's folder.
    keep: how many of the newest checkpoints to keep.
    best_metric: the metric (in the ``metrics`` passed to ``save``) by which the best is kept; '' none.
    best_mode: 'min' or 'max'.
  """

  def __init__(self, workdir: str | Path, keep: int = 3, best_metric: str = "", best_mode: str = "min",
               read_only: bool = False):
    self.directory = Path(workdir).absolute() / "checkpoints"
    self.best_metric = best_metric
    keep_policies = [policies.LatestN(n=max(int(keep), 1))]
    metric_of = (lambda m: m[best_metric]) if best_metric else None
    if best_metric:
      keep_policies.append(policies.BestN(
          get_metric_fn=metric_of, reverse=(best_mode == "min"), n=1, keep_checkpoints_without_metrics=False))
    # The preservation policy alone decides what is deleted; ``best_fn`` is given as well because Orbax
    # writes a checkpoint's metrics to disk only when it is set. Without them a resumed run (a new
    # manager, reading the folder) saw its earlier best checkpoint as one without metrics and deleted it.
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep_policies),
        best_fn=metric_of, best_mode=best_mode,
        create=not read_only, read_only=read_only, enable_async_checkpointing=True)
    try:
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler(), "config": ocp.JsonCheckpointHandler()})
    except (OSError, PermissionError) as e:
      raise CheckpointError(f"cannot write checkpoints under {self.directory}: {e}") from None

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: Mapping[str, Any], config_json: str,
           metrics: Mapping[str, float] | None = None) -> None:
    """Writes checkpoint ``step`` (asynchronously; :meth:`wait` blocks until it is on disk)."""
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(_on_host(state)),
        meta=ocp.args.JsonSave(dict(meta)),
        config=ocp.args.JsonSave(json.loads(config_json))), metrics=metrics, force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()

  def read_meta(self, step: int) -> tuple[dict, dict]:
    """(meta, config) JSON of checkpoint ``step``."""
    r = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                                           config=ocp.args.JsonRestore()))
    return dict(r.meta), dict(r.config)

  def _check_compatible(self, step: int, abstract_state: Any, meta: Mapping[str, Any],
                        stored: Mapping[str, tuple], expected: Mapping[str, Any]) -> None:
    if meta.get("family") != expected.get("family"):
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} holds family {meta.get('family')!r} "
          f"(model {json.dumps(meta.get('model'), sort_keys=True)}), but the config asks for family "
          f"{expected.get('family')!r} (model {json.dumps(expected.get('model'), sort_keys=True)})")
    mismatch = describe_mismatch(_shapes(abstract_state), stored)
    if mismatch:
      raise CheckpointError(
          f"checkpoint {self.directory}/{step} of family {meta.get('family')!r} "
          f"(model {json.dumps(meta.get('model'), sort_keys=True)}) does not fit the config's "
          f"{expected.get('family')!r} (model {json.dumps(expected.get('model'), sort_keys=True)}): "
          f"{mismatch}")

  def restore(self, abstract_state: Any, expected_meta: Mapping[str, Any],
              step: int | None = None) -> tuple[Any, dict] | None:
    """Restores the newest checkpoint that loads, into ``abstract_state``'s shapes and shardings.

    Args:
      abstract_state: a TrainState of ``jax.ShapeDtypeStruct`` with the shardings to restore onto.
      expected_meta: at least ``family`` and ``model`` of the config; a checkpoint of another family or
        shape raises CheckpointError naming both.
      step: a given step instead of the newest.

    Returns:
      (state, meta), or None when the folder holds no checkpoint.
    """
    steps = [step] if step is not None else self.steps()[::-1]
    failures = []
    for s in steps:
      try:
        meta, _ = self.read_meta(s)
        stored = _stored_shapes(self.manager.item_metadata(s)["state"].tree)
      except Exception as e:  # an unreadable checkpoint: report it and fall back to an older one
        failures.append((s, e))
        continue
      self._check_compatible(s, abstract_state, meta, stored, expected_meta)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:
        failures.append((s, e))
        continue
      for bad, err in failures:
        self._quarantine(bad, err)
      return restored.state, meta
    if failures:
      bad, err = failures[0]
      raise CheckpointError(f"no checkpoint under {self.directory} loads; step {bad}: "
                            f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return None

  def _quarantine(self, step: int, err: Exception) -> None:
    """Moves an unloadable checkpoint aside, so the run can go on and save that step again."""
    target = self.directory.parent / "corrupt_checkpoints" / str(step)
    log.warning("checkpoint %s/%d does not load (%s: %s); moved to %s, using an older one",
                self.directory, step, type(err).__name__, str(err).splitlines()[0][:200], target)
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      if target.exists():
        shutil.rmtree(target)
      shutil.move(str(self.directory / str(step)), str(target))
    self.manager.reload()


def abstract_like(state: Any, sharding) -> Any:
  """ShapeDtypeStructs of ``state``'s leaves, all placed with ``sharding``."""
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
