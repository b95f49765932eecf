"""Families by name: every module under ``zoo/models/`` is imported and registers its families.

There is no hand-kept list: adding a family is adding a module that decorates its class with
``@register("name")``.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from typing import Any, Mapping

from zoo.errors import ConfigError, nearest
from zoo.family import Family

_FAMILIES: dict[str, type[Family]] = {}
_DISCOVERED = False


def register(name: str):
  """Class decorator that registers a Family subclass under ``name``."""
  def wrap(cls):
    if name in _FAMILIES and _FAMILIES[name] is not cls:
      raise ValueError(f"family {name!r} is registered twice: {_FAMILIES[name]} and {cls}")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
      raise TypeError(f"family {name!r} must be a frozen dataclass")
    cls.name = name
    _FAMILIES[name] = cls
    return cls
  return wrap


def _discover() -> None:
  global _DISCOVERED
  if _DISCOVERED:
    return
  import zoo.models
  for info in pkgutil.iter_modules(zoo.models.__path__):
    if not info.name.startswith("_"):
      importlib.import_module(f"zoo.models.{info.name}")
  _DISCOVERED = True


def names() -> list[str]:
  """Every registered family name, sorted."""
  _discover()
  return sorted(_FAMILIES)


def get(name: str) -> type[Family]:
  """The Family class registered under ``name``; a ConfigError naming the nearest ones otherwise."""
  _discover()
  if name not in _FAMILIES:
    raise ConfigError(f"unknown family {name!r}{nearest(name, _FAMILIES)}; "
                      f"known: {', '.join(sorted(_FAMILIES))}")
  return _FAMILIES[name]


def fields(cls: type[Family]) -> dict[str, dataclasses.Field]:
  """The hyper-parameter fields of a family (everything but image_shape and stage)."""
  return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in ("image_shape", "stage")}


def _coerce(value: Any, annotation: Any) -> Any:
  """Config values come as lists (JSON, ConfigDict); frozen dataclasses need tuples to stay hashable."""
  if isinstance(value, list):
    return tuple(_coerce(v, None) for v in value)
  if isinstance(value, Mapping):
    return tuple(sorted((k, _coerce(v, None)) for k, v in value.items()))
  return value


def build(name: str, model_config: Mapping[str, Any] | None, image_shape) -> Family:
  """Builds the family ``name`` from a config's ``model`` section for data of ``image_shape``."""
  cls = get(name)
  known = fields(cls)
  kwargs = {}
  hints = typing.get_type_hints(cls)
  for key, value in dict(model_config or {}).items():
    if key not in known:
      raise ConfigError(f"unknown config key model.{key} for family {name!r}"
                        f"{nearest(key, known)}; known: {', '.join(sorted(known))}")
    kwargs[key] = _coerce(value, hints.get(key))
  family = cls(image_shape=tuple(int(d) for d in image_shape), **kwargs)
  check = getattr(family, "validate", None)
  if check is not None:
    check()
  return family
