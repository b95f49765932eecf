"""The FID Inception network in Flax linen, and an importer of the standard FID weights file.

The network is the 2015-12-05 TensorFlow Inception graph that FID (Heusel et al. 2017), the Inception
Score (Salimans et al. 2016) and KID (Bińkowski et al. 2018) were defined with, as pytorch-fid
(mseitzer/pytorch-fid, ``FIDInceptionV3``) ports it to PyTorch. It is torchvision's InceptionV3 layout
(1008 classes, no auxiliary head) with the blocks that differ in the TF graph:

- ``FIDInceptionA`` / ``FIDInceptionC`` / ``FIDInceptionE_1``: the pooling branch averages over the
  3x3 window without the zero padding (``count_include_pad=False``, as TF's average pool);
- ``FIDInceptionE_2`` (``Mixed_7c``): the pooling branch takes a 3x3 *max* pool (stride 1, padding 1).

Every convolution is ``BasicConv2d``: a bias-free convolution, batch normalisation with eps 1e-3 (its
running statistics), ReLU. The batch norm is folded into the convolution's weights at apply time, so
the variables mirror the PyTorch state dict one to one while the forward pass is one convolution and
one add per layer.

Preprocessing is pytorch-fid's: images in [0, 1] (N, H, W, C), grey images repeated to 3 channels,
resized to 299x299 by bilinear interpolation as ``torch.nn.functional.interpolate(mode='bilinear',
align_corners=False)`` does it (half-pixel centres, no anti-aliasing; written as two small
interpolation matrices), then scaled to [-1, 1] by ``2x - 1``. The 8-bit quantisation that
pytorch-fid's images get by being read from PNG files is applied before, by the feature extraction
(:mod:`zoo.metrics.features`).

Outputs: ``pool``, the 2048 pool3 features (global average of ``Mixed_7c``) that FID, KID and
precision/recall use; ``logits``, ``fc(pool)`` over the 1008 classes; ``logits_unbiased``, ``pool @
fc.weight.T`` without the bias, which is what the original Inception Score code takes the softmax of
(``softmax/logits/MatMul``; torch-fidelity's ``logits_unbiased``).

The weights: ``pt_inception-2015-12-05-6726825d.pth`` from pytorch-fid's releases (see
``FID_WEIGHTS_URL``), read from a local path by :func:`load_fid_weights`; when no path is given and the
default location (``default_weights_path()``) has no file, it is downloaded there once (when online),
its sha256 checked against its name before it is kept.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.errors import CheckpointError, ZooError
from zoo.interop.formats import read_torch
from zoo.interop.layout import Layout, foreign_shapes, from_foreign, path_str, to_foreign
from zoo.interop.layouts import ZOO

__all__ = [
    "FID_WEIGHTS_NAME", "FID_WEIGHTS_URL", "FIDInceptionV3", "INPUT_SIZE", "NUM_CLASSES", "TAPS",
    "default_weights_path", "download_fid_weights", "load_fid_weights", "preprocess", "resize_bilinear",
    "resize_matrix", "state_dict_spec", "to_state_dict",
]

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_NAME)
NUM_CLASSES = 1008
INPUT_SIZE = 299
BN_EPS = 1e-3
# The intermediate outputs ``__call__(..., taps=True)`` returns, for perceptual distances (PPL): the
# stem's two resolutions and the last block of each grid size, as LPIPS taps VGG after each stage.
TAPS = ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c")

_PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH,
               "default": lax.Precision.DEFAULT}


# --------------------------------------------------------------------------------------------------
# Preprocessing.


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) matrix of PyTorch's 1-D bilinear resize with ``align_corners=False``.

  Output pixel ``o`` samples the input at ``src = (o + 0.5) * in_size / out_size - 0.5`` (clamped at
  0), between pixels ``floor(src)`` and the next one (clamped at the edge), with linear weights. The
  source positions are rounded to float32 once after a fused multiply-add, as PyTorch's CPU kernel
  computes them for float32 images (exact float64 positions differ from its by up to ~4e-5 of a pixel
  when shrinking 320 to 299).

  >>> resize_matrix(2, 4).round(2).tolist()
  [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
  """
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  centres = np.arange(out_size, dtype=f32) + f32(0.5)
  src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(f32)   # fma: one rounding
  src = np.maximum(src, f32(0.0))
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  lam = src - lo.astype(f32)
  m = np.zeros((out_size, in_size), f32)
  np.add.at(m, (np.arange(out_size), lo), f32(1.0) - lam)
  np.add.at(m, (np.arange(out_size), hi), lam)
  return m


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Resizes (N, H, W, C) images to (N, size, size, C) as pytorch-fid does (see ``resize_matrix``)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  rh, rw = jnp.asarray(resize_matrix(h, size)), jnp.asarray(resize_matrix(w, size))
  hp = lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", rh, images, precision=hp)
  return jnp.einsum("pw,nowc->nopc", rw, x, precision=hp)


