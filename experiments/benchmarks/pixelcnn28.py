"""Throughput benchmark: PixelCNN on binarized MNIST, 28x28x1 (van den Oord et al. 2016's residual PixelCNN).

A 7x7 mask-A convolution (the centre tap closed) from the 1 input channel to 64 channels, 10 residual
blocks h + conv3x3_maskB(relu(h)) of 64 channels (the centre tap open), then ReLU -> 1x1 convolution to 64
-> ReLU -> 1x1 convolution to the 1 Bernoulli logit per pixel; 'SAME' padding throughout, so every layer
is 28x28. The loss is the exact negative log-likelihood, Bernoulli over the 784 pixels summed and
averaged over the batch; Adam 1e-3 (constant), batch 64. The data are the zoo's offline fixed
binarization of MNIST (binarized_mnist). This is the network of experiments/vandenoord2016/pixelcnn.py
(without its learning-rate decay and dropout).

Measured through the shared step with
  zoo bench --config experiments/benchmarks/pixelcnn28.py --batch 64 --steps 30
  zoo bench --config experiments/benchmarks/pixelcnn28.py --batch 256 --steps 10
and against PyTorch eager running the same network on the same machine, in one run, with
  python experiments/benchmarks/compare_pixelcnn28.py --out experiments/benchmarks/results/pixelcnn28_cpu2.json
"""
import ml_collections


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "pixelcnn"
  c.seed = 0
  c.batch_size = 64
  c.steps = 50
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint_every = 0
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      features=64, blocks=10, first_kernel=7, output_features=(64,), output="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(name="adam", lr=1e-3)})
  if variant == "quick":
    c.steps = 5
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
