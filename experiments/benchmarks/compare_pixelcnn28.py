"""The shared step's PixelCNN 28x28 train step against PyTorch eager running the same network, same machine.

Model: experiments/benchmarks/pixelcnn28.py (7x7 mask-A conv 1 -> 64, 10 residual blocks
h + conv3x3_maskB(relu(h)) of 64, relu -> 1x1 conv 64 -> relu -> 1x1 conv to the Bernoulli logits; the
exact NLL summed over the 784 pixels and averaged over the batch; Adam 1e-3) on one batch of binarized
MNIST. The PyTorch twin is NCHW float32 and masks its 7x7 and 3x3 kernels by multiplying them by a
fixed 0/1 mask in the forward pass, as the zoo does (mask A closes the centre tap, mask B opens it; with
one data channel there is no masking between channels, and the 1x1 layers' masks are all ones, so they
are plain convolutions). The two are timed in turns, ``--repeats`` rounds each, and the median
examples/s is reported with the median of the within-round ratios zoo/PyTorch.

  python experiments/benchmarks/compare_pixelcnn28.py [--batches 64 256] [--repeats 5] [--out FILE]
      [--torch-device auto|cpu|cuda]

On a GPU (auto) the twin runs on CUDA, with TF32 as JAX's default float32 there (zoo.bench.torch_device).

PyTorch is optional (``pip install torch==2.13.0``); without it only the zoo's figures are reported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo import data as data_lib
from zoo import optim as optim_lib
from zoo.bench import compare_with_torch, torch_runner

CONFIG = str(Path(__file__).with_name("pixelcnn28.py"))


def torch_pixelcnn(cfg):
  """The PyTorch twin of the config's PixelCNN (one data channel, Bernoulli output): an nn.Module from
  (B, 1, H, W) pixels in {0, 1} to (B, 1, H, W) logits. Kernels lecun-normal (truncated), biases zero,
  as the zoo's; module names follow the zoo's params (conv_a, blocks.i, out.j, logits)."""
  import torch
  from torch import nn
  F = nn.functional
  m = cfg.model
  if m.output != "bernoulli":
    raise ValueError("the PyTorch twin has a Bernoulli output only")
  c, f = 1, m.features

  def lecun_normal_(w):
    std = (1.0 / (w[0].numel())) ** 0.5 / 0.87962566103423978   # flax's truncated normal, fan_in
    nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)

  class MaskedConv2d(nn.Conv2d):
    """A k x k 'SAME' convolution whose weight is multiplied by a fixed raster-order mask: the rows
    above the centre and the taps left of it open, the centre tap open for mask B, closed for mask A."""

    def __init__(self, c_in, c_out, k, mask_type):
      super().__init__(c_in, c_out, k, padding=k // 2)
      mask = torch.zeros(k, k)
      mask[:k // 2] = 1
      mask[k // 2, :k // 2 + (mask_type == "B")] = 1
      self.register_buffer("mask", mask)

    def forward(self, x):
      return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

  class PixelCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv_a = MaskedConv2d(c, f, m.first_kernel, "A")
      self.blocks = nn.ModuleList(MaskedConv2d(f, f, 3, "B") for _ in range(m.blocks))
      widths = (f, *m.output_features)
      self.out = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(widths[:-1], widths[1:]))
      self.logits = nn.Conv2d(widths[-1], c, 1)
      for conv in self.modules():
        if isinstance(conv, nn.Conv2d):
          lecun_normal_(conv.weight)
          nn.init.zeros_(conv.bias)

    def forward(self, x):
      h = self.conv_a(x)
      for block in self.blocks:
        h = h + block(F.relu(h))
      for layer in self.out:
        h = layer(F.relu(h))
      return self.logits(F.relu(h))

  return PixelCNN()


def torch_nll(net, x):
  """The zoo's loss: Bernoulli NLL in nats summed over the pixels, averaged over the batch."""
  import torch
  return torch.nn.functional.binary_cross_entropy_with_logits(net(x), x, reduction="sum") / x.shape[0]


def first_batch(cfg, batch_size: int) -> np.ndarray:
  """The first training batch as the shared step gets it, NCHW float32 in {0, 1}."""
  image = data_lib.load(cfg.data).batch(cfg.train_split, 0, batch_size, seed=int(cfg.seed))["image"]
  return np.ascontiguousarray((np.asarray(image) > 0.5).astype(np.float32).transpose(0, 3, 1, 2))


def pytorch_eager(cfg, batch_size: int, threads: int = 0, device: str = "cpu"):
  """The same PixelCNN step in PyTorch eager (NCHW, float32) on ``device``, with ``threads`` intra-op
  threads (0: PyTorch's default, one per core), or None without torch."""
  try:
    import torch
  except ImportError:
    return None
  torch.manual_seed(0)
  net = torch_pixelcnn(cfg).to(device)
  o = optim_lib.options(cfg.optim.get("model"), "model")
  if o["name"] != "adam" or o["schedule"] != "constant" or o["weight_decay"] or o["clip_norm"]:
    raise ValueError("the PyTorch twin has plain Adam at a constant learning rate only")
  opt = torch.optim.Adam(net.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"])
  x = torch.from_numpy(first_batch(cfg, batch_size)).to(device)
  net.train()

  def step():
    loss = torch_nll(net, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return torch_runner(step, threads, device), torch


def main(argv=None):
  return compare_with_torch(argv, description=__doc__.splitlines()[0], config=CONFIG,
                            benchmark="PixelCNN 28x28x1 train step (binarized MNIST, Bernoulli NLL), examples/s",
                            pytorch_eager=pytorch_eager, examples=1024)


if __name__ == "__main__":
  main()
