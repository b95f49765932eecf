"""Two processes started with jax.distributed on localhost (gloo) train as one run."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import pytest

import zoo
from helpers import REPO, tiny_config, tree_allclose

# Plain SGD: Adam turns the float noise of a different reduction order in near-zero gradients into
# full-size steps of either sign, which would test Adam's sensitivity, not the two processes' agreement.
SETTINGS = {"steps": 8, "checkpoint_every": 4, "log_every": 4, "eval_every": 4, "batch_size": 16,
            "eval_examples": 64, "eval_batch_size": 32, "num_samples": 4,
            "optim.model.name": "'sgd'", "optim.model.lr": 1e-4}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_run(tmp_path):
  port = _free_port()
  workdir = tmp_path / "multi"
  cmd = [sys.executable, "-m", "zoo", "train", "--config", "experiments/kingma2013/vae.py:quick",
         "--workdir", str(workdir), "--no-progress", *[f"--config.{k}={v}" for k, v in SETTINGS.items()]]
  procs = []
  for pid in range(2):
    # the suite's compile flags (conftest), with 2 devices a process instead of 8
    flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=2")
    env = {**os.environ, "XLA_FLAGS": flags,
           "ZOO_COORDINATOR": f"127.0.0.1:{port}", "ZOO_NUM_PROCESSES": "2", "ZOO_PROCESS_ID": str(pid),
           # a loaded CI machine can start one process well after the other
           "JAX_CPU_GET_LOCAL_TOPOLOGY_TIMEOUT_MINUTES": "8", "JAX_CPU_GET_GLOBAL_TOPOLOGY_TIMEOUT_MINUTES": "8"}
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = [p.communicate(timeout=600) for p in procs]
  report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{err[-2000:]}"
                     for i, (p, (_, err)) in enumerate(zip(procs, outs)))
  assert all(p.returncode == 0 for p in procs), report
  assert "trained vae" in outs[0][0]

  single = tmp_path / "single"
  settings = {k: (v.strip("'") if isinstance(v, str) else v) for k, v in SETTINGS.items()}
  zoo.train_and_evaluate(tiny_config("vae", num_devices=4, **settings), single, progress=False)
  a, b = zoo.load(single, num_devices=4), zoo.load(workdir, num_devices=4)
  assert a.meta["step"] == b.meta["step"] == SETTINGS["steps"]
  assert tree_allclose(jax.device_get(a.state.params), jax.device_get(b.state.params), rtol=1e-4, atol=1e-6)
  assert tree_allclose(jax.device_get(a.state.opt_state), jax.device_get(b.state.opt_state), rtol=1e-4, atol=1e-6)
