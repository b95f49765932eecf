"""The zoo's input pipeline: data sets by name, and seeded, resumable, host-sharded numpy batches.

``load(cfg)`` returns a :class:`Dataset` for any of:

- one of the zoo's own data sets (``binarized_mnist``, ``mnist_5k``; prepared on first use into the
  data dir from files shipped in the package);
- a TFDS catalog data set (``mnist``, ``cifar10``, ``celeb_a``, ...; ``tfds:<name>`` forces the
  catalog, e.g. ``tfds:binarized_mnist``) that the user has prepared in array_record format in the
  data dir; nothing is downloaded;
- ``npz:<path>``: an .npz holding ``images`` (or ``image``) and optionally ``labels`` (or ``label``),
  which becomes a ``train`` split; or split arrays ``train`` / ``valid`` / ``validation`` / ``test``
  with optional ``<split>_labels``. Images are (N, H, W), (N, H, W, C) or flat (N, H*W*C) with the
  config's ``image_shape`` (a flat square (N, S*S) needs none), integers in 0..255 or floats in
  [0, 1]. Data whose values are all 0 or 1 are binary (2 levels); other floats are quantized to 8 bits.
- ``folder:<path>``: PNG/JPEG images of one size, at the folder's top level or one sub-folder per
  class (labels follow the sorted sub-folder names); a ``train`` split. Grey images give C = 1, any
  colour image makes all C = 3 (alpha is dropped), all 1-bit images give binary data.

The data dir is the config's ``data_dir``, else env ``TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

A split whose decoded images fit in ``IN_MEMORY_BYTES`` is read once into memory (array_record yields
only ~20k decoded examples/s); a larger one is read per batch, only this process's examples, on a
thread pool. ``batch`` is a pure function of its arguments (the position in the run is the number of
batches consumed), which is how a resumed run continues exactly.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import queue
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from zoo.data import builders
from zoo.errors import ConfigError, DataError, nearest

__all__ = ["BatchIterator", "Dataset", "IN_MEMORY_BYTES", "CONFIG_KEYS", "load"]

IN_MEMORY_BYTES = 1 << 30
CONFIG_KEYS = ("name", "data_dir", "image_shape", "in_memory", "levels", "valid_from_train")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SPLIT_ORDER = ("train", "valid", "validation", "test")
_BINARY_CATALOG = ("binarized_mnist",)
_READ_CHUNK = 4096


class _DropOpenCvWarning(logging.Filter):
  """TFDS warns once that it decodes images with PIL because OpenCV is absent; that is by design."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("OpenCV is not installed")


logging.getLogger("absl").addFilter(_DropOpenCvWarning())

_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _read_pool() -> concurrent.futures.ThreadPoolExecutor:
  """The threads that read and decode records (PIL and array_record release the GIL)."""
  global _pool
  with _pool_lock:
    if _pool is None:
      _pool = concurrent.futures.ThreadPoolExecutor(
          max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="zoo-data-read")
    return _pool


def _one_line(text: Any) -> str:
  return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------------
# Splits: where the uint8 images of one split come from.


class _ArraySplit:
  """A split held in memory: images uint8 (N, H, W, C) and labels int32 (N,) or None."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None):
    self.images = images
    self.labels = labels
    self.num_examples = len(images)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (images uint8 (n, H, W, C), labels int32 (n,) or None) at ``indices`` (n,)."""
    labels = self.labels[indices] if self.labels is not None else None
    return self.images[indices], labels


class _SubsetSplit:
  """The examples of another split at ``indices``, in that order."""

  def __init__(self, parent: Any, indices: np.ndarray):
    self.parent, self.indices = parent, indices
    self.num_examples = len(indices)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    return self.parent.read(self.indices[indices])


