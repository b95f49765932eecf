"""MADE on the fixed binarization of MNIST: 2 hidden layers of 500 ReLUs, 32 mask sets, order-agnostic.

Paper: Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation"
(ICML). Held against its best binarized-MNIST row, 2 hidden layers of 500 units trained over 32 masks:
test NLL 86.64 nats, the likelihood of the ensemble of the 32 masks' models (an exact likelihood of
their mixture). Data: the fixed binarization of MNIST (Larochelle & Murray 2011): 50,000 train, 10,000
valid, 10,000 test images.

Training cycles through the 32 mask sets, one per step (connectivity- and order-agnostic: each set has
its own hidden degrees and its own random input ordering, all drawn from ``model.mask_seed``; with
``model.order_agnostic=False`` all sets keep the raster order, which learned slower here: 127.4 nats
on the validation split after 20,000 steps against 111.1 for the order-agnostic sets); the
evaluation averages the probabilities of all 32 sets (``model.test_masks`` = 0: all) and also reports
``nll_one_mask``, mask set 0 alone. We train with Adam (rate 1e-3 decaying exponentially to 1e-4) and
keep the checkpoint that is best on the validation split, in place of the paper's early stopping.

Command:
  zoo train --config experiments/germain2015/made.py --workdir runs/germain2015_made
  zoo eval --workdir runs/germain2015_made --split test --best
  zoo eval --workdir runs/germain2015_made --split test --best --estimator masks=8   # a smaller ensemble
Hardware and runtime: not yet run in full. On a 2-core CPU (shared): 59 steps/s at batch 100, so the
250,000 steps take about 1.2 h, plus about 30 s per evaluation of the 10,000 validation images over the
32 masks (25 evaluations).
Variant ``quick``: the same model for 2,000 steps (4 epochs), a minute on 2 CPU cores; a smoke figure.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py).
REFERENCE = dict(paper="Germain et al. 2015 (MADE, 2 x 500, 32 masks), as in van den Oord et al. 2016, Table 4",
                 data="binarized MNIST (fixed)",
                 metric="test NLL, nats (exact, ensemble of 32 masks)", key="nll", value=86.64,
                 also={"nll_one_mask": "with one mask"})


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "made"
  c.seed = 0
  c.batch_size = 100
  c.steps = 250_000            # 500 epochs of the 50,000 training images
  c.log_every = 500
  c.eval_every = 10_000
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "valid"
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      hidden=(500, 500), activation="relu", num_masks=32, order_agnostic=True, direct=False,
      test_masks=0, mask_seed=0, output="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="adam", lr=1e-3, schedule="exponential", decay_rate=0.1)})
  if variant == "quick":
    c.steps = 2_000
    c.log_every = 100
    c.eval_every = 2_000
    c.checkpoint_every = 500
    c.eval_examples = 1_000
    c.num_samples = 16
    c.optim.model.schedule = "constant"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
