"""Metrics of generative models: likelihood estimators and sample-quality metrics.

- Likelihoods: annealed importance sampling of an RBM's log-partition function (:mod:`zoo.metrics.ais`),
  which the RBM and DBN families use for their test log-likelihoods.
- Sample quality (:mod:`zoo.metrics.sample_quality`): FID (:mod:`~zoo.metrics.fid`), KID
  (:mod:`~zoo.metrics.kid`), Inception Score (:mod:`~zoo.metrics.inception_score`), precision and
  recall (:mod:`~zoo.metrics.precision_recall`) and perceptual path length (:mod:`~zoo.metrics.ppl`),
  on the features of the FID Inception network (:mod:`~zoo.metrics.inception`, with the standard FID
  weights file) or of the zoo's digit classifier (:mod:`~zoo.metrics.classifier`, offline).
"""
from zoo.metrics.ais import AISResult, log_mean_exp, rbm_ais, summarize, temperature_schedule
from zoo.metrics.features import FeatureExtractor, extract, get_extractor
from zoo.metrics.fid import feature_stats, fid_from_features, frechet_distance
from zoo.metrics.inception import load_fid_weights
from zoo.metrics.inception_score import inception_score
from zoo.metrics.kid import kernel_inception_distance
from zoo.metrics.ppl import has_latent_space, perceptual_path_length
from zoo.metrics.precision_recall import precision_recall
from zoo.metrics.sample_quality import (
    METRICS, Reference, evaluate_model, evaluate_samples, model_sampler, reference_features,
)

__all__ = [
    "AISResult", "FeatureExtractor", "METRICS", "Reference", "evaluate_model", "evaluate_samples",
    "extract", "feature_stats", "fid_from_features", "frechet_distance", "get_extractor",
    "has_latent_space", "inception_score", "kernel_inception_distance", "load_fid_weights",
    "log_mean_exp", "model_sampler", "perceptual_path_length", "precision_recall", "rbm_ais",
    "reference_features", "summarize", "temperature_schedule",
]
