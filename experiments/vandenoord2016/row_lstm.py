"""PixelRNN with Row LSTM layers on the fixed binarization of MNIST.

Paper: van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks" (ICML), Table 4:
"Row LSTM", test NLL 80.54 nats on binarized MNIST (the fixed binarization of Salakhutdinov & Murray 2008,
the zoo's ``binarized_mnist``). The paper gives the size of its MNIST Diagonal BiLSTM (7 layers, h = 16)
but not of its Row LSTM; we use the same size. Architecture (Sec. 3, Table 1): a 7x7 mask-A convolution
to 2h = 32 features, 7 residual Row LSTM layers of h = 16 units (input-to-state a 1x3 mask-B convolution
along the row, state-to-state a 1x3 convolution of the row above), ReLU and a 1x1 mask-B convolution to
``output_features`` (not given in the paper; ours: 32), ReLU and a 1x1 mask-B convolution to one
Bernoulli logit per pixel. The likelihood is exact: the figure is the test NLL itself. The paper trained
with RMSProp and batches of 16 (Sec. 5.2); it gives neither its learning rate schedule nor the length of
training. Ours: RMSProp at 1e-3 decaying exponentially to 1e-4, gradients clipped at norm 1, 500,000
steps (160 epochs), keeping the checkpoint that is best on the validation split.

Command:
  zoo train --config experiments/vandenoord2016/row_lstm.py --workdir runs/vandenoord2016_row_lstm
  zoo eval --workdir runs/vandenoord2016_row_lstm --split test --best
Hardware and runtime: a full run is an accelerator job. On a 2-core CPU shared with other jobs the train
step runs at 43.6 examples/s at batch 64 (``zoo bench --config experiments/vandenoord2016/row_lstm.py
--batch 64 --steps 20``); sampling 64 images takes 8 s (the cached sampler).
Variant ``quick`` (2 layers, h = 8, 300 steps): 38 s of training on that CPU, valid NLL 103.9 nats
(500 examples), test NLL 103.4.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py).
REFERENCE = dict(paper="van den Oord et al. 2016, Table 4 (Row LSTM)", data="binarized MNIST (fixed)",
                 metric="test NLL, nats (exact)", key="nll", value=80.54)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "pixelrnn"
  c.seed = 0
  c.batch_size = 16
  c.steps = 500_000            # 160 epochs of the 50,000 training images
  c.log_every = 500
  c.eval_every = 25_000
  c.checkpoint_every = 25_000
  c.keep_checkpoints = 3
  c.eval_batch_size = 250
  c.eval_split = "valid"
  c.num_samples = 16
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      cell="row_lstm", layers=7, features=16, output_features=32, residual=True, output="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="rmsprop", lr=1e-3, decay=0.95, eps=1e-6, clip_norm=1.0, schedule="exponential",
      decay_rate=0.1)})
  if variant == "quick":
    c.steps = 300
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.eval_examples = 500
    c.model.update(layers=2, features=8, output_features=16)
    c.optim.model.schedule = "constant"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
