"""Throughput benchmark: the MLP VAE 784-500-50-500-784 (ReLU, Bernoulli decoder, Adam).

One hidden layer of 500 ReLU units on each side, 50 latent units. Measured through the shared step with
  zoo bench --config experiments/benchmarks/vae_mlp.py --batch 128 --steps 300
  zoo bench --config experiments/benchmarks/vae_mlp.py --batch 1024 --steps 100
and against a hand-written jitted JAX step and PyTorch eager of the same model, in one run, with
  python experiments/benchmarks/compare_vae_mlp.py
Reference on a 2-core CPU (the issue's measurement): hand-written JAX 18.5k examples/s at batch 128 and
25.8k at batch 1024; PyTorch eager 13.6k and 21.4k.
"""
import ml_collections


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "vae"
  c.seed = 0
  c.batch_size = 128
  c.steps = 300
  c.log_every = 100
  c.eval_every = 0
  c.checkpoint_every = 0
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      encoder="mlp", hidden=(500,), activation="relu", latent_dim=50, likelihood="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(name="adam", lr=1e-3)})
  if variant == "quick":
    c.steps = 20
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
