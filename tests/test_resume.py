"""A run killed with SIGKILL mid-training and resumed ends where an unbroken run ends, bit for bit."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

import zoo
from helpers import REPO, tiny_config, tree_equal

SETTINGS = dict(steps=100, checkpoint_every=20, log_every=25, eval_every=0, batch_size=16, num_devices=1,
                eval_examples=64, eval_batch_size=32, num_samples=4)


def _cmd(workdir: Path) -> list[str]:
  return [sys.executable, "-m", "zoo", "train", "--config", "experiments/kingma2013/vae.py:quick",
          "--workdir", str(workdir), "--no-progress", *[f"--config.{k}={v}" for k, v in SETTINGS.items()]]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_unbroken_run(tmp_path):
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  ckpts = killed / "checkpoints"
  while time.time() < deadline and proc.poll() is None:
    if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 40 for p in ckpts.iterdir()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
  assert not (killed / "results.json").exists(), "the run finished before it could be killed"
  saved = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert saved and saved[-1] < SETTINGS["steps"]

  resumed = subprocess.run(_cmd(killed), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]

  whole = tmp_path / "whole"
  zoo.train_and_evaluate(tiny_config("vae", **SETTINGS), whole, progress=False)
  a, b = zoo.load(whole), zoo.load(killed)
  assert a.meta["step"] == b.meta["step"] == SETTINGS["steps"]
  assert tree_equal(jax.device_get(a.state), jax.device_get(b.state))
