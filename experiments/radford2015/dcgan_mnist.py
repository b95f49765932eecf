"""DCGAN on grey MNIST digits (28x28): the paper's architecture guidelines and optimizer, offline data.

Paper: Radford, Metz & Chintala 2015, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks" (ICLR 2016). Its figures are image-classification accuracies from the
discriminator's features (CIFAR-10 82.8% with an L2-SVM, features of a DCGAN trained on ImageNet-1k),
not a sample-quality or likelihood figure on digits, which it shows as samples only. We hold the digits
run against the one published figure for GANs on MNIST, the Parzen-window estimate of Goodfellow et al.
2014 (225 +- 2 nats, their MLP GAN), measured by the same protocol (:mod:`zoo.metrics.parzen`); the
FID on the zoo's digit classifier (``zoo eval --metrics fid``) is the better measure of quality and
has no published counterpart.

Model (Section 3 of the paper): G: z ~ U(-1, 1)^100 -> project to 7x7x256, BN, ReLU -> 4x4 stride-2
transposed conv to 14x14x128, BN, ReLU -> to 28x28x1, tanh; D: 4x4 stride-2 convs to 14x14x64 (LeakyReLU
0.2) and 7x7x128 (BN, LeakyReLU) -> dense to 1; weights N(0, 0.02^2); the non-saturating loss; Adam 2e-4,
beta1 0.5; batch 128. The widths and the 28x28 geometry are ours (the paper's models are 64x64 with 1024
channels at 4x4; ``experiments/benchmarks/dcgan32.py`` is the 32x32 one).

Data: ``mnist_5k`` (4,000 train / 1,000 test; no validation split, so ``eval_split = "test"``: the
periodic evaluations and the "best" checkpoint are on the test split; report the final checkpoint).

Command (the README's row: 68 s on a lent NVIDIA H100 shared with another run; Parzen 153.6 +- 5.4 nats,
digit FID 2.88. On the idle 2-core CPU ``zoo bench`` measures 149 examples/s at batch 128 with the zoo's
convolution layers (1.16 steps/s), so the 12,000 steps take about 3 hours there; the Parzen estimate
takes minutes):
  zoo train --config experiments/radford2015/dcgan_mnist.py --workdir runs/radford2015_dcgan_mnist
  python -m zoo.metrics.parzen --workdir runs/radford2015_dcgan_mnist --split test --select-split train > eval.json
  python experiments/table.py record --config experiments/radford2015/dcgan_mnist.py \
      --workdir runs/radford2015_dcgan_mnist --eval eval.json
Variant ``quick``: 150 steps of tiny widths at batch 32: 96 s (31 s of it compiling) on the 2-core CPU
shared with two other jobs.
"""
import ml_collections

REFERENCE = dict(paper="Goodfellow et al. 2014, Table 1 (MLP GAN, MNIST; Radford et al. give no digit figure)",
                 data="mnist_5k (4,000 train / 1,000 test)",
                 metric="test Parzen-window log-likelihood, nats (higher is better)", key="parzen_ll", value=225)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "dcgan"
  c.seed = 0
  c.batch_size = 128
  c.steps = 12_000                # 384 epochs of the 4,000 training digits
  c.log_every = 200
  c.eval_every = 2_000
  c.checkpoint_every = 2_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "test"           # mnist_5k has no validation split
  c.num_samples = 64
  c.data = ml_collections.ConfigDict({"name": "mnist_5k"})
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=100, latent_dist="uniform", objective="non_saturating", n_critic=1,
      g_features=(256, 128), d_features=(64, 128), kernel_size=4, init_std=0.02, bn_momentum=0.9,
      parzen_samples=1000, parzen_sigma=0.2))
  adam = dict(name="adam", lr=2e-4, b1=0.5, b2=0.999)
  c.optim = ml_collections.ConfigDict({"discriminator": dict(adam), "generator": dict(adam)})
  if variant == "quick":
    c.steps = 150
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 150
    c.checkpoint_every = 150
    c.eval_examples = 500
    c.num_samples = 36
    c.model.g_features = (32, 16)
    c.model.d_features = (16, 32)
    c.model.parzen_samples = 500
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
