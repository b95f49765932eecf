"""Deep belief network 784-500-2000 on binarized MNIST, trained greedily; AIS lower bound on log p(x).

Paper: Salakhutdinov & Murray 2008, "On the Quantitative Analysis of Deep Belief Networks" (ICML), its
DBN-CD1 model: the first layer is the CD25(500) RBM, the second an RBM of 2,000 hidden
units trained by CD-1 on the first layer's hidden states; the test log-probability's variational lower
bound, with log Z of the top RBM by AIS (100 runs, 14,500 temperatures), is about -86.2 nats. Murray &
Salakhutdinov 2009 put the DBN at 84.55 nats, the figure quoted in van den Oord et al. 2016 (Pixel RNN),
Table 4; the table holds ours against the 2008 bound, which is what we estimate.

Greedy training is two stages of the shared step (``model.layer_steps``): layer 0 for 100 epochs with
CD-25, then layer 1 for 100 epochs with CD-1 on binary samples of q(h1 | x). Optimizer settings as in
``rbm_cd1.py`` (Hinton's guide), per layer; each layer's schedule counts its own updates.

Command (2-core CPU shared with another job: about 1.8 h for layer 0, CD-25 at 8.9 steps/s, and about
0.5 h for layer 1 (estimated), evaluations included; the final AIS of the 500-2000 top RBM about 3 min):
  zoo train --config experiments/salakhutdinov2008/dbn.py --workdir runs/salakhutdinov2008_dbn
  zoo eval --workdir runs/salakhutdinov2008_dbn --split test --k 100
Variant ``from_rbm`` takes layer 0 from a finished ``rbm_cd25.py`` run (the same model, trained by the
same config, so the 1.8 h are not spent twice) and trains layer 1 only:
  zoo train --config experiments/salakhutdinov2008/rbm_cd25.py --workdir runs/salakhutdinov2008_rbm_cd25
  zoo train --config experiments/salakhutdinov2008/dbn.py:from_rbm --workdir runs/salakhutdinov2008_dbn
(``--config.init_from.workdir=DIR`` points it at another RBM run.)
Evaluations during stage 0 measure the one-RBM DBN (its AIS log-likelihood); from stage 1 on, the
two-layer bound. The figure is the last checkpoint's (not ``--best``, which may pick a stage-0 one).
Evaluations during training use 100 AIS chains x 5,000 temperatures. Variant ``quick``: 200 + 200
steps of CD-1, seconds on 2 CPU cores; its AIS figures are smoke figures (see ``rbm_cd1.py``).
"""
import ml_collections

REFERENCE = dict(paper="Salakhutdinov & Murray 2008 (DBN-CD1, 784-500-2000); 84.55 in van den Oord et al. "
                       "2016, Table 4", data="binarized MNIST (fixed)",
                 metric="test NLL bound, nats (AIS, 100 x 14,500)", key="nll", value=86.2)

EPOCH = 500   # steps of 100 examples in the 50,000 training images


def _optim(total_steps: int) -> dict:
  return dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=2e-3, decay_mask="matrices", schedule="linear", end_lr=0.0,
              warmup_steps=5 * EPOCH, decay_steps=total_steps - 5 * EPOCH)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.family = "dbn"
  c.seed = 0
  c.batch_size = 100
  layer0, layer1 = 100 * EPOCH, 100 * EPOCH
  c.steps = layer0 + layer1
  c.log_every = 500
  c.eval_every = 10 * EPOCH
  c.checkpoint_every = 10 * EPOCH
  c.keep_checkpoints = 3
  c.eval_batch_size = 1000
  c.eval_split = "valid"
  c.num_samples = 64
  c.data = ml_collections.ConfigDict({"name": "binarized_mnist"})
  c.model = ml_collections.ConfigDict(dict(
      hidden=(500, 2000), cd_k=(25, 1), layer_steps=(layer0,), persistent=False, neg_visible="sample",
      upward="sample", init_std=0.01, sample_steps=1000, bound_samples=10,
      ais_chains=100, ais_temperatures=5000, final_ais_temperatures=14500, ais_schedule="paper"))
  c.optim = ml_collections.ConfigDict({"layer0": _optim(layer0), "layer1": _optim(layer1)})
  if variant == "from_rbm":
    # Greedy training reuses the first layer: it is the CD25(500) RBM of rbm_cd25.py, as in the paper,
    # copied with its data statistics from that run's last checkpoint; only layer 1 trains here.
    c.steps = layer1
    c.eval_every = 50 * EPOCH        # twice; the figure is the final checkpoint's test evaluation
    c.model.layer_steps = (0,)
    c.init_from = ml_collections.ConfigDict(dict(workdir="runs/salakhutdinov2008_rbm_cd25", step=-1,
                                                 players={"layer0": "model"}))
  elif variant == "quick":
    c.steps = 400
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    c.eval_examples = 1000
    c.num_samples = 16
    c.model.cd_k = (1, 1)
    c.model.layer_steps = (200,)
    c.model.sample_steps = 200
    c.model.ais_chains = 16
    c.model.ais_temperatures = 500     # a smoke figure: biased low in log Z (see the docstring)
    c.model.final_ais_temperatures = 3000
    for layer in ("layer0", "layer1"):
      c.optim[layer].warmup_steps = 0   # the first step must move the weights (the tests check it)
      c.optim[layer].decay_steps = 200
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: from_rbm, quick")
  return c
