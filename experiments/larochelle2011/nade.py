"""NADE on the fixed binarization of MNIST, 500 sigmoid hidden units, raster order.

Paper: Larochelle & Murray 2011, "The Neural Autoregressive Distribution Estimator" (AISTATS). Held
against NADE on binarized MNIST as van den Oord et al. 2016 quote it in their Table 4 (the yardstick of
issue 3): test NLL 88.33 nats (exact, no estimator). Data: the
fixed binarization of MNIST that the paper published (50,000 train, 10,000 valid, 10,000 test images).

The paper trained with stochastic gradient descent, choosing the rate and a decrease constant on the
validation set and stopping early; we train with Adam (rate 1e-3 decaying exponentially to 1e-4) and
keep the checkpoint that is best on the validation split, which plays the role of early stopping.

Command:
  zoo train --config experiments/larochelle2011/nade.py --workdir runs/larochelle2011_nade
  zoo eval --workdir runs/larochelle2011_nade --split test --best
Hardware and runtime: not yet run in full. On a 2-core CPU (shared) a step at batch 100 takes 0.64 s
(1.6 steps/s), so the 100,000 steps want about 18 h there; an evaluation of the 10,000 validation
images takes about 7 s. GPU time not measured (the likelihood is a 784-step ``lax.scan``).
Variant ``quick``: a minute on 2 CPU cores (64 hidden units, 600 steps at a constant rate of 5e-3); a
smoke figure, not a result.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py).
REFERENCE = dict(paper="Larochelle & Murray 2011 (NADE), as in van den Oord et al. 2016, Table 4",
                 data="binarized MNIST (fixed)",
                 metric="test NLL, nats (exact)", key="nll", value=88.33)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "nade"
  c.seed = 0
  c.batch_size = 100
  c.steps = 100_000            # 200 epochs of the 50,000 training images
  c.log_every = 500
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "valid"
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(hidden=500, output="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="adam", lr=1e-3, schedule="exponential", decay_rate=0.1)})
  if variant == "quick":
    c.model.hidden = 64
    c.steps = 600
    c.log_every = 100
    c.eval_every = 600
    c.checkpoint_every = 300
    c.eval_examples = 1_000
    c.num_samples = 16
    c.optim.model.schedule = "constant"
    c.optim.model.lr = 5e-3
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
