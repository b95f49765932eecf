"""A digit classifier trained by the zoo, the feature extractor of the sample-quality metrics on digits.

The Inception network of FID sees 28x28 digits blown up to 299x299 and was trained on photographs; most
work on MNIST-like data measures samples with a small digit classifier instead. The zoo's is
trained on the ``train`` split of ``mnist_5k`` (4,000 labelled grey-level MNIST digits, 400 per class)
and ships as ``zoo/metrics/files/digit_classifier.npz`` (94k float32 weights, ~350 kB), so every
metric runs offline and gives the same numbers on every machine: a classifier trained on first use
would differ between JAX versions and hardware, and so would the FIDs measured with it.

Architecture (``DigitNet``), on (N, 28, 28, 1) images in [0, 1] scaled to [-1, 1]::

  conv1 3x3x32 ReLU -> 2x2 max pool -> conv2 3x3x64 ReLU -> 2x2 max pool -> conv3 3x3x128 ReLU
  -> global average ("pool", 128 features) -> fc 10 ("logits")

like Inception's pool3 -> fc: FID, KID and precision/recall use the 128 ``pool`` features, the Inception
Score the softmax of the 10 ``logits``, and the perceptual path length the three conv layers' maps.

Training (``train``): Adam (lr 3e-3, cosine decay to 0), batch 64, 40 epochs, weight decay 0; every
batch is shifted by up to 2 pixels and half of it binarized (pixels drawn as Bernoulli(intensity)), so
that the classifier reads binarized MNIST (the zoo's likelihood benchmark) as well as grey digits. The
shipped file: 96.9% accuracy on the 1,000 test digits of ``mnist_5k`` (96.0% on them binarized), 97.8%
on its training digits; these are stored in the file (``meta``) and checked by the tests. To rebuild
it (7 minutes on 2 CPU cores; the result depends on the JAX version and the hardware, and so do the
metrics measured with it)::

  python -m zoo.metrics.classifier --out zoo/metrics/files/digit_classifier.npz
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import CheckpointError, ZooError

__all__ = ["DEFAULT_PATH", "DigitNet", "IMAGE_SHAPE", "accuracy", "file_digest", "load", "save", "train"]

DEFAULT_PATH = Path(__file__).resolve().parent / "files" / "digit_classifier.npz"
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
ARCH = "DigitNet-v1: conv3x3x32-pool-conv3x3x64-pool-conv3x3x128-gap-fc10"


class DigitNet(nn.Module):
  """The digit classifier (see the module docstring)."""

  @nn.compact
  def __call__(self, images: jax.Array, taps: bool = False) -> dict[str, Any]:
    """Features and logits of digits.

    Args:
      images: (N, 28, 28, 1) float32 in [0, 1].
      taps: also return the three conv layers' ReLU maps under ``"taps"`` (for perceptual distances).

    Returns:
      ``{"pool": (N, 128), "logits": (N, 10)}`` (+ ``"taps"``: [(N, 28, 28, 32), (N, 14, 14, 64),
      (N, 7, 7, 128)]).
    """
    hp = jax.lax.Precision.HIGHEST
    conv = lambda f, name: nn.Conv(f, (3, 3), padding="SAME", precision=hp, name=name)
    pool2 = lambda h: nn.max_pool(h, (2, 2), (2, 2))
    h1 = nn.relu(conv(32, "conv1")(2.0 * images - 1.0))
    h2 = nn.relu(conv(64, "conv2")(pool2(h1)))
    h3 = nn.relu(conv(128, "conv3")(pool2(h2)))
    pool = jnp.mean(h3, axis=(1, 2))
    out = {"pool": pool, "logits": nn.Dense(NUM_CLASSES, precision=hp, name="fc")(pool)}
    if taps:
      out["taps"] = [h1, h2, h3]
    return out


def _abstract_params() -> dict:
  return jax.eval_shape(lambda: DigitNet().init(jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE_SHAPE))))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, "items"):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def save(variables: dict, path: str | Path, meta: dict) -> Path:
  """Writes the classifier's variables and ``meta`` (a JSON-able dict) to an .npz file."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {k: np.asarray(v, np.float32) for k, v in _flat(variables).items()}
  np.savez_compressed(path, meta=np.asarray(json.dumps(meta)), **arrays)
  return path