def _valid_from_train(ds: "Dataset", n: int) -> "Dataset":
  """``ds`` with ``n`` of its training examples held out as a ``valid`` split (a fixed random choice,
  the same on every machine: a file ordered by class still gives every class), the rest as ``train``.

  For data sets without a validation split (``mnist_5k``) where a protocol chooses something on held-out
  data, e.g. the Parzen window's width (Goodfellow et al. 2014).
  """
  if any(s in ds.splits for s in ("valid", "validation")):
    raise DataError(f"{ds.name} has a validation split already; data.valid_from_train is for data sets "
                    f"without one")
  total = ds.num_examples("train")
  if not 0 < n < total:
    raise DataError(f"data.valid_from_train must be between 1 and {total - 1} (the {total} training "
                    f"examples of {ds.name}), got {n}")
  order = np.random.default_rng(0).permutation(total)
  splits = {**ds._splits, "train": _SubsetSplit(ds._splits["train"], np.sort(order[n:])),
            "valid": _SubsetSplit(ds._splits["train"], np.sort(order[:n]))}
  splits = {s: splits[s] for s in _SPLIT_ORDER if s in splits}
  return Dataset(ds.name, splits, image_shape=ds.image_shape, levels=ds.levels,
                 num_classes=ds.num_classes, class_names=ds.class_names)


class _RecordSplit:
  """A split read from a TFDS data source per request, decoded on the read pool."""

  def __init__(self, display: str, split: str, source: Any, num_examples: int, image_key: str,
               label_key: str | None, image_shape: tuple[int, int, int]):
    self.display, self.split, self.source = display, split, source
    self.num_examples = num_examples
    self.image_key, self.label_key = image_key, label_key
    self.image_shape = image_shape

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns (images uint8 (n, H, W, C), labels int32 (n,) or None) at ``indices`` (n,)."""
    keys = [int(i) for i in np.asarray(indices).reshape(-1)]
    n = len(keys)
    images = np.empty((n, *self.image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32) if self.label_key else None
    if not n:
      return images, labels
    workers = _read_pool()._max_workers  # pylint: disable=protected-access
    size = max(32, math.ceil(n / workers))
    chunks = [keys[i:i + size] for i in range(0, n, size)]
    if len(chunks) == 1:
      parts = [self.source.__getitems__(chunks[0])]
    else:
      parts = list(_read_pool().map(self.source.__getitems__, chunks))
    j = 0
    for part in parts:
      for record in part:
        image = np.asarray(record[self.image_key])
        if image.shape != self.image_shape:
          if image.size != images[j].size:
            raise DataError(f"{self.display}: example {keys[j]} of split {self.split} has shape "
                            f"{image.shape}, expected {self.image_shape}")
          image = image.reshape(self.image_shape)
        images[j] = image
        if labels is not None:
          labels[j] = int(record[self.label_key])
        j += 1
    return images, labels

  def read_all(self) -> _ArraySplit:
    """Reads the whole split into memory, in order."""
    images = np.empty((self.num_examples, *self.image_shape), dtype=np.uint8)
    labels = np.empty((self.num_examples,), dtype=np.int32) if self.label_key else None
    for lo in range(0, self.num_examples, _READ_CHUNK):
      hi = min(lo + _READ_CHUNK, self.num_examples)
      chunk_images, chunk_labels = self.read(np.arange(lo, hi))
      images[lo:hi] = chunk_images
      if labels is not None:
        labels[lo:hi] = chunk_labels
    return _ArraySplit(images, labels)


# Splits read into memory, by (prepared folder, split): a process that loads the same data set again
# (an evaluation after training, a test suite) decodes it once.
_IN_MEMORY: dict[tuple[str, str, int], _ArraySplit] = {}
_IN_MEMORY_LOCK = threading.Lock()


class _CachedSplit:
  """A record split that is read into memory on its first use, once per process."""

  def __init__(self, records: _RecordSplit, key: tuple[str, str, int]):
    self._records = records
    self._key = key
    self.num_examples = records.num_examples

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    arrays = _IN_MEMORY.get(self._key)
    if arrays is None:
      with _IN_MEMORY_LOCK:
        arrays = _IN_MEMORY.get(self._key)
        if arrays is None:
          arrays = _IN_MEMORY[self._key] = self._records.read_all()
    return arrays.read(indices)


# --------------------------------------------------------------------------------------------------
# Prefetching iterators.


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
  """Puts ``item`` unless ``stop`` is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _prefetch_worker(fn: Callable[[int], Any], start: int, stop_at: int | None, q: queue.Queue,
                     stop: threading.Event) -> None:
  # A plain function, so that the thread holds no reference to the iterator (which then gets
  # collected, and stops the thread, when its user drops it).
  i = start
  try:
    while not stop.is_set() and (stop_at is None or i < stop_at):
      item = fn(i)
      i += 1
      if not _put(q, ("item", item), stop):
        return
  except BaseException as e:  # pylint: disable=broad-except
    _put(q, ("error", e), stop)
    return
  _put(q, ("end", None), stop)


