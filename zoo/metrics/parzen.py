"""The Gaussian Parzen-window log-likelihood estimate of a sampler (Goodfellow et al. 2014, Table 1).

A model that can only sample is given a density by placing an isotropic Gaussian of width ``sigma`` on
each of N of its samples ``mu_i`` (in data space, pixels in [0, 1]):

    log p(x) = logsumexp_i [-|x - mu_i|^2 / (2 sigma^2)] - log N - D log sigma - (D / 2) log(2 pi),

and the test log-likelihood is the mean of ``log p(x)`` over the test examples, with the standard error
of that mean across examples (the "± 2" of the paper's "225 ± 2" on MNIST). ``sigma`` is chosen by a
grid search that maximises the mean log-likelihood of a validation split (the paper: "obtained by cross
validation on the validation set"). It is an *estimate*, not a bound: it is biased, and high in
dimension it is known to rank models poorly (Theis et al. 2016); it is here so that our GANs' figures
stand beside the paper's.

Our protocol (the paper does not give all of it): N = 10,000 samples, ``sigma`` on a log-spaced grid of
``DEFAULT_SIGMAS`` (0.02 to 1), chosen on ``--select-split`` (by default the run's validation split:
binarized MNIST's ``valid``, or for ``mnist_5k``, which has none, the digits a run held out of its
training split with ``data.valid_from_train``; else its ``train`` split: training digits rather than
held-out ones, which, if anything, favours a model that memorises; say so beside the figure), reported on
``--split``.

Python::

    from zoo.metrics import parzen
    ll = parzen.log_likelihood(x, centers, jnp.asarray([0.2]))      # (B, 1) nats
    result = parzen.evaluate(zoo.load("runs/gan"))                   # the whole protocol

Command (prints one JSON object; ``experiments/table.py record --eval`` reads it)::

    python -m zoo.metrics.parzen --workdir runs/goodfellow2014_gan [--samples 10000] [--best]
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DEFAULT_SIGMAS", "log_likelihood", "mean_log_likelihood", "select_sigma", "draw_samples",
           "evaluate", "main"]

DEFAULT_SIGMAS = tuple(float(s) for s in np.logspace(np.log10(0.02), 0.0, 30))


@functools.partial(jax.jit, static_argnames=("chunk",))
def log_likelihood(x: jax.Array, centers: jax.Array, sigmas: jax.Array, chunk: int = 1000) -> jax.Array:
  """Parzen-window log-densities of ``x`` under Gaussians of each width in ``sigmas`` on ``centers``.

  The squared distances are computed once per chunk of ``chunk`` centers (a matmul at full float32
  precision) and shared by every width; a running log-sum-exp over the chunks keeps memory at
  (B, chunk) whatever N is.

  Args:
    x: (B, D) points, or (B, H, W, C) images (flattened).
    centers: (N, D) samples of the model, or (N, H, W, C).
    sigmas: (S,) kernel widths.
    chunk: centers per step of the scan (static); N need not divide by it.

  Returns:
    (B, S) log p(x) in nats for each width.
  """
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  centers = centers.reshape(centers.shape[0], -1).astype(jnp.float32)
  sigmas = jnp.asarray(sigmas, jnp.float32).reshape(-1)
  n, d = centers.shape
  chunk = min(int(chunk), n)
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  valid = jnp.arange(n_chunks * chunk) < n
  padded = jnp.pad(centers, ((0, pad), (0, 0))).reshape(n_chunks, chunk, d)
  valid = valid.reshape(n_chunks, chunk)
  x_sq = jnp.sum(jnp.square(x), axis=-1)                                  # (B,)
  inv_two_var = 0.5 / jnp.square(sigmas)                                  # (S,)

  def body(carry, inputs):
    run_max, run_sum = carry                                              # (B, S) each
    c, ok = inputs
    cross = jnp.matmul(x, c.T, precision=jax.lax.Precision.HIGHEST)      # (B, chunk)
    d2 = jnp.maximum(x_sq[:, None] - 2.0 * cross + jnp.sum(jnp.square(c), -1)[None], 0.0)
    logits = -d2[:, None, :] * inv_two_var[None, :, None]                # (B, S, chunk)
    logits = jnp.where(ok[None, None, :], logits, -jnp.inf)
    new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1))
    run_sum = run_sum * jnp.exp(run_max - new_max) + jnp.sum(jnp.exp(logits - new_max[..., None]), -1)
    return (new_max, run_sum), None

  b, s = x.shape[0], sigmas.shape[0]
  init = (jnp.full((b, s), -jnp.inf), jnp.zeros((b, s)))
  (m, total), _ = jax.lax.scan(body, init, (padded, valid))
  log_norm = math.log(n) + d * jnp.log(sigmas) + 0.5 * d * math.log(2 * math.pi)  # (S,)
  return m + jnp.log(total) - log_norm[None]


def _batched_ll(images: Iterable[np.ndarray], centers: jax.Array, sigmas: jax.Array) -> np.ndarray:
  """log_likelihood over batches of images; (n, S) numpy."""
  return np.concatenate([np.asarray(log_likelihood(jnp.asarray(x), centers, sigmas)) for x in images], 0)


def mean_log_likelihood(images: Iterable[np.ndarray], centers: jax.Array,
                        sigmas: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
  """Mean log-likelihood and its standard error across examples, for each width.

  Args:
    images: batches (B, ...) of examples in data space.
    centers: (N, D) the model's samples.
    sigmas: the widths.

  Returns:
    (mean (S,), standard error of the mean (S,)), in nats.
  """
  ll = _batched_ll(images, centers, jnp.asarray(list(sigmas), jnp.float32))
  err = ll.std(0, ddof=1) / np.sqrt(len(ll)) if len(ll) > 1 else np.zeros(ll.shape[1])
  return ll.mean(0), err


def select_sigma(images: Iterable[np.ndarray], centers: jax.Array,
                 sigmas: Iterable[float] = DEFAULT_SIGMAS) -> tuple[float, dict[float, float]]:
  """The width that maximises the mean log-likelihood of ``images`` (the paper's cross-validation).

  Returns:
    (the best sigma, {sigma: mean log-likelihood} over the grid).
  """
  sigmas = [float(s) for s in sigmas]
  means, _ = mean_log_likelihood(images, centers, sigmas)
  best = int(np.nanargmax(means))
  return sigmas[best], {s: float(m) for s, m in zip(sigmas, means)}


def draw_samples(sample: Callable[[Any, jax.Array, int], jax.Array], variables: Any, num: int, seed: int,
                 batch_size: int = 500) -> jax.Array:
  """``num`` samples of a family's ``sample(variables, rng, n)``, drawn ``batch_size`` at a time.

  Returns:
    (num, D) float32, flattened.
  """
  fn = jax.jit(sample, static_argnums=2)
  key = jax.random.PRNGKey(seed)
  out, i = [], 0
  while sum(len(o) for o in out) < num:
    n = min(batch_size, num - sum(len(o) for o in out))
    x = fn(variables, jax.random.fold_in(key, i), n)
    out.append(np.asarray(x).reshape(n, -1))
    i += 1
  return jnp.asarray(np.concatenate(out, 0))


def _images(dataset, split: str, batch_size: int, max_examples: int | None):
  for batch in dataset.eval_batches(split, batch_size, max_examples=max_examples):
    yield batch["image"][batch["mask"]]


def evaluate(loaded, *, split: str | None = None, select_split: str | None = None, num_samples: int = 10_000,
             sigmas: Iterable[float] = DEFAULT_SIGMAS, select_examples: int = 0, examples: int = 0,
             seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
  """The paper's protocol on a trained model: draw samples, choose sigma on one split, report another.

  Args:
    loaded: ``zoo.load(workdir)`` (EMA params where the run keeps them).
    split: the split reported (default: 'test').
    select_split: the split sigma is chosen on (default: 'valid', else 'validation', else 'train').
    num_samples: N, the model's samples that carry the kernels.
    sigmas: the grid of widths.
    select_examples: use the first this many examples of ``select_split`` (0: all).
    examples: use the first this many examples of ``split`` (0: all).
    seed: of the samples.
    batch_size: examples (and samples) per jitted call.

  Returns:
    {"parzen_ll", "parzen_ll_std_err", "parzen_nll", "sigma", "split", "select_split", "num_samples",
     "num_examples", "grid": {sigma: mean ll on select_split}, "sigma_at_grid_edge"}.
  """
  from zoo import data as data_lib
  from zoo.errors import ZooError
  dataset = data_lib.load(loaded.config.data)
  split = split or "test"
  if select_split is None:
    select_split = next(s for s in ("valid", "validation", "train") if s in dataset.splits)
  for s in (split, select_split):
    dataset.num_examples(s)       # an unknown split fails here, naming the available ones
  if split == select_split:
    raise ZooError(f"sigma is chosen on split {select_split!r} and reported on {split!r}: give two splits")
  centers = draw_samples(loaded.family.sample, loaded.variables, int(num_samples), seed, batch_size)
  sigma, grid = select_sigma(_images(dataset, select_split, batch_size, select_examples or None), centers,
                             sigmas)
  mean, err = mean_log_likelihood(_images(dataset, split, batch_size, examples or None), centers, [sigma])
  sorted_sigmas = sorted(grid)
  return {"parzen_ll": float(mean[0]), "parzen_ll_std_err": float(err[0]), "parzen_nll": -float(mean[0]),
          "sigma": sigma, "split": split, "select_split": select_split, "num_samples": int(num_samples),
          "num_examples": int(min(dataset.num_examples(split), examples or dataset.num_examples(split))),
          "sigma_at_grid_edge": sigma in (sorted_sigmas[0], sorted_sigmas[-1]),
          "grid": {f"{s:.4g}": round(v, 3) for s, v in grid.items()}}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m zoo.metrics.parzen",
                              description="Gaussian Parzen-window log-likelihood of a trained model's "
                                          "samples (Goodfellow et al. 2014); prints one JSON object.")
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--select-split", default=None,
                 help="where sigma is chosen (default: valid, else validation, else train)")
  p.add_argument("--samples", type=int, default=10_000)
  p.add_argument("--select-examples", type=int, default=0, help="first N examples of the select split")
  p.add_argument("--examples", type=int, default=0, help="first N examples of the reported split")
  p.add_argument("--sigmas", type=float, nargs="+", default=None, help="the grid (default: 30 values 0.02..1)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--best", action="store_true", help="the checkpoint best on the run's eval metric")
  args = p.parse_args(argv)
  from zoo.errors import ZooError
  from zoo.train import load
  try:
    loaded = load(args.workdir, step=None if args.best else args.step, best=args.best)
    out = {"workdir": str(Path(args.workdir).absolute()), "family": loaded.family.name,
           "step": int(loaded.meta["step"]),
           **evaluate(loaded, split=args.split, select_split=args.select_split, num_samples=args.samples,
                      sigmas=args.sigmas or DEFAULT_SIGMAS, select_examples=args.select_examples,
                      examples=args.examples, seed=args.seed)}
  except ZooError as e:
    print(f"parzen: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
