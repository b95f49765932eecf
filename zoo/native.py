"""Building the zoo's small native libraries at first use: ``zoo/_native/*`` compiled with the system's
compiler into the user's cache (``$ZOO_CACHE_DIR`` or ``$XDG_CACHE_HOME/zoo`` or ``~/.cache/zoo``, under
``native/``), named by a hash of the source, the command and the CPU, and used only where the file and
its directory are this user's alone (the library is loaded into the process). Used by ``zoo.bigalloc`` (C,
preloaded) and ``zoo.convgrad`` (C++, an XLA FFI handler).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import platform
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

SOURCES = Path(__file__).resolve().parent / "_native"


def cache_dir(env: dict | None = None) -> Path:
  env = os.environ if env is None else env
  if env.get("ZOO_CACHE_DIR"):
    return Path(env["ZOO_CACHE_DIR"]) / "native"
  root = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
  return root / "zoo" / "native"


@functools.cache
def cpu_identity() -> bytes:
  """This CPU's architecture and instruction-set flags (Linux: /proc/cpuinfo's first 'flags' line): a
  library compiled with ``-march=native`` runs only on CPUs that have them, and a cache directory may be
  shared by machines that do not (a home directory on a cluster)."""
  flags = b""
  try:
    with open("/proc/cpuinfo", "rb") as f:
      flags = next((line for line in f if line.startswith((b"flags", b"Features"))), b"")
  except OSError:
    pass
  return platform.machine().encode() + b"|" + (flags.strip() or platform.processor().encode())


def library_name(prefix: str, source: bytes, command: Sequence[str]) -> str:
  """The built library's file name: a hash of the source, the compile command and the CPU."""
  key = hashlib.sha256(b"\0".join([source, *(c.encode() for c in command), cpu_identity()]))
  return f"{prefix}-{key.hexdigest()[:16]}.so"


def _mine_alone(st: os.stat_result) -> bool:
  return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def trusted(path: Path) -> bool:
  """Whether ``path`` is a file of this user in a directory of this user, neither of which anybody else
  can write (it is loaded into the process)."""
  try:
    st, parent = path.stat(), path.parent.stat()
  except OSError:
    return False
  return stat.S_ISREG(st.st_mode) and _mine_alone(st) and _mine_alone(parent)


def build(prefix: str, source: Path, compiler: str | None, command: Callable[[str, str], list[str]],
          check: Callable[[str], str | None], directory: Path | None, quiet: bool, off: str,
          missing: str) -> Path | None:
  """The library built from ``source`` into ``directory`` (default ``cache_dir()``) by ``command(compiler,
  output)`` (the compiler's argv, writing ``output``), unless it is there already; ``check(path)`` is None
  where the new library works, else why not. None where there is no ``compiler`` or it cannot be built or
  used, with one line on stderr, "zoo: {off} (why)", unless ``quiet`` (``missing``: why, without a compiler)."""
  def fail(why: str) -> None:
    if not quiet:
      print(f"zoo: {off} ({why})", file=sys.stderr)
    return None

  if compiler is None:
    return fail(missing)
  command = functools.partial(command, compiler)
  text = source.read_bytes()
  directory = cache_dir() if directory is None else Path(directory)
  lib = directory / library_name(prefix, text, command("OUT"))
  if lib.exists():
    return lib if trusted(lib) else fail(f"{lib} or its directory is not this user's alone")
  try:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _mine_alone(directory.stat()):
      return fail(f"{directory} is not this user's alone")
    lock = _lock(directory, lib.name)
  except OSError as e:
    return fail(f"cannot write {directory}: {e.strerror}")
  with lock:
    if lib.exists():       # built by another process while this one waited
      return lib if trusted(lib) else fail(f"{lib} or its directory is not this user's alone")
    return _build(prefix, lib, command, check, fail)


class _lock:
  """An exclusive lock on ``directory/{name}.lock`` while the context lasts: processes that start together
  (a test suite's workers, a user's runs side by side) wait for the first one's build of a library (~20 s on
  2 cores) or check of it (seconds), and then find its result, instead of each doing it again. The file is
  opened here, so that an unwritable directory raises OSError where the caller handles it."""

  def __init__(self, directory: Path, name: str):
    self._fd = os.open(directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)

  def __enter__(self):
    fcntl.flock(self._fd, fcntl.LOCK_EX)

  def __exit__(self, *exc):
    os.close(self._fd)    # releases the lock


def _build(prefix: str, lib: Path, command, check, fail) -> Path | None:
  try:
    fd, tmp = tempfile.mkstemp(prefix=f".{prefix}-", suffix=".so", dir=lib.parent)
    os.close(fd)
  except OSError as e:
    return fail(f"cannot write {lib.parent}: {e.strerror}")
  try:
    cc = subprocess.run(command(tmp), capture_output=True, text=True, timeout=300)
    if cc.returncode:
      return fail(f"{command(tmp)[0]} failed: {(cc.stderr.strip().splitlines() or ['?'])[-1]}")
    why = check(tmp)
    if why is not None:
      return fail(f"the built library does not work: {why}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, lib)
    tmp = None
    return lib
  except (OSError, subprocess.SubprocessError) as e:
    return fail(f"cannot build: {e}")
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)


def child_check(code: str, env: dict | None = None) -> str | None:
  """Runs ``python -c code`` in a child process: None where it exits 0 with nothing on stderr, else the
  last line it wrote there."""
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env={**os.environ, **(env or {})})
  if done.returncode or done.stderr.strip():
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
  return None


def checked_once(name: str, key: Sequence[bytes], check: Callable[[], str | None]) -> str | None:
  """``check()``'s answer (None: passed, else why not), with a pass remembered on this machine: an empty file
  in ``cache_dir()`` named by a hash of ``key`` (what the answer depends on: the library's bytes, the
  checking code, the JAX versions, XLA's flags, the CPU) says that an identical check passed, and later
  processes (each ``zoo`` command, a run's subprocesses, the test suite's workers) skip it. The checks take
  seconds each (dozens of small programs to compile) in every process that uses a kernel. A failure is not
  remembered: it runs again, and says why again. The file counts only where it and its directory are this
  user's alone, as a library does."""
  directory = cache_dir()
  digest = hashlib.sha256(b"\0".join([*key, cpu_identity()])).hexdigest()[:16]
  marker = directory / f"{name}-passed-{digest}"
  if trusted(marker):
    return None
  try:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _lock(directory, marker.name) if _mine_alone(directory.stat()) else None
  except OSError:           # a read-only cache: the check runs, and runs again next time
    lock = None
  if lock is None:
    return check()
  with lock:
    if trusted(marker):     # passed in another process while this one waited
      return None
    why = check()
    if why is None:
      try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=directory)
        os.close(fd)
        os.replace(tmp, marker)
      except OSError:
        pass
  return why
