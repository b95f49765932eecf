"""The shared step's DCGAN 32x32 train step against PyTorch eager running the same networks, same machine.

Model: experiments/benchmarks/dcgan32.py (G 100 -> 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3, D the
mirror, batch norm, Adam 2e-4 / 0.5). One step is what the zoo's step does for a GAN: the discriminator's
update on a real batch and a batch of fakes (made without gradient, the two batches normalised
separately), then the generator's update on new fakes through the discriminator (weight gradients of G
only). The two are timed in turns, ``--repeats`` rounds each, and the median examples/s is reported with
the median of the within-round ratios zoo/PyTorch.

  python experiments/benchmarks/compare_dcgan32.py [--batches 64 256] [--repeats 5] [--out FILE]

PyTorch is optional (``pip install torch==2.13.0``); without it only the zoo's figures are reported.
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

from zoo import config as config_lib
from zoo.bench import prepare

CONFIG = str(Path(__file__).with_name("dcgan32.py"))


def shared_step(cfg, batch_size: int):
  """The zoo's shared step on the DCGAN (what ``zoo bench`` times), one real batch kept on the device."""
  compiled, state, batch, info = prepare(cfg, batch_size)
  box = [state]

  def run(n):
    state = box[0]
    for _ in range(n):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    box[0] = state
  return run, info


def pytorch_eager(cfg, batch_size: int, threads: int = 0):
  """The same DCGAN in PyTorch eager (NCHW, float32) on ``threads`` intra-op threads (0: PyTorch's
  default, one per core), or None without torch."""
  try:
    import torch
    from torch import nn
  except ImportError:
    return None
  torch.manual_seed(0)
  m = cfg.model
  L, (gf0, gf1, gf2), (df0, df1, df2), k = m.latent_dim, m.g_features, m.d_features, m.kernel_size
  c = m.net_shape[2]
  bn_mom = 1.0 - m.bn_momentum           # PyTorch's momentum is the weight of the new batch

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      self.project = nn.Linear(L, 4 * 4 * gf0, bias=False)
      self.net = nn.Sequential(
          nn.BatchNorm2d(gf0, momentum=bn_mom), nn.ReLU(),
          nn.ConvTranspose2d(gf0, gf1, k, 2, 1, bias=False), nn.BatchNorm2d(gf1, momentum=bn_mom), nn.ReLU(),
          nn.ConvTranspose2d(gf1, gf2, k, 2, 1, bias=False), nn.BatchNorm2d(gf2, momentum=bn_mom), nn.ReLU(),
          nn.ConvTranspose2d(gf2, c, k, 2, 1), nn.Tanh())

    def forward(self, z):
      return self.net(self.project(z).view(-1, gf0, 4, 4))

  d = nn.Sequential(
      nn.Conv2d(c, df0, k, 2, 1), nn.LeakyReLU(0.2),
      nn.Conv2d(df0, df1, k, 2, 1, bias=False), nn.BatchNorm2d(df1, momentum=bn_mom), nn.LeakyReLU(0.2),
      nn.Conv2d(df1, df2, k, 2, 1, bias=False), nn.BatchNorm2d(df2, momentum=bn_mom), nn.LeakyReLU(0.2),
      nn.Flatten(), nn.Linear(4 * 4 * df2, 1))
  g = Generator()
  for p in list(g.parameters()) + list(d.parameters()):
    if p.dim() > 1:
      nn.init.normal_(p, 0.0, m.init_std)
  opt = {name: torch.optim.Adam(net.parameters(), lr=cfg.optim[name].lr, betas=(cfg.optim[name].b1, 0.999))
         for name, net in (("discriminator", d), ("generator", g))}
  g.train()
  d.train()
  real = torch.rand(batch_size, c, 32, 32) * 2 - 1
  softplus = torch.nn.functional.softplus

  def step():
    # discriminator: fakes without gradient, real and fake batches through D separately
    with torch.no_grad():
      fake = g(torch.rand(batch_size, L) * 2 - 1)
    loss_d = softplus(-d(real)).mean() + softplus(d(fake)).mean()
    opt["discriminator"].zero_grad(set_to_none=True)
    loss_d.backward()
    opt["discriminator"].step()
    # generator: gradients of G's weights only (D's weights are constants here)
    for p in d.parameters():
      p.requires_grad_(False)
    loss_g = softplus(-d(g(torch.rand(batch_size, L) * 2 - 1))).mean()
    opt["generator"].zero_grad(set_to_none=True)
    loss_g.backward()
    opt["generator"].step()
    for p in d.parameters():
      p.requires_grad_(True)

  default_threads = torch.get_num_threads()

  def run(n):
    torch.set_num_threads(threads or default_threads)
    try:
      for _ in range(n):
        step()
    finally:
      torch.set_num_threads(default_threads)
  return run, torch


def _timed(run, n: int) -> float:
  t0 = time.perf_counter()
  run(n)
  return time.perf_counter() - t0


def _load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--examples", type=int, default=2048, help="examples per timed measurement")
  p.add_argument("--torch-threads", type=int, nargs="+", default=[0, 1],
                 help="PyTorch twins to time, by intra-op threads (0: its default, one per core)")
  p.add_argument("--note", default="", help="a remark stored with the results (e.g. other load)")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  args = p.parse_args()
  cfg = config_lib.with_defaults(config_lib.load(CONFIG))
  rows = []
  torch_version = torch_threads = None
  load_before = _load_average()
  for b in args.batches:
    steps = max(args.examples // b, 4)
    zoo_run, info = shared_step(cfg, b)
    runners = {"zoo": zoo_run}
    for threads in args.torch_threads:
      twin = pytorch_eager(cfg, b, threads)
      if twin is not None:
        runners["torch" if not threads else f"torch_{threads}thread"], torch = twin
        torch_version, torch_threads = torch.__version__, torch.get_num_threads()
    for r in runners.values():   # compile and warm up
      r(3)
    # Interleaved rounds: the machine's speed drifts, so each round times the two back to back and
    # the ratio is taken within a round.
    rounds = {k: [] for k in runners}
    for _ in range(args.repeats):
      for k, r in runners.items():
        rounds[k].append(b * steps / _timed(r, steps))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    row = {"batch_size": b, "steps_per_round": steps, "rounds": args.repeats, "zoo_compile_s": info["compile_s"],
           **{f"{k}_examples_per_s": round(v, 1) for k, v in med.items()},
           **{f"{k}_rounds": [round(x, 1) for x in v] for k, v in rounds.items()}}
    for k in med:
      if k.startswith("torch"):
        row[f"zoo_over_{k}"] = round(statistics.median(s / o for s, o in zip(rounds["zoo"], rounds[k])), 3)
    torches = [k for k in med if k.startswith("torch")]
    if torches:   # against the faster PyTorch configuration, round by round
      row["zoo_over_best_torch"] = round(statistics.median(
          s / max(rounds[k][i] for k in torches) for i, s in enumerate(rounds["zoo"])), 3)
    rows.append(row)
    print(json.dumps(row), flush=True)
  d = jax.devices()[0]
  result = {"benchmark": "DCGAN 32x32x3 train step (D update + G update), examples/s",
            "config": "experiments/benchmarks/dcgan32.py",
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpu_count": os.cpu_count(),
            "device_kind": d.device_kind, "platform": d.platform, "device_count": jax.device_count(),
            "jax": jax.__version__, "torch": torch_version, "torch_default_threads": torch_threads,
            "load_average_before": load_before, "load_average_after": _load_average(),
            "note": args.note, "rows": rows}
  if args.out:
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
