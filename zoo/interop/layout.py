"""Layouts: how a foreign state dict names and shapes a family's variables, declared as data.

A :class:`Layout` is an ordered list of :class:`Rule` s. Every leaf of a run's variables has a path
``<collection>/<player>/<module>/.../<leaf>`` (``params/generator/deconv_0/kernel``,
``batch_stats/generator/bn_1/mean``); the first rule whose ``pattern`` matches the whole path (and whose
``ndim`` matches, when it gives one) names the foreign tensor (``name``, a ``re`` template over the
pattern's groups, with ``/`` turned into ``.``) and says how the array is laid out there:

==================  ======================================  =========================================
transform           ours                                    foreign
==================  ======================================  =========================================
``none``            as is                                   as is
``linear``          (in, out)                               (out, in), ``torch.nn.Linear``
``conv``            (kh, kw, in, out) HWIO                  (out, in, kh, kw) OIHW, ``Conv2d``
``conv_transpose``  (kh, kw, in, out), Flax/lax, unflipped  (in, out, kh, kw), ``ConvTranspose2d``,
                                                            spatially flipped
``linear_chw_out``  Dense (in, H*W*C), output reshaped      (C*H*W, in): ``Linear`` whose output is
                    to (H, W, C)                            viewed as (C, H, W)
``vector_chw``      (H*W*C,), the bias of the above         (C*H*W,)
``project``         Dense (in, H*W*C), output reshaped      (in, C, H, W): a ``ConvTranspose2d`` with an
                    to (H, W, C)                            HxW kernel on a 1x1 input
``conv_head``       Dense (H*W*C, out) on an (H, W, C)      (out, C, H, W): a ``Conv2d`` with an HxW
                    map flattened                           kernel, no padding, on the HxW map
``zero``            a leaf the foreign model lacks          nothing: imported as zeros; export refuses
                                                            a nonzero value (it would be lost)
==================  ======================================  =========================================

``hw`` gives (H, W) for the transforms that reshape. ``scale`` multiplies ours to give theirs (an
equalized-learning-rate layout that stores its weights with another gain); ``eq_bias_of`` marks the bias
of an equalized-learning-rate layer in a layout that scales the bias with the weight at run time
(pytorch_GAN_zoo's ``ConstrainedLayer``: ``(W x + b) * sqrt(2 / fan_in)``, where the zoo, like Karras et
al.'s code, adds an unscaled bias): it names that layer's kernel beside the bias in our module
(``kernel``, ``conv/kernel``), whose fan-in gives the factor: theirs = ours * scale / sqrt(2 / fan_in).
A leaf no rule matches is not part of the layout (it keeps its fresh value on import and is not
exported). Adding a layout is adding data: a tuple of rules in :mod:`zoo.interop.layouts` (or a
function of the family giving one, for a layout whose names count layers, such as "the last one").

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

__all__ = ["Layout", "Rule", "TRANSFORMS", "foreign_shapes", "from_foreign", "leaf_paths", "to_foreign"]


def _hwc(a: np.ndarray, hw, axis: int) -> np.ndarray:
  """``a`` with its axis ``axis`` (of size H*W*C, HWC order) split into (H, W, C)."""
  h, w = hw
  return a.reshape(a.shape[:axis] + (h, w, -1) + a.shape[axis + 1:])


# ours -> theirs, each a pure rearrangement of the entries (so the reverse is its inverse permutation).
TRANSFORMS = {
    "none": lambda a, hw: a,
    "linear": lambda a, hw: a.T,
    "conv": lambda a, hw: a.transpose(3, 2, 0, 1),
    "conv_transpose": lambda a, hw: a[::-1, ::-1].transpose(2, 3, 0, 1),
    "linear_chw_out": lambda a, hw: _hwc(a, hw, 1).transpose(3, 1, 2, 0).reshape(-1, a.shape[0]),
    "vector_chw": lambda a, hw: _hwc(a, hw, 0).transpose(2, 0, 1).reshape(-1),
    "project": lambda a, hw: _hwc(a, hw, 1).transpose(0, 3, 1, 2),
    "conv_head": lambda a, hw: _hwc(a, hw, 0).transpose(3, 2, 0, 1),
    "zero": lambda a, hw: a,
}
_NEEDS_HW = ("linear_chw_out", "vector_chw", "project", "conv_head")


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str
  name: str = ""
  transform: str = "none"
  ndim: int | None = None
  scale: float = 1.0
  hw: tuple[int, int] | None = None
  eq_bias_of: str | None = None

  def __post_init__(self):
    if self.transform not in TRANSFORMS:
      raise ValueError(f"rule {self.pattern!r}: unknown transform {self.transform!r}")
    if (self.transform in _NEEDS_HW) != (self.hw is not None):
      raise ValueError(f"rule {self.pattern!r}: hw is needed by, and only by, {', '.join(_NEEDS_HW)}")
    if (self.transform == "zero") == bool(self.name):
      raise ValueError(f"rule {self.pattern!r}: a 'zero' rule names no foreign tensor; the others must")


@dataclasses.dataclass(frozen=True)
class Layout:
  """A named list of rules.

  Attributes:
    ignore: foreign names (regexes) that import skips.
    nested: for a training checkpoint that holds several state dicts under these keys (pytorch_GAN_zoo's
      ``{"netG": ..., "netD": ..., "avgG": ..., "config": ...}``), the keys the layout reads; their
      tensors are named ``<key>.<name>``, and a PyTorch export nests them back the same way.
    inert: fully qualified class names that such a file may hold beside the tensors (a pickled config
      object): read as inert records of their fields, never constructed or run.
  """
  name: str
  description: str
  rules: tuple[Rule, ...]
  ignore: tuple[str, ...] = ()
  nested: tuple[str, ...] = ()
  inert: tuple[str, ...] = ()

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


def _their_shape(shape: tuple[int, ...], rule: Rule) -> tuple[int, ...]:
  return TRANSFORMS[rule.transform](np.empty(shape, np.uint8), rule.hw).shape


def _ours_to_theirs(a: np.ndarray, rule: Rule, scale: float) -> np.ndarray:
  if scale != 1.0:     # in float64, as import divides, so that a round trip is off by 1 ulp at most
    a = (a.astype(np.float64) * scale).astype(a.dtype)
  return TRANSFORMS[rule.transform](a, rule.hw)


def _theirs_to_ours(a: np.ndarray, rule: Rule, scale: float, shape: tuple[int, ...]) -> np.ndarray:
  index = TRANSFORMS[rule.transform](np.arange(int(np.prod(shape))).reshape(shape), rule.hw)
  ours = np.empty(int(np.prod(shape)), a.dtype)
  ours[np.asarray(index).reshape(-1)] = a.reshape(-1)
  ours = ours.reshape(shape)
  return ours / np.asarray(scale, a.dtype) if scale != 1.0 else ours


def path_str(path) -> str:
  """A pytree key path as 'a/b/c', the form rules match against."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def leaf_paths(variables: Mapping[str, Any]) -> dict[str, Any]:
  """{'collection/player/.../leaf': leaf} over a variables dict."""
  return {path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]}


