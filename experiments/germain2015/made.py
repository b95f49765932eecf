"""MADE on the fixed binarization of MNIST: 2 hidden layers of 8000 ReLUs, 32 mask sets, order-agnostic.

Paper: Germain, Gregor, Murray & Larochelle 2015, "MADE: Masked Autoencoder for Distribution Estimation"
(ICML). Held against its best binarized-MNIST row, 2 hidden layers trained over 32 masks: test NLL
86.64 nats, the likelihood of the ensemble of the 32 masks' models (an exact likelihood of their
mixture). Data: the fixed binarization of MNIST (Larochelle & Murray 2011): 50,000 train, 10,000 valid,
10,000 test images.

The architecture and optimizer are those of the command the authors publish for this result (the
README of their code, github.com/mgermain/MADE): hidden layers of 8000 and 8000 ReLUs, direct masked
connections from the inputs to the outputs, orthogonal initialisation, Adagrad at rate 0.01, batch 100,
32 mask sets each with its own random ordering and hidden connectivity, one set per step in turn, and
early stopping on the validation NLL with a look-ahead of 30 epochs. We run a fixed budget of steps and
keep the checkpoint best on the validation split in place of their early stopping. The evaluation
averages the probabilities of all 32 sets (``model.test_masks`` = 0: all) and also reports
``nll_one_mask``, mask set 0 alone.

This model (76 M weights, about 46 GFLOP a step) is a job for an accelerator: a step is about a
millisecond on one GPU and about half a second on a 2-core CPU.

Command:
  zoo train --config experiments/germain2015/made.py --workdir runs/germain2015_made
  zoo eval --workdir runs/germain2015_made --split test --best
  zoo eval --workdir runs/germain2015_made --split test --best --estimator masks=8   # a smaller ensemble
Hardware and runtime: see the README's family table.
Variant ``small``: 2 hidden layers of 500, no direct connections, Adam 1e-3 decaying to 1e-4, for a
CPU. On a 2-core CPU (shared) 59 steps/s at batch 100; it underfits: validation NLL 116.8, 111.1,
108.9, 107.7, 106.8, 106.1, 105.6, 105.1 nats after 10k, 20k, ..., 80k steps (with all sets in raster
order, ``model.order_agnostic=False``, 127.4 after 20k steps).
Variant ``quick``: the small model for 2,000 steps (4 epochs), a minute on 2 CPU cores; a smoke figure.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py).
REFERENCE = dict(paper="Germain et al. 2015 (MADE, 2 hidden layers, 32 masks), as in van den Oord et al. 2016, Table 4",
                 data="binarized MNIST (fixed)",
                 metric="test NLL, nats (exact, ensemble of 32 masks)", key="nll", value=86.64,
                 also={"nll_one_mask": "with one mask"})


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "made"
  c.seed = 0
  c.batch_size = 100
  c.steps = 150_000            # 300 epochs of the 50,000 training images
  c.log_every = 500
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "valid"
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      hidden=(8000, 8000), activation="relu", num_masks=32, order_agnostic=True, direct=True,
      test_masks=0, mask_seed=0, kernel_init="orthogonal", output="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="adagrad", lr=0.01, initial_accumulator=0.0, eps=1e-6)})
  if variant in ("small", "quick"):
    c.steps = 250_000
    c.eval_every = 10_000
    c.checkpoint_every = 10_000
    c.model.update(hidden=(500, 500), direct=False, kernel_init="lecun_normal")
    c.optim.model = dict(name="adam", lr=1e-3, schedule="exponential", decay_rate=0.1)
  if variant == "quick":
    c.steps = 2_000
    c.log_every = 100
    c.eval_every = 2_000
    c.checkpoint_every = 500
    c.eval_examples = 1_000
    c.num_samples = 16
    c.optim.model.schedule = "constant"
  elif variant not in (None, "small"):
    raise ValueError(f"unknown variant {variant!r}; known: small, quick")
  return c
