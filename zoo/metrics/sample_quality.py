"""Sample-quality metrics of generative models: FID, KID, Inception Score, precision/recall and PPL.

The Python API::

    import zoo
    from zoo import metrics
    loaded = zoo.load("runs/vae")
    metrics.evaluate_model(loaded, ("fid", "kid", "is", "pr", "ppl"), num_samples=10_000)

    # or any images / sampler against any reference:
    ref = metrics.reference_features("binarized_mnist", "test", features="digits")   # cached
    metrics.evaluate_samples(samples, ref, metrics=("fid", "pr"))                   # (N, 28, 28, 1)

The reference ("real") set is a split of a data set, read through :mod:`zoo.data`; its features and
their mean and covariance are cached in ``$ZOO_CACHE/metrics`` (``~/.cache/zoo/metrics``), keyed by
data set, split, number of examples and feature extractor (its weights' sha256), so a second
evaluation against the same data reads one file. Samples are never cached.

Which reference each metric follows is in its module: :mod:`zoo.metrics.fid`, :mod:`zoo.metrics.kid`,
:mod:`zoo.metrics.inception_score`, :mod:`zoo.metrics.precision_recall`, :mod:`zoo.metrics.ppl`; the
feature extractors and the image preprocessing are in :mod:`zoo.metrics.features`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import jax
import numpy as np

from zoo.errors import ConfigError, ZooError, nearest
from zoo.metrics import features as features_lib
from zoo.metrics.fid import feature_stats, frechet_distance
from zoo.metrics.inception_score import inception_score
from zoo.metrics.kid import kernel_inception_distance
from zoo.metrics.ppl import default_interpolation, has_latent_space, perceptual_path_length
from zoo.metrics.precision_recall import precision_recall

__all__ = ["DEFAULT_METRICS", "METRICS", "Reference", "evaluate_model", "evaluate_samples",
           "model_sampler", "parse_metrics", "reference_features"]

log = logging.getLogger("zoo")

METRICS = ("fid", "kid", "is", "pr", "ppl")
DEFAULT_METRICS = ("fid", "kid", "is", "pr")


def parse_metrics(spec: str | Iterable[str]) -> tuple[str, ...]:
  """'fid,is' or ['fid', 'is'] -> ('fid', 'is'), each checked against METRICS."""
  names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
  for n in names:
    if n not in METRICS:
      raise ConfigError(f"unknown sample-quality metric {n!r}{nearest(n, METRICS)}; "
                        f"known: {', '.join(METRICS)}")
  return tuple(dict.fromkeys(names))


@dataclasses.dataclass
class Reference:
  """Features of a reference ("real") image set.

  Attributes:
    features: (N, D) float32, for FID, KID and precision/recall.
    logits: (N, K) float32 (the Inception Score of the data itself, for scale).
    mu: (D,) float64 mean of ``features``.
    sigma: (D, D) float64 unbiased covariance of ``features``.
    name: what the set is, e.g. 'binarized_mnist:test'.
    extractor: the feature extractor's name and digest, e.g. 'digits:1a2b...'.
  """
  features: np.ndarray
  logits: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray
  name: str
  extractor: str

  @property
  def num_examples(self) -> int:
    return int(len(self.features))

  @classmethod
  def from_features(cls, feats: Mapping[str, np.ndarray], name: str, extractor: str) -> "Reference":
    mu, sigma = feature_stats(feats["features"])
    return cls(feats["features"], feats["logits"], mu, sigma, name, extractor)

  def save(self, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, features=self.features, logits=self.logits, mu=self.mu, sigma=self.sigma,
             meta=np.asarray(json.dumps({"name": self.name, "extractor": self.extractor})))
    tmp.replace(path)   # atomic: a crash never leaves half a cache file under the real name
    return path

  @classmethod
  def load(cls, path: str | Path) -> "Reference":
    with np.load(path, allow_pickle=False) as f:
      meta = json.loads(str(f["meta"]))
      return cls(f["features"], f["logits"], f["mu"], f["sigma"], meta["name"], meta["extractor"])


def _extractor(features: str | features_lib.FeatureExtractor,
               inception_weights: str | Path | None) -> features_lib.FeatureExtractor:
  if isinstance(features, features_lib.FeatureExtractor):
    return features
  weights = str(inception_weights) if inception_weights is not None else None
  return features_lib.get_extractor(features, weights)


def _data_name(data: Any) -> tuple[str, Any]:
  """(a printable name, a data config for zoo.data.load) of a name, a config or a Dataset."""
  from zoo import data as data_lib
  if isinstance(data, data_lib.Dataset):
    return data.name, data
  if isinstance(data, str):
    return data, {"name": data}
  cfg = dict(data.to_dict() if hasattr(data, "to_dict") else data)
  if "name" not in cfg:
    raise ConfigError(f"a data config needs a name, got {cfg}")
  return str(cfg["name"]), cfg


def _cache_path(name: str, cfg: Any, split: str, num: int, extractor: features_lib.FeatureExtractor) -> Path:
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]
  ident = json.dumps(cfg if isinstance(cfg, dict) else {"name": name}, sort_keys=True, default=str)
  tag = hashlib.sha256(ident.encode()).hexdigest()[:8]
  return (features_lib.cache_dir() / "metrics"
          / f"{safe}-{tag}-{split}-{num}-{extractor.name}-{extractor.digest[:12]}.npz")


def reference_features(data: Any, split: str = "test", *,
                       features: str | features_lib.FeatureExtractor = "digits",
                       inception_weights: str | Path | None = None, max_examples: int = 0,
                       cache: bool = True) -> Reference:
  """Features (and their statistics) of a data set's split, cached to a file.

  Args:
    data: a data set name ('mnist_5k'), a data config ({'name': ..., ...}) or a zoo.data Dataset.
    split: the split.
    features: 'digits', 'inception' or a FeatureExtractor.
    inception_weights: the FID weights file (``features='inception'``).
    max_examples: use this many of the split's examples, drawn at random with a fixed seed (0: all).
    cache: read and write the cache file ($ZOO_CACHE/metrics/...).

  Returns:
    A Reference.
  """
  from zoo import data as data_lib
  extractor = _extractor(features, inception_weights)
  name, cfg = _data_name(data)
  dataset = cfg if isinstance(cfg, data_lib.Dataset) else data_lib.load(cfg)
  n = dataset.num_examples(split)
  n = min(n, int(max_examples)) if max_examples else n
  path = _cache_path(name, cfg if isinstance(cfg, dict) else None, split, n, extractor)
  if cache and path.is_file():
    try:
      return Reference.load(path)
    except Exception as e:  # pylint: disable=broad-except  (a damaged cache file is recomputed)
      log.warning("reference cache %s does not load (%s); recomputing", path, str(e).splitlines()[0])
  extractor.check((1, *dataset.image_shape))
  total = dataset.num_examples(split)
  # A subset is drawn at random (seeded), not taken from the front: splits may be ordered by class.
  bs = extractor.batch_size
  keep = np.zeros(-(-total // bs) * bs, bool)      # whole batches: eval_batches pads the last one
  keep[np.random.default_rng(0).permutation(total)[:n]] = True
  batches = (b["image"][b["mask"] & keep[i * bs:(i + 1) * bs]]
             for i, b in enumerate(dataset.eval_batches(split, bs)))
  ref = Reference.from_features(features_lib.extract(extractor, batches, n), f"{name}:{split}",
                                f"{extractor.name}:{extractor.digest}")
  if cache:
    ref.save(path)
  return ref


def evaluate_samples(samples: features_lib.Source, reference: Reference | np.ndarray | Any, *,
                     metrics: Iterable[str] = DEFAULT_METRICS,
                     features: str | features_lib.FeatureExtractor = "digits",
                     inception_weights: str | Path | None = None, num_samples: int | None = None,
                     reference_split: str = "test", seed: int = 0, quantized: bool = True,
                     kid_subsets: int = 100, kid_subset_size: int = 1000, kid_seed: int = 2020,
                     is_splits: int = 10, pr_k: int = 3) -> dict[str, Any]:
  """FID, KID, Inception Score and precision/recall of samples against a reference set.

  Args:
    samples: (N, H, W, C) images in [0, 1], a sampler ``(num, seed) -> images`` (with
      ``num_samples``), or an iterable of image batches.
    reference: a Reference, (N, H, W, C) real images, or a data set (name, config or Dataset) whose
      ``reference_split`` is the real set (its features cached).
    metrics: any of 'fid', 'kid', 'is', 'pr' ('ppl' needs a model: see ``evaluate_model``).
    features: 'digits' (28x28 grey digits, offline) or 'inception' (the FID Inception network), or a
      FeatureExtractor.
    inception_weights: the FID weights file for ``features='inception'``.
    num_samples: how many samples (default: all of an array).
    reference_split: the split of a data set given as ``reference``.
    seed: the sampler's seed.
    quantized: round the samples to 8 bits before the network (the references' PNG round trip).
    kid_subsets, kid_subset_size, kid_seed: KID's subsets (100 of 1,000, drawn with seed 2020, as
      torch-fidelity's defaults).
    is_splits: the Inception Score's splits (10).
    pr_k: the neighbour of precision/recall's radii (3).

  Returns:
    ``{"fid", "kid", "kid_std", "is", "is_std", "precision", "recall"}`` (those asked for) and
    ``features``, ``num_samples``, ``reference``, ``reference_examples``.
  """
  metrics = parse_metrics(metrics)
  if "ppl" in metrics:
    raise ZooError("PPL needs a model with a latent space, not samples: use evaluate_model")
  extractor = _extractor(features, inception_weights)
  if isinstance(reference, Reference):
    ref = reference
  elif hasattr(reference, "shape"):
    ref = Reference.from_features(features_lib.extract(extractor, np.asarray(reference)), "images",
                                  f"{extractor.name}:{extractor.digest}")
  else:
    ref = reference_features(reference, reference_split, features=extractor)
  ref_name, _, ref_digest = ref.extractor.partition(":")
  if ref_name != extractor.name or (ref_digest and ref_digest != extractor.digest):
    raise ZooError(f"the reference's features are from {ref.extractor}, the samples' would be from "
                   f"{extractor.name}:{extractor.digest}: compare features of one network")
  fake = features_lib.extract(extractor, samples, num_samples, seed=seed, quantized=quantized)
  out: dict[str, Any] = {}
  if "fid" in metrics:
    out["fid"] = frechet_distance(ref.mu, ref.sigma, *feature_stats(fake["features"]))
  if "kid" in metrics:
    out["kid"], out["kid_std"] = kernel_inception_distance(
        ref.features, fake["features"], num_subsets=kid_subsets, subset_size=kid_subset_size, seed=kid_seed)
  if "is" in metrics:
    out["is"], out["is_std"] = inception_score(fake["logits"], splits=is_splits)
  if "pr" in metrics:
    out["precision"], out["recall"] = precision_recall(ref.features, fake["features"], k=pr_k)
  out.update(features=extractor.name, num_samples=int(len(fake["features"])), reference=ref.name,
             reference_examples=ref.num_examples)
  return out


def _check_sample_options(family, options: Mapping[str, Any]) -> None:
  params = inspect.signature(family.sample).parameters
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return
  known = [n for n in params if n not in ("variables", "rng", "num")]
  for key in options:
    if key not in known:
      raise ConfigError(f"the {family.name} family's sample takes no option {key!r}; "
                        f"its options: {', '.join(known) or 'none'}")


def model_sampler(family, variables, batch_size: int, device: jax.Device | None = None,
                  **conditioning) -> features_lib.Sampler:
  """A sampler ``(num, seed) -> images`` of a family, jitted once per ``num``, on one device."""
  _check_sample_options(family, conditioning)
  device = device or jax.devices()[0]
  variables = jax.device_put(variables, device)
  fns: dict[int, Any] = {}

  def sample(num: int, seed: int):
    if num not in fns:
      fns[num] = jax.jit(lambda v, key: family.sample(v, key, num, **conditioning))
    return fns[num](variables, jax.device_put(jax.random.PRNGKey(seed), device))

  return sample


def evaluate_model(loaded, metrics: Iterable[str] = DEFAULT_METRICS, *, num_samples: int = 10_000,
                   features: str = "digits", inception_weights: str | Path | None = None,
                   reference_split: str | None = None, seed: int = 0, batch_size: int | None = None,
                   sample_options: Mapping[str, Any] | None = None, ppl_epsilon: float = 1e-4,
                   ppl_interpolation: str | None = None, ppl_sampling: str = "full",
                   **kwargs) -> dict[str, Any]:
  """Sample-quality metrics of a trained model (``zoo.load(workdir)``) against its own data set.

  Args:
    loaded: a ``zoo.Loaded``.
    metrics: any of 'fid', 'kid', 'is', 'pr', 'ppl'. PPL needs a family with a latent space: for
      another family it is skipped with a warning and a ``ppl_skipped`` entry saying why (an error
      when it is the only metric asked for).
    num_samples: samples drawn (and latent pairs for PPL).
    features: 'digits' or 'inception'.
    inception_weights: the FID weights file for ``features='inception'``.
    reference_split: the split of the run's data set to compare with (default: 'test' when the data
      set has one, else the run's eval split).
    seed: of the samples (and of PPL's latents).
    batch_size: samples per jitted call (default: the extractor's).
    sample_options: keyword arguments of the family's ``sample`` (e.g. ``{"use_mean": False}`` for a
      VAE's Bernoulli draws instead of its decoder means).
    ppl_epsilon, ppl_interpolation, ppl_sampling: see :func:`zoo.metrics.ppl.perceptual_path_length`;
      the interpolation defaults to slerp, or lerp for uniform latents (``ppl.default_interpolation``).
    **kwargs: passed to ``evaluate_samples`` (kid_subsets, is_splits, pr_k, ...).

  Returns:
    The metrics (see ``evaluate_samples``), plus ``ppl`` and ``ppl_unfiltered`` when asked for (or
    ``ppl_skipped``).
  """
  from zoo import data as data_lib
  metrics = parse_metrics(metrics)
  family = loaded.family
  skipped = None
  if "ppl" in metrics and not has_latent_space(family):
    skipped = (f"PPL needs a latent space (a family with latent_dim and decode(variables, z)); "
               f"the {family.name} family has none")
    if metrics == ("ppl",):
      raise ZooError(skipped)
    log.warning("skipping ppl: %s", skipped)
    metrics = tuple(m for m in metrics if m != "ppl")
  extractor = _extractor(features, inception_weights)
  dataset = data_lib.load(loaded.config.data)
  split = reference_split or ("test" if "test" in dataset.splits else loaded.config.eval_split)
  out: dict[str, Any] = {"sample_options": dict(sample_options)} if sample_options else {}
  if skipped:
    out["ppl_skipped"] = skipped
  sample_metrics = tuple(m for m in metrics if m != "ppl")
  bs = int(batch_size or extractor.batch_size)
  if sample_metrics:
    extractor.check((1, *family.image_shape))
    ref = reference_features(loaded.config.data.to_dict(), split, features=extractor)
    sampler = model_sampler(family, loaded.variables, bs, extractor.device, **dict(sample_options or {}))
    out.update(evaluate_samples(sampler, ref, metrics=sample_metrics, features=extractor,
                                num_samples=num_samples, seed=seed, **kwargs))
  if "ppl" in metrics:
    extractor.check((1, *family.image_shape))
    variables = jax.device_put(loaded.variables, extractor.device)
    ppl_interpolation = ppl_interpolation or default_interpolation(family)
    prior = (family.latent_prior(variables) if callable(getattr(family, "latent_prior", None)) else
             family.latents if callable(getattr(family, "latents", None)) else None)
    res = perceptual_path_length(family.decode, lambda v, a, b: extractor.perceptual_distance(a, b, v),
                                 family.latent_dim, decode_variables=variables,
                                 distance_variables=extractor.variables, prior=prior,
                                 num_samples=num_samples, batch_size=min(bs, 500),
                                 epsilon=ppl_epsilon, interpolation=ppl_interpolation,
                                 sampling=ppl_sampling, seed=seed)
    out.update(res, ppl_samples=num_samples, ppl_interpolation=ppl_interpolation,
               ppl_sampling=ppl_sampling, ppl_distance=f"{extractor.name} feature maps (LPIPS form, "
                                                       f"uniform weights)")
    out.setdefault("features", extractor.name)
  return out
