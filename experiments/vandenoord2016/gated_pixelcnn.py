"""Gated PixelCNN on the fixed binarization of MNIST.

Paper: van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu 2016, "Conditional Image
Generation with PixelCNN Decoders" (NeurIPS): vertical and horizontal stacks without the blind spot,
gated tanh * sigmoid units. That paper reports CIFAR-10 and ImageNet, not MNIST; the figure we hold this
against is the PixelCNN row of van den Oord et al. 2016 ("Pixel Recurrent Neural Networks", Table 4,
binarized MNIST: 81.30 nats), which the gated model should match or beat.
Architecture: a 7x7 first layer, 9 more gated layers of 3x3 with 64 channels per stack, a 1x1 ReLU layer
of 64 and a 1x1 output layer of Bernoulli logits. Adam 1e-3 decaying to 1e-4, batch 64. Dropout 0.2 on
the horizontal stack's residual updates and 50,000 steps (64 epochs): both ours, chosen on the validation
split, where the model overfits from about 12,000 steps on (without dropout it overfits sooner); the
checkpoint best on the validation split is kept.

Command:
  zoo train --config experiments/vandenoord2016/gated_pixelcnn.py --workdir runs/vandenoord2016_gated_pixelcnn
  zoo eval --workdir runs/vandenoord2016_gated_pixelcnn --split test --best
  zoo sample --workdir runs/vandenoord2016_gated_pixelcnn --best --complete bottom --out completions.png
Hardware and runtime: see the README's family table. Variant ``quick``: a small net for about a minute
on 2 CPU cores. Variant ``digits``: class-conditional on the 5,000 labelled grey-level digits (a 256-way
softmax per pixel; no paper figure).
"""
import ml_collections

REFERENCE = dict(paper="van den Oord et al. 2016, Table 4 (PixelCNN; the gated paper has no MNIST row)",
                 data="binarized MNIST (fixed)", metric="test NLL, nats (exact)", key="nll", value=81.30)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "gated_pixelcnn"
  c.seed = 0
  c.batch_size = 64
  c.steps = 50_000
  c.log_every = 100
  c.eval_every = 2_000
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 250
  c.eval_split = "valid"
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      features=64, layers=10, first_kernel=7, kernel=3, output_features=(64,), output="bernoulli",
      num_labels=0, dropout=0.2))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="adam", lr=1e-3, schedule="exponential", decay_rate=0.1)})
  if variant in ("quick", "digits_quick"):
    c.steps = 300
    c.batch_size = 32
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 100
    c.eval_examples = 500
    c.num_samples = 16
    c.model.update(features=16, layers=3, output_features=(16,), dropout=0.0)
    c.optim.model.schedule = "constant"
  if variant in ("digits", "digits_quick"):
    c.data = ml_collections.ConfigDict({"name": "mnist_5k"})
    c.model.update(output="categorical", levels=256, num_labels=10)
    c.num_samples = 20
  elif variant not in (None, "quick"):
    raise ValueError(f"unknown variant {variant!r}; known: quick, digits, digits_quick")
  return c
