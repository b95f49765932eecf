"""The one exception type users see: a clear, single-line message, never an internal traceback.

The CLI prints ``str(err)`` of a :class:`ZooError` and exits non-zero; the Python API raises it as is.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class ZooError(Exception):
  """A user-facing error whose message is one line that says what is wrong and how to fix it."""


class ConfigError(ZooError):
  """Unknown family, experiment or config key; a value of the wrong type."""


class DataError(ZooError):
  """Missing data set, wrong shape or dtype of data."""


class CheckpointError(ZooError):
  """A checkpoint of another family or shape, or one that does not load."""


class TrainingError(ZooError):
  """A run that cannot go on: a non-finite loss, an unwritable workdir."""


def nearest(name: str, candidates: Iterable[str], n: int = 3) -> str:
  """Returns ' (did you mean: a, b?)' for the closest candidates, or '' when none is close."""
  close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
  return f" (did you mean: {', '.join(close)}?)" if close else ""
