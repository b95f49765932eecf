"""Tests of zoo.data: the zoo's TFDS builders, catalog/npz/folder loading, and batching.

Offline and fast: everything is prepared into pytest temporary folders, nothing is downloaded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

from zoo import data
from zoo.data import builders
from zoo.errors import ConfigError, DataError

FILES = Path(data.__file__).parent / "files"


# --------------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def bmnist(tfds_dir):
  return data.load({"name": "binarized_mnist", "data_dir": tfds_dir})


@pytest.fixture(scope="session")
def mnist5k(tfds_dir):
  return data.load({"name": "mnist_5k", "data_dir": tfds_dir})


def _ids_npz(path: Path, n: int = 103) -> str:
  """Writes an npz whose image i encodes i (pixels 0 and 1: i % 256, i // 256); labels i % 7."""
  images = np.zeros((n, 4, 4, 1), np.uint8)
  ids = np.arange(n)
  images[:, 0, 0, 0] = ids % 256
  images[:, 0, 1, 0] = ids // 256
  images[:, 3, 3, 0] = 255  # so that the data are 8-bit, not binary
  np.savez(path, images=images, labels=(ids % 7).astype(np.int64))
  return f"npz:{path}"


def _ids(batch) -> np.ndarray:
  """Recovers the example ids of a batch of the _ids_npz data set."""
  pixels = np.rint(batch["image"] * 255).astype(np.int64)
  return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 1, 0]


@pytest.fixture(scope="module")
def ids_ds(tmp_path_factory):
  return data.load({"name": _ids_npz(tmp_path_factory.mktemp("ids") / "ids.npz")})


class FakeMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a small data set laid out like the catalog's `mnist` (PNG images, ClassLabel)."""

  name = "mnist"
  VERSION = tfds.core.Version("3.0.1")

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(28, 28, 1)),
        "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 40), "test": self._generate_examples(40, 16)}

  def _generate_examples(self, offset, n):
    for i in range(offset, offset + n):
      yield i, {"image": Image.fromarray(fake_mnist_image(i)), "label": i % 10}


