"""Feature extractors of the sample-quality metrics, and batched, jitted feature extraction.

Two extractors, by name:

- ``"digits"``: the zoo's digit classifier (:mod:`zoo.metrics.classifier`), for 28x28 grey images;
  ``features`` are its 128 pooled conv features, ``logits`` its 10 class logits. Offline.
- ``"inception"``: the FID InceptionV3 (:mod:`zoo.metrics.inception`) with the standard FID weights
  file; ``features`` are the 2048 pool3 features, ``logits`` the 1008 logits without the fc bias (what
  the original Inception Score takes the softmax of).

Before either sees them, images are quantized to 8 bits (``round(255 x) / 255``), as the reference
implementations' images are by being saved as PNG files; ``quantize=False`` skips it. Perceptual path
length does not quantize: its images differ by an epsilon step.

Extraction runs the jitted network on fixed-size batches (the last one padded), so it compiles once and
holds one batch on the device at a time; features come back to the host as float32 numpy arrays.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from zoo import step as step_lib
from zoo.errors import ZooError

__all__ = ["EXTRACTORS", "FeatureExtractor", "Sampler", "cache_dir", "extract", "get_extractor",
           "iterate_images", "quantize"]

EXTRACTORS = ("digits", "inception")
# A sampler: (num, seed) -> (num, H, W, C) images in [0, 1], e.g. ``zoo.load(workdir).sample``.
Sampler = Callable[[int, int], Any]
Source = Union[np.ndarray, jax.Array, Sampler, Iterable[np.ndarray]]


def cache_dir() -> Path:
  """The zoo's cache folder: $ZOO_CACHE, else ~/.cache/zoo."""
  return Path(os.environ.get("ZOO_CACHE") or Path.home() / ".cache" / "zoo").expanduser()


def quantize(images: jax.Array) -> jax.Array:
  """Rounds [0, 1] images to the 256 levels of an 8-bit PNG (values clipped to [0, 1] first)."""
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0) / 255.0


def _unit_channels(x: jax.Array) -> jax.Array:
  return x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + 1e-10)


@dataclasses.dataclass(eq=False)
class FeatureExtractor:
  """A network that maps images to features (FID, KID, P/R), logits (IS) and feature maps (PPL).

  Attributes:
    name: 'digits' or 'inception'.
    digest: identifies the weights (a sha256 prefix); reference statistics are cached under it.
    num_features: the size of ``features``.
    num_classes: the size of ``logits``.
    image_shape: the (H, W, C) the network takes, or None for any size (C in 1 or 3).
    batch_size: images per jitted call.
    variables: the network's variables.
    apply: ``(variables, images, taps) -> {"features", "logits"[, "taps"]}`` for (B, H, W, C) images
      in [0, 1]; ``taps`` is a list of (B, h, w, c) feature maps.
  """
  name: str
  digest: str
  num_features: int
  num_classes: int
  image_shape: tuple[int, int, int] | None
  batch_size: int
  variables: Any
  apply: Callable[..., dict]

  def check(self, shape: tuple[int, ...]) -> None:
    """Fails with a clear message when images of ``shape`` (..., H, W, C) do not suit the network."""
    hwc = tuple(shape[-3:])
    if self.image_shape is not None and hwc != self.image_shape:
      hint = "; use features='inception' for other images" if self.name == "digits" else ""
      raise ZooError(f"the {self.name} feature extractor takes images of shape {self.image_shape}, "
                     f"got {hwc}{hint}")
    if self.image_shape is None and (len(hwc) != 3 or hwc[-1] not in (1, 3)):
      raise ZooError(f"the {self.name} feature extractor takes (H, W, 1 or 3) images, got {hwc}")

  @functools.cached_property
  def _features_fn(self):
    def fn(variables, images, quantized):
      x = quantize(images) if quantized else images.astype(jnp.float32)
      out = self.apply(variables, x, False)
      return {"features": out["features"], "logits": out["logits"]}
    return jax.jit(fn, static_argnums=2, compiler_options=self.compiler_options)

  @property
  def compiler_options(self) -> dict | None:
    """The XLA options the network compiles with: on a CPU the zoo's CPU options, as the eval step's
    (``zoo.step.CPU_OPTIONS_FOR``'s 'features': the FID Inception 1.5-1.6x), else XLA's defaults (None)."""
    return step_lib.compiler_options(Mesh(np.array([self.device]), ("data",)), "features")

  @property
  def device(self) -> jax.Device:
    """The device the network runs on (that of its variables)."""
    return next(iter(jax.tree_util.tree_leaves(self.variables)[0].devices()))

  def features(self, images: jax.Array, quantized: bool = True) -> dict[str, jax.Array]:
    """``{"features": (B, num_features), "logits": (B, num_classes)}`` of (B, H, W, C) images in [0, 1]."""
    return self._features_fn(self.variables, jax.device_put(images, self.device), quantized)

  def perceptual_distance(self, a: jax.Array, b: jax.Array, variables: Any = None) -> jax.Array:
    """An LPIPS-like distance between image pairs (B, H, W, C), (B,); traceable (PPL jits it).

    Each feature map of ``taps`` is unit-normalised over channels at every position; the distance is
    the squared difference, summed over channels, averaged over positions, summed over the maps:
    LPIPS (Zhang et al. 2018) with uniform instead of learned channel weights, on this network.
    ``variables`` default to the extractor's (pass them to keep them out of a jitted function's
    constants).
    """
    variables = self.variables if variables is None else variables
    fa = self.apply(variables, a, True)["taps"]
    fb = self.apply(variables, b, True)["taps"]
    total = 0.0
    for x, y in zip(fa, fb):
      total = total + jnp.mean(jnp.sum(jnp.square(_unit_channels(x) - _unit_channels(y)), -1), (1, 2))
    return total


