"""zoo/bigalloc.py and zoo/_native/bigalloc.c: the large-block cache keeps freed large blocks for the next
request, hands out memory that behaves as malloc's (zeroed by calloc, kept by realloc, aligned, its size
known), leaves small blocks to glibc, gives pages back beyond its limit, survives fork, and changes no
number XLA computes. Each behaviour runs in a child process that preloads the library built here."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from zoo import bigalloc, hugepages, memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1 << 20

pytestmark = pytest.mark.skipif(
    bigalloc._compiler() is None or hugepages._glibc_version() is None or sys.platform != "linux",
    reason="the cache is built with a C compiler against glibc on Linux; none here (CI has gcc)")

# ctypes views of the C allocator's entry points, and the cache's counters, for the child scripts
PRELUDE = textwrap.dedent("""
    import ctypes, os, sys
    import numpy as np
    from zoo import bigalloc
    libc = ctypes.CDLL(None)
    for name in ("malloc", "calloc", "realloc", "memalign", "aligned_alloc", "valloc"):
        getattr(libc, name).restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.memalign.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.malloc_usable_size.argtypes = [ctypes.c_void_p]
    libc.malloc_usable_size.restype = ctypes.c_size_t
    libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
    MB = 1 << 20
    def view(p, n):
        return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(p))
""")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
  built = bigalloc.build(tmp_path_factory.mktemp("native"))
  assert built is not None and built.exists()
  return str(built)


def _run(lib: str | None, body: str, **env) -> subprocess.CompletedProcess:
  base = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_BIGALLOC") and k != "LD_PRELOAD"}
  if lib:
    base["LD_PRELOAD"] = lib
  return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], capture_output=True,
                        text=True, cwd=REPO, env={**base, **env}, timeout=120)


def _ok(out: subprocess.CompletedProcess) -> str:
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_build_is_cached_and_only_this_users_file_is_loaded(tmp_path):
  first = bigalloc.build(tmp_path)
  assert first is not None and first.parent == tmp_path
  mtime = first.stat().st_mtime_ns
  assert bigalloc.build(tmp_path) == first and first.stat().st_mtime_ns == mtime     # not built again
  os.chmod(first, 0o777)          # anyone could have replaced it: refused, not loaded
  assert bigalloc.build(tmp_path, quiet=True) is None
  os.chmod(first, 0o755)
  os.chmod(tmp_path, 0o777)       # ... or its directory: the same
  assert bigalloc.build(tmp_path, quiet=True) is None
  os.chmod(tmp_path, 0o700)
  assert bigalloc.build(tmp_path) == first
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bigalloc-")]     # no temporary left


def test_no_compiler_means_no_cache_and_one_line_why(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(bigalloc, "_compiler", lambda: None)
  assert bigalloc.build(tmp_path) is None
  assert capsys.readouterr().err.strip().splitlines() == [
      "zoo: large-block cache off (no C compiler: set CC or install one)"]


def test_a_freed_large_block_serves_the_next_request_and_small_ones_stay_with_glibc(lib):
  """Blocks of at least 2 MiB (one huge page, the default threshold) come from the cache and a freed one
  serves the next request that fits; smaller ones are glibc's."""
  out = _ok(_run(lib, """
      p = libc.malloc(64 * MB)
      view(p, 64 * MB)[::4096] = 7
      libc.free(p)
      q = libc.malloc(60 * MB)                    # fits the freed 64 MB block: the same one, still mapped
      s = bigalloc.stats()
      assert q == p and s["reused"] >= 1 and s["live_bytes"] == 64 * MB, (p, q, s)
      assert libc.malloc_usable_size(q) == 64 * MB
      small = libc.malloc(1000)
      assert bigalloc.stats()["fresh"] == s["fresh"] and 1000 <= libc.malloc_usable_size(small) < 2000
      libc.free(small)
      big = libc.malloc(200 * MB)                 # more than twice a free block: a new one
      assert big != q and bigalloc.stats()["fresh"] == s["fresh"] + 1
      libc.free(q); libc.free(big)
      assert bigalloc.stats()["live_bytes"] == 0 and bigalloc.stats()["cached_bytes"] == 264 * MB
      # from one huge page up by default: a jitted layer's 12-25 MiB output is kept too (glibc gave it back)
      assert bigalloc.stats()["min_bytes"] == 2 * MB
      m = libc.malloc(13 * MB); libc.free(m)
      assert libc.malloc(13 * MB) == m and bigalloc.stats()["live_bytes"] == 14 * MB
      print("ok")
  """))
  assert out.strip() == "ok"


