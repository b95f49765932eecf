"""Masked autoencoder for distribution estimation, MADE (Germain et al. 2015).

An MLP from the D values of an image to the D conditionals, whose weights are masked so that output d
depends only on the values before d in an ordering. Each unit gets a *degree*: input d the position of d
in the ordering, 0 .. D-1; a hidden unit an integer drawn uniformly from [the smallest degree of the layer
below, D-2]. A hidden unit of degree m sees the units below of degree <= m; output d sees the last
hidden units of degree < its position (and, with ``direct``, the inputs before it). So output d depends
on the inputs before it, and only on those.

Connectivity-agnostic training: ``num_masks`` mask sets (degrees and, with ``order_agnostic``, the
ordering) are drawn once from ``mask_seed``; training step s uses mask set s % num_masks, so a run is
reproducible and a resumed run uses the same masks. At test time the likelihood is that of the uniform
mixture of the first M mask sets' models, log (1/M) sum_m p_m(x) (M = ``test_masks``, or the estimator
option ``masks``): still an exact likelihood, of the ensemble. ``ordering=m`` in ``network_logits``,
``logits``, ``order``, ``sample`` and ``complete`` picks mask set m.

The masks are not parameters: the degrees are NumPy constants (a few thousand integers, cached per
configuration) and each mask is built in the graph by comparing degrees, so jit sees constants, and a
step's mask set can be chosen by a traced index.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ConfigError
from zoo.family import bits_per_dim
from zoo.models import _layers
from zoo.models._autoregressive import Autoregressive
from zoo.registry import register


@functools.lru_cache(maxsize=32)
def connectivity(num_dims: int, hidden: tuple[int, ...], num_masks: int, order_agnostic: bool,
                 seed: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
  """The mask sets' orderings and hidden degrees, drawn from ``seed``.

  Mask set m is drawn after sets 0 .. m-1 from one generator, so it does not depend on ``num_masks``.

  Returns:
    (orders (M, D) int32: order[m, i] is the flat index generated at step i of mask set m;
    one (M, H_l) int32 array of hidden degrees per hidden layer).
  """
  rng = np.random.default_rng(seed)
  orders, degrees = [], [[] for _ in hidden]
  for _ in range(num_masks):
    orders.append(rng.permutation(num_dims) if order_agnostic else np.arange(num_dims))
    low = 0
    for layer, width in enumerate(hidden):
      d = rng.integers(low, max(num_dims - 2, low) + 1, size=width)
      degrees[layer].append(d)
      low = int(d.min())
  as_int = lambda a: np.asarray(a, np.int32)
  return as_int(orders), tuple(as_int(d) for d in degrees)


_INITS = {"lecun_normal": nn.initializers.lecun_normal, "orthogonal": nn.initializers.orthogonal}


class _MaskedDense(nn.Module):
  """Dense layer whose (in, out) kernel is multiplied by a 0/1 mask given at call time."""
  features: int
  use_bias: bool = True
  kernel_init: str = "lecun_normal"

  @nn.compact
  def __call__(self, x, mask):
    kernel = self.param("kernel", _INITS[self.kernel_init](), (x.shape[-1], self.features))
    y = x @ (kernel * mask.astype(kernel.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))[None]
    return y


class _MADENet(nn.Module):
  """(B, D) inputs and masks -> (B, D * K) logits, output d's K logits contiguous."""
  hidden: tuple[int, ...]
  outputs: int
  activation: str
  direct: bool
  kernel_init: str = "lecun_normal"

  @nn.compact
  def __call__(self, x, hidden_masks, out_mask, direct_mask):
    act = _layers.activation(self.activation)
    dense = functools.partial(_MaskedDense, kernel_init=self.kernel_init)
    h = x
    for i, (width, mask) in enumerate(zip(self.hidden, hidden_masks)):
      h = act(dense(width, name=f"dense_{i}")(h, mask))
    if not self.hidden:                     # a linear autoregressive model: the direct weights only
      return dense(self.outputs, name="out")(x, direct_mask)
    out = dense(self.outputs, name="out")(h, out_mask)
    if self.direct:
      out = out + dense(self.outputs, use_bias=False, name="direct")(x, direct_mask)
    return out