def _digits(batch_size: int | None) -> FeatureExtractor:
  from zoo.metrics import classifier
  variables, _ = classifier.load()
  net = classifier.DigitNet()

  def apply(v, x, taps):
    out = net.apply(v, x, taps=taps)
    return {"features": out["pool"], "logits": out["logits"], **({"taps": out["taps"]} if taps else {})}

  return FeatureExtractor("digits", classifier.file_digest()[:16], 128, classifier.NUM_CLASSES,
                          classifier.IMAGE_SHAPE, batch_size or 1000, jax.device_put(variables), apply)


def _inception(weights: str | os.PathLike | None, batch_size: int | None,
               precision: str) -> FeatureExtractor:
  from zoo.metrics import inception
  variables = inception.load_fid_weights(weights)    # None: the default place, downloaded there if online
  path = Path(weights).expanduser() if weights is not None else inception.default_weights_path()
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return inception_extractor(variables, digest, batch_size, precision)


def inception_extractor(variables: Any, digest: str, batch_size: int | None = None,
                        precision: str = "highest") -> FeatureExtractor:
  """The FID Inception as a FeatureExtractor over ``variables`` (``get_extractor('inception')`` loads the FID
  weights; a benchmark may give random ones), ``digest`` naming them."""
  from zoo.metrics import inception
  net = inception.FIDInceptionV3(precision=precision)

  def apply(v, x, taps):
    out = net.apply(v, inception.preprocess(x), taps=taps)
    return {"features": out["pool"], "logits": out["logits_unbiased"],
            **({"taps": out["taps"]} if taps else {})}

  return FeatureExtractor("inception", digest, 2048, inception.NUM_CLASSES, None, batch_size or 100,
                          jax.device_put(variables), apply)


