"""Transparent huge pages for XLA:CPU's buffers: glibc's tunable that asks for them (``zoo.memory.ensure()``
re-executes the process with it).

Why: XLA:CPU takes every execution's buffers from freshly mapped memory, so a training step pays a page
fault per 4 KB it writes. Measured on the 2-core CPU (x86_64, glibc 2.36, THP mode ``madvise``): the
PixelCNN step of experiments/benchmarks/pixelcnn28.py at batch 64 took 205,000 minor faults and 0.7 s
of kernel time per step (a quarter of its CPU time); with glibc's ``glibc.malloc.hugetlb=1`` tunable
(malloc asks for transparent huge pages with ``madvise``) it takes about 600 faults and 0.13 s, and
runs 42 -> 52 examples/s. The tunable is read when a process starts, so ``zoo.memory.ensure()``
re-executes the process with it added to ``GLIBC_TUNABLES``.

It does so only where it can matter: Linux with glibc >= 2.35 (the tunable's release) and the kernel's
THP mode ``madvise`` (with ``always`` every process gets huge pages already; with ``never`` none can).
``ZOO_HUGE_PAGES=0`` turns it off. The arithmetic is unchanged: only where memory comes from.
"""
from __future__ import annotations

import os

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, ValueError, OSError):
    return None


def _thp_mode() -> str | None:
  try:
    text = open(THP_MODE).read()
  except OSError:
    return None
  return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def tunables(env: dict, thp_mode: str | None, glibc: tuple[int, int] | None) -> str | None:
  """The GLIBC_TUNABLES to re-execute with, or None where there is nothing to do."""
  if env.get("ZOO_HUGE_PAGES", "1") == "0" or thp_mode != "madvise" or glibc is None or glibc < (2, 35):
    return None
  current = env.get("GLIBC_TUNABLES", "")
  if "glibc.malloc.hugetlb" in current:
    return None
  return ":".join(filter(None, [current, TUNABLE]))
