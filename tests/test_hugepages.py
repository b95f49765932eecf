"""zoo/hugepages.py and zoo/memory.py: when the CLI re-executes itself with glibc asked for transparent huge
pages (and the large-block cache preloaded, tests/test_bigalloc.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zoo import hugepages, memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("env,thp,glibc,expected", [
    ({}, "madvise", (2, 36), hugepages.TUNABLE),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "madvise", (2, 35),
     "glibc.malloc.trim_threshold=1:" + hugepages.TUNABLE),              # the user's tunables are kept
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), None),   # the user's choice stands
    ({"ZOO_HUGE_PAGES": "0"}, "madvise", (2, 36), None),
    ({}, "always", (2, 36), None),          # every process has them already
    ({}, "never", (2, 36), None),           # none can have them
    ({}, None, (2, 36), None),              # no THP in this kernel
    ({}, "madvise", (2, 31), None),         # glibc before the tunable
    ({}, "madvise", None, None),            # not glibc (musl, say)
])
def test_the_tunable_is_added_only_where_it_can_help(env, thp, glibc, expected):
  assert hugepages.tunables(env, thp, glibc) == expected


def _child(code: str, **env) -> subprocess.CompletedProcess:
  drop = ("GLIBC_TUNABLES", "ZOO_HUGE_PAGES", "LD_PRELOAD", "ZOO_BIGALLOC")
  base = {k: v for k, v in os.environ.items() if k not in drop}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                        env={**base, **env}, timeout=120)


def test_ensure_re_executes_once_with_the_tunable_where_the_machine_allows_it(tmp_path):
  code = ("import os, sys; from zoo import memory; print('start', flush=True); memory.ensure(); "
          "print('tunables', os.environ.get('GLIBC_TUNABLES', ''))")
  out = _child(code, ZOO_BIGALLOC="0")      # the cache alone: tests/test_bigalloc.py
  assert out.returncode == 0, out.stderr
  wanted = hugepages.tunables({}, hugepages._thp_mode(), hugepages._glibc_version())
  if wanted is None:        # this machine gains nothing: the process runs on as it was, once
    assert out.stdout.splitlines() == ["start", "tunables "]
  else:                     # the process ran twice: once before the re-execution, once with the tunable
    assert out.stdout.splitlines() == ["start", "start", f"tunables {hugepages.TUNABLE}"]
  off = _child(code, ZOO_HUGE_PAGES="0", ZOO_BIGALLOC="0")
  assert off.stdout.splitlines() == ["start", "tunables "]
  # a program read from stdin could not be read again: it is never re-executed
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ZOO_HUGE_PAGES", "LD_PRELOAD")}
  piped = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, cwd=REPO,
                         env=base, timeout=120)
  assert piped.returncode == 0 and piped.stdout.splitlines() == ["start", "tunables "], piped.stderr


@pytest.mark.parametrize("env,thp,glibc,lib,expected", [
    ({}, "madvise", (2, 36), "/c/b.so", {"GLIBC_TUNABLES": hugepages.TUNABLE, "LD_PRELOAD": "/c/b.so"}),
    ({}, "always", (2, 36), "/c/b.so", {"LD_PRELOAD": "/c/b.so"}),
    ({}, "madvise", (2, 36), None, {"GLIBC_TUNABLES": hugepages.TUNABLE}),      # the cache not built
    ({"LD_PRELOAD": "/u/jemalloc.so"}, "madvise", (2, 36), "/c/b.so",           # the user's allocator wins
     {"GLIBC_TUNABLES": hugepages.TUNABLE}),
    ({"ZOO_BIGALLOC": "0"}, "always", (2, 36), "/c/b.so", {}),
    ({}, "madvise", None, "/c/b.so", {}),                                      # not glibc
    ({memory._MARK: "/c/b.so"}, "madvise", (2, 36), "/c/b.so", {}),            # re-executed already
])
def test_the_re_execution_sets_what_can_help(env, thp, glibc, lib, expected):
  assert memory.plan(env, thp, glibc, lib) == expected


def test_the_command_line_runs_through_the_re_execution(tmp_path):
  out = subprocess.run([sys.executable, "-m", "zoo", "list"], capture_output=True, text=True, cwd=REPO,
                       timeout=300, env={**os.environ, "ZOO_CACHE_DIR": str(tmp_path)})
  assert out.returncode == 0 and "vae" in out.stdout
