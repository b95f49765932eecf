"""Gaussian-Bernoulli RBM with 500 hidden units on 5,000 grey-level MNIST digits (``mnist_5k``).

Recipe: Hinton 2010, "A Practical Guide to Training Restricted Boltzmann Machines" (UTML TR 2010-003),
section 13.2: each pixel standardized to zero mean and unit variance (here with the running statistics
of the training data the family keeps, the standard deviation floored at ``model.min_std`` = 0.05 for
MNIST's constant border), unit-variance Gaussian visible units, noise-free reconstructions
(``neg_visible='mean'``), and a learning rate well below the binary RBM's (0.005 with momentum 0.9,
weight cost 2e-3 decoupled), batches of 100, CD-1, 500 epochs of the 4,000 training digits.

Held against: no published likelihood exists for this subset. Our figure is the AIS estimate of the test
log-density of the 1,000 test digits in [0, 1]^784 (continuous, so it is not comparable with the
binarized-MNIST tables, and it can be negative), and the sample grid. ``mnist_5k`` has no validation
split, so periodic evaluations use the test split: report the last checkpoint, not ``--best``.

Command (2-core CPU, shared with another job: about 8 min to train with its evaluations):
  zoo train --config experiments/hinton2010/grbm_mnist5k.py --workdir runs/hinton2010_grbm_mnist5k
  zoo eval --workdir runs/hinton2010_grbm_mnist5k --split test --k 100
  zoo sample --workdir runs/hinton2010_grbm_mnist5k --num 64 --out grbm.png
Evaluations during training use 100 AIS chains x 5,000 temperatures. Variant ``quick``: 300 steps,
seconds on 2 CPU cores; its AIS figures are smoke figures (see ``salakhutdinov2008/rbm_cd1.py``).
"""
import ml_collections

REFERENCE = dict(paper="Hinton 2010, practical guide, 13.2 (Gaussian visible units)", data="MNIST 5k (grey)",
                 metric="test NLL of the density on [0,1]^784, nats (AIS, 100 x 14,500)", key="nll",
                 value="—")

EPOCH = 40   # steps of 100 examples in the 4,000 training digits


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "gaussian_rbm"
  c.seed = 0
  c.batch_size = 100
  c.steps = 500 * EPOCH
  c.log_every = 200
  c.eval_every = 50 * EPOCH
  c.checkpoint_every = 50 * EPOCH
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "test"
  c.num_samples = 64
  c.data = ml_collections.ConfigDict({"name": "mnist_5k"})
  c.model = ml_collections.ConfigDict(dict(
      num_hidden=500, cd_k=1, persistent=False, neg_visible="mean", init_std=0.01, min_std=0.05,
      sample_steps=1000, ais_chains=100, ais_temperatures=5000, final_ais_temperatures=14500,
      ais_schedule="paper"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="sgd", lr=0.005, momentum=0.9, weight_decay=2e-3, decay_mask="matrices", schedule="linear", end_lr=0.0,
      warmup_steps=5 * EPOCH, decay_steps=495 * EPOCH)})
  if variant == "quick":
    c.steps = 300
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.num_samples = 16
    c.model.sample_steps = 200
    c.model.ais_chains = 16
    c.model.ais_temperatures = 500     # a smoke figure: biased low in log Z (see the docstring)
    c.model.final_ais_temperatures = 3000
    c.optim.model.warmup_steps = 0     # the first step must move the weights (the tests check it)
    c.optim.model.decay_steps = 300
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
