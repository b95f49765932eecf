"""The shared step's DCGAN 32x32 train step against PyTorch eager running the same networks, same machine.

Model: experiments/benchmarks/dcgan32.py (G 100 -> 4x4x256 -> 8x8x128 -> 16x16x64 -> 32x32x3, D the
mirror, batch norm, Adam 2e-4 / 0.5). One step is what the zoo's step does for a GAN: the discriminator's
update on a real batch and a batch of fakes (made without gradient, the two batches normalised
separately), then the generator's update on new fakes through the discriminator (weight gradients of G
only). The two are timed in turns, ``--repeats`` rounds each, and the median examples/s is reported with
the median of the within-round ratios zoo/PyTorch.

  python experiments/benchmarks/compare_dcgan32.py [--batches 64 256] [--repeats 5] [--out FILE]
      [--torch-device auto|cpu|cuda]

On a GPU (auto) the twin runs on CUDA, with TF32 as JAX's default float32 there (zoo.bench.torch_device).

PyTorch is optional (``pip install torch==2.13.0``); without it only the zoo's figures are reported.
"""
from __future__ import annotations

from pathlib import Path

from zoo.bench import compare_with_torch, torch_runner

CONFIG = str(Path(__file__).with_name("dcgan32.py"))


def pytorch_eager(cfg, batch_size: int, threads: int = 0, device: str = "cpu"):
  """The same DCGAN in PyTorch eager (NCHW, float32) on ``device``, with ``threads`` intra-op threads
  (0: PyTorch's default, one per core), or None without torch."""
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
  g = Generator().to(device)
  d = d.to(device)
  for p in list(g.parameters()) + list(d.parameters()):
    if p.dim() > 1:
      nn.init.normal_(p, 0.0, m.init_std)
  opt = {name: torch.optim.Adam(net.parameters(), lr=cfg.optim[name].lr, betas=(cfg.optim[name].b1, 0.999))
         for name, net in (("discriminator", d), ("generator", g))}
  g.train()
  d.train()
  real = torch.rand(batch_size, c, 32, 32, device=device) * 2 - 1
  softplus = torch.nn.functional.softplus

  def step():
    # discriminator: fakes without gradient, real and fake batches through D separately
    with torch.no_grad():
      fake = g(torch.rand(batch_size, L, device=device) * 2 - 1)
    loss_d = softplus(-d(real)).mean() + softplus(d(fake)).mean()
    opt["discriminator"].zero_grad(set_to_none=True)
    loss_d.backward()
    opt["discriminator"].step()
    # generator: gradients of G's weights only (D's weights are constants here)
    for p in d.parameters():
      p.requires_grad_(False)
    loss_g = softplus(-d(g(torch.rand(batch_size, L, device=device) * 2 - 1))).mean()
    opt["generator"].zero_grad(set_to_none=True)
    loss_g.backward()
    opt["generator"].step()
    for p in d.parameters():
      p.requires_grad_(True)

  return torch_runner(step, threads, device), torch


def main(argv=None):
  return compare_with_torch(argv, description=__doc__.splitlines()[0], config=CONFIG,
                            benchmark="DCGAN 32x32x3 train step (D update + G update), examples/s",
                            pytorch_eager=pytorch_eager, examples=2048)


if __name__ == "__main__":
  main()