@functools.partial(jax.jit, static_argnums=0)
def _init(family: "MADE", rng):
  """The network's variables, jitted once per configuration (eagerly, its many small ops are slow)."""
  return family.net.init(rng, jnp.zeros((1, family.num_dims)), *family.masks(0))


@register("made")
@dataclasses.dataclass(frozen=True)
class MADE(Autoregressive):
  """MADE: a masked MLP, trained over ``num_masks`` connectivities (and orderings), tested as their mixture.

  Attributes:
    hidden: widths of the hidden layers; () with ``direct`` is a linear autoregressive model.
    activation: hidden-layer nonlinearity (the paper uses ReLU).
    num_masks: mask sets trained over, one per step in turn (1: a single fixed MADE).
    order_agnostic: each mask set has its own random ordering; otherwise all use raster order and
      differ in their hidden connectivity only.
    direct: masked direct connections from the inputs to the outputs, beside the hidden layers.
    test_masks: M, the mask sets in the likelihood's ensemble (0: all ``num_masks``).
    kernel_init: the weights' initializer before masking, ``lecun_normal`` or ``orthogonal`` (the authors').
    mask_seed: the seed of the masks (independent of the run's seed, which initialises the weights).
    output, levels: see ``Autoregressive``.
  """
  hidden: tuple[int, ...] = (500, 500)
  activation: str = "relu"
  num_masks: int = 1
  order_agnostic: bool = False
  direct: bool = False
  test_masks: int = 0
  mask_seed: int = 0
  kernel_init: str = "lecun_normal"

  @property
  def num_orderings(self) -> int:
    """Mask sets that ``ordering`` picks from (the base's class attribute, per instance here)."""
    return int(self.num_masks)

  def validate(self):
    self.validate_output()
    _layers.activation(self.activation)
    if any(int(w) < 1 for w in self.hidden):
      raise ConfigError(f"model.hidden widths must be >= 1, got {tuple(self.hidden)}")
    if not self.hidden and not self.direct:
      raise ConfigError("model.hidden is empty and model.direct is False: the outputs would see no "
                        "input; give hidden widths or set model.direct=True")
    if self.kernel_init not in _INITS:
      raise ConfigError(f"model.kernel_init must be one of {', '.join(_INITS)}, got {self.kernel_init!r}")
    if int(self.num_masks) < 1:
      raise ConfigError(f"model.num_masks must be >= 1, got {self.num_masks}")
    if not 0 <= int(self.test_masks) <= int(self.num_masks):
      raise ConfigError(f"model.test_masks must be in [0, num_masks={self.num_masks}] (0: all), "
                        f"got {self.test_masks}")

  # --- masks -------------------------------------------------------------------------------------

  def _connectivity(self):
    return connectivity(self.num_dims, tuple(int(w) for w in self.hidden), int(self.num_masks),
                        bool(self.order_agnostic), int(self.mask_seed))

  def _check_ordering(self, ordering):
    if isinstance(ordering, (int, np.integer)) and not 0 <= int(ordering) < int(self.num_masks):
      raise ConfigError(f"the {self.name} family has {self.num_masks} mask set(s); ordering={ordering} "
                        "does not exist")

  def order(self, ordering=0) -> np.ndarray:
    """Mask set ``ordering``'s generation order, (D,) flat indices (a traced index gives a jax array)."""
    self._check_ordering(ordering)
    orders, _ = self._connectivity()
    if isinstance(ordering, (int, np.integer)):
      return orders[int(ordering)]
    return jnp.asarray(orders)[ordering]

  def masks(self, ordering=0):
    """Mask set ``ordering``'s 0/1 masks: (per hidden layer (in, out), output (H_L, D*K), direct (D, D*K)).

    A Python int gives NumPy constants; a traced index (the train step's mask set) gives jax arrays.
    """
    self._check_ordering(ordering)
    orders, degrees = self._connectivity()
    xp = np if isinstance(ordering, (int, np.integer)) else jnp
    position = xp.asarray(np.argsort(orders, axis=1).astype(np.int32))[ordering]     # (D,)
    below = [position] + [xp.asarray(d)[ordering] for d in degrees]
    hidden = [below[l + 1][None, :] >= below[l][:, None] for l in range(len(degrees))]
    out_position = xp.repeat(position, self.num_classes)                  # output d's K logits
    out = out_position[None, :] > below[-1][:, None]
    direct = out_position[None, :] > position[:, None]
    return tuple(hidden), out, direct

  # --- the network -------------------------------------------------------------------------------

  @property
  def net(self) -> _MADENet:
    return _MADENet(tuple(int(w) for w in self.hidden), self.num_dims * self.num_classes,
                    self.activation, bool(self.direct), self.kernel_init)

  def init(self, rng, batch):
    return {"params": {"model": _init(self, rng)["params"]}}

  def network_logits(self, variables, u, ordering=0, **kw):
    """(B, H, W, C) network input -> (B, H, W, C, K) logits under mask set ``ordering`` (int or traced)."""
    self._no_options(kw)
    b = u.shape[0]
    out = self.net.apply({"params": variables["params"]["model"]}, u.reshape(b, -1), *self.masks(ordering))
    return out.reshape(b, *self.image_shape, self.num_classes)

  def _no_options(self, kw):
    if kw:
      raise ConfigError(f"unknown option(s) {', '.join(sorted(kw))} for the {self.name} family: its "
                        "likelihood takes masks=M (mask sets in the ensemble) or ordering=m (one set)")

  # --- likelihood and loss -----------------------------------------------------------------------

  def _log_prob(self, variables, x, ordering):
    """log p_m(x) under mask set m = ``ordering`` (int or traced), (B,)."""
    lp = self.log_prob_from_logits(x, self.logits(variables, x, ordering=ordering))
    return jnp.sum(lp, axis=(1, 2, 3))

  def _ensemble_size(self, masks) -> int:
    m = int(masks) if masks is not None else (int(self.test_masks) or int(self.num_masks))
    if not 1 <= m <= int(self.num_masks):
      raise ConfigError(f"masks={m}: the {self.name} model has {self.num_masks} mask set(s); the "
                        f"ensemble takes 1 to {self.num_masks}")
    return m

  def mask_log_likelihoods(self, variables, x, masks: int):
    """log p_m(x) for the first ``masks`` mask sets, (masks, B), one set at a time."""
    if masks == 1:
      return self._log_prob(variables, x, 0)[None]
    return jax.lax.map(lambda m: self._log_prob(variables, x, m), jnp.arange(masks))

  def log_likelihood(self, variables, batch, rng=None, masks=None, ordering=None, **kw):
    """Exact log-likelihood per example, (B,), in nats.

    Args:
      variables: the family's variables.
      batch: ``{"image": (B, H, W, C)}``.
      rng: unused (the likelihood is exact).
      masks: M, the ensemble log (1/M) sum_{m<M} p_m(x) (default ``test_masks``, else ``num_masks``).
      ordering: one mask set m's log p_m(x) instead of the ensemble.
    """
    self._no_options(kw)
    x = batch["image"]
    self.check_batch(x)
    if ordering is not None:
      if masks is not None:
        raise ConfigError("give masks=M (an ensemble) or ordering=m (one mask set), not both")
      return self._log_prob(variables, x, ordering)
    m = self._ensemble_size(masks)
    return jax.scipy.special.logsumexp(self.mask_log_likelihoods(variables, x, m), axis=0) - np.log(m)

  def eval_metrics(self, variables, batch, rng, masks=None, **kw):
    """The ensemble's NLL and bits/dim, and with an ensemble of M > 1 the NLL of mask set 0 alone."""
    self._no_options(kw)
    x = batch["image"]
    self.check_batch(x)
    m = self._ensemble_size(masks)
    per_mask = self.mask_log_likelihoods(variables, x, m)
    nll = np.log(m) - jax.scipy.special.logsumexp(per_mask, axis=0)
    out = {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims)}
    if m > 1:
      out["nll_one_mask"] = -per_mask[0]
    return out

  def loss(self, player, variables, batch, rng, step):
    """The NLL under mask set ``step % num_masks``: connectivity-agnostic training, one set per step."""
    x = batch["image"]
    m = jnp.asarray(step, jnp.int32) % int(self.num_masks) if int(self.num_masks) > 1 else 0
    nll = -jnp.mean(self._log_prob(variables, x, m))
    return nll, {"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims)}, {}