class BatchIterator:
  """Iterates ``fn(i)`` for i = start, start + 1, ... (up to ``stop``), computed ahead on a thread.

  Attributes:
    position: the index of the next item, i.e. ``start`` plus the number of items yielded so far;
      for a training iterator, the data position to save in a checkpoint.
  """

  def __init__(self, fn: Callable[[int], Any], start: int = 0, stop: int | None = None,
               prefetch: int = 2):
    """Starts the iterator.

    Args:
      fn: computes item i.
      start: the first index.
      stop: one past the last index, or None for no end.
      prefetch: how many items to compute ahead on a background thread; 0 computes on the caller's.
    """
    self._fn, self._start, self._stop_at = fn, start, stop
    self._position = start
    self._done = False
    self._stop = threading.Event()
    self._queue: queue.Queue | None = None
    if prefetch > 0:
      self._queue = queue.Queue(maxsize=prefetch)
      self._thread = threading.Thread(
          target=_prefetch_worker, args=(fn, start, stop, self._queue, self._stop),
          name="zoo-data-prefetch", daemon=True)
      self._thread.start()

  @property
  def position(self) -> int:
    return self._position

  def __iter__(self) -> BatchIterator:
    return self

  def __len__(self) -> int:
    if self._stop_at is None:
      raise TypeError("an endless iterator has no length")
    return max(0, self._stop_at - self._start)

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    if self._queue is None:
      if self._stop_at is not None and self._position >= self._stop_at:
        self._done = True
        raise StopIteration
      item = self._fn(self._position)
      self._position += 1
      return item
    kind, value = self._queue.get()
    if kind == "item":
      self._position += 1
      return value
    self.close()
    if kind == "error":
      raise value
    raise StopIteration

  def close(self) -> None:
    """Stops the background thread; the iterator yields nothing more."""
    self._done = True
    self._stop.set()

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __del__(self) -> None:
    self._stop.set()


# --------------------------------------------------------------------------------------------------
# The Dataset.


