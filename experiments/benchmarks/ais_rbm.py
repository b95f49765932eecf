"""AIS wall time for a 784-500 RBM: the zoo's jitted AIS against plain NumPy, same schedule, same run.

The issue's measurement: 100 chains, 14,500 inverse temperatures (Salakhutdinov & Murray 2008's
schedule), a 784-500 Bernoulli RBM. Both implementations run the same algorithm in float32 (one Gibbs
step per temperature, two (chains x 784 x 500) matrix products per step): ``zoo.metrics.rbm_ais`` (one
``lax.scan`` under ``jax.jit``; compile time reported apart) and a loop of NumPy array operations
written here. Both estimates of log Z are printed too, with their standard errors: they should agree
within a few standard errors.

  python experiments/benchmarks/ais_rbm.py [--chains 100] [--temperatures 14500] [--repeats 1]
  python experiments/benchmarks/ais_rbm.py --workdir runs/salakhutdinov2008_rbm_cd25   # a trained RBM

Without ``--workdir`` the RBM is random (weights N(0, 0.05^2), biases N(0, 0.5^2)), which times the
same; with it, the run's weights and its training data's base rates are used.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from zoo.metrics import ais


def numpy_ais(w: np.ndarray, b: np.ndarray, c: np.ndarray, base: np.ndarray, betas: np.ndarray,
              chains: int, seed: int = 0) -> tuple[float, float]:
  """AIS for a Bernoulli RBM in plain NumPy (float32): returns (log Z, its standard error)."""
  rng = np.random.default_rng(seed)
  w, b, c, base = (np.asarray(a, np.float32) for a in (w, b, c, base))
  betas = np.asarray(betas, np.float32)
  sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))
  softplus = lambda a: np.logaddexp(np.float32(0), a)
  v = (rng.random((chains, w.shape[0]), dtype=np.float32) < sigmoid(base)).astype(np.float32)
  log_w = np.zeros(chains, np.float32)
  for k in range(1, len(betas)):
    beta, prev = betas[k], betas[k - 1]
    pre = v @ w + c
    log_w += (beta - prev) * (v @ (b - base)) + np.sum(softplus(beta * pre) - softplus(prev * pre), axis=1)
    h = (rng.random(pre.shape, dtype=np.float32) < sigmoid(beta * pre)).astype(np.float32)
    vis = (1 - beta) * base + beta * (h @ w.T + b)
    v = (rng.random(vis.shape, dtype=np.float32) < sigmoid(vis)).astype(np.float32)
  log_w = log_w.astype(np.float64)
  top = log_w.max()
  weights = np.exp(log_w - top)
  log_z0 = np.sum(softplus(base.astype(np.float64))) + w.shape[1] * np.log(2.0)
  std_err = weights.std(ddof=1) / np.sqrt(chains) / weights.mean()
  return float(log_z0 + top + np.log(weights.mean())), float(std_err)


def _rbm(workdir: str | None, hidden: int):
  if workdir:
    import zoo
    m = zoo.load(workdir)
    p = m.variables["params"]["model"]
    base = m.family.base_visible_bias(m.variables["data_stats"])
    return {k: np.asarray(v) for k, v in p.items()}, np.asarray(base)
  r = np.random.default_rng(0)
  p = {"kernel": (0.05 * r.standard_normal((784, hidden))).astype(np.float32),
       "visible_bias": (0.5 * r.standard_normal(784)).astype(np.float32),
       "hidden_bias": (0.5 * r.standard_normal(hidden)).astype(np.float32)}
  return p, np.zeros(784, np.float32)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--chains", type=int, default=100)
  p.add_argument("--temperatures", type=int, default=14500)
  p.add_argument("--hidden", type=int, default=500)
  p.add_argument("--workdir", default=None, help="take the RBM from this zoo run")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--note", default="", help="a remark kept in the JSON (e.g. what else the machine ran)")
  args = p.parse_args()
  params, base = _rbm(args.workdir, args.hidden)
  betas = ais.temperature_schedule(args.temperatures)
  jparams = {k: jnp.asarray(v) for k, v in params.items()}
  jbase, jbetas, key = jnp.asarray(base), jnp.asarray(betas), jax.random.PRNGKey(0)

  t0 = time.perf_counter()
  compiled = ais.rbm_ais.lower(jparams, jbase, jbetas, key, num_chains=args.chains).compile()
  compile_s = time.perf_counter() - t0
  jax_times, np_times = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    r = jax.block_until_ready(compiled(jparams, jbase, jbetas, key))
    jax_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    np_log_z, np_err = numpy_ais(params["kernel"], params["visible_bias"], params["hidden_bias"], base, betas,
                                 args.chains)
    np_times.append(time.perf_counter() - t0)
  jax_s, np_s = statistics.median(jax_times), statistics.median(np_times)
  d = jax.devices()[0]
  result = {
      "rbm": f"784-{params['kernel'].shape[1]}" + (f" from {args.workdir}" if args.workdir else " (random)"),
      "chains": args.chains, "temperatures": args.temperatures, "repeats": args.repeats,
      "jax_s": round(jax_s, 2), "jax_compile_s": round(compile_s, 2), "numpy_s": round(np_s, 2),
      "numpy_over_jax": round(np_s / jax_s, 2),
      "jax_log_z": round(float(r.log_z), 3), "jax_log_z_std_err": round(float(r.log_z_std_err), 4),
      "numpy_log_z": round(np_log_z, 3), "numpy_log_z_std_err": round(np_err, 4),
      "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "device_kind": d.device_kind,
      "platform": d.platform, "jax": jax.__version__, "numpy": np.__version__,
      "cpu_count": os.cpu_count(), **({"note": args.note} if args.note else {}),
  }
  print(json.dumps(result), flush=True)
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
