"""Progressive GAN on grey MNIST digits padded to 32x32: four levels, 4x4 -> 32x32, with fade-ins.

Paper: Karras, Aila, Laine & Lehtinen 2017, "Progressive Growing of GANs for Improved Quality,
Stability, and Variation" (ICLR 2018). Its figures are on CelebA-HQ, LSUN and CIFAR-10 (inception score
8.80, unsupervised; no CIFAR-10 config here: the zoo has no offline CIFAR-10), none on digits. We hold this offline
run against the one published figure for GANs on MNIST, the Parzen-window estimate of Goodfellow et al.
2014 (225 +- 2 nats), by the same protocol (:mod:`zoo.metrics.parzen`); the FID on the zoo's digit
classifier (``zoo eval --metrics fid``) is the better measure and has no published counterpart.

Model: the paper's (see :mod:`zoo.models.progan`): equalized learning rate, pixelwise normalisation,
minibatch stddev (groups of 4), WGAN-GP (lambda 10) with drift 0.001, n_critic 1, Adam (1e-3, 0, 0.99,
eps 1e-8), batch 16, EMA of G at 0.999. Ours: the widths (128, 128, 64, 32 channels at 4, 8, 16, 32;
the paper's are 512 up to 32x32) and a 128-d latent; 28x28 digits zero-padded to 32x32 inside the family
(``net_shape``), samples cropped back; each level fades in over 6,000 steps (96k images) and then
trains 6,000 more (the paper: 800k images each), the last level to the end of the run.

Data: ``mnist_5k`` (4,000 train / 1,000 test; no validation split, so ``eval_split = "test"``: the
periodic evaluations and the "best" checkpoint are on the test split; report the final checkpoint).

Command (a GPU job: on a lent NVIDIA H100 the 48,000 steps take about 8 minutes, shared with other runs;
on 2 idle CPU cores it makes about 3 steps/s at 16x16, fewer at 32x32, so most of a day there). The full
run: Parzen 235.5 +- 6.5 nats (the paper's MLP GAN 225 +- 2), digit FID 0.80 (README):
  zoo train --config experiments/karras2017/progan_mnist.py --workdir runs/karras2017_progan_mnist
  python -m zoo.metrics.parzen --workdir runs/karras2017_progan_mnist --split test --select-split train > eval.json
  python experiments/table.py record --config experiments/karras2017/progan_mnist.py \
      --workdir runs/karras2017_progan_mnist --eval eval.json
Variant ``quick``: 160 steps through all four levels (three fade-ins), tiny widths: 328 s on the 2-core
CPU shared with three other jobs, most of it the four compilations of the step (one per level, about
40 s each there, with the gradient penalty's second-order gradient).
"""
import ml_collections

REFERENCE = dict(paper="Goodfellow et al. 2014, Table 1 (MLP GAN, MNIST; Karras et al. give no digit figure)",
                 data="mnist_5k (4,000 train / 1,000 test), padded to 32x32",
                 metric="test Parzen-window log-likelihood, nats (higher is better)", key="parzen_ll", value=225)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "progan"
  c.seed = 0
  c.batch_size = 16
  c.steps = 48_000                # 6k at 4x4; 12k at each of 8, 16 (fade + stable); 18k at 32x32
  c.log_every = 200
  c.eval_every = 3_000
  c.checkpoint_every = 3_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "test"           # mnist_5k has no validation split
  c.num_samples = 64
  c.ema = {"generator": 0.999}
  c.data = ml_collections.ConfigDict({"name": "mnist_5k"})
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=128, latent_dist="normal", objective="wgan_gp", n_critic=1, gp_weight=10.0,
      drift_weight=0.001, features=(128, 128, 64, 32), net_shape=(32, 32, 1), fade_steps=6_000,
      stable_steps=6_000, mbstd_group=4, parzen_samples=1000, parzen_sigma=0.2))
  adam = dict(name="adam", lr=1e-3, b1=0.0, b2=0.99, eps=1e-8)
  c.optim = ml_collections.ConfigDict({"discriminator": dict(adam), "generator": dict(adam)})
  if variant == "quick":
    c.steps = 160                 # levels start at steps 0, 20, 60, 100; fades of 20 steps
    c.log_every = 20
    c.eval_every = 160
    c.checkpoint_every = 80
    c.eval_examples = 500
    c.num_samples = 36
    c.model.latent_dim = 32
    c.model.features = (16, 16, 8, 8)
    c.model.fade_steps = 20
    c.model.stable_steps = 20
    c.model.parzen_samples = 500
    c.ema = {"generator": 0.9}
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
