"""The zoo's data layer: TFDS data sets without TensorFlow, and numpy batches for the train step.

>>> from zoo import data
>>> ds = data.load({"name": "binarized_mnist"})            # doctest: +SKIP
>>> ds.image_shape, ds.levels, ds.splits                   # doctest: +SKIP
((28, 28, 1), 2, ('train', 'valid', 'test'))
>>> b = ds.batch("train", 0, 128, seed=0)                  # doctest: +SKIP
>>> b["image"].shape, b["image"].dtype                     # doctest: +SKIP
((128, 28, 28, 1), dtype('float32'))

See ``zoo.data.pipeline`` for the data set names ``load`` understands and ``zoo.data.builders`` for
the zoo's own TFDS builders.
"""
from __future__ import annotations

from zoo.data.builders import BinarizedMnist, Mnist5k, available, prepare, resolve_data_dir
from zoo.data.pipeline import BatchIterator, Dataset, load

__all__ = [
    "BatchIterator", "BinarizedMnist", "Dataset", "Mnist5k", "available", "load", "prepare",
    "resolve_data_dir",
]
