"""Throughput benchmark: DCGAN at 32x32x3 (Radford et al. 2015's guidelines; the usual CIFAR-10 size).

G: z ~ U(-1, 1)^100 -> dense (no bias) to 4x4x256, BN, ReLU -> 4x4 stride-2 transposed convs to 8x8x128
and 16x16x64 (BN, ReLU) -> 32x32x3, tanh. D: 4x4 stride-2 convs to 16x16x64 (LeakyReLU 0.2), 8x8x128
and 4x4x256 (BN, LeakyReLU) -> dense to 1. Weights N(0, 0.02^2), Adam 2e-4 (beta1 0.5) for both players,
the non-saturating loss; one train step = one discriminator update (a real and a fake batch) and one
generator update. The data are the offline grey digits (mnist_5k) zero-padded to 32x32 and repeated over
3 channels inside the family (``net_shape``), so the networks compute exactly what they would on CIFAR-10.

Measured through the shared step with
  zoo bench --config experiments/benchmarks/dcgan32.py --batch 64 --steps 50
  zoo bench --config experiments/benchmarks/dcgan32.py --batch 256 --steps 20
and against PyTorch eager running the same architecture on the same machine, in one run, with
  python experiments/benchmarks/compare_dcgan32.py --out experiments/benchmarks/results/dcgan32_cpu2.json
"""
import ml_collections


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "dcgan"
  c.seed = 0
  c.batch_size = 64
  c.steps = 50
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 0
  c.data = ml_collections.ConfigDict({"name": "mnist_5k"})
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=100, latent_dist="uniform", objective="non_saturating", n_critic=1,
      g_features=(256, 128, 64), d_features=(64, 128, 256), kernel_size=4, init_std=0.02, bn_momentum=0.9,
      net_shape=(32, 32, 3)))
  adam = dict(name="adam", lr=2e-4, b1=0.5, b2=0.999)
  c.optim = ml_collections.ConfigDict({"discriminator": dict(adam), "generator": dict(adam)})
  if variant == "quick":
    c.steps = 5
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
