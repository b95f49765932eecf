"""A cache of large allocations for XLA:CPU's buffers: a small C library preloaded into the process.

Why: XLA:CPU allocates each execution's temporaries (1.2 GB for the PixelCNN step at batch 256, 320 MB at
64) and Eigen each convolution's packing buffer (74-294 MB) with malloc. glibc serves every block over
32 MiB in a thread's arena from a fresh ``mmap`` and unmaps it on ``free``, whatever its tunables, so a
step pays the kernel to zero every page of them again: on the 2-core CPU of issue 7, 11% of the PixelCNN
step's CPU time at batch 256 was the kernel's ``clear_page_erms``, 0.6 s of kernel time per step. The
library (``zoo/_native/bigalloc.c``) keeps freed blocks of at least ``ZOO_BIGALLOC_MIN_MB`` (2, one huge
page) MiB mapped for the next request that fits, up to ``ZOO_BIGALLOC_CACHE_MB`` (a quarter of the RAM) of
them; the step's kernel time falls to ~0. (It was 32 MiB, glibc's mapping threshold; but glibc gave the
12-25 MiB outputs of single jitted layers back to the kernel too, at 1-84 page faults per call.) Everything
smaller goes to glibc as before; the arithmetic is unchanged.

It is compiled from its source with the system's C compiler at first use (about 0.3 s) into the user's
cache (``$ZOO_CACHE_DIR`` or ``$XDG_CACHE_HOME/zoo`` or ``~/.cache/zoo``, under ``native/``), checked by
loading it into a child process, and preloaded by ``zoo.memory.ensure()`` when the process re-executes
itself (as for huge pages). Where there is no compiler, no glibc, or a user's own ``LD_PRELOAD`` (another
allocator, say), nothing changes. ``ZOO_BIGALLOC=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import os
import shutil
from pathlib import Path

from zoo import native

SOURCE = Path(__file__).resolve().parent / "_native" / "bigalloc.c"
ENV_OFF = "ZOO_BIGALLOC"
STATS = ("fresh", "reused", "released", "cached_bytes", "live_bytes", "min_bytes")
# a child loads the built library before it is used: a library glibc cannot load would otherwise print an
# error in every process that preloads it
_CHECK = "import ctypes; ctypes.CDLL(None).zoo_bigalloc_stats"


def _compiler() -> str | None:
  return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_name(source: bytes, compiler: str) -> str:
  """The built library's file name: a hash of the source, the compile command and the CPU."""
  return native.library_name("bigalloc", source, _command(compiler, "OUT"))


def _command(compiler: str, out: str) -> list[str]:
  return [compiler, "-O2", "-shared", "-fPIC", "-o", out, str(SOURCE), "-lpthread"]


def build(directory: Path | None = None, quiet: bool = False) -> Path | None:
  """The library, compiled into ``directory`` (default ``zoo.native.cache_dir()``) if it is not there yet;
  None where it cannot be built or loaded here (a one-line reason on stderr unless ``quiet``)."""
  return native.build("bigalloc", SOURCE, _compiler(), _command,
                      lambda lib: native.child_check(_CHECK, {"LD_PRELOAD": lib}), directory, quiet,
                      "large-block cache off", "no C compiler: set CC or install one")


def wanted(env: dict) -> bool:
  """Whether the library should be preloaded: not turned off (``ZOO_BIGALLOC=0``) and the user preloads
  nothing already (their allocator wins whole: a partial mix of two allocators could free one's blocks in
  the other)."""
  return env.get(ENV_OFF, "1") != "0" and not env.get("LD_PRELOAD", "").strip()


def preload(env: dict, lib: str | None) -> str | None:
  """The LD_PRELOAD to re-execute with: ``lib`` where it is ``wanted`` and built, else None."""
  return lib if lib is not None and wanted(env) else None


@functools.cache
def _symbols():
  """The process's own symbols (the preload's among them), looked up once."""
  try:
    return ctypes.CDLL(None)
  except OSError:
    return None


def loaded() -> bool:
  """Whether this process runs with the library preloaded."""
  lib = _symbols()
  return lib is not None and hasattr(lib, "zoo_bigalloc_stats")


def active() -> bool:
  """Whether large blocks come from the cache in this process: preloaded and not turned off
  (``ZOO_BIGALLOC=0`` read by the library itself, or a failed setup). What results files record."""
  return (stats() or {}).get("state", -1) != -1


def stats() -> dict | None:
  """The cache's counters ({fresh, reused, released, cached_bytes, live_bytes, min_bytes, state}: state 1
  set up, 0 before its first block, -1 off), or None where it is not preloaded."""
  if not loaded():
    return None
  out = (ctypes.c_uint64 * len(STATS))()
  state = _symbols().zoo_bigalloc_stats(out)
  return {**dict(zip(STATS, (int(v) for v in out))), "state": int(state)}


def set_enabled(on: bool) -> None:
  """New large blocks from the cache (True) or from glibc (False): an A/B in one process. Blocks already
  handed out are freed where they came from either way."""
  if not loaded():
    raise RuntimeError("zoo.bigalloc: the library is not preloaded in this process (zoo.memory.ensure())")
  _symbols().zoo_bigalloc_set_enabled(int(bool(on)))
