"""Import and export of foreign checkpoints: PyTorch state dicts and safetensors, in declared layouts.

    zoo import --from pytorch twin.pth --config experiments/kingma2013/vae.py --workdir runs/vae_imported
    zoo export --workdir runs/vae_imported --to safetensors --out vae.safetensors

``import_checkpoint`` reads a file (:mod:`zoo.interop.formats`; untrusted input, parsed without running
any of it), maps its tensors onto the variables of the run the experiment config builds
(:mod:`zoo.interop.layout`, layouts in :mod:`zoo.interop.layouts`), and writes an ordinary Orbax
checkpoint (at ``Family.whole_model_step``: 0, or where a staged family's last stage stands) that
``zoo sample``, ``zoo eval`` and ``zoo train`` (fine-tuning, in that last stage) use like any
other. Variables the layout does not cover (optimizer state, persistent chains) start fresh.
``export_checkpoint`` is the reverse, from a run's newest (or given) checkpoint.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np

from zoo.errors import CheckpointError
from zoo.interop import formats
from zoo.interop.formats import read, write
from zoo.interop.layout import Layout, Rule, from_foreign, path_str, to_foreign
from zoo.interop.layouts import LAYOUTS, get_layout

__all__ = ["LAYOUTS", "Layout", "Rule", "export_checkpoint", "from_foreign", "get_layout", "import_checkpoint",
           "read", "to_foreign", "write"]


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _with_leaves(tree: Any, prefix: str, new: dict) -> Any:
  """``tree`` with the leaves whose path (``prefix/...``) is in ``new`` replaced, on the old leaf's devices."""
  def put(path, leaf):
    key = f"{prefix}/{path_str(path)}"
    return jax.device_put(new[key], leaf.sharding) if key in new else leaf
  return jax.tree_util.tree_map_with_path(put, tree)


def import_checkpoint(file: str | os.PathLike, config: str | ml_collections.ConfigDict,
                      workdir: str | os.PathLike, *, fmt: str | None = None, layout: str = "zoo",
                      key: str | None = None, overrides: Iterable[str] = ()) -> Path:
  """Writes the weights in ``file`` as the first checkpoint of a new run of ``config`` in ``workdir``, at
  the step where the model is whole (``Family.whole_model_step``: 0 for a family of one stage).

  Args:
    file: a .safetensors or PyTorch (.pt/.pth) file.
    config: an experiment spec ('path.py[:variant]') or a ConfigDict: it gives the family and its
      architecture, which the file must fit.
    workdir: a new run folder (one that holds checkpoints already is refused).
      The data set is read for one example's shape, unless the config's ``data.image_shape`` gives it
      as (H, W, C): then no data is needed (a pretrained CelebA-HQ generator imports offline).
    fmt: 'safetensors' or 'pytorch'; by default from the suffix.
    layout: the name of the foreign layout (``zoo.interop.LAYOUTS``).
    key: for a PyTorch training checkpoint holding several state dicts, which one (e.g. 'netG').
    overrides: 'key=value' config overrides, as on the command line.

  Returns:
    The checkpoint directory.
  """
  from zoo import config as config_lib, data as data_lib
  from zoo.checkpoint import Checkpointer
  from zoo.train import build_run

  file = Path(file).absolute()
  cfg = (config_lib.load(config, overrides) if isinstance(config, str)
         else config_lib.apply_overrides(ml_collections.ConfigDict(config.to_dict()), overrides))
  cfg = config_lib.with_defaults(cfg)
  fmt = formats.format_of(file, fmt)
  shape = cfg.data.get("image_shape")
  if shape is not None and len(shape) == 3:    # the config says the shape: no need for the data set
    image_shape = tuple(int(d) for d in shape)
    example = {"image": np.zeros((1, *image_shape), np.float32)}
  else:
    dataset = data_lib.load(cfg.data)
    example = dataset.batch(cfg.train_split, 0, 1, seed=int(cfg.seed))
    image_shape = dataset.image_shape
  run = build_run(cfg, example, image_shape)
  the_layout = get_layout(layout, run.family)
  tensors, _ = read(file, fmt, key, nested=the_layout.nested, inert=the_layout.inert)
  abstract = run.abstract_state
  # checked in full against the shapes before anything is written
  new = from_foreign(the_layout, tensors, {"params": abstract.params, **abstract.nontrainable},
                     source=str(file))
  workdir = Path(workdir).absolute()
  ckpt = Checkpointer(workdir, keep=int(cfg.keep_checkpoints))
  try:
    if ckpt.steps():
      raise CheckpointError(f"{workdir} holds checkpoints already; import into a new workdir")
    state = run.init_state()
    params = _with_leaves(state.params, "params", new)
    nontrainable = {c: _with_leaves(t, c, new) for c, t in state.nontrainable.items()}
    ema = {p: params[p] for p in state.ema}
    # an imported model is a whole model: its run stands at the last stage, where fine-tuning goes on
    step = run.family.whole_model_step
    state = state.replace(params=params, nontrainable=nontrainable, ema=ema,
                          step=jax.device_put(np.asarray(step, state.step.dtype), state.step.sharding))
    final_stage = len(run.family.stage_steps)
    meta = {**run.meta, "step": step, "data_position": 0, "seed": int(cfg.seed), "stage": final_stage,
            "elapsed_s": 0.0, "best": None,
            "imported": {"file": str(file), "sha256": _sha256(file), "format": fmt, "layout": layout,
                         "key": key or "", "tensors": len(new)}}
    config_json = config_lib.to_json(cfg)
    ckpt.save(step, state, meta, config_json)
    ckpt.wait()
  finally:
    ckpt.close()
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config_json)
  return ckpt.directory


def export_checkpoint(workdir: str | os.PathLike, out: str | os.PathLike, *, fmt: str | None = None,
                      layout: str = "zoo", step: int | None = None) -> Path:
  """Writes the variables of a run's checkpoint (its EMA params where the run keeps them: what it
  samples with) to ``out`` in ``layout``; returns the path."""
  from zoo.train import load
  loaded = load(workdir, step=step)
  the_layout = get_layout(layout, loaded.family)
  tensors = to_foreign(the_layout, loaded.variables)
  fmt = formats.format_of(out, fmt)
  metadata = {"zoo_family": loaded.family.name, "zoo_layout": layout, "zoo_step": str(loaded.meta["step"]),
              "zoo_stage": str(loaded.family.stage)}
  return write(out, tensors, fmt, metadata, nested=the_layout.nested)
