"""PixelCNN on the fixed binarization of MNIST.

Paper: van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks", Table 4
(binarized MNIST, PixelCNN: 81.30 nats test NLL, exact).
Architecture: a 7x7 mask-A convolution to 64 channels, 10 residual blocks h + conv3x3_maskB(relu(h)) of 64
channels, a 1x1 mask-B ReLU layer of 64 and a 1x1 output layer of Bernoulli logits (the architecture of
experiments/benchmarks/pixelcnn28.py; the paper does not print its MNIST PixelCNN's width, so this is
ours, not a claim to be theirs). Adam 1e-3 decaying to 1e-4, batch 64; dropout 0.15 on each residual
block's branch (ours, chosen on the validation split: without it the model overfits from about 25,000
steps on); the checkpoint best on the validation split is kept.

Command:
  zoo train --config experiments/vandenoord2016/pixelcnn.py --workdir runs/vandenoord2016_pixelcnn
  zoo eval --workdir runs/vandenoord2016_pixelcnn --split test --best
  zoo sample --workdir runs/vandenoord2016_pixelcnn --best --complete bottom --out completions.png
Hardware and runtime: see the README's family table. On a 2-core CPU a step of batch 64 is about a second
(issue 7 is about making it faster), so an epoch is about 15 minutes there; a GPU does it in seconds.
Variant ``quick``: a small net for about a minute on 2 CPU cores.
"""
import ml_collections

REFERENCE = dict(paper="van den Oord et al. 2016, Table 4 (PixelCNN)", data="binarized MNIST (fixed)",
                 metric="test NLL, nats (exact)", key="nll", value=81.30)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "pixelcnn"
  c.seed = 0
  c.batch_size = 64
  c.steps = 200_000            # 256 epochs of the 50,000 training images
  c.log_every = 100
  c.eval_every = 5_000
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 250
  c.eval_split = "valid"
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      features=64, blocks=10, first_kernel=7, output_features=(64,), output="bernoulli", dropout=0.15))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="adam", lr=1e-3, schedule="exponential", decay_rate=0.1)})
  if variant == "quick":
    c.steps = 300
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 100
    c.eval_examples = 500
    c.num_samples = 16
    c.model.update(features=16, blocks=2, output_features=(16,), dropout=0.0)
    c.optim.model.schedule = "constant"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