def fake_mnist_image(i: int) -> np.ndarray:
  return np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("catalog"))
  builder = FakeMnist(data_dir=root, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return root


# --------------------------------------------------------------------------------------------------
# The zoo's own builders.


def test_available():
  assert data.available() == ["binarized_mnist", "mnist_5k"]


def test_packaged_files_are_intact():
  assert builders.sha256_file(FILES / "binarized_mnist.npz") == builders.BINARIZED_MNIST_SHA256
  assert builders.sha256_file(FILES / "mnist_5k.npz") == builders.MNIST_5K_SHA256


def test_binarized_mnist_builder(bmnist, tfds_dir):
  builder = data.prepare("binarized_mnist", tfds_dir)
  info = builder.info
  assert info.file_format.value == "array_record"
  assert {s: info.splits[s].num_examples for s in info.splits.keys()} == {
      "train": 50000, "valid": 10000, "test": 10000}
  # Our folder has its own name: never the catalog's tfrecord `binarized_mnist` folder.
  assert Path(builder.data_path).parent.name == "zoo_binarized_mnist"
  assert not (Path(tfds_dir) / "binarized_mnist").exists()
  examples = builder.as_data_source()["test"].__getitems__([0, 1, 9999])
  npz = np.load(FILES / "binarized_mnist.npz")
  for example, row in zip(examples, (0, 1, 9999)):
    assert example["image"].dtype == np.uint8 and example["image"].shape == (28, 28, 1)
    np.testing.assert_array_equal(example["image"].reshape(784), npz["test"][row])  # file order
  assert bmnist.splits == ("train", "valid", "test")
  assert (bmnist.image_shape, bmnist.levels, bmnist.num_classes) == ((28, 28, 1), 2, None)
  assert [bmnist.num_examples(s) for s in bmnist.splits] == [50000, 10000, 10000]


@pytest.mark.parametrize("split,mean", [("train", 0.13056), ("valid", 0.13113), ("test", 0.13251)])
def test_binarized_mnist_mean_pixel(bmnist, split, mean):
  total, count = 0.0, 0
  for b in bmnist.eval_batches(split, 5000):
    assert b["image"].dtype == np.float32 and b["image"].shape == (5000, 28, 28, 1)
    total += float(b["image"][b["mask"]].sum(dtype=np.float64))
    count += int(b["mask"].sum())
  assert count == bmnist.num_examples(split)
  assert abs(total / (count * 784) - mean) < 1e-5


def test_binarized_batches_are_exactly_binary(bmnist):
  b = bmnist.batch("train", 3, 256, seed=1)
  assert set(b) == {"image"}
  assert b["image"].dtype == np.float32 and b["image"].shape == (256, 28, 28, 1)
  assert set(np.unique(b["image"]).tolist()) == {0.0, 1.0}


def test_mnist_5k(mnist5k):
  assert mnist5k.splits == ("train", "test")
  assert (mnist5k.image_shape, mnist5k.levels, mnist5k.num_classes) == ((28, 28, 1), 256, 10)
  counts = {}
  for split in mnist5k.splits:
    labels = np.concatenate([b["label"][b["mask"]] for b in mnist5k.eval_batches(split, 1000)])
    counts[split] = np.bincount(labels, minlength=10)
  np.testing.assert_array_equal(counts["train"], np.full(10, 400))
  np.testing.assert_array_equal(counts["test"], np.full(10, 100))
  np.testing.assert_array_equal(counts["train"] + counts["test"], np.full(10, 500))
  b = mnist5k.batch("train", 0, 64, seed=0)
  assert b["label"].dtype == np.int32 and b["label"].shape == (64,)
  assert b["image"].max() == 1.0 and 0 < b["image"][(b["image"] > 0) & (b["image"] < 1)].size
  npz = np.load(FILES / "mnist_5k.npz")  # the stratified split: every 5th of each class is test
  first = mnist5k.batch("test", 0, 1, seed=0, shuffle=False)
  np.testing.assert_array_equal(np.rint(first["image"][0] * 255).reshape(784), npz["images"][4])


def test_valid_from_train_holds_out_a_fixed_part_of_train(mnist5k, tfds_dir, bmnist):
  held = data.load({"name": "mnist_5k", "data_dir": tfds_dir, "valid_from_train": 500})
  assert held.splits == ("train", "valid", "test")
  assert (held.num_examples("train"), held.num_examples("valid"), held.num_examples("test")) == (3500, 500, 1000)

  def read(ds, split, key="image"):
    return np.concatenate([b[key][b["mask"]] for b in ds.eval_batches(split, 1000)])

  def rows(images):
    return sorted(map(bytes, images.reshape(len(images), -1)))

  # train and valid partition the original training digits; the test split is untouched
  train, valid = read(held, "train"), read(held, "valid")
  assert rows(np.concatenate([train, valid])) == rows(read(mnist5k, "train"))
  assert not set(rows(train)) & set(rows(valid))
  np.testing.assert_array_equal(read(held, "test"), read(mnist5k, "test"))
  # every class is in the held-out part (the file is ordered by class), and the choice is fixed
  assert set(read(held, "valid", "label").tolist()) == set(range(10))
  again = data.load({"name": "mnist_5k", "data_dir": tfds_dir, "valid_from_train": 500})
  np.testing.assert_array_equal(read(again, "valid"), valid)
  with pytest.raises(DataError, match="has a validation split already"):
    data.load({"name": "binarized_mnist", "data_dir": tfds_dir, "valid_from_train": 100})
  for bad in (4000, -3, "10"):
    with pytest.raises(DataError, match="valid_from_train"):
      data.load({"name": "mnist_5k", "data_dir": tfds_dir, "valid_from_train": bad})


def test_prepared_data_are_reused(tfds_dir, bmnist):
  import time
  t = time.time()
  builder = data.prepare("binarized_mnist", tfds_dir)
  assert time.time() - t < 2.0
  assert builders.is_prepared(builder)


def test_interrupted_preparation_leaves_no_data_set(tmp_path, monkeypatch):
  root = tmp_path / "tfds"
  stale = root / "zoo_mnist_5k" / "incomplete.ABC123_1.0.0"  # as left by a killed preparation
  stale.mkdir(parents=True)
  (stale / "zoo_mnist_5k-train.array_record-00000-of-00001").write_bytes(b"junk")
  original = builders.Mnist5k._generate_examples

  def crash(self, images, labels):
    yield from list(original(self, images, labels))[:10]
    raise RuntimeError("disk full")

  monkeypatch.setattr(builders.Mnist5k, "_generate_examples", crash)
  with pytest.raises(DataError, match="disk full"):
    data.prepare("mnist_5k", root)
  assert not (root / "zoo_mnist_5k" / "1.0.0").exists()
  assert not [p for p in (root / "zoo_mnist_5k").iterdir() if p != stale]
  monkeypatch.setattr(builders.Mnist5k, "_generate_examples", original)
  ds = data.load({"name": "mnist_5k", "data_dir": str(root)})
  assert (ds.num_examples("train"), ds.num_examples("test")) == (4000, 1000)
  assert not stale.exists()


def test_foreign_prepared_folder_is_refused(tmp_path, mnist5k, tfds_dir):
  root = tmp_path / "tfds"
  shutil.copytree(Path(tfds_dir) / "zoo_mnist_5k", root / "zoo_mnist_5k")
  info_file = root / "zoo_mnist_5k" / "1.0.0" / "dataset_info.json"
  info = json.loads(info_file.read_text())
  info["fileFormat"] = "tfrecord"
  info_file.write_text(json.dumps(info))
  with pytest.raises(DataError, match="delete it"):
    data.load({"name": "mnist_5k", "data_dir": str(root)})


def test_binarized_mnist_source_checks(tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(bad, train=np.zeros((5, 784), np.uint8), valid=np.zeros((5, 784), np.uint8),
           test=np.zeros((5, 784), np.uint8))
  with pytest.raises(DataError, match=r"split train has shape \(5, 784\), expected \(50000, 784\)"):
    data.prepare("binarized_mnist", tmp_path / "tfds", source=bad)
  assert not (tmp_path / "tfds" / "zoo_binarized_mnist" / "1.0.0").exists()
  with pytest.raises(DataError, match="does not exist"):
    data.prepare("binarized_mnist", tmp_path / "tfds", source=tmp_path / "nowhere.npz")


def test_binarized_mnist_user_copy_is_checked_by_content(tmp_path):
  npz = np.load(FILES / "binarized_mnist.npz")
  rng = np.random.default_rng(0)
  shuffled = {k: npz[k][rng.permutation(len(npz[k]))] for k in npz.files}  # another row order
  np.savez(tmp_path / "copy.npz", **shuffled)
  builder = data.BinarizedMnist(data_dir=str(tmp_path / "tfds"), source=tmp_path / "copy.npz")
  arrays = builder._read_source(None)  # pylint: disable=protected-access
  np.testing.assert_array_equal(arrays["test"], shuffled["test"])
  shuffled["test"][0, 0] ^= 1
  np.savez(tmp_path / "tampered.npz", **shuffled)
  builder = data.BinarizedMnist(data_dir=str(tmp_path / "tfds"), source=tmp_path / "tampered.npz")
  with pytest.raises(DataError, match="content digest mismatch"):
    builder._read_source(None)  # pylint: disable=protected-access


def test_parse_amat(tmp_path):
  rows = np.random.default_rng(0).integers(0, 2, (3, 784), dtype=np.uint8)
  good = tmp_path / "x.amat"
  good.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
  np.testing.assert_array_equal(builders.parse_amat(good), rows)
  bad = tmp_path / "bad.amat"
  bad.write_text("0 1 2\n")
  with pytest.raises(DataError, match="not a binarized-MNIST .amat"):
    builders.parse_amat(bad)


def test_data_dir_resolution(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert data.resolve_data_dir(None) == str(tmp_path / "env")
  assert data.resolve_data_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert data.resolve_data_dir(None) == str(Path("~/tensorflow_datasets").expanduser())


# --------------------------------------------------------------------------------------------------
# Batching.


def test_same_seed_same_batches_other_seed_other_batches(bmnist):
  a = [bmnist.batch("train", i, 32, seed=7)["image"] for i in (0, 5, 2000)]
  b = [bmnist.batch("train", i, 32, seed=7)["image"] for i in (2000, 5, 0)][::-1]
  c = [bmnist.batch("train", i, 32, seed=8)["image"] for i in (0, 5, 2000)]
  for x, y, z in zip(a, b, c):
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(x, z)


def test_epochs_are_permutations(ids_ds):
  n, bs = ids_ds.num_examples("train"), 10
  steps = ids_ds.steps_per_epoch("train", bs)
  assert steps == n // bs == 10
  epoch0 = np.concatenate([_ids(ids_ds.batch("train", i, bs, seed=3)) for i in range(steps)])
  epoch1 = np.concatenate([_ids(ids_ds.batch("train", i, bs, seed=3))
                           for i in range(steps, 2 * steps)])
  assert len(set(epoch0.tolist())) == steps * bs and len(set(epoch1.tolist())) == steps * bs
  np.testing.assert_array_equal(epoch0, np.random.default_rng([3, 0]).permutation(n)[:steps * bs])
  assert not np.array_equal(epoch0, epoch1)
  ordered = np.concatenate([_ids(ids_ds.batch("train", i, bs, seed=3, shuffle=False))
                            for i in range(steps + 1)])
  np.testing.assert_array_equal(ordered, np.r_[np.arange(steps * bs), np.arange(bs)])
  b = ids_ds.batch("train", 4, bs, seed=3)
  np.testing.assert_array_equal(b["label"], _ids(b) % 7)
  assert b["label"].dtype == np.int32


def test_iterate_resumes_exactly(ids_ds):
  fresh = ids_ds.iterate("train", 8, seed=5)
  first = [next(fresh) for _ in range(30)]
  assert fresh.position == 30
  fresh.close()
  with ids_ds.iterate("train", 8, seed=5, start=17) as resumed:
    assert resumed.position == 17
    rest = [next(resumed) for _ in range(13)]
    assert resumed.position == 30
  for x, y in zip(first[17:], rest):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  unthreaded = ids_ds.iterate("train", 8, seed=5, start=17, prefetch=0)
  np.testing.assert_array_equal(next(unthreaded)["image"], first[17]["image"])
  np.testing.assert_array_equal(first[29]["image"], ids_ds.batch("train", 29, 8, seed=5)["image"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_sharding_covers_each_global_batch(ids_ds, process_count):
  bs = 12
  steps = ids_ds.steps_per_epoch("train", bs)
  seen = []
  for i in range(steps):
    whole = _ids(ids_ds.batch("train", i, bs, seed=11))
    parts = [_ids(ids_ds.batch("train", i, bs, seed=11, process_index=p,
                               process_count=process_count)) for p in range(process_count)]
    assert all(len(p) == bs // process_count for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    seen.extend(np.concatenate(parts).tolist())
  permuted = np.random.default_rng([11, 0]).permutation(ids_ds.num_examples("train"))
  assert sorted(seen) == sorted(permuted[:steps * bs].tolist())
  assert len(seen) == len(set(seen))


def test_batch_argument_errors(ids_ds):
  with pytest.raises(DataError, match="does not divide by the 4 processes"):
    ids_ds.batch("train", 0, 10, seed=0, process_count=4)
  with pytest.raises(DataError, match="exceeds the 103 examples"):
    ids_ds.batch("train", 0, 200, seed=0)
  with pytest.raises(DataError, match="process_index 2 is not below process_count 2"):
    ids_ds.batch("train", 0, 10, seed=0, process_index=2, process_count=2)
  with pytest.raises(DataError, match="seed"):
    ids_ds.batch("train", 0, 10, seed=-1)
  with pytest.raises(DataError, match="does not divide"):
    ids_ds.iterate("train", 10, seed=0, process_count=3)


@pytest.mark.parametrize("process_count,max_examples", [(1, None), (2, None), (3, None), (3, 50)])
def test_eval_batches_cover_every_example_once(ids_ds, process_count, max_examples):
  bs = 12
  n = max_examples or ids_ds.num_examples("train")
  seen, counts = [], []
  for p in range(process_count):
    batches = list(ids_ds.eval_batches("train", bs, process_index=p, process_count=process_count,
                                       max_examples=max_examples))
    counts.append(len(batches))
    for b in batches:
      assert b["mask"].dtype == bool and b["mask"].shape == (bs // process_count,)
      assert b["image"].shape == (bs // process_count, 4, 4, 1) and b["label"].dtype == np.int32
      seen.extend(_ids(b)[b["mask"]].tolist())
      assert not b["image"][~b["mask"]].any()  # padding is zeros
  assert counts == [-(-n // bs)] * process_count
  assert sorted(seen) == list(range(n))
  assert ids_ds.num_eval_batches("train", bs, max_examples) == counts[0]


def test_unknown_split(bmnist, ids_ds):
  with pytest.raises(DataError, match="unknown split 'validation'.*train, valid, test"):
    bmnist.batch("validation", 0, 8, seed=0)
  with pytest.raises(DataError, match="available: train"):
    ids_ds.num_examples("test")
  with pytest.raises(DataError, match="unknown split"):
    ids_ds.eval_batches("test", 8)


# --------------------------------------------------------------------------------------------------
# Catalog data sets.


@pytest.mark.parametrize("in_memory", [True, False])
def test_catalog_data_set_in_array_record(catalog_dir, in_memory):
  ds = data.load({"name": "mnist", "data_dir": catalog_dir, "in_memory": in_memory})
  assert (ds.image_shape, ds.levels, ds.num_classes, ds.splits) == ((28, 28, 1), 256, 10,
                                                                   ("train", "test"))
  assert ds.num_examples("train") == 40 and ds.num_examples("test") == 16
  # TFDS stores a catalog data set's examples in the order of their keys' hashes.
  ids = {fake_mnist_image(i).tobytes(): i for i in range(40, 56)}
  seen = []
  for b in ds.eval_batches("test", 6):
    for image, label in zip(b["image"][b["mask"]], b["label"][b["mask"]]):
      i = ids[np.rint(image[..., 0] * 255).astype(np.uint8).tobytes()]
      assert label == i % 10
      seen.append(i)
  assert sorted(seen) == list(range(40, 56))
  c = ds.batch("train", 3, 8, seed=4, process_index=1, process_count=2)
  other = data.load({"name": "mnist", "data_dir": catalog_dir, "in_memory": not in_memory})
  np.testing.assert_array_equal(
      c["image"], other.batch("train", 3, 8, seed=4, process_index=1, process_count=2)["image"])


def test_catalog_data_set_missing_offline(tmp_path):
  with pytest.raises(DataError) as err:
    data.load({"name": "cifar10", "data_dir": str(tmp_path)})
  message = str(err.value)
  assert str(tmp_path) in message and "tfds build cifar10 --file_format=array_record" in message
  assert str(tmp_path / "cifar10") in message and "\n" not in message
  assert not (tmp_path / "cifar10").exists()


def test_catalog_data_set_in_tfrecord_is_refused(tmp_path, catalog_dir):
  shutil.copytree(Path(catalog_dir) / "mnist", tmp_path / "mnist")
  info_file = tmp_path / "mnist" / "3.0.1" / "dataset_info.json"
  info = json.loads(info_file.read_text())
  info["fileFormat"] = "tfrecord"
  info_file.write_text(json.dumps(info))
  with pytest.raises(DataError, match="tfrecord files, which need TensorFlow.*array_record"):
    data.load({"name": "mnist", "data_dir": str(tmp_path)})


def test_unknown_data_set(tmp_path):
  with pytest.raises(DataError, match=r"unknown data set 'mnsit' \(did you mean: mnist"):
    data.load({"name": "mnsit", "data_dir": str(tmp_path)})


def test_data_config_errors(tmp_path, tfds_dir, bmnist):
  with pytest.raises(ConfigError, match="unknown data config key 'data_dri'.*data_dir"):
    data.load({"name": "mnist", "data_dri": str(tmp_path)})
  with pytest.raises(DataError, match="needs a name"):
    data.load({"data_dir": str(tmp_path)})
  with pytest.raises(DataError, match="image_shape"):
    data.load({"name": "binarized_mnist", "data_dir": tfds_dir, "image_shape": (28, 28, 3)})


# --------------------------------------------------------------------------------------------------
# User data: npz.


def test_npz_layouts(tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
  np.savez(tmp_path / "a.npz", images=grey)
  ds = data.load({"name": f"npz:{tmp_path / 'a.npz'}"})
  assert (ds.image_shape, ds.levels, ds.num_classes) == ((5, 4, 1), 256, None)
  assert ds.splits == ("train",)
  b = ds.batch("train", 0, 6, seed=0, shuffle=False)
  np.testing.assert_allclose(b["image"][..., 0], grey / 255, rtol=1e-6)

  np.savez(tmp_path / "b.npz", image=rng.random((6, 3, 3, 3)).astype(np.float32),
           label=np.arange(6))
  ds = data.load(f"npz:{tmp_path / 'b.npz'}")
  assert (ds.image_shape, ds.levels, ds.num_classes) == ((3, 3, 3), 256, 6)

  np.savez(tmp_path / "c.npz", images=rng.integers(0, 2, (6, 2 * 3 * 2)).astype(np.float64))
  ds = data.load({"name": f"npz:{tmp_path / 'c.npz'}", "image_shape": (2, 3, 2)})
  assert (ds.image_shape, ds.levels) == ((2, 3, 2), 2)

  ds = data.load(f"npz:{FILES / 'binarized_mnist.npz'}")  # split arrays, flat square rows
  assert (ds.splits, ds.image_shape, ds.levels) == (("train", "valid", "test"), (28, 28, 1), 2)
  assert ds.num_examples("valid") == 10000


@pytest.mark.parametrize("arrays,shape,match", [
    ({"images": np.zeros((10, 5), np.uint8)}, None, r"images has shape \(10, 5\)"),
    ({"images": np.zeros((10,), np.uint8)}, None, r"images has shape \(10,\), expected \(N, H, W"),
    ({"images": np.zeros((2, 3, 8, 8), np.uint8)}, None, r"shape \(2, 3, 8, 8\).*channels last"),
    ({"images": np.zeros((10, 12), np.uint8)}, (3, 5), "12 values per image"),
    ({"images": np.zeros((2, 4, 4), np.complex64)}, None, "images has dtype complex64"),
    ({"images": np.full((2, 4, 4), "a")}, None, "images has dtype <U1"),
    ({"images": np.full((2, 4, 4), 1.5)}, None, r"float values in \[1.5, 1.5\], expected \[0, 1\]"),
    ({"images": np.full((2, 4, 4), np.nan)}, None, "NaN"),
    ({"images": np.full((2, 4, 4), 300)}, None, r"integer values in \[300, 300\]"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, np.int64)}, None,
     r"labels has shape \(2,\).*\(3,\)"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(3, np.float32)}, None,
     "labels has shape .* dtype float32"),
    ({"x": np.zeros((3, 4, 4), np.uint8)}, None, r"holds arrays \['x'\]"),
    ({"images": np.zeros((3, 4, 4), np.uint8), "train": np.zeros((3, 4, 4), np.uint8)}, None,
     "not both"),
    ({"train": np.zeros((3, 4, 4), np.uint8), "test": np.zeros((3, 5, 5), np.uint8)}, None,
     "different image shapes"),
    ({"images": np.zeros((3, 4, 4), np.uint8)}, (5, 5), r"image_shape is \(5, 5, 1\)"),
])
def test_npz_bad_input(tmp_path, arrays, shape, match):
  path = tmp_path / "x.npz"
  np.savez(path, **arrays)
  cfg = {"name": f"npz:{path}"}
  if shape is not None:
    cfg["image_shape"] = shape
  with pytest.raises(DataError, match=match) as err:
    data.load(cfg)
  assert str(err.value).startswith(f"npz:{path}: ") and "\n" not in str(err.value)


def test_npz_missing_or_unreadable(tmp_path):
  with pytest.raises(DataError, match=f"no such file: put the .npz at {tmp_path / 'none.npz'}"):
    data.load(f"npz:{tmp_path / 'none.npz'}")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(DataError, match="not a readable .npz"):
    data.load(f"npz:{tmp_path / 'junk.npz'}")
  np.savez(tmp_path / "obj.npz", images=np.array([None, 1], dtype=object))
  with pytest.raises(DataError, match="cannot read array images"):
    data.load(f"npz:{tmp_path / 'obj.npz'}")


# --------------------------------------------------------------------------------------------------
# User data: a folder of images.


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(array)
  (image.convert(mode) if mode else image).save(path)


def test_folder_with_class_subfolders(tmp_path):
  rng = np.random.default_rng(0)
  pictures = {f"{c}/{i}.png": rng.integers(0, 256, (5, 6), dtype=np.uint8)
              for c, i in [("cat", 0), ("cat", 1), ("cat", 2), ("dog", 0), ("dog", 1)]}
  for name, array in pictures.items():
    _png(tmp_path / "pets" / name, array)
  ds = data.load(f"folder:{tmp_path / 'pets'}")
  assert (ds.image_shape, ds.levels, ds.num_classes, ds.class_names) == ((5, 6, 1), 256, 2,
                                                                        ("cat", "dog"))
  b = ds.batch("train", 0, 5, seed=0, shuffle=False)
  np.testing.assert_array_equal(b["label"], [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(np.rint(b["image"][3, ..., 0] * 255), pictures["dog/0.png"])


def test_folder_colour_and_binary(tmp_path):
  rng = np.random.default_rng(1)
  _png(tmp_path / "mixed" / "a.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
  _png(tmp_path / "mixed" / "b.jpg", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
  ds = data.load(f"folder:{tmp_path / 'mixed'}")
  assert (ds.image_shape, ds.num_classes) == ((4, 4, 3), None)
  grey = ds.batch("train", 0, 2, seed=0, shuffle=False)["image"][0]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  for i in range(3):
    _png(tmp_path / "bits" / f"{i}.png", (rng.random((4, 4)) > 0.5).astype(np.uint8) * 255, "1")
  ds = data.load(f"folder:{tmp_path / 'bits'}")
  assert (ds.image_shape, ds.levels) == ((4, 4, 1), 2)
  assert set(np.unique(ds.batch("train", 0, 3, seed=0)["image"]).tolist()) == {0.0, 1.0}


def test_folder_bad_input(tmp_path):
  with pytest.raises(DataError, match="no such folder"):
    data.load(f"folder:{tmp_path / 'none'}")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("hi")
  with pytest.raises(DataError, match="holds no PNG/JPEG images"):
    data.load(f"folder:{tmp_path / 'empty'}")
  _png(tmp_path / "sizes" / "a.png", np.zeros((4, 4), np.uint8))
  _png(tmp_path / "sizes" / "b.png", np.zeros((4, 5), np.uint8))
  with pytest.raises(DataError, match=r"b.png is 4x5 \(HxW\) but a.png is 4x4"):
    data.load(f"folder:{tmp_path / 'sizes'}")
  _png(tmp_path / "both" / "a.png", np.zeros((4, 4), np.uint8))
  _png(tmp_path / "both" / "c1" / "b.png", np.zeros((4, 4), np.uint8))
  with pytest.raises(DataError, match="both at its top level and in sub-folders"):
    data.load(f"folder:{tmp_path / 'both'}")
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match="cannot read .*x.png"):
    data.load(f"folder:{tmp_path / 'broken'}")
