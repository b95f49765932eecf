"""The shared step against a hand-written jitted JAX step and PyTorch eager, same model, same machine.

Model: the MLP VAE of experiments/benchmarks/vae_mlp.py (784-500-50-500-784, ReLU, Bernoulli decoder,
Adam 1e-3, one-sample ELBO with analytic KL). The three are timed in turns, ``--repeats`` times each, and
the median examples/s is reported with the median of the within-round ratios shared/hand-written and
shared/PyTorch.

  python experiments/benchmarks/compare_vae_mlp.py [--batches 128 1024] [--repeats 3] [--out FILE]

PyTorch is optional (``pip install torch==2.13.0``); without it that column is left out.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zoo import config as config_lib
from zoo import data as data_lib
from zoo.bench import interleaved_rounds, machine_info, step_runner, torch_runner, within_round_ratio

CONFIG = str(Path(__file__).with_name("vae_mlp.py"))
D, H, L = 784, 500, 50


def _batch(batch_size: int) -> np.ndarray:
  ds = data_lib.load(config_lib.load(CONFIG).data)
  return ds.batch("train", 0, batch_size, seed=0)["image"].reshape(batch_size, D)


def hand_written_jax(x: np.ndarray):
  """A plain jitted JAX step of the same model: params in a dict, optax Adam, state donated.

  Returns:
    run(n): takes n steps and blocks until they are done.
  """
  def dense(key, n_in, n_out):
    w = jax.random.normal(key, (n_in, n_out)) * jnp.sqrt(1.0 / n_in)
    return {"w": w, "b": jnp.zeros((n_out,))}
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {"e1": dense(keys[0], D, H), "e2": dense(keys[1], H, 2 * L),
            "d1": dense(keys[2], L, H), "d2": dense(keys[3], H, D)}
  tx = optax.adam(1e-3)

  def loss_fn(p, x, key):
    h = jax.nn.relu(x @ p["e1"]["w"] + p["e1"]["b"][None])
    mean, log_std = jnp.split(h @ p["e2"]["w"] + p["e2"]["b"][None], 2, axis=-1)
    z = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    logits = jax.nn.relu(z @ p["d1"]["w"] + p["d1"]["b"][None]) @ p["d2"]["w"] + p["d2"]["b"][None]
    recon = jnp.sum(x * logits - jax.nn.softplus(logits), -1)
    kl = 0.5 * jnp.sum(mean ** 2 + jnp.exp(2 * log_std) - 1 - 2 * log_std, -1)
    return -jnp.mean(recon - kl)

  def step(carry, x):
    p, o, i = carry
    loss, g = jax.value_and_grad(loss_fn)(p, x, jax.random.fold_in(jax.random.PRNGKey(1), i))
    u, o = tx.update(g, o, p)
    return (optax.apply_updates(p, u), o, i + 1), loss

  step = jax.jit(step, donate_argnums=(0,))
  box = [(params, tx.init(params), jnp.zeros((), jnp.int32))]
  xd = jax.device_put(x)

  def run(n):
    carry = box[0]
    for _ in range(n):
      carry, _ = step(carry, xd)
    jax.block_until_ready(carry)
    box[0] = carry
  return run


def pytorch_eager(x: np.ndarray):
  try:
    import torch
  except ImportError:
    return None
  torch.manual_seed(0)
  enc = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, 2 * L))
  dec = torch.nn.Sequential(torch.nn.Linear(L, H), torch.nn.ReLU(), torch.nn.Linear(H, D))
  opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
  xt = torch.from_numpy(np.ascontiguousarray(x))

  def step():
    mean, log_std = enc(xt).chunk(2, dim=-1)
    z = mean + log_std.exp() * torch.randn_like(mean)
    logits = dec(z)
    recon = -torch.nn.functional.binary_cross_entropy_with_logits(logits, xt, reduction="none").sum(-1)
    kl = 0.5 * (mean ** 2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
    loss = -(recon - kl).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return torch_runner(step)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", type=int, nargs="+", default=[128, 1024])
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--examples", type=int, default=50_000, help="examples per timed measurement")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()
  cfg = config_lib.load(CONFIG)
  rows = []
  for b in args.batches:
    steps = max(args.examples // b, 20)
    x = _batch(b)
    runners = {"shared": step_runner(cfg, b)[0], "hand": hand_written_jax(x), "torch": pytorch_eager(x)}
    runners = {k: r for k, r in runners.items() if r is not None}
    rounds = interleaved_rounds(runners, b, steps, args.repeats, warmup=10)
    row = {"batch_size": b, "steps": steps, "rounds": args.repeats,
           **{f"{k}_examples_per_s": round(statistics.median(v), 1) for k, v in rounds.items()},
           "shared_over_hand": round(within_round_ratio(rounds, "shared", "hand"), 3)}
    if "torch" in rounds:
      row["shared_over_torch"] = round(within_round_ratio(rounds, "shared", "torch"), 3)
    rows.append(row)
    print(json.dumps(row), flush=True)
  info = machine_info()
  keys = ("machine", "device_kind", "platform", "device_count", "jax")   # those of results/vae_mlp_cpu2.json
  result = {**{k: info[k] for k in keys}, "rows": rows}
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
