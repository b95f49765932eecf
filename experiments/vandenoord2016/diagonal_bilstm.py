"""PixelRNN with Diagonal BiLSTM layers on the fixed binarization of MNIST.

Paper: van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural Networks" (ICML), Table 4:
"Diagonal BiLSTM (7 layers, h = 16)", test NLL 79.20 nats on binarized MNIST (the fixed binarization of
Salakhutdinov & Murray 2008, the zoo's ``binarized_mnist``). Architecture (Sec. 3, Table 1): a 7x7
mask-A convolution to 2h = 32 features, 7 residual Diagonal BiLSTM layers of h = 16 units, ReLU and a
1x1 mask-B convolution to ``output_features`` (the paper does not give this width; ours: 32), ReLU and a
1x1 mask-B convolution to one Bernoulli logit per pixel. The likelihood is exact: the figure is the test
NLL itself. The paper trained with RMSProp and batches of 16 (Sec. 5.2); it gives neither its learning
rate schedule nor the length of training. Ours: RMSProp at 1e-3 decaying exponentially to 1e-4, gradients
clipped at norm 1, 500,000 steps (160 epochs), keeping the checkpoint that is best on the validation split.

Command:
  zoo train --config experiments/vandenoord2016/diagonal_bilstm.py \
      --workdir runs/vandenoord2016_diagonal_bilstm
  zoo eval --workdir runs/vandenoord2016_diagonal_bilstm --split test --best
Hardware and runtime: a full run is an accelerator job. On a 2-core CPU shared with other jobs the train
step runs at 11.9 examples/s at batch 64 (``zoo bench --config experiments/vandenoord2016/diagonal_bilstm.py
--batch 64 --steps 20``), about 4x slower than the Row LSTM's: each layer is two scans of H + W - 1
steps against the Row LSTM's one of H. Sampling 64 images takes 8 s (the cached sampler).
Variant ``quick`` (1 layer, h = 8, 200 steps): 52 s of training on that CPU, valid NLL 106.1 nats
(500 examples), test NLL 105.7.
"""
import ml_collections

# What the README's table holds our figure against (experiments/table.py).
REFERENCE = dict(paper="van den Oord et al. 2016, Table 4 (Diagonal BiLSTM, 7 layers, h=16)",
                 data="binarized MNIST (fixed)", metric="test NLL, nats (exact)", key="nll", value=79.20)


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
      cell="diagonal_bilstm", layers=7, features=16, output_features=32, residual=True,
      output="bernoulli"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="rmsprop", lr=1e-3, decay=0.95, eps=1e-6, clip_norm=1.0, schedule="exponential",
      decay_rate=0.1)})
  if variant == "quick":
    c.steps = 200
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    c.eval_examples = 500
    c.model.update(layers=1, features=8, output_features=16)
    c.optim.model.schedule = "constant"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
