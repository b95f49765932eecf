"""Strict, fast test defaults: 8 forced CPU devices, strict promotion, one prepared data dir, a key fixture."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before JAX is imported anywhere: several CPU devices, so a step on 1 and on 8 devices can be compared
# in-process, and a TFDS data dir of the session's own (no test reads or writes ~/tensorflow_datasets).
# Most of the suite's time is XLA compiling small programs (about half of each worker's time is the
# backend compile, a fifth tracing and lowering, measured with jax.monitoring's compile events): LLVM at
# optimisation level 0 compiles CPU programs about twice as fast (whole suite on 2 cores: 17.5 -> 14.7 min),
# and XLA's older elemental emitters instead of its fusion emitters (`xla_cpu_use_fusion_emitters=false`)
# compile the families' train steps 2.4x faster again (VAE, DCGAN, ProGAN, PixelCNN, Gated PixelCNN,
# PixelRNN and RBM steps: 11.0 -> 4.6 s in all) for steps that run about 1.4x slower, which these tiny
# programs do not feel. Subprocesses inherit the flags: the SIGKILL/resume test compares a subprocess's
# run with an in-process one bit for bit, and both flags change float rounding (FMA contraction, fusion).
# Training, benchmarks and the CLI outside the tests keep XLA's defaults.
# XLA exits the process (a fatal log, status 1) on a flag it does not know, and jaxlib 0.11 no longer knows
# `xla_cpu_use_fusion_emitters` (seen on a lent GPU machine's jax 0.11.2: pytest exited 1 at its first JAX
# test, printing nothing). So the controller asks a subprocess once whether this jaxlib takes it; the
# xdist workers and the tests' subprocesses inherit the answer through the environment.
_EMITTER_FLAG = "--xla_cpu_use_fusion_emitters=false"


def _xla_takes(flag: str) -> bool:
  import subprocess
  env = {**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"}
  probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
  return probe.returncode == 0


if "ZOO_TEST_XLA_FLAGS" not in os.environ:
  _flags = "--xla_backend_optimization_level=0" + (f" {_EMITTER_FLAG}" if _xla_takes(_EMITTER_FLAG) else "")
  os.environ["ZOO_TEST_XLA_FLAGS"] = _flags
  os.environ["XLA_FLAGS"] = (_flags + " " + os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The controller process loads this file before it starts the xdist workers, which inherit its
# environment: the workers share one data dir (prepared once, under the builders' file lock); only the
# process that made it removes it.
_OWNER = "ZOO_TEST_DATA_DIR" not in os.environ
if _OWNER:
  os.environ["ZOO_TEST_DATA_DIR"] = tempfile.mkdtemp(prefix="zoo_tfds_")
_DATA_DIR = Path(os.environ["ZOO_TEST_DATA_DIR"])
os.environ["TFDS_DATA_DIR"] = str(_DATA_DIR)
# The `zoo` command's subprocesses build the large-block cache's library (zoo/bigalloc.py) into the same
# session dir, not into the user's ~/.cache/zoo (a user's ZOO_CACHE_DIR is replaced for the session)
if _OWNER:
  os.environ["ZOO_CACHE_DIR"] = str(_DATA_DIR / "zoo_cache")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The native kernels' library (~31 s of one core compiling it into the session's fresh cache dir) and the
# kernels' and oneDNN's checks, started in the background as the session starts: the build overlaps the
# workers' start-up and their first tests, and a test that needs the library waits on the build's file lock
# (zoo.native) for what is left of it. Before, the first test to need it built it while the other worker's
# tests that needed it waited: on the 2-core VM the zoo-train-through-the-cache test took 81 s (29 s after),
# the suite 562 and 602 s (482 and 508 s after; CPU time 1.94 of the 2 cores' wall: a third worker would not
# help). Its programs go to no persistent compilation cache (not a user's $JAX_COMPILATION_CACHE_DIR; the
# oneDNN probe's child still sets one of its own: it proves that cache writes of oneDNN's programs are skipped).
_WARM = None
if _OWNER:
  import subprocess
  _WARM = subprocess.Popen(
      [sys.executable, "-c", "from zoo import convgrad, onednn; convgrad.available(); onednn.available()"],
      cwd=Path(__file__).resolve().parent.parent,
      env={k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests compile the same small programs: a persistent cache turns the repeats into disk reads.
# Subprocesses (the CLI, the multi-host and SIGKILL tests) read the same cache through the environment.
# One cache per worker: JAX's cache entries are not written atomically, and a worker reading an entry
# another is writing gets a truncated one (seen with a shared cache; it recompiles, with a warning).
_CACHE_DIR = Path(tempfile.mkdtemp(prefix="zoo_jax_cache_"))
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_CACHE_DIR)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", str(_CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
  """The session's TFDS data dir (also $TFDS_DATA_DIR), where the zoo's own builders prepare once."""
  return _DATA_DIR


def pytest_sessionfinish(session, exitstatus):
  import shutil
  if _WARM is not None and _WARM.poll() is None:     # a session shorter than the build: it and its compiler
    import signal
    os.killpg(_WARM.pid, signal.SIGKILL)
    _WARM.wait()
  shutil.rmtree(_CACHE_DIR, ignore_errors=True)
  if _OWNER:
    shutil.rmtree(_DATA_DIR, ignore_errors=True)
