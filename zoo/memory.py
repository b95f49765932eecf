"""Where XLA:CPU's memory comes from: the process re-executes itself once with glibc asked for huge pages
(``zoo.hugepages``) and the large-block cache preloaded (``zoo.bigalloc``), where each can help.

Both are read only when a process starts, so ``ensure()`` re-executes the process (the same interpreter
and arguments, ``sys.orig_argv``) with ``GLIBC_TUNABLES`` and ``LD_PRELOAD`` set. In the re-executed
process the cache's path is taken out of ``LD_PRELOAD`` again, so the programs it starts run as they would
have. ``ZOO_HUGE_PAGES=0`` and ``ZOO_BIGALLOC=0`` turn either off. The `zoo` command and the benchmark
scripts call it first thing; a library user's own program runs as it is unless it calls it.
"""
from __future__ import annotations

import os
import sys

from zoo import bigalloc, hugepages

# set for the re-executed process (to the preloaded cache's path, or "-"): it never re-executes again
_MARK = "ZOO_MEMORY_REEXECUTED"


def plan(env: dict, thp_mode: str | None, glibc: tuple[int, int] | None, lib: str | None) -> dict:
  """The environment variables to re-execute with ({} where there is nothing to do)."""
  if env.get(_MARK) or glibc is None:
    return {}
  changes = {}
  tunables = hugepages.tunables(env, thp_mode, glibc)
  if tunables is not None:
    changes["GLIBC_TUNABLES"] = tunables
  preload = bigalloc.preload(env, lib)
  if preload is not None:
    changes["LD_PRELOAD"] = preload
  return changes


def _forget_preload(lib: str) -> None:
  """Takes ``lib`` out of this process's LD_PRELOAD (it is loaded already), so child processes do not
  inherit it."""
  parts = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if p and p != lib]
  if parts:
    os.environ["LD_PRELOAD"] = ":".join(parts)
  else:
    os.environ.pop("LD_PRELOAD", None)


def ensure() -> None:
  """Re-executes this process with huge pages and the large-block cache where they help; returns if it
  does not (or in the re-executed process)."""
  mark = os.environ.pop(_MARK, None)
  if mark:
    _forget_preload(mark)
    return
  argv = getattr(sys, "orig_argv", None) or []
  # a program read from stdin ('-') or typed at the prompt cannot be run again: those run on as they are
  if sys.platform != "linux" or len(argv) < 2 or argv[1] == "-":
    return
  env = dict(os.environ)
  glibc = hugepages._glibc_version()
  lib = bigalloc.build() if glibc is not None and bigalloc.wanted(env) else None
  changes = plan(env, hugepages._thp_mode(), glibc, None if lib is None else str(lib))
  if not changes:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    new_env = {**os.environ, **changes, _MARK: changes.get("LD_PRELOAD", "-")}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], new_env)
  except OSError:     # cannot re-execute (an embedded interpreter, say): run on as it is
    return