def test_calloc_realloc_and_aligned_blocks_behave_as_mallocs(lib):
  _ok(_run(lib, """
      p = libc.malloc(39 * MB)                    # a 40 MB block (2 MB pages)
      view(p, 40 * MB)[:] = 255                   # dirty
      libc.free(p)
      z = libc.calloc(13 * MB, 3)                 # the dirty block again, zeroed
      assert z == p and not view(z, 39 * MB).any()
      view(z, 16)[:] = np.arange(16)
      r = libc.realloc(z, 40 * MB)                # fits the block: kept in place
      assert r == z and libc.malloc_usable_size(r) == 40 * MB
      r = libc.realloc(r, 41 * MB)                # does not: moved, contents kept
      assert r != z and list(view(r, 16)) == list(range(16))
      r2 = libc.realloc(r, 100 * MB)              # moved, contents kept
      assert r2 != r and list(view(r2, 16)) == list(range(16))
      r3 = libc.realloc(r2, 1000)                 # down to a small glibc block, contents kept
      assert list(view(r3, 16)) == list(range(16)) and libc.malloc_usable_size(r3) < 4096
      libc.free(r3)
      out = ctypes.c_void_p()
      assert libc.posix_memalign(ctypes.byref(out), 1 << 21, 50 * MB) == 0 and out.value % (1 << 21) == 0
      assert libc.posix_memalign(ctypes.byref(out), 3, 50 * MB) == 22          # EINVAL: not a power of two
      a = libc.memalign(1 << 12, 33 * MB); b = libc.aligned_alloc(64, 33 * MB); v = libc.valloc(1 << 12)
      assert a % 4096 == 0 and b % 64 == 0 and v % 4096 == 0
      assert libc.calloc(1 << 62, 1 << 4) is None                              # overflow: NULL, not a wrap
      x = np.ones(20 * MB, np.float32); del x                                   # numpy through the same calls
      y = np.zeros(20 * MB, np.float32)
      assert not y.any() and bigalloc.stats()["reused"] >= 2
  """))


def test_threads_allocating_at_once_never_share_a_block(lib):
  """Four threads (ctypes calls release the GIL) take and free large and small blocks at once, each
  stamping its blocks at both ends and in the middle and checking the stamps before it frees them: a block
  handed to two threads, or freed under another, shows as a foreign stamp."""
  _ok(_run(lib, """
      import random, threading
      errors = []
      def work(tag):
          rng = random.Random(tag)
          held = []
          for i in range(150):
              n = rng.choice([100, 5000, 33 * MB, 40 * MB, 70 * MB])
              p = libc.malloc(n) if rng.random() < 0.5 else libc.calloc(n, 1)
              v = view(p, n)
              stamp = (tag * 37 + i) % 251 + 1
              v[0] = v[n // 2] = v[n - 1] = stamp
              held.append((p, n, stamp))
              if len(held) > 3 or rng.random() < 0.3:
                  p, n, stamp = held.pop(rng.randrange(len(held)))
                  v = view(p, n)
                  if not (v[0] == v[n // 2] == v[n - 1] == stamp):
                      errors.append((tag, i))
                  libc.free(p)
          for p, n, stamp in held:
              libc.free(p)
      threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
      [t.start() for t in threads]
      [t.join() for t in threads]
      s = bigalloc.stats()
      assert not errors and s["live_bytes"] == 0 and s["reused"] > 50, (errors, s)
  """))


def test_beyond_its_limit_the_cache_gives_pages_back_and_still_reuses_correctly(lib):
  _ok(_run(lib, """
      p = libc.malloc(64 * MB); view(p, 64 * MB)[:] = 9; libc.free(p)
      s = bigalloc.stats()
      assert s["released"] == 1 and s["cached_bytes"] == 0, s
      q = libc.calloc(64 * MB, 1)
      assert q == p and not view(q, 64 * MB).any()
  """, ZOO_BIGALLOC_CACHE_MB="0"))


def test_switches_threshold_fork_and_a_bad_free(lib):
  _ok(_run(lib, """
      bigalloc.set_enabled(False)
      fresh = bigalloc.stats()["fresh"]
      p = libc.malloc(64 * MB)
      assert bigalloc.stats()["fresh"] == fresh and bigalloc.stats()["live_bytes"] == 0   # glibc's block
      libc.free(p)
      bigalloc.set_enabled(True)
      assert bigalloc.stats()["min_bytes"] == 4 * MB
      q = libc.malloc(5 * MB); libc.free(q)       # over the threshold the environment set
      assert bigalloc.stats()["fresh"] == fresh + 1
      pid = os.fork()
      if pid == 0:                                # the child allocates and frees through the cache too
          c = libc.malloc(64 * MB); view(c, 64 * MB)[:] = 1; libc.free(c); os._exit(0)
      assert os.waitpid(pid, 0)[1] == 0
  """, ZOO_BIGALLOC_MIN_MB="4"))
  off = _ok(_run(lib, """
      p = libc.malloc(64 * MB); libc.free(p)
      print(bigalloc.stats()["state"], bigalloc.stats()["fresh"], bigalloc.loaded(), bigalloc.active())
  """, ZOO_BIGALLOC="0"))
  assert off.split() == ["-1", "0", "True", "False"]    # preloaded but off: results files say it was not used
  # a pointer into the cache's range that it did not hand out: abort, not a silent corruption
  bad = _run(lib, """
      p = libc.malloc(64 * MB); libc.free(p); libc.free(p)
  """)
  assert bad.returncode == -6


