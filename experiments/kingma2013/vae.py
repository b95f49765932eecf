"""VAE on the fixed binarization of MNIST, one stochastic layer, in the architecture of Burda et al. 2015.

Papers: Kingma & Welling 2013, "Auto-Encoding Variational Bayes"; Burda, Grosse & Salakhutdinov 2015,
"Importance Weighted Autoencoders", Appendix D (the fixed binarization of Larochelle & Murray 2011).
Architecture: 784 -> 200 -> 200 tanh -> 50 Gaussian latents -> 200 -> 200 tanh -> 784 Bernoulli logits,
trained with k=1 (the ELBO). Held against: test NLL 88.71 nats by IWAE-5000 (Burda et al. 2015, App. D,
VAE, one stochastic layer, k=1). Their main table's 86.76 is on dynamically binarized MNIST, another data
set.

Command:
  zoo train --config experiments/kingma2013/vae.py --workdir runs/kingma2013_vae
  zoo eval --workdir runs/kingma2013_vae --split test --k 5000
Hardware and runtime: see the README's family table (2-core CPU: about 2 s per epoch of training).
Burda et al. trained for 3,280 epochs with Adam (eps 1e-4) and a step-wise decaying rate; we train for
fewer epochs with the rate decaying exponentially from 1e-3 to 1e-4, and keep the checkpoint that is best
on the validation split (the fixed binarization overfits). Variant ``quick``: a minute on 2 CPU cores.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py).
REFERENCE = dict(paper="Burda et al. 2015, App. D (VAE, 1 stochastic layer, k=1)",
                 data="binarized MNIST (fixed)", metric="test NLL, nats (IWAE-5000)",
                 key="nll_iwae5000", value=88.71, also={"nll_elbo": "by the ELBO"})


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "vae"
  c.seed = 0
  c.batch_size = 100
  c.steps = 500_000            # 1,000 epochs of the 50,000 training images
  c.log_every = 500
  c.eval_every = 10_000
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "valid"
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      encoder="mlp", hidden=(200, 200), activation="tanh", latent_dim=50, likelihood="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="adam", lr=1e-3, eps=1e-4, schedule="exponential", decay_rate=0.1)})
  if variant == "quick":
    c.steps = 2_000
    c.log_every = 100
    c.eval_every = 1_000
    c.checkpoint_every = 500
    c.eval_examples = 2_000
    c.optim.model.schedule = "constant"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
