"""Denoising autoencoder on binarized MNIST (Vincent, Larochelle, Bengio & Manzagol 2008).

Paper: "Extracting and Composing Robust Features with Denoising Autoencoders": masking noise (each input
zeroed with probability 0.25 here), cross-entropy reconstruction of the clean input. An autoencoder has no
likelihood; its figure is the test reconstruction cross-entropy in nats, and its reconstruction error is
its anomaly score. Set ``model.noise='none'`` for the plain autoencoder.

Command:
  zoo train --config experiments/vincent2008/dae.py --workdir runs/vincent2008_dae
Variant ``quick``: under a minute on 2 CPU cores.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py): the paper reports the
# classification error of stacked-DAE features, not a reconstruction figure, so there is no number.
REFERENCE = dict(paper="Vincent et al. 2008 (denoising, 25% masking)", data="binarized MNIST (fixed)",
                 metric="test reconstruction cross-entropy, nats", key="recon", value="—")


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "autoencoder"
  c.seed = 0
  c.batch_size = 100
  c.steps = 50_000
  c.log_every = 500
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.eval_batch_size = 500
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      encoder="mlp", hidden=(500,), activation="relu", latent_dim=32, reconstruction="bce",
      noise="masking", noise_level=0.25))
  c.optim = ml_collections.ConfigDict({"model": dict(name="adam", lr=1e-3)})
  if variant == "quick":
    c.steps = 1_000
    c.log_every = 100
    c.eval_every = 500
    c.checkpoint_every = 500
    c.eval_examples = 2_000
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
