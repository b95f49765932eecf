"""What the CD-1, CD-3 and CD-25 RBM configs of this folder share: all but the number of Gibbs steps."""
import ml_collections

EPOCH = 500   # steps of 100 examples in the 50,000 training images


def rbm_config(cd_k: int, variant=None):
  """The RBM of Salakhutdinov & Murray 2008 trained by CD-``cd_k`` (see rbm_cd1.py's docstring)."""
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
      num_hidden=500, cd_k=cd_k, persistent=False, neg_visible="sample", init_std=0.01, sample_steps=1000,
      ais_chains=100, ais_temperatures=5000, final_ais_temperatures=14500, ais_schedule="paper"))
  c.optim = ml_collections.ConfigDict({"model": dict(
      name="sgd", lr=0.1, momentum=0.9, weight_decay=2e-3, decay_mask="matrices", schedule="linear", end_lr=0.0,
      warmup_steps=5 * EPOCH, decay_steps=95 * EPOCH)})
  if variant == "quick":
    c.steps = 300
    c.log_every = 50
    c.eval_every = 300
    c.checkpoint_every = 300
    c.eval_examples = 1000
    c.num_samples = 16
    c.model.sample_steps = 200
    c.model.ais_chains = 16
    c.model.ais_temperatures = 500     # a smoke figure: biased low in log Z (see the docstring)
    c.model.final_ais_temperatures = 3000
    c.optim.model.warmup_steps = 0     # the first step must move the weights (the tests check it)
    c.optim.model.decay_steps = 300
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; known: quick")
  return c