@dataclasses.dataclass(frozen=True)
class _Entry:
  path: str          # ours
  rule: Rule
  leaf: Any          # ours (an array or a ShapeDtypeStruct)
  scale: float       # ours * scale = theirs


def _scale(rule: Rule, path: str, paths: Mapping[str, Any], layout: Layout) -> float:
  if rule.eq_bias_of is None:
    return float(rule.scale)
  kernel = f"{path.rpartition('/')[0]}/{rule.eq_bias_of}"
  if kernel not in paths:
    raise CheckpointError(f"layout {layout.name!r}: {path} is the bias of {kernel}, which this "
                          f"model does not have")
  fan_in = int(np.prod(np.shape(paths[kernel])[:-1]))
  return float(rule.scale) / float(np.sqrt(2.0 / fan_in))


def _mapping(layout: Layout, variables: Mapping[str, Any]) -> tuple[dict[str, _Entry], list[_Entry]]:
  """({foreign name: entry} for the leaves the layout names, [entries of its 'zero' rules])."""
  paths = leaf_paths(variables)
  named: dict[str, _Entry] = {}
  zeros: list[_Entry] = []
  for path, leaf in paths.items():
    hit = layout.match(path, len(np.shape(leaf)))
    if hit is None:
      continue
    name, rule = hit
    entry = _Entry(path, rule, leaf, _scale(rule, path, paths, layout))
    if rule.transform == "zero":
      zeros.append(entry)
      continue
    if name in named:
      raise CheckpointError(f"layout {layout.name!r} names both {named[name].path} and {path} {name!r}")
    named[name] = entry
  return named, zeros


def to_foreign(layout: Layout, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The foreign tensors of ``variables`` under ``layout`` (NumPy, contiguous).

  Raises CheckpointError when a leaf the layout has no place for (a 'zero' rule) is not zero.
  """
  named, zeros = _mapping(layout, variables)
  lost = [e.path for e in zeros if np.any(np.asarray(jax.device_get(e.leaf)) != 0)]
  if lost:
    raise CheckpointError(f"layout {layout.name!r} has no place for {_listed(lost)}, which this model "
                          f"holds nonzero; exporting would change the model")
  return {name: np.asarray(_ours_to_theirs(np.asarray(jax.device_get(e.leaf)), e.rule, e.scale), order="C")
          for name, e in named.items()}


def foreign_shapes(layout: Layout, template: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """{foreign name: foreign shape} of the tensors ``layout`` expects for ``template``'s variables."""
  named, _ = _mapping(layout, template)
  return {name: _their_shape(tuple(np.shape(e.leaf)), e.rule) for name, e in named.items()}


def _listed(items: list[str], limit: int = 8) -> str:
  return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def from_foreign(layout: Layout, tensors: Mapping[str, np.ndarray], template: Mapping[str, Any],
                 source: str = "the file") -> dict[str, np.ndarray]:
  """{our path: array in our layout and dtype} for every leaf of ``template`` the layout covers.

  ``template``: variables (or ShapeDtypeStructs) of the target run. Raises CheckpointError listing the
  missing, unexpected, wrongly shaped and wrongly typed tensors, all at once.
  """
  mapping, zeros = _mapping(layout, template)
  if not mapping:
    raise CheckpointError(f"layout {layout.name!r} covers none of this family's variables")
  missing = sorted(n for n in mapping if n not in tensors)
  unexpected = sorted(n for n in tensors if n not in mapping and not layout.ignored(n))
  wrong_shape, wrong_dtype = [], []
  for name, e in mapping.items():
    if name not in tensors:
      continue
    a, leaf = tensors[name], e.leaf
    want = _their_shape(tuple(np.shape(leaf)), e.rule)
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
  out = {e.path: np.zeros(np.shape(e.leaf), e.leaf.dtype) for e in zeros}
  for name, e in mapping.items():
    dtype = np.dtype(e.leaf.dtype)
    work = np.float64 if np.issubdtype(dtype, np.floating) else dtype
    ours = _theirs_to_ours(np.asarray(tensors[name]).astype(work), e.rule, e.scale, tuple(np.shape(e.leaf)))
    out[e.path] = np.asarray(ours).astype(dtype, order="C")
  return out