def preprocess(images: jax.Array) -> jax.Array:
  """(N, H, W, 1 or 3) images in [0, 1] -> (N, 299, 299, 3) network input in [-1, 1] (pytorch-fid)."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ZooError(f"the Inception network takes (N, H, W, 1 or 3) images, got shape {images.shape}")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return 2.0 * resize_bilinear(x) - 1.0


# --------------------------------------------------------------------------------------------------
# The network. Module names are the PyTorch attribute names, so that a variable's path is its
# state-dict key.


class _ConvWeight(nn.Module):
  """Holds a convolution kernel (kh, kw, in, out): PyTorch's ``conv.weight`` transposed."""
  shape: tuple[int, int, int, int]

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("kernel", nn.initializers.lecun_normal(), self.shape)


class _BatchNorm(nn.Module):
  """Holds a batch norm's scale and bias (params) and running mean and variance (batch_stats)."""
  features: int

  @nn.compact
  def __call__(self) -> tuple[jax.Array, ...]:
    f = (self.features,)
    scale = self.param("scale", nn.initializers.ones, f)
    bias = self.param("bias", nn.initializers.zeros, f)
    mean = self.variable("batch_stats", "mean", jnp.zeros, f).value
    var = self.variable("batch_stats", "var", jnp.ones, f).value
    return scale, bias, mean, var


