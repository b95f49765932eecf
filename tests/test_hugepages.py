"""zoo/hugepages.py: when the CLI re-executes itself with glibc asked for transparent huge pages."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zoo import hugepages

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
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ZOO_HUGE_PAGES")}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                        env={**base, **env}, timeout=120)


def test_ensure_re_executes_once_with_the_tunable_where_the_machine_allows_it():
  code = ("import os, sys; from zoo import hugepages; print('start', flush=True); hugepages.ensure(); "
          "print('tunables', os.environ.get('GLIBC_TUNABLES', ''))")
  out = _child(code)
  assert out.returncode == 0, out.stderr
  wanted = hugepages.tunables({}, hugepages._thp_mode(), hugepages._glibc_version())
  if wanted is None:        # this machine gains nothing: the process runs on as it was, once
    assert out.stdout.splitlines() == ["start", "tunables "]
  else:                     # the process ran twice: once before the re-execution, once with the tunable
    assert out.stdout.splitlines() == ["start", "start", f"tunables {hugepages.TUNABLE}"]
  off = _child(code, ZOO_HUGE_PAGES="0")
  assert off.stdout.splitlines() == ["start", "tunables "]
  # a program read from stdin could not be read again: it is never re-executed
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ZOO_HUGE_PAGES")}
  piped = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, cwd=REPO,
                         env=base, timeout=120)
  assert piped.returncode == 0 and piped.stdout.splitlines() == ["start", "tunables "], piped.stderr


def test_the_command_line_runs_through_the_re_execution():
  out = subprocess.run([sys.executable, "-m", "zoo", "list"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
  assert out.returncode == 0 and "vae" in out.stdout
