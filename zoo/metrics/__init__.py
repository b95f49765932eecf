"""Metrics of generative models: likelihood estimators (and, later, sample-quality metrics).

So far: annealed importance sampling of an RBM's log-partition function (:mod:`zoo.metrics.ais`), which
the RBM and DBN families use for their test log-likelihoods.
"""
from zoo.metrics.ais import AISResult, log_mean_exp, rbm_ais, summarize, temperature_schedule

__all__ = ["AISResult", "log_mean_exp", "rbm_ais", "summarize", "temperature_schedule"]
