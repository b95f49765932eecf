"""The Family contract: what every generative family says, as pure functions of explicit arguments.

A family is a frozen dataclass (hashable, so it can be a static argument of ``jax.jit``) whose fields are
its hyper-parameters, taken from an experiment config's ``model`` section, plus the ``image_shape`` of the
data it models. It owns its Linen modules and never writes a training loop, a ``jit`` or device code: the
shared step in :mod:`zoo.step` trains every family the same way.

Variables are one dict for every family::

    {"params": {player: params_tree, ...}, collection: tree, ...}

where the collections beside ``params`` are non-trainable state (batch statistics, persistent chains,
running moments) that ``loss`` may update.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import jax
import numpy as np

from zoo.errors import ZooError

Array = jax.Array
Batch = Mapping[str, Array]
Variables = dict[str, Any]

# What a family's log_likelihood returns; the README's tables compare these in the same units (nats).
EXACT = "exact"                      # autoregressive models, flows
LOWER_BOUND = "lower_bound"          # ELBO, IWAE-k
STOCHASTIC_ESTIMATE = "estimate"     # AIS for RBMs and DBNs


@dataclasses.dataclass(frozen=True)
class Family:
  """Base class of every generative family.

  Subclasses are frozen dataclasses registered with :func:`zoo.registry.register` and override
  ``init``, ``loss`` and ``sample``; ``log_likelihood`` where the model has a (bound on the) likelihood.

  Attributes:
    image_shape: (H, W, C) of one example in data space.
    stage: the training stage this instance is at, for families trained in stages (a DBN's greedy
      layers, a Progressive GAN's resolutions). Not a config field: the trainer sets it from the step.
  """
  image_shape: tuple[int, int, int] = (28, 28, 1)
  stage: int = 0

  name: ClassVar[str] = ""
  # One of EXACT, LOWER_BOUND, STOCHASTIC_ESTIMATE, or None for models without a likelihood.
  likelihood_kind: ClassVar[str | None] = None
  # The metric that the train loop reports as the headline of an evaluation, and the best checkpoint
  # is chosen by (lower is better).
  eval_metric: ClassVar[str] = "nll"

  @property
  def players(self) -> tuple[tuple[str, int], ...]:
    """The ordered update schedule at this stage: (player name, updates per step) pairs."""
    return (("model", 1),)

  @property
  def all_players(self) -> tuple[str, ...]:
    """Every player of every stage: each has params, an optimizer and optimizer state from the start."""
    return tuple(p for p, _ in self.players)

  # Training in stages. A family whose training has stages says how many steps each takes; the trainer
  # switches ``stage`` when the step crosses a boundary, which retraces the shared step once per stage.
  # The stage is a function of the step, and the step is in the checkpoint, so a resumed run continues
  # in the right stage.
  @property
  def stage_steps(self) -> tuple[int, ...]:
    """Steps in each stage but the last (which runs to the end); () for a family of one stage."""
    return ()

  def stage_at(self, step: int) -> int:
    """The stage that step ``step`` (the number of steps taken before it) belongs to."""
    stage, boundary = 0, 0
    for n in self.stage_steps:
      boundary += int(n)
      if step < boundary:
        return stage
      stage += 1
    return stage

  @property
  def whole_model_step(self) -> int:
    """The first step at which the model is whole: where an imported (pretrained) model's run stands,
    so that training it further (fine-tuning) continues in the last stage. 0 for one stage."""
    return int(sum(self.stage_steps))

  def at_stage(self, stage: int) -> "Family":
    """This family at ``stage`` (a new hashable instance: the step is jitted once per stage)."""
    return self if stage == self.stage else dataclasses.replace(self, stage=int(stage))

  @property
  def num_dims(self) -> int:
    """Number of dimensions of one example (for bits per dimension)."""
    return int(np.prod(self.image_shape))

  def init(self, rng: Array, batch: Batch) -> Variables:
    """Returns the variables for a batch like ``batch`` (any batch size).

    Args:
      rng: a PRNG key.
      batch: ``{"image": (B, H, W, C) float32 in [0, 1], ...}``.

    Returns:
      ``{"params": {player: tree}, **nontrainable_collections}``.
    """
    raise NotImplementedError

  def loss(self, player: str, variables: Variables, batch: Batch, rng: Array, step: Array
           ) -> tuple[Array, dict[str, Array], dict[str, Any]]:
    """The objective that ``player`` minimises, differentiated w.r.t. ``variables['params'][player]``.

    Args:
      player: one of the names in ``players``.
      variables: all variables (every player's params and the non-trainable collections).
      batch: a batch in data space.
      rng: a PRNG key for this player's update at this step.
      step: the global step (int32 scalar), for schedules inside the objective.

    Returns:
      (scalar loss, dict of scalar metrics, dict of updated non-trainable collections; {} when none).
    """
    raise NotImplementedError

  def sample(self, variables: Variables, rng: Array, num: int, **conditioning) -> Array:
    """Draws ``num`` examples, (num, H, W, C) float32 in data space [0, 1]. Jittable, ``num`` static."""
    raise NotImplementedError

  def log_likelihood(self, variables: Variables, batch: Batch, rng: Array, **estimator) -> Array:
    """Per-example log-likelihood (or the bound/estimate that ``likelihood_kind`` names) in nats, (B,)."""
    raise ZooError(f"the {self.name} family has no likelihood: it is not a density model")

  def complete(self, variables: Variables, batch: Batch, mask: Array, rng: Array, **options) -> Array:
    """Fills in the missing pixels of ``batch['image']`` (inpainting, imputation), (B, H, W, C) in [0, 1].

    ``mask`` broadcasts to (B, H, W, C) and is true (or 1) where a pixel is observed; observed pixels
    come back as given. Families that can condition on part of an image override this and say how.
    """
    raise ZooError(f"the {self.name} family cannot complete partly observed images")

  def eval_context(self, variables: Variables, rng: Array, **estimator) -> dict[str, Any]:
    """Work an evaluation needs once, not per batch (e.g. an AIS estimate of log Z), as collections.

    The evaluator calls it once per evaluation and merges what it returns into the variables that
    ``eval_metrics`` and ``log_likelihood`` then receive. The default needs nothing.
    """
    return {}

  def eval_metrics(self, variables: Variables, batch: Batch, rng: Array, **estimator
                   ) -> dict[str, Array]:
    """Per-example metrics, each (B,), averaged over an evaluation split by the train loop.

    The default reports the negative log-likelihood in nats and bits per dimension; ``estimator``
    options (e.g. ``k=5000`` importance samples) go to ``log_likelihood``.
    """
    nll = -self.log_likelihood(variables, batch, rng, **estimator)
    return {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims)}

  def anomaly_score(self, variables: Variables, batch: Batch, rng: Array) -> Array:
    """Per-example anomaly score, (B,): higher means less like the training data."""
    return -self.log_likelihood(variables, batch, rng)


def bits_per_dim(nats: Array | float, num_dims: int) -> Array | float:
  """Converts a negative log-likelihood in nats per example to bits per dimension."""
  return nats / (num_dims * np.log(2.0))