class BasicConv2d(nn.Module):
  """Bias-free convolution, batch norm (eps 1e-3, running statistics), ReLU; the BN folded in."""
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  stride: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = _ConvWeight((kh, kw, x.shape[-1], self.features), name="conv")()
    scale, bias, mean, var = _BatchNorm(self.features, name="bn")()
    mult = scale * lax.rsqrt(var + BN_EPS)
    ph, pw = self.padding
    y = lax.conv_general_dilated(x, kernel * mult[None, None, None, :], (self.stride, self.stride),
                                 ((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=_PRECISIONS[self.precision])
    return nn.relu(y + (bias - mean * mult)[None, None, None, :])


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
  """3x3 max pool (padding with -inf, as PyTorch's)."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                           ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_no_pad(x: jax.Array) -> jax.Array:
  """3x3 average pool, stride 1, padding 1, over the window's non-padding pixels only."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  sums = lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  counts = lax.reduce_window(jnp.ones((1, *x.shape[1:3], 1), x.dtype), 0.0, lax.add, (1, 3, 3, 1),
                             (1, 1, 1, 1), pads)
  return sums / counts


class FIDInceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and (TF-style average) pool branches."""
  pool_features: int
  precision: str = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_no_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: the 35 -> 17 grid reduction."""
  precision: str = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b3 = conv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b/c/d/e: factorised 7x7 branches and a (TF-style average) pool branch."""
  channels_7x7: int
  precision: str = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    c7 = self.channels_7x7
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_no_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: the 17 -> 8 grid reduction."""
  precision: str = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (``pool='avg'``, TF-style average) and Mixed_7c (``pool='max'``, the FID graph's max pool)."""
  pool: str = "avg"
  precision: str = "highest"

  @nn.compact
  def __call__(self, x):
    conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool(x, 1, pad=1) if self.pool == "max" else _avg_pool_no_pad(x)
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class _Dense(nn.Module):
  """Holds the classifier's kernel (2048, 1008) (PyTorch's ``fc.weight`` transposed) and bias."""
  features: int

  @nn.compact
  def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return kernel, bias


class FIDInceptionV3(nn.Module):
  """The FID InceptionV3 (pytorch-fid's ``fid_inception_v3``), on preprocessed (N, 299, 299, 3) input.

  Attributes:
    precision: of the convolutions and matrix products: 'highest' (float32 throughout, the default;
      on GPUs this rules out TF32), 'high' or 'default' (faster on accelerators, less exact).
  """
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: jax.Array, taps: bool = False) -> dict[str, Any]:
    """Features of preprocessed images (see :func:`preprocess`).

    Args:
      x: (N, 299, 299, 3) float32 in [-1, 1].
      taps: also return the feature maps named in ``TAPS`` (under ``"taps"``, a list).

    Returns:
      ``{"pool": (N, 2048), "logits": (N, 1008), "logits_unbiased": (N, 1008)}`` (+ ``"taps"``).
    """
    p = self.precision
    conv = lambda *a, **k: BasicConv2d(*a, precision=p, **k)
    outs = {}
    x = conv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = outs["Conv2d_2b_3x3"] = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x, 2)
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = outs["Conv2d_4a_3x3"] = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x, 2)
    x = FIDInceptionA(32, p, name="Mixed_5b")(x)
    x = FIDInceptionA(64, p, name="Mixed_5c")(x)
    x = outs["Mixed_5d"] = FIDInceptionA(64, p, name="Mixed_5d")(x)
    x = InceptionB(p, name="Mixed_6a")(x)
    x = FIDInceptionC(128, p, name="Mixed_6b")(x)
    x = FIDInceptionC(160, p, name="Mixed_6c")(x)
    x = FIDInceptionC(160, p, name="Mixed_6d")(x)
    x = outs["Mixed_6e"] = FIDInceptionC(192, p, name="Mixed_6e")(x)
    x = InceptionD(p, name="Mixed_7a")(x)
    x = FIDInceptionE("avg", p, name="Mixed_7b")(x)
    x = outs["Mixed_7c"] = FIDInceptionE("max", p, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    kernel, bias = _Dense(NUM_CLASSES, name="fc")(pool.shape[-1])
    unbiased = jnp.dot(pool, kernel, precision=_PRECISIONS[p])
    out = {"pool": pool, "logits": unbiased + bias[None, :], "logits_unbiased": unbiased}
    if taps:
      out["taps"] = [outs[name] for name in TAPS]
    return out


# --------------------------------------------------------------------------------------------------
# The PyTorch state dict <-> Flax variables.

# pytorch-fid's state dict is what the zoo layout names (zoo.interop.layouts.ZOO): module paths joined
# by dots, Conv2d weights OIHW, BatchNorm2d weight/bias/running_mean/running_var, Linear (out, in); the
# same rules, so one importer checks every name, shape and dtype for families and for this network.
FID_LAYOUT = Layout(name="fid_inception", description="pytorch-fid's FIDInceptionV3 state dict",
                    rules=ZOO.rules, ignore=ZOO.ignore)


@functools.lru_cache(maxsize=1)
def _abstract_variables() -> dict:
  """The variables' shapes and dtypes (ShapeDtypeStructs, immutable): traced once per process."""
  return jax.eval_shape(lambda: FIDInceptionV3().init(jax.random.PRNGKey(0),
                                                      jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))


def state_dict_spec() -> dict[str, tuple[int, ...]]:
  """{state-dict key: PyTorch shape} of the FID Inception weights file (``num_batches_tracked`` aside)."""
  return foreign_shapes(FID_LAYOUT, _abstract_variables())


def to_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The PyTorch state dict (numpy arrays in PyTorch layouts) of Flax variables; inverse of the import."""
  return to_foreign(FID_LAYOUT, variables)


def default_weights_path() -> Path:
  """Where the weights are looked for when no path is given: $ZOO_INCEPTION_WEIGHTS, else the cache."""
  env = os.environ.get("ZOO_INCEPTION_WEIGHTS")
  if env:
    return Path(env).expanduser()
  from zoo.metrics.features import cache_dir
  return cache_dir() / FID_WEIGHTS_NAME


def _missing_message(path: Path) -> str:
  return (f"the FID Inception weights are not at {path}: download {FID_WEIGHTS_URL} (92 MB) on a "
          f"machine with internet and pass its path (zoo eval --inception-weights PATH; Python: "
          f"inception_weights=PATH), or put it at {default_weights_path()} "
          f"(or set $ZOO_INCEPTION_WEIGHTS); --features digits needs no download")


def _check_digest(path: Path, content: Path | None = None) -> None:
  """A file under the standard name must have the content that name's hash prefix says (sha256).

  ``content``: the file to hash when it is not (yet) at ``path`` (a download in progress).
  """
  m = re.fullmatch(r"pt_inception-2015-12-05-([0-9a-f]{8})\.pth", path.name)
  if not m:
    return
  h = hashlib.sha256()
  with open(content or path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  if not h.hexdigest().startswith(m.group(1)):
    raise CheckpointError(f"{path}: its sha256 {h.hexdigest()[:8]}... does not match the {m.group(1)} "
                          f"of its name: the download is corrupt or incomplete; download "
                          f"{FID_WEIGHTS_URL} again")


def download_fid_weights(dest: Path, url: str = FID_WEIGHTS_URL, timeout: float = 60.0) -> Path:
  """Downloads the FID weights file to ``dest`` (atomically, sha256 checked); a clear error offline."""
  import urllib.error
  import urllib.request
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(dest.name + ".part")
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
      for chunk in iter(lambda: response.read(1 << 20), b""):
        f.write(chunk)
  except (urllib.error.URLError, OSError) as e:
    tmp.unlink(missing_ok=True)
    reason = getattr(e, "reason", e)
    raise ZooError(f"{_missing_message(dest)} (downloading it failed: {' '.join(str(reason).split())[:120]})"
                   ) from None
  try:
    _check_digest(Path(FID_WEIGHTS_NAME), tmp)     # whatever dest is called, the content must be this
  except CheckpointError:
    tmp.unlink(missing_ok=True)
    raise
  tmp.replace(dest)
  return dest


def load_fid_weights(path: str | os.PathLike | None = None, download: bool = True) -> dict[str, Any]:
  """Reads the FID Inception weights (a PyTorch state dict) into variables of :class:`FIDInceptionV3`.

  Every tensor's name and shape is checked against the network, and its dtype is floating (read as
  float32), through the layout importer the families use (:func:`zoo.interop.from_foreign`); a file
  that does not match fails with one line naming the missing, unexpected, wrong-shaped and wrong-dtype
  tensors, and nothing is returned.
  ``*.num_batches_tracked`` entries, which PyTorch adds to batch norms, are ignored. The file is read
  with ``torch.load(weights_only=True)``, which unpickles tensors and containers only.

  Args:
    path: the ``.pth`` file; None looks in ``default_weights_path()``.
    download: with no ``path``, download the file to ``default_weights_path()`` when it is not there.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (numpy float32 leaves).
  """
  given = path is not None
  path = Path(path).expanduser() if given else default_weights_path()
  if not path.is_file():
    if given or not download:
      raise ZooError(_missing_message(path))
    download_fid_weights(path)
  _check_digest(path)
  tensors = read_torch(path)
  abstract = _abstract_variables()
  arrays = from_foreign(FID_LAYOUT, tensors, abstract, source=f"{path} (expected the FID Inception weights, "
                                                               f"{FID_WEIGHTS_NAME})")
  variables = jax.tree_util.tree_map_with_path(lambda p, _: np.asarray(arrays[path_str(p)], np.float32),
                                               abstract)
  return variables