@functools.lru_cache(maxsize=4)
def get_extractor(name: str = "digits", inception_weights: str | None = None,
                  batch_size: int | None = None, precision: str = "highest") -> FeatureExtractor:
  """The feature extractor ``name`` ('digits' or 'inception'), loaded once per process.

  Args:
    name: 'digits' or 'inception'.
    inception_weights: path of the FID weights file (``inception`` only); default
      ``zoo.metrics.inception.default_weights_path()``.
    batch_size: images per jitted call (default 1000 for digits, 100 for inception).
    precision: of the Inception network's convolutions ('highest', 'high' or 'default').

  Returns:
    A FeatureExtractor.
  """
  if name == "digits":
    return _digits(batch_size)
  if name == "inception":
    return _inception(inception_weights, batch_size, precision)
  raise ZooError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}")


def _seed(base: int, i: int) -> int:
  return int(np.random.SeedSequence([int(base), int(i)]).generate_state(1)[0] >> 1)


def iterate_images(source: Source, num: int | None, batch_size: int, seed: int = 0
                   ) -> Iterator[np.ndarray | jax.Array]:
  """Yields ``source``'s images in batches of ``batch_size`` (the last one may be smaller).

  Args:
    source: an (N, H, W, C) array; a sampler ``(num, seed) -> images`` called with ``batch_size``
      and a seed derived from ``seed`` and the batch's index (the last call is trimmed); or an
      iterable of (B, H, W, C) batches.
    num: how many images (default: all of an array or iterable; required for a sampler).
    batch_size: images per batch.
    seed: the sampler's base seed.
  """
  if callable(source):
    if not num or num < 1:
      raise ZooError("a sampler needs num_samples >= 1")
    for i, lo in enumerate(range(0, num, batch_size)):
      images = source(batch_size, _seed(seed, i))
      yield images[:min(batch_size, num - lo)]
    return
  if not hasattr(source, "shape"):   # an iterable of image batches
    left = num
    for images in source:
      for lo in range(0, len(images), batch_size):
        part = images[lo:lo + batch_size]
        if left is not None:
          part = part[:left]
          left -= len(part)
        if len(part):
          yield part
        if left is not None and left <= 0:
          return
    return
  if getattr(source, "ndim", 0) != 4:
    raise ZooError(f"images must be (N, H, W, C), got shape {getattr(source, 'shape', None)}")
  n = len(source) if num is None else min(int(num), len(source))
  for lo in range(0, n, batch_size):
    yield source[lo:min(lo + batch_size, n)]


def extract(extractor: FeatureExtractor, source: Source, num: int | None = None, *, seed: int = 0,
            quantized: bool = True) -> dict[str, np.ndarray]:
  """Features and logits of images, or of a sampler's samples, in jitted fixed-size batches.

  Args:
    extractor: a FeatureExtractor.
    source: (N, H, W, C) images in [0, 1], a sampler ``(num, seed) -> images``, or an iterable of
      image batches.
    num: how many (default: all of an array or iterable; required for a sampler).
    seed: the sampler's base seed.
    quantized: round images to 8 bits first (the references' PNG round trip).

  Returns:
    ``{"features": (N, num_features), "logits": (N, num_classes)}`` float32 numpy arrays.
  """
  bs = extractor.batch_size
  feats, logits = [], []
  pending = None
  for images in iterate_images(source, num, bs, seed):
    extractor.check(images.shape)
    k = images.shape[0]
    images = jax.device_put(images, extractor.device).astype(jnp.float32)
    if k < bs:   # pad so that every call has the compiled shape
      images = jnp.pad(images, ((0, bs - k), (0, 0), (0, 0), (0, 0)))
    out = extractor.features(images, quantized)
    if pending is not None:   # fetch the previous batch while this one runs
      feats.append(np.asarray(pending[0]["features"])[:pending[1]])
      logits.append(np.asarray(pending[0]["logits"])[:pending[1]])
    pending = (out, k)
  if pending is not None:
    feats.append(np.asarray(pending[0]["features"])[:pending[1]])
    logits.append(np.asarray(pending[0]["logits"])[:pending[1]])
  if not feats:
    raise ZooError("no images to extract features from")
  return {"features": np.concatenate(feats).astype(np.float32),
          "logits": np.concatenate(logits).astype(np.float32)}
