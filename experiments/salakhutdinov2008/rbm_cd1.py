"""RBM with 500 hidden units trained by CD-1 on binarized MNIST; test log-likelihood by AIS.

Paper: Salakhutdinov & Murray 2008, "On the Quantitative Analysis of Deep Belief Networks" (ICML),
The CD1(500) RBM, test log-probability about -125.5 nats, estimated with AIS (100 runs,
14,500 inverse temperatures; base-rate initial distribution). Data: the fixed binarization of MNIST
(Larochelle & Murray 2011), whose 50,000 + 10,000 train and valid images are the paper's 60,000 training
images; we train on the 50,000 and select on the 10,000.

Training follows Hinton's practical guide (UTML TR 2010-003) and the Hinton & Salakhutdinov 2006 RBM
code's numbers: weights from N(0, 0.01^2), batches of 100, rate 0.1 with momentum 0.9 (warmed up over the
first 5 epochs instead of the guide's 0.5 -> 0.9 momentum switch, which the optimizer config cannot
express), weight cost 2e-4 inside the momentum, i.e. 2e-3 decoupled here (applied to biases too), and
the rate decaying linearly to 0 over 100 epochs (our choice; the paper does not give its schedule).

Command (2-core CPU: about 0.5 h to train; the final AIS about 2 min):
  zoo train --config experiments/salakhutdinov2008/rbm_cd1.py --workdir runs/salakhutdinov2008_rbm_cd1
  zoo eval --workdir runs/salakhutdinov2008_rbm_cd1 --split test --k 100 --best
``--k 100`` runs 100 AIS chains over ``model.final_ais_temperatures`` = 14,500 temperatures (the paper's
protocol); evaluations during training use 100 chains x 1,000 temperatures. Variant ``quick``: 300 steps,
seconds on 2 CPU cores.
"""
import ml_collections

REFERENCE = dict(paper="Salakhutdinov & Murray 2008 (CD1(500) RBM)", data="binarized MNIST (fixed)",
                 metric="test NLL, nats (AIS, 100 x 14,500)", key="nll", value=125.5)

EPOCH = 500   # steps of 100 examples in the 50,000 training images


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "rbm"
  c.seed = 0
  c.batch_size = 100
  c.steps = 100 * EPOCH
  c.log_every = 500
  c.eval_every = 10 * EPOCH
  c.checkpoint_every = 10 * EPOCH
  c.keep_checkpoints = 3
  c.eval_batch_size = 1000
  c.eval_split = "valid"
  c.num_samples = 64
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      num_hidden=500, cd_k=1, persistent=False, neg_visible="sample", init_std=0.01, sample_steps=1000,
      ais_chains=100, ais_temperatures=1000, final_ais_temperatures=14500, ais_schedule="paper"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="sgd", lr=0.1, momentum=0.9, weight_decay=2e-3, schedule="linear", end_lr=0.0,
      warmup_steps=5 * EPOCH, decay_steps=95 * EPOCH)})
  if variant == "quick":
    c.steps = 300
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.eval_examples = 1000
    c.num_samples = 16
    c.model.sample_steps = 200
    c.model.ais_chains = 32
    c.model.ais_temperatures = 300
    c.model.final_ais_temperatures = 1000
    c.optim.model.warmup_steps = 30
    c.optim.model.decay_steps = 270
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