def file_digest(path: str | Path = DEFAULT_PATH) -> str:
  """The sha256 of the weights file (the reference-statistics caches are keyed by it)."""
  return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load(path: str | Path = DEFAULT_PATH) -> tuple[dict, dict]:
  """Reads the classifier's variables and metadata, checking every array's name and shape.

  Returns:
    (variables ``{"params": ...}`` of :class:`DigitNet`, meta dict).
  """
  path = Path(path)
  if not path.is_file():
    raise ZooError(f"the digit classifier's weights are not at {path}: rebuild them with "
                   f"`python -m zoo.metrics.classifier --out {path}` (a few minutes on a CPU)")
  with np.load(path, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(str(arrays.pop("meta", "{}")))
  expected = {k: tuple(v.shape) for k, v in _flat(_abstract_params()).items()}
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  wrong = sorted(f"{k} {arrays[k].shape} (expected {expected[k]})" for k in set(expected) & set(arrays)
                 if tuple(arrays[k].shape) != expected[k])
  if missing or unexpected or wrong:
    raise CheckpointError(f"{path} is not a {ARCH} classifier: missing {missing or 'none'}; "
                          f"unexpected {unexpected or 'none'}; wrong shapes {wrong or 'none'}")
  variables: dict = {}
  for k, v in arrays.items():
    node = variables
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v.astype(np.float32)
  return variables, meta


def accuracy(variables: dict, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
  """Fraction of ``images`` (N, 28, 28, 1) in [0, 1] classified as ``labels`` (N,)."""
  fn = jax.jit(lambda v, x: jnp.argmax(DigitNet().apply(v, x)["logits"], -1))
  right = 0
  for lo in range(0, len(images), batch_size):
    right += int(np.sum(np.asarray(fn(variables, images[lo:lo + batch_size])) == labels[lo:lo + batch_size]))
  return right / len(images)


def _augment(rng: jax.Array, x: jax.Array) -> jax.Array:
  """Shifts each image by up to 2 pixels (zero fill) and binarizes half of the batch."""
  r_shift, r_bin, r_which = jax.random.split(rng, 3)
  n = x.shape[0]
  padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = jax.random.randint(r_shift, (n, 2), 0, 5)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), IMAGE_SHAPE)
  x = jax.vmap(crop)(padded, offsets)
  binary = jax.random.bernoulli(r_bin, x).astype(x.dtype)
  which = jax.random.bernoulli(r_which, 0.5, (n, 1, 1, 1))
  return jnp.where(which, binary, x)


def train(epochs: int = 40, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
          log: bool = True) -> tuple[dict, dict]:
  """Trains the classifier on ``mnist_5k``'s train split (see the module docstring).

  Returns:
    (variables, meta) where meta records the recipe and the train and test accuracies.
  """
  import optax
  from zoo import data as data_lib
  ds = data_lib.load({"name": "mnist_5k"})
  splits = {}
  for split in ("train", "test"):
    batch = next(iter(ds.eval_batches(split, ds.num_examples(split))))
    splits[split] = (batch["image"], batch["label"])
  x_train, y_train = splits["train"]
  n = len(x_train)
  steps_per_epoch = n // batch_size
  total = epochs * steps_per_epoch
  tx = optax.adam(optax.cosine_decay_schedule(lr, total))
  key = jax.random.PRNGKey(seed)
  variables = DigitNet().init(key, jnp.zeros((1, *IMAGE_SHAPE)))
  opt = tx.init(variables)

  @jax.jit
  def step(variables, opt, x, y, rng):
    def loss_fn(v):
      logits = DigitNet().apply(v, _augment(rng, x))["logits"]
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt = tx.update(grads, opt, variables)
    return optax.apply_updates(variables, updates), opt, loss

  t0 = time.time()
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  for epoch in range(epochs):
    order = np.random.default_rng([seed, epoch]).permutation(n)
    losses = []
    for i in range(steps_per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size]
      variables, opt, loss = step(variables, opt, x_dev[idx], y_dev[idx],
                                  jax.random.fold_in(key, epoch * steps_per_epoch + i))
      losses.append(loss)
    if log:
      print(f"epoch {epoch + 1}/{epochs}: loss {float(np.mean(jax.device_get(losses))):.4f} "
            f"({time.time() - t0:.0f}s)", flush=True)
  variables = jax.device_get(variables)
  x_test, y_test = splits["test"]
  meta = {
      "arch": ARCH, "data": "mnist_5k train (4000)", "epochs": epochs, "batch_size": batch_size,
      "lr": lr, "seed": seed, "augment": "shift <= 2 px; half of each batch binarized",
      "train_accuracy": accuracy(variables, x_train, y_train),
      "test_accuracy": accuracy(variables, x_test, y_test),
      "test_accuracy_binarized": accuracy(
          variables, (np.random.default_rng(seed).random(x_test.shape) < x_test).astype(np.float32), y_test),
      "train_seconds": round(time.time() - t0, 1), "jax": jax.__version__,
  }
  return variables, meta


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description="Train the zoo's digit classifier (feature extractor of the "
                              "sample-quality metrics on digits) and write it to an .npz file.")
  p.add_argument("--out", default=str(DEFAULT_PATH))
  p.add_argument("--epochs", type=int, default=40)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  variables, meta = train(epochs=args.epochs, seed=args.seed)
  path = save(variables, args.out, meta)
  print(json.dumps({**meta, "file": str(path), "sha256": file_digest(path)}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
