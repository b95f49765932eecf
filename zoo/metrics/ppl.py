"""Perceptual path length (Karras et al. 2019, "A Style-Based Generator Architecture for GANs", §4.1).

For latent pairs ``z0, z1 ~ p(z)`` and ``t ~ U(0, 1)`` (sampling 'full'; 'end' takes t = 0), the
images at ``interp(z0, z1, t)`` and ``interp(z0, z1, t + eps)`` are compared in a perceptual feature
space, and the distance is scaled by ``1 / eps^2``:

    PPL = E[ d(G(interp(z0, z1, t)), G(interp(z0, z1, t + eps))) / eps^2 ],   eps = 1e-4,

after discarding the distances below the 1st and above the 99th percentile (``np.percentile`` with
'lower' and 'higher' interpolation, keeping the ends, as the StyleGAN code does).

- ``interp``: 'slerp' (the paper's, for Gaussian latents), spherical interpolation of the latent
  vectors as they are, ``sin((1-t) w) / sin w z0 + sin(t w) / sin w z1`` with ``w`` the angle between
  them (Shoemake; it keeps a Gaussian latent's typical norm; StyleGAN also normalises to the unit
  sphere, which its mapping network's input normalisation makes harmless and which would take a VAE's
  N(0, I) latents far from their prior), or 'lerp' (linear, the paper's choice for its W space).
- ``d``: the paper uses LPIPS (VGG-16 with learned channel weights, Zhang et al. 2018), which cannot be
  had offline. The zoo's distance is LPIPS's form with uniform weights on the zoo's own networks: each
  feature map is unit-normalised over channels at each position, squared differences are summed over
  channels, averaged over positions and summed over the maps (:meth:`FeatureExtractor
  .perceptual_distance`): the digit classifier's three conv layers, or five Inception stages. The
  figures are comparable between models measured with the same extractor, not with published PPLs.

Families with a latent space are found by duck typing: a family with ``latent_dim`` and ``decode
(variables, z)`` (images in [0, 1]). Latents come from the family's ``latent_prior(variables)`` where
it has one (a distribution fitted in training: the autoencoder's Gaussian of its codes), else its
``latents(rng, num)`` (the GANs: normal or uniform), else N(0, I) (the VAE's prior). Images are not
quantized.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ZooError

__all__ = ["INTERPOLATIONS", "SAMPLINGS", "default_interpolation", "filtered_mean", "has_latent_space",
           "interpolate", "normal_prior", "path_lengths", "perceptual_path_length"]

INTERPOLATIONS = ("slerp", "lerp")
SAMPLINGS = ("full", "end")


def has_latent_space(family) -> bool:
  """Whether a family has a latent space to walk: ``latent_dim`` and ``decode(variables, z)``."""
  return isinstance(getattr(family, "latent_dim", None), int) and callable(getattr(family, "decode", None))


def default_interpolation(family) -> str:
  """'lerp' for a family whose latents are uniform (``latent_dist == 'uniform'``: a box, which slerp
  can leave) or fitted to its codes (``latent_prior(variables)``: a Gaussian away from the origin, which
  slerp's arcs about the origin leave), else 'slerp' (the paper's, for centred Gaussian latents)."""
  fitted = callable(getattr(family, "latent_prior", None))
  return "lerp" if fitted or getattr(family, "latent_dist", None) == "uniform" else "slerp"


def interpolate(a: jax.Array, b: jax.Array, t: jax.Array, kind: str = "slerp") -> jax.Array:
  """Interpolates latents a, b (B, L) at t (B, 1): 'lerp' or 'slerp' (Shoemake, norms kept)."""
  if kind == "lerp":
    return a + (b - a) * t
  if kind != "slerp":
    raise ZooError(f"unknown interpolation {kind!r}; known: {', '.join(INTERPOLATIONS)}")
  na = jnp.sqrt(jnp.sum(jnp.square(a), -1, keepdims=True))
  nb = jnp.sqrt(jnp.sum(jnp.square(b), -1, keepdims=True))
  cos = jnp.clip(jnp.sum(a * b, -1, keepdims=True) / jnp.maximum(na * nb, 1e-12), -1.0, 1.0)
  omega = jnp.arccos(cos)
  sin = jnp.sin(omega)
  near = sin < 1e-6          # (anti)parallel: fall back to lerp
  safe = jnp.where(near, 1.0, sin)
  out = (jnp.sin((1.0 - t) * omega) * a + jnp.sin(t * omega) * b) / safe
  return jnp.where(near, a + (b - a) * t, out)


def normal_prior(latent_dim: int) -> Callable[[jax.Array, int], jax.Array]:
  """``(rng, num) -> (num, latent_dim)`` draws of N(0, I)."""
  return lambda rng, num: jax.random.normal(rng, (num, latent_dim))


def path_lengths(decode: Callable[[jax.Array], jax.Array],
                 distance: Callable[[jax.Array, jax.Array], jax.Array],
                 prior: Callable[[jax.Array, int], jax.Array], rng: jax.Array, num: int, *,
                 epsilon: float = 1e-4, interpolation: str = "slerp", sampling: str = "full") -> jax.Array:
  """One batch of scaled distances ``d(G(z_t), G(z_{t+eps})) / eps^2``, (num,). Traceable.

  Args:
    decode: latents (B, L) -> images (B, H, W, C).
    distance: (images, images) -> (B,) perceptual distances.
    prior: ``(rng, num) -> (num, L)`` latent draws.
    rng: a PRNG key.
    num: pairs in the batch.
    epsilon: the step.
    interpolation: 'slerp' or 'lerp'.
    sampling: 'full' (t ~ U(0, 1)) or 'end' (t = 0).
  """
  if sampling not in SAMPLINGS:
    raise ZooError(f"unknown PPL sampling {sampling!r}; known: {', '.join(SAMPLINGS)}")
  k0, k1, kt = jax.random.split(rng, 3)
  z0, z1 = prior(k0, num), prior(k1, num)
  t = jax.random.uniform(kt, (num, 1)) if sampling == "full" else jnp.zeros((num, 1))
  za = interpolate(z0, z1, t, interpolation)
  zb = interpolate(z0, z1, t + epsilon, interpolation)
  images = decode(jnp.concatenate([za, zb]))
  return distance(images[:num], images[num:]) / (epsilon ** 2)


def filtered_mean(distances: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> float:
  """The mean of the distances between the ``lower`` and ``upper`` percentiles (ends kept), in float64."""
  d = np.asarray(distances, np.float64)
  lo = np.percentile(d, lower, method="lower")
  hi = np.percentile(d, upper, method="higher")
  return float(np.mean(d[(d >= lo) & (d <= hi)]))


def perceptual_path_length(decode: Callable[[Any, jax.Array], jax.Array],
                           distance: Callable[[Any, jax.Array, jax.Array], jax.Array], latent_dim: int, *,
                           decode_variables: Any = None, distance_variables: Any = None,
                           prior: Callable[[jax.Array, int], jax.Array] | None = None,
                           num_samples: int = 100_000, batch_size: int = 500, epsilon: float = 1e-4,
                           interpolation: str = "slerp", sampling: str = "full", seed: int = 0,
                           percentiles: tuple[float, float] = (1.0, 99.0)) -> dict[str, float]:
  """The perceptual path length of a decoder, in jitted batches.

  Args:
    decode: ``(decode_variables, latents (B, L)) -> images (B, H, W, C)`` in [0, 1]; traceable.
    distance: ``(distance_variables, images, images) -> (B,)``; traceable.
    latent_dim: L.
    decode_variables, distance_variables: the networks' variables, passed to the jitted function as
      arguments (not baked into it as constants).
    prior: ``(rng, num) -> (num, latent_dim)`` latent draws; default N(0, I).
    num_samples: latent pairs (the paper: 100,000).
    batch_size: pairs per jitted call.
    epsilon: the interpolation step (the paper: 1e-4).
    interpolation: 'slerp' or 'lerp'.
    sampling: 'full' or 'end'.
    seed: of the latents.
    percentiles: the (lower, upper) percentiles kept.

  Returns:
    ``{"ppl": filtered mean, "ppl_unfiltered": plain mean}``.
  """
  if num_samples < 1:
    raise ZooError(f"PPL needs num_samples >= 1, got {num_samples}")
  if interpolation not in INTERPOLATIONS:
    raise ZooError(f"unknown interpolation {interpolation!r}; known: {', '.join(INTERPOLATIONS)}")
  bs = min(int(batch_size), int(num_samples))
  prior = prior or normal_prior(latent_dim)
  fn = jax.jit(lambda dv, sv, key: path_lengths(
      lambda z: decode(dv, z), lambda a, b: distance(sv, a, b), prior, key, bs, epsilon=epsilon,
      interpolation=interpolation, sampling=sampling))
  key = jax.random.PRNGKey(seed)
  out = [fn(decode_variables, distance_variables, jax.random.fold_in(key, i))
         for i in range(-(-num_samples // bs))]
  d = np.concatenate([np.asarray(o, np.float64) for o in out])[:num_samples]
  return {"ppl": filtered_mean(d, *percentiles), "ppl_unfiltered": float(np.mean(d))}