def test_xla_computes_the_same_numbers_with_the_cache(lib):
  body = """
      import json
      import jax, jax.numpy as jnp
      x = jax.random.normal(jax.random.key(0), (64, 28, 28, 64))
      k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64))
      def loss(x, k):
          y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
          return jnp.sum(jnp.tanh(y) ** 2)
      g = jax.jit(jax.grad(loss, argnums=(0, 1)))
      for _ in range(3):
          gx, gk = g(x, k)
      import hashlib
      digest = lambda a: hashlib.sha256(np.asarray(a).tobytes()).hexdigest()
      print(digest(gx), digest(gk), bigalloc.loaded())
      print(json.dumps(bigalloc.stats()))
  """
  with_cache = _ok(_run(lib, body)).splitlines()
  without = _ok(_run(None, body)).splitlines()
  assert with_cache[0].split()[-1] == "True" and without[0].split()[-1] == "False"
  assert with_cache[0].split()[:2] == without[0].split()[:2]      # both gradients, bit for bit
  assert json.loads(with_cache[1])["reused"] > 0     # XLA's large blocks did come from the cache


def test_ensure_preloads_the_cache_and_children_do_not_inherit_it(tmp_path):
  code = ("import os, subprocess, sys; from zoo import bigalloc, memory; print('start', flush=True); "
          "memory.ensure(); print('loaded', bigalloc.loaded(), 'LD_PRELOAD' in os.environ, flush=True); "
          "subprocess.run([sys.executable, '-c', 'from zoo import bigalloc; print(\"child\", bigalloc.loaded())'])")
  base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ZOO_BIGALLOC", memory._MARK)}
  run = lambda **env: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,  # noqa: E731
                                     env={**base, "ZOO_CACHE_DIR": str(tmp_path), **env}, timeout=120)
  on = run()
  assert on.returncode == 0, on.stderr
  assert on.stdout.splitlines() == ["start", "start", "loaded True False", "child False"]
  lib, = (tmp_path / "native").glob("*.so")      # beside it: the lock its build held, .so.lock
  assert stat.S_IMODE(lib.stat().st_mode) == 0o755
  off = run(ZOO_BIGALLOC="0", ZOO_HUGE_PAGES="0")
  assert off.returncode == 0 and off.stdout.splitlines() == ["start", "loaded False False", "child False"]
  user = run(LD_PRELOAD=str(lib), ZOO_HUGE_PAGES="0")   # a user's own preload: left alone, not run twice
  assert user.returncode == 0 and user.stdout.splitlines()[:2] == ["start", "loaded True True"]


def test_stats_and_switch_without_the_library():
  _ok(_run(None, """
      import pytest
      assert not bigalloc.loaded() and bigalloc.stats() is None
      with pytest.raises(RuntimeError, match="not preloaded"):
          bigalloc.set_enabled(True)
  """))


def test_library_names_change_with_the_source_and_compiler():
  a = bigalloc.library_name(b"int x;", "cc")
  assert a == bigalloc.library_name(b"int x;", "cc") and a.startswith("bigalloc-") and a.endswith(".so")
  assert a != bigalloc.library_name(b"int y;", "cc") and a != bigalloc.library_name(b"int x;", "clang")
  assert np.all([c in "0123456789abcdef" for c in a[9:-3]])


@pytest.mark.slow
def test_zoo_train_through_the_cache_logs_the_same_numbers_as_without_it(tmp_path):
  """The `zoo` command re-executes itself with the cache preloaded; a PixelCNN whose step allocates
  blocks of 12.8 MB (batch 64, 28x28x64) trains to the same metrics, bit for bit, as with ZOO_BIGALLOC=0."""
  # one CPU device, as a user's run has (the suite's XLA_FLAGS split the CPU into 8; its compiler flags stay)
  base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ZOO_BIGALLOC", memory._MARK)}
  base["XLA_FLAGS"] = os.environ["ZOO_TEST_XLA_FLAGS"]
  logged = {}
  for name, extra in (("cache", {}), ("glibc", {"ZOO_BIGALLOC": "0"})):
    workdir = tmp_path / name
    out = subprocess.run(
        [sys.executable, "-m", "zoo", "train", "--config", "experiments/benchmarks/pixelcnn28.py:quick",
         "--workdir", str(workdir), "--config.steps=3", "--config.eval_examples=250", "--config.num_samples=0",
         "--config.model.blocks=2"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**base, **extra})      # the session's cache: its libraries built once for the whole suite
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["bigalloc"] is (name == "cache")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged[name] = [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]
  assert logged["cache"] == logged["glibc"] and len(logged["cache"]) >= 2
