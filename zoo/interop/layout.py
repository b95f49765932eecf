"""Layouts: how a foreign state dict names and shapes a family's variables, declared as data.

A :class:`Layout` is an ordered list of :class:`Rule` s. Every leaf of a run's variables has a path
``<collection>/<player>/<module>/.../<leaf>`` (``params/generator/deconv_0/kernel``,
``batch_stats/generator/bn_1/mean``); the first rule whose ``pattern`` matches the whole path (and whose
``ndim`` matches, when it gives one) names the foreign tensor (``name``, a ``re`` template over the
pattern's groups, with ``/`` turned into ``.``) and says how the array is laid out there:

========================  ======================================  ==================================
transform                 ours                                    foreign
========================  ======================================  ==================================
``none``                  as is                                   as is
``linear``                (in, out)                               (out, in), ``torch.nn.Linear``
``conv``                  (kh, kw, in, out) HWIO                  (out, in, kh, kw) OIHW, ``Conv2d``
``conv_transpose``        (kh, kw, in, out), Flax/lax, unflipped  (in, out, kh, kw), ``ConvTranspose2d``,
                                                                  spatially flipped
========================  ======================================  ==================================

and ``scale`` multiplies ours to give theirs (an equalized-learning-rate layout stores unscaled weights).
A leaf no rule matches is not part of the layout (it keeps its fresh value on import and is not
exported). Adding a layout is adding data: a tuple of rules in :mod:`zoo.interop.layouts`.

Import checks the whole file before it changes anything: every expected name present, no name left
over (but ``ignore``), every shape as the transform predicts, floating dtypes where ours are floating;
all problems are reported together, one line each, and nothing is imported partially.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import numpy as np

from zoo.errors import CheckpointError

__all__ = ["Layout", "Rule", "TRANSFORMS", "from_foreign", "leaf_paths", "to_foreign"]

TRANSFORMS = ("none", "linear", "conv", "conv_transpose")


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  name: str
  transform: str = "none"
  ndim: int | None = None
  scale: float = 1.0

  def __post_init__(self):
    if self.transform not in TRANSFORMS:
      raise ValueError(f"rule {self.pattern!r}: unknown transform {self.transform!r}")


@dataclasses.dataclass(frozen=True)
class Layout:
  """A named list of rules; ``ignore`` lists foreign names (regexes) that import skips."""
  name: str
  description: str
  rules: tuple[Rule, ...]
  ignore: tuple[str, ...] = ()

  def match(self, path: str, ndim: int) -> tuple[str, Rule] | None:
    for rule in self.rules:
      if rule.ndim is not None and rule.ndim != ndim:
        continue
      m = re.fullmatch(rule.pattern, path)
      if m:
        return m.expand(rule.name).replace("/", "."), rule
    return None

  def ignored(self, name: str) -> bool:
    return any(re.fullmatch(p, name) for p in self.ignore)


def _ours_to_theirs(a: np.ndarray, rule: Rule) -> np.ndarray:
  if rule.scale != 1.0:
    a = a * np.asarray(rule.scale, a.dtype)
  if rule.transform == "linear":
    return a.T
  if rule.transform == "conv":
    return a.transpose(3, 2, 0, 1)
  if rule.transform == "conv_transpose":
    return a[::-1, ::-1].transpose(2, 3, 0, 1)
  return a


def _theirs_to_ours(a: np.ndarray, rule: Rule) -> np.ndarray:
  if rule.transform == "linear":
    a = a.T
  elif rule.transform == "conv":
    a = a.transpose(2, 3, 1, 0)
  elif rule.transform == "conv_transpose":
    a = a.transpose(2, 3, 0, 1)[::-1, ::-1]
  if rule.scale != 1.0:
    a = a / np.asarray(rule.scale, a.dtype)
  return a


def _their_shape(shape: tuple[int, ...], rule: Rule) -> tuple[int, ...]:
  return _ours_to_theirs(np.empty(shape, np.uint8), dataclasses.replace(rule, scale=1.0)).shape


def path_str(path) -> str:
  """A pytree key path as 'a/b/c', the form rules match against."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def leaf_paths(variables: Mapping[str, Any]) -> dict[str, Any]:
  """{'collection/player/.../leaf': leaf} over a variables dict."""
  return {path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]}


def _mapping(layout: Layout, variables: Mapping[str, Any]) -> dict[str, tuple[str, Rule, Any]]:
  """{foreign name: (our path, rule, our leaf)} for the leaves the layout covers."""
  out: dict[str, tuple[str, Rule, Any]] = {}
  for path, leaf in leaf_paths(variables).items():
    hit = layout.match(path, len(np.shape(leaf)))
    if hit is None:
      continue
    name, rule = hit
    if name in out:
      raise CheckpointError(f"layout {layout.name!r} names both {out[name][0]} and {path} {name!r}")
    out[name] = (path, rule, leaf)
  return out


def to_foreign(layout: Layout, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The foreign tensors of ``variables`` under ``layout`` (NumPy, contiguous)."""
  return {name: np.asarray(_ours_to_theirs(np.asarray(jax.device_get(leaf)), rule), order="C")
          for name, (_, rule, leaf) in _mapping(layout, variables).items()}


def _listed(items: list[str], limit: int = 8) -> str:
  return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def from_foreign(layout: Layout, tensors: Mapping[str, np.ndarray], template: Mapping[str, Any],
                 source: str = "the file") -> dict[str, np.ndarray]:
  """{our path: array in our layout and dtype} for every leaf of ``template`` the layout covers.

  ``template``: variables (or ShapeDtypeStructs) of the target run. Raises CheckpointError listing the
  missing, unexpected, wrongly shaped and wrongly typed tensors, all at once.
  """
  mapping = _mapping(layout, template)
  if not mapping:
    raise CheckpointError(f"layout {layout.name!r} covers none of this family's variables")
  missing = sorted(n for n in mapping if n not in tensors)
  unexpected = sorted(n for n in tensors if n not in mapping and not layout.ignored(n))
  wrong_shape, wrong_dtype = [], []
  for name, (path, rule, leaf) in mapping.items():
    if name not in tensors:
      continue
    a = tensors[name]
    want = _their_shape(tuple(np.shape(leaf)), rule)
    if tuple(a.shape) != want:
      wrong_shape.append(f"{name} {tuple(a.shape)} (expected {want})")
    ours = np.dtype(leaf.dtype)
    if np.issubdtype(ours, np.floating) != (np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"):
      wrong_dtype.append(f"{name} {a.dtype} (expected {'floating' if np.issubdtype(ours, np.floating) else ours})")
  problems = []
  if missing:
    problems.append(f"missing {len(missing)}: {_listed(missing)}")
  if unexpected:
    problems.append(f"unexpected {len(unexpected)}: {_listed(unexpected)}")
  if wrong_shape:
    problems.append(f"wrong shape {len(wrong_shape)}: {_listed(wrong_shape)}")
  if wrong_dtype:
    problems.append(f"wrong dtype {len(wrong_dtype)}: {_listed(wrong_dtype)}")
  if problems:
    raise CheckpointError(f"{source} does not fit layout {layout.name!r}; nothing was imported: "
                          + "; ".join(problems))
  out = {}
  for name, (path, rule, leaf) in mapping.items():
    a = np.asarray(tensors[name])
    work = np.float64 if np.issubdtype(np.dtype(leaf.dtype), np.floating) else leaf.dtype
    out[path] = np.asarray(_theirs_to_ours(a.astype(work), rule)).astype(leaf.dtype, order="C")
  return out