def _check_int(value: Any, what: str, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise DataError(f"{what} must be an integer >= {minimum}, got {value!r}")
  return int(value)


class Dataset:
  """Images (and maybe labels) by split, served as seeded, resumable, host-sharded numpy batches.

  Attributes:
    name: the data set's name as given in the config.
    image_shape: (H, W, C).
    levels: the number of pixel levels: 2 for binarized data, 256 for 8-bit data.
    num_classes: the number of classes, or None without labels.
    class_names: the classes' names, or None.
    splits: the split names.
  """

  def __init__(self, name: str, splits: Mapping[str, Any], *, image_shape: Sequence[int],
               levels: int, num_classes: int | None = None,
               class_names: Sequence[str] | None = None):
    """Wraps splits (objects with ``num_examples`` and ``read(indices)``); see ``load``."""
    self.name = name
    self._splits = dict(splits)
    self.splits = tuple(self._splits)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.levels = int(levels)
    self.num_classes = num_classes
    self.class_names = tuple(class_names) if class_names is not None else None
    self._lut = (np.arange(256, dtype=np.float32) / np.float32(self.levels - 1)).astype(np.float32)
    self._orders: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
    self._orders_lock = threading.Lock()

  def __repr__(self) -> str:
    sizes = ", ".join(f"{s}={self.num_examples(s)}" for s in self.splits)
    return (f"Dataset({self.name!r}, image_shape={self.image_shape}, levels={self.levels}, "
            f"num_classes={self.num_classes}, {sizes})")

  def _split(self, split: str):
    if split not in self._splits:
      raise DataError(f"{self.name}: unknown split {split!r}{nearest(str(split), self.splits)}; "
                      f"available: {', '.join(self.splits)}")
    return self._splits[split]

  def num_examples(self, split: str) -> int:
    """Returns the number of examples of ``split``."""
    return self._split(split).num_examples

  def steps_per_epoch(self, split: str, batch_size: int) -> int:
    """Returns N // batch_size, the number of global batches in an epoch (the remainder is dropped).

    Raises:
      DataError: when the split has fewer than ``batch_size`` examples.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    n = self.num_examples(split)
    if n < batch_size:
      raise DataError(f"{self.name}: batch_size {batch_size} exceeds the {n} examples of split "
                      f"{split!r}")
    return n // batch_size

  def _local_size(self, batch_size: int, process_index: int, process_count: int) -> int:
    batch_size = _check_int(batch_size, "batch_size", 1)
    process_count = _check_int(process_count, "process_count", 1)
    process_index = _check_int(process_index, "process_index", 0)
    if process_index >= process_count:
      raise DataError(f"process_index {process_index} is not below process_count {process_count}")
    if batch_size % process_count:
      raise DataError(f"batch_size {batch_size} does not divide by the {process_count} processes")
    return batch_size // process_count

  def _order(self, split: str, seed: int, epoch: int) -> np.ndarray:
    """The permutation (N,) of epoch ``epoch``: the same on every process, cached."""
    key = (split, seed, epoch)
    with self._orders_lock:
      if key in self._orders:
        self._orders.move_to_end(key)
        return self._orders[key]
    order = np.random.default_rng([seed, epoch]).permutation(self.num_examples(split))
    with self._orders_lock:
      self._orders[key] = order
      while len(self._orders) > 4:
        self._orders.popitem(last=False)
    return order

  def _to_batch(self, images: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    out = {"image": self._lut[images]}
    if labels is not None:
      out["label"] = labels.astype(np.int32, copy=False)
    return out

  def batch(self, split: str, index: int, batch_size: int, *, seed: int, shuffle: bool = True,
            process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
    """Returns this process's slice of the ``index``-th global batch of seeded epochs.

    Global batch ``index`` is step ``index % steps`` of epoch ``index // steps`` (steps = N //
    batch_size): examples ``order[s * batch_size:(s + 1) * batch_size]`` of that epoch's
    permutation ``np.random.default_rng([seed, epoch]).permutation(N)`` (or of 0..N-1 without
    shuffle). Process p gets the p-th of ``process_count`` contiguous equal parts. A pure function of
    its arguments.

    Args:
      split: the split name.
      index: the global batch index, >= 0 (the number of batches consumed before it).
      batch_size: the global batch size; it must divide by ``process_count``.
      seed: a non-negative integer.
      shuffle: False serves the split in order, every epoch.
      process_index: this process's index.
      process_count: the number of processes.

    Returns:
      {"image": float32 (B_local, H, W, C) in [0, 1], "label": int32 (B_local,) when labelled},
      with B_local = batch_size // process_count.

    Raises:
      DataError: unknown split, bad sizes or indices.
    """
    source = self._split(split)
    local = self._local_size(batch_size, process_index, process_count)
    index = _check_int(index, "index", 0)
    seed = _check_int(seed, "seed", 0)
    steps = self.steps_per_epoch(split, batch_size)
    epoch, step = divmod(index, steps)
    lo = step * batch_size + process_index * local
    positions = np.arange(lo, lo + local)
    indices = self._order(split, seed, epoch)[positions] if shuffle else positions
    return self._to_batch(*source.read(indices))

  def iterate(self, split: str, batch_size: int, *, seed: int, start: int = 0, shuffle: bool = True,
              process_index: int = 0, process_count: int = 1, prefetch: int = 2) -> BatchIterator:
    """Returns an endless iterator over ``batch(split, i, ...)`` for i = start, start + 1, ...

    Args:
      split, batch_size, seed, shuffle, process_index, process_count: as for ``batch``.
      start: the first global batch index (a resumed run's data position).
      prefetch: batches computed ahead on a background thread (0: none).

    Returns:
      A BatchIterator whose ``position`` is the index of the next batch; close it (or use it as a
      context manager) to stop its thread early.
    """
    self._split(split)
    self._local_size(batch_size, process_index, process_count)
    self.steps_per_epoch(split, batch_size)
    _check_int(seed, "seed", 0)
    start = _check_int(start, "start", 0)

    def make(i: int) -> dict[str, np.ndarray]:
      return self.batch(split, i, batch_size, seed=seed, shuffle=shuffle,
                        process_index=process_index, process_count=process_count)

    return BatchIterator(make, start=start, prefetch=prefetch)

  def num_eval_batches(self, split: str, batch_size: int, max_examples: int | None = None) -> int:
    """Returns ceil(n / batch_size), the number of batches of ``eval_batches`` on every process."""
    n = self.num_examples(split)
    if max_examples is not None:
      n = min(n, _check_int(max_examples, "max_examples", 1))
    return -(-n // _check_int(batch_size, "batch_size", 1))

  def eval_batches(self, split: str, batch_size: int, *, process_index: int = 0,
                   process_count: int = 1, max_examples: int | None = None,
                   prefetch: int = 2) -> BatchIterator:
    """Returns one ordered pass over ``split`` (or its first ``max_examples``), padded and masked.

    Global batch g holds examples g * batch_size ... (g + 1) * batch_size - 1, the last one padded
    with zero images past the end; process p gets the p-th contiguous part. Every process yields
    the same number of batches, and over all of them every example appears once with mask True.

    Args:
      split: the split name.
      batch_size: the global batch size; it must divide by ``process_count``.
      process_index: this process's index.
      process_count: the number of processes.
      max_examples: evaluate only the first this many examples; None for all.
      prefetch: batches computed ahead on a background thread (0: none).

    Returns:
      A finite BatchIterator (with ``len``) of {"image": float32 (B_local, H, W, C),
      "label": int32 (B_local,) when labelled, "mask": bool (B_local,)}.
    """
    source = self._split(split)
    local = self._local_size(batch_size, process_index, process_count)
    count = self.num_eval_batches(split, batch_size, max_examples)
    n = self.num_examples(split) if max_examples is None else min(self.num_examples(split),
                                                                  max_examples)
    labelled = self.num_classes is not None

    def make(g: int) -> dict[str, np.ndarray]:
      lo = g * batch_size + process_index * local
      positions = np.arange(lo, lo + local)
      mask = positions < n
      valid = int(mask.sum())
      out = {"image": np.zeros((local, *self.image_shape), dtype=np.float32)}
      if labelled:
        out["label"] = np.zeros((local,), dtype=np.int32)
      if valid:
        got = self._to_batch(*source.read(positions[:valid]))
        out["image"][:valid] = got["image"]
        if labelled and "label" in got:
          out["label"][:valid] = got["label"]
      out["mask"] = mask
      return out

    return BatchIterator(make, start=0, stop=count, prefetch=prefetch)


# --------------------------------------------------------------------------------------------------
# Loaders.


def _ordered(names: Sequence[str]) -> list[str]:
  first = [s for s in _SPLIT_ORDER if s in names]
  return first + [s for s in names if s not in first]


def _image_shape_arg(spec: str, value: Any) -> tuple[int, ...] | None:
  if value is None:
    return None
  try:
    shape = tuple(int(d) for d in value)
  except (TypeError, ValueError):
    shape = ()
  if len(shape) not in (2, 3) or min(shape) < 1:
    raise DataError(f"{spec}: image_shape {value!r} is not (H, W) or (H, W, C) of positive ints")
  return shape if len(shape) == 3 else (*shape, 1)


def _check_config_shape(spec: str, want: tuple[int, ...] | None, got: tuple[int, int, int]) -> None:
  if want is not None and tuple(want) != tuple(got):
    raise DataError(f"{spec}: the images have shape {tuple(got)} but the data config's image_shape "
                    f"is {tuple(want)}")


def _as_images(spec: str, key: str, array: np.ndarray,
               image_shape: tuple[int, ...] | None) -> tuple[np.ndarray, bool]:
  """Checks an image array and returns (uint8 (N, H, W, C), whether all values are 0 or 1)."""
  kind = array.dtype.kind
  if kind not in "biuf":
    raise DataError(f"{spec}: {key} has dtype {array.dtype}, expected uint8 (0..255) or float in "
                    "[0, 1]")
  shape = array.shape
  if len(shape) == 2:
    size = shape[1]
    if image_shape is None:
      side = math.isqrt(size)
      if side * side != size:
        raise DataError(f"{spec}: {key} has shape {shape} (flat images): set image_shape "
                        "(H, W[, C]) in the data config")
      image_shape = (side, side, 1)
    if math.prod(image_shape) != size:
      raise DataError(f"{spec}: {key} has {size} values per image, but image_shape "
                      f"{tuple(image_shape)} needs {math.prod(image_shape)}")
    array = array.reshape(len(array), *image_shape)
  elif len(shape) == 3:
    array = array[..., None]
  elif len(shape) != 4 or not 1 <= shape[3] <= 4:
    raise DataError(f"{spec}: {key} has shape {shape}, expected (N, H, W[, C]) with C <= 4 "
                    "(channels last), or (N, H*W*C) with image_shape")
  if len(array) == 0 or min(array.shape) == 0:
    raise DataError(f"{spec}: {key} has shape {shape}: it holds no images")
  if kind == "b":
    return array.astype(np.uint8), True
  low, high = array.min(), array.max()
  if kind == "f":
    if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(array).all()):
      raise DataError(f"{spec}: {key} holds NaN or Inf values, expected floats in [0, 1]")
    if low < 0 or high > 1:
      raise DataError(f"{spec}: {key} has float values in [{low:g}, {high:g}], expected [0, 1]")
    binary = bool(np.all((array == 0) | (array == 1)))
    return (array.astype(np.uint8) if binary else np.rint(array * 255).astype(np.uint8)), binary
  if low < 0 or high > 255:
    raise DataError(f"{spec}: {key} has integer values in [{low}, {high}], expected 0..255")
  return array.astype(np.uint8, copy=False), bool(high <= 1)


def _as_labels(spec: str, key: str, array: np.ndarray, n: int) -> np.ndarray:
  if array.dtype.kind not in "iu" or array.shape != (n,):
    raise DataError(f"{spec}: {key} has shape {array.shape} and dtype {array.dtype}, expected "
                    f"integers of shape ({n},)")
  if n and array.min() < 0:
    raise DataError(f"{spec}: {key} has negative values, expected class indices 0, 1, ...")
  return array.astype(np.int32)


def _load_npz(spec: str, path: str, image_shape: tuple[int, ...] | None,
              levels: int | None) -> Dataset:
  file = Path(path).expanduser()
  if not file.is_file():
    raise DataError(f"{spec}: no such file: put the .npz at {file.absolute()}")
  try:
    npz = np.load(file, allow_pickle=False)
    keys = set(npz.files)
  except Exception as e:
    raise DataError(f"{spec}: not a readable .npz file ({_one_line(e)})") from e

  def get(key: str) -> np.ndarray:
    try:
      return npz[key]
    except Exception as e:
      raise DataError(f"{spec}: cannot read array {key} ({_one_line(e)})") from e

  with npz:
    image_keys = [k for k in ("images", "image") if k in keys]
    split_keys = [k for k in _SPLIT_ORDER if k in keys]
    if len(image_keys) > 1 or (image_keys and split_keys):
      raise DataError(f"{spec}: holds {', '.join(image_keys + split_keys)}: give either one "
                      "`images` array or split arrays (train/valid/test), not both")
    if image_keys:
      label_key = next((k for k in ("labels", "label") if k in keys), None)
      parts = {"train": (image_keys[0], label_key)}
    elif split_keys:
      parts = {s: (s, next((k for k in (f"{s}_labels", f"{s}_label") if k in keys), None))
               for s in split_keys}
    else:
      raise DataError(f"{spec}: holds arrays {sorted(keys)}, expected `images` (or `image`), or "
                      "split arrays train/valid/test")
    splits, binary, labelled, max_label = {}, True, [], -1
    for split, (image_key, label_key) in parts.items():
      images, is_binary = _as_images(spec, image_key, get(image_key), image_shape)
      binary &= is_binary
      labels = None
      if label_key is not None:
        labels = _as_labels(spec, label_key, get(label_key), len(images))
        max_label = max(max_label, int(labels.max()))
      labelled.append(labels is not None)
      splits[split] = _ArraySplit(images, labels)
  shapes = {s.images.shape[1:] for s in splits.values()}
  if len(shapes) > 1:
    raise DataError(f"{spec}: the splits have different image shapes {sorted(shapes)}")
  if any(labelled) and not all(labelled):
    raise DataError(f"{spec}: some splits have labels and some have none")
  shape = shapes.pop()
  _check_config_shape(spec, image_shape, shape)
  return Dataset(spec, splits, image_shape=shape, levels=levels or (2 if binary else 256),
                 num_classes=max_label + 1 if all(labelled) else None)


_GREY_MODES = ("1", "L", "LA")


def _load_folder(spec: str, path: str, image_shape: tuple[int, ...] | None,
                 levels: int | None) -> Dataset:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = Path(path).expanduser()
  if not root.is_dir():
    raise DataError(f"{spec}: no such folder: put the PNG/JPEG images (optionally one sub-folder "
                    f"per class) in {root.absolute()}")

  def is_image(f: Path) -> bool:
    return f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")

  top = sorted(f for f in root.iterdir() if is_image(f))
  classes = {}
  for d in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
    files = sorted(f for f in d.rglob("*") if is_image(f))
    if files:
      classes[d.name] = files
  if top and classes:
    raise DataError(f"{spec}: holds images both at its top level and in sub-folders: put them all "
                    "in one sub-folder per class, or all at the top level")
  if not top and not classes:
    raise DataError(f"{spec}: holds no PNG/JPEG images")
  files = top or [f for fs in classes.values() for f in fs]
  labels = None
  if classes:
    labels = np.concatenate([np.full(len(fs), c, np.int32) for c, fs in enumerate(classes.values())])

  arrays, modes, size = [], set(), None
  for f in files:
    try:
      with Image.open(f) as im:
        im.load()
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
          raise DataError(f"{spec}: {f} is a {im.mode} (16-bit or float) image, expected 8-bit")
        if size is None:
          size = im.size
        elif im.size != size:
          raise DataError(f"{spec}: {f} is {im.size[1]}x{im.size[0]} (HxW) but {files[0].name} is "
                          f"{size[1]}x{size[0]}: all images must have one size")
        modes.add(im.mode)
        arrays.append(np.asarray(im.convert("L") if im.mode in _GREY_MODES else im.convert("RGB")))
    except DataError:
      raise
    except Exception as e:
      raise DataError(f"{spec}: cannot read {f} ({_one_line(e)})") from e
  colour = any(a.ndim == 3 for a in arrays)
  images = np.stack([np.repeat(a[..., None], 3, -1) if colour and a.ndim == 2 else
                     (a if a.ndim == 3 else a[..., None]) for a in arrays]).astype(np.uint8)
  binary = modes == {"1"}
  if binary:
    images = (images > 127).astype(np.uint8)
  _check_config_shape(spec, image_shape, images.shape[1:])
  return Dataset(spec, {"train": _ArraySplit(images, labels)}, image_shape=images.shape[1:],
                 levels=levels or (2 if binary else 256),
                 num_classes=len(classes) if classes else None,
                 class_names=list(classes) if classes else None)


def _from_tfds(display: str, info: Any, sources: Mapping[str, Any], *, levels: int,
               image_shape: tuple[int, ...] | None, in_memory: bool | None, path: str) -> Dataset:
  """Wraps TFDS data sources (split -> ArrayRecordDataSource) prepared in ``path`` as a Dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = info.features
  keys = list(features.keys())
  image_key = "image" if "image" in keys else None
  if image_key is None:
    candidates = [k for k in keys if isinstance(features[k], tfds.features.Image)]
    if len(candidates) != 1:
      raise DataError(f"{display}: has no single image feature (features: {', '.join(keys)})")
    image_key = candidates[0]
  feature = features[image_key]
  shape = tuple(feature.shape)
  if len(shape) != 3 or any(d is None for d in shape):
    raise DataError(f"{display}: its images have shape {shape}; the zoo needs one fixed (H, W, C)")
  if np.dtype(feature.np_dtype) != np.uint8:
    raise DataError(f"{display}: its images have dtype {np.dtype(feature.np_dtype)}, expected uint8")
  label_key, num_classes, class_names = None, None, None
  if "label" in keys and isinstance(features["label"], tfds.features.ClassLabel):
    label_key = "label"
    num_classes = features["label"].num_classes
    class_names = features["label"].names
  _check_config_shape(display, image_shape, shape)
  splits = {}
  for split in _ordered(list(sources)):
    records = _RecordSplit(display, split, sources[split], len(sources[split]), image_key,
                           label_key, shape)
    small = records.num_examples * math.prod(shape) <= IN_MEMORY_BYTES
    keep = small if in_memory is None else in_memory
    splits[split] = _CachedSplit(records, (path, split, records.num_examples)) if keep else records
  return Dataset(display, splits, image_shape=shape, levels=levels, num_classes=num_classes,
                 class_names=class_names)


def _load_zoo(name: str, data_dir: str, image_shape, levels, in_memory) -> Dataset:
  builder = builders.prepare(name, data_dir)
  return _from_tfds(name, builder.info, builder.as_data_source(),
                    levels=levels or builder.LEVELS, image_shape=image_shape, in_memory=in_memory,
                    path=str(builder.data_path))


def _load_catalog(spec: str, name: str, data_dir: str, image_shape, levels, in_memory) -> Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  base = name.split(":")[0].split("/")[0]
  known = set(tfds.list_builders(with_community_datasets=False))
  if base not in known and not (Path(data_dir) / base).is_dir():
    raise DataError(
        f"unknown data set {spec!r}{nearest(base, known | set(builders.available()))}: use one of "
        f"the zoo's own ({', '.join(builders.available())}), a TFDS catalog name prepared in "
        f"{data_dir}, npz:<file.npz> or folder:<dir>")
  build = f"`tfds build {base} --file_format=array_record --data_dir={data_dir}`"
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:
    raise DataError(f"{spec}: not found in the data dir {data_dir} ({_one_line(e)}): prepare it "
                    f"where you have internet with {build}") from e
  where = builder.data_path
  if not builders.is_prepared(builder):
    raise DataError(f"{spec}: not prepared in the data dir {data_dir} (looked in {where}): prepare "
                    f"it where you have internet with {build} (TensorFlow needed there), or copy a "
                    f"prepared folder to {where}; or set data_dir / TFDS_DATA_DIR")
  fmt = builder.info.file_format.value if builder.info.file_format is not None else None
  if fmt != "array_record":
    raise DataError(f"{spec}: {where} holds {fmt} files, which need TensorFlow; the zoo reads "
                    f"array_record: rebuild it with {build}")
  try:
    sources = tfds.data_source(name, data_dir=data_dir, download=False)
  except Exception as e:
    raise DataError(f"{spec}: cannot read {where} ({_one_line(e)})") from e
  return _from_tfds(spec, builder.info, sources,
                    levels=levels or (2 if base in _BINARY_CATALOG else 256),
                    image_shape=image_shape, in_memory=in_memory, path=str(where))


def _field(cfg: Any, key: str) -> Any:
  value = cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
  return value


def load(cfg: Any) -> Dataset:
  """Returns the Dataset a data config names.

  Args:
    cfg: an ml_collections ConfigDict or a dict (or just the name, a str) with ``name`` (see the
      module docstring) and optionally ``data_dir`` (str), ``image_shape`` ((H, W) or (H, W, C):
      needed for flat npz images, else checked), ``in_memory`` (bool: force reading splits into
      memory or per batch; default by size), ``levels`` (int: override the pixel levels) and
      ``valid_from_train`` (int: hold out that many training examples as a ``valid`` split, for data
      without one).

  Returns:
    The Dataset.

  Raises:
    DataError: missing or malformed data, unknown data set.
    ConfigError: an unknown key in the data config.
  """
  if isinstance(cfg, (str, os.PathLike)):
    cfg = {"name": os.fspath(cfg)}
  keys = [str(k) for k in cfg.keys()] if hasattr(cfg, "keys") else []
  for key in keys:
    if key not in CONFIG_KEYS:
      raise ConfigError(f"unknown data config key {key!r}{nearest(key, CONFIG_KEYS)}; valid keys: "
                        f"{', '.join(CONFIG_KEYS)}")
  name = _field(cfg, "name")
  if not isinstance(name, str) or not name:
    raise DataError(f"the data config needs a name (a data set name, npz:<file> or folder:<dir>), "
                    f"got {name!r}")
  image_shape = _image_shape_arg(name, _field(cfg, "image_shape"))
  levels = _field(cfg, "levels")
  if levels is not None:
    levels = _check_int(levels, "data levels", 2)
    if levels > 256:
      raise DataError(f"data levels must be at most 256, got {levels}")
  in_memory = _field(cfg, "in_memory")
  if in_memory is not None:
    in_memory = bool(in_memory)
  ds = _load_by_name(cfg, name, image_shape, levels, in_memory)
  held_out = _field(cfg, "valid_from_train")
  return _valid_from_train(ds, _check_int(held_out, "data.valid_from_train", 1)) if held_out else ds


def _load_by_name(cfg: Any, name: str, image_shape, levels, in_memory) -> Dataset:
  prefix, _, rest = name.partition(":")
  if prefix == "npz" and rest:
    return _load_npz(name, rest, image_shape, levels)
  if prefix == "folder" and rest:
    return _load_folder(name, rest, image_shape, levels)
  data_dir = builders.resolve_data_dir(_field(cfg, "data_dir"))
  if prefix == "tfds" and rest:
    return _load_catalog(name, rest, data_dir, image_shape, levels, in_memory)
  if name in builders.BUILDERS:
    return _load_zoo(name, data_dir, image_shape, levels, in_memory)
  return _load_catalog(name, name, data_dir, image_shape, levels, in_memory)
