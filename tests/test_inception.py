"""The Flax FID Inception against a PyTorch twin written here, and the weights importer's errors.

The twin is pytorch-fid's FID InceptionV3 (torchvision's Inception3 layout with 1008 classes, no aux
head, and the FID blocks: A/C/E_1 average pools without the padding, E_2's max pool), in plain torch.nn
(no torchvision). It gets random weights, its state dict goes through ``load_fid_weights``, and both
networks see the same images through their own resize to 299 and [-1, 1] scaling.

torch is required (it is in the test environment): without it these tests fail at the import.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import rel_error
from zoo.errors import CheckpointError, ZooError
from zoo.metrics import inception


class TBasicConv2d(nn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg_no_pad(x):
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class TInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TBasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = TBasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = TBasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = TBasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = TBasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = TBasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = TBasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_no_pad(x))], 1)


class TInceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TBasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = TBasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = TBasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = TBasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class TInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TBasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = TBasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = TBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = TBasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TBasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = TBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TBasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TBasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TBasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = TBasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_no_pad(x))], 1)


class TInceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TBasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = TBasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = TBasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = TBasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TBasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TBasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class TInceptionE(nn.Module):
  def __init__(self, cin, pool):
    super().__init__()
    self.pool = pool
    self.branch1x1 = TBasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = TBasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = TBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = TBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TBasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = TBasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = TBasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TBasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = TBasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_no_pad(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TFIDInception(nn.Module):
  """pytorch-fid's FID InceptionV3 with its resize and normalisation; returns (pool, logits)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TBasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = TBasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = TBasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = TBasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = TBasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = TInceptionA(192, 32)
    self.Mixed_5c = TInceptionA(256, 64)
    self.Mixed_5d = TInceptionA(288, 64)
    self.Mixed_6a = TInceptionB(288)
    self.Mixed_6b = TInceptionC(768, 128)
    self.Mixed_6c = TInceptionC(768, 160)
    self.Mixed_6d = TInceptionC(768, 160)
    self.Mixed_6e = TInceptionC(768, 192)
    self.Mixed_7a = TInceptionD(768)
    self.Mixed_7b = TInceptionE(1280, "avg")
    self.Mixed_7c = TInceptionE(2048, "max")
    self.fc = nn.Linear(2048, 1008)

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                 "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
      x = getattr(self, name)(x)
    pool = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    return pool, self.fc(pool)


def _randomize(net: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights that keep activations O(1) through the depth (He init, BN near identity)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
      elif isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.rand(n, generator=g) - 0.1)
        m.running_mean.copy_(0.2 * torch.rand(n, generator=g) - 0.1)
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
      elif isinstance(m, nn.Linear):
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.05)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g))
  return net.eval()


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
  """(torch twin with random weights, path of its saved state dict)."""
  torch.manual_seed(0)
  net = _randomize(TFIDInception())
  path = tmp_path_factory.mktemp("fid_weights") / "random_fid_inception.pth"
  torch.save(net.state_dict(), path)     # with num_batches_tracked, as PyTorch writes them
  return net, path


def test_state_dict_spec_is_the_torch_layout(twin):
  net, _ = twin
  theirs = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
  assert inception.state_dict_spec() == theirs


def test_resize_matches_torch_interpolate():
  rng = np.random.default_rng(0)
  for h, w in ((28, 28), (17, 40), (320, 300)):
    x = rng.random((2, h, w, 3), dtype=np.float32)
    ours = np.asarray(inception.resize_bilinear(jnp.asarray(x)))
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    assert np.max(np.abs(ours - ref)) < 1e-5, (h, w)
  grey = rng.random((2, 28, 28, 1), dtype=np.float32)        # grey images are repeated to RGB
  np.testing.assert_array_equal(np.asarray(inception.preprocess(jnp.asarray(grey))),
                                np.asarray(inception.preprocess(jnp.asarray(np.repeat(grey, 3, -1)))))


def test_flax_inception_reproduces_the_pytorch_fid_network(twin):
  """Through zoo.metrics.extract (8-bit quantization, resize, [-1, 1], network), in batches of 2."""
  from zoo.metrics import features
  net, path = twin
  ex = features.get_extractor("inception", str(path), batch_size=2)
  rng = np.random.default_rng(1)
  images = np.round(rng.random((3, 28, 28, 3)) * 255).astype(np.float32) / 255   # 8-bit already
  out = features.extract(ex, images)                      # two batches, the second one padded
  with torch.no_grad():
    pool_t, logits_t = net(torch.from_numpy(images).permute(0, 3, 1, 2))
  bias = net.fc.bias.detach().numpy()[None]
  assert float(pool_t.abs().mean()) > 1e-2     # the random network did not collapse to zeros
  assert rel_error(out["features"], pool_t.numpy()) < 1e-4
  assert rel_error(out["logits"], logits_t.numpy() - bias) < 1e-4            # IS's logits: no bias
  assert rel_error(out["logits"] + ex.variables["params"]["fc"]["bias"][None], logits_t.numpy()) < 1e-4
  # and the variables round-trip to the same state dict
  back = inception.to_state_dict(inception.load_fid_weights(path))
  sd = net.state_dict()
  assert all(np.array_equal(back[k], sd[k].numpy()) for k in back)


def _bad_file(twin, tmp_path, name, edit):
  _, path = twin
  state = torch.load(path, weights_only=True)
  edit(state)
  out = tmp_path / name
  torch.save(state, out)
  with pytest.raises(CheckpointError) as e:
    inception.load_fid_weights(out)
  msg = str(e.value)
  assert "\n" not in msg and str(out) in msg
  return msg


def test_weights_file_with_a_missing_key(twin, tmp_path):
  msg = _bad_file(twin, tmp_path, "missing.pth", lambda s: s.pop("Mixed_6b.branch7x7_2.bn.running_var"))
  assert "missing 1: Mixed_6b.branch7x7_2.bn.running_var" in msg and "FID Inception weights" in msg
  assert "unexpected" not in msg and "wrong" not in msg


def test_weights_file_with_an_unexpected_key(twin, tmp_path):
  msg = _bad_file(twin, tmp_path, "extra.pth",
                  lambda s: s.update({"AuxLogits.fc.weight": torch.zeros(1008, 768)}))
  assert "unexpected 1: AuxLogits.fc.weight" in msg
  assert "missing" not in msg and "wrong" not in msg


def test_weights_file_with_a_wrong_shape_and_dtype(twin, tmp_path):
  def edit(s):
    s["fc.weight"] = torch.zeros(1000, 2048)
    s["fc.bias"] = torch.zeros(1008, dtype=torch.int32)
  msg = _bad_file(twin, tmp_path, "shape.pth", edit)
  assert "wrong shape 1: fc.weight (1000, 2048) (expected (1008, 2048))" in msg
  assert "wrong dtype 1: fc.bias int32 (expected floating)" in msg
  assert "missing" not in msg and "unexpected" not in msg


def _pwn(path):
  with open(path, "w") as f:
    f.write("code ran")
  return {}


class _Payload:
  """Unpickles by calling ``_pwn``: what a hostile .pth file would do with a plain ``torch.load``."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return _pwn, (self.marker,)


def test_weights_file_with_code_is_refused_without_running_it(twin, tmp_path):
  _, path = twin
  state = torch.load(path, weights_only=True)
  marker = tmp_path / "pwned.txt"
  state["fc.bias"] = _Payload(str(marker))
  evil = tmp_path / "evil.pth"
  torch.save(state, evil)
  with pytest.raises(CheckpointError) as e:
    inception.load_fid_weights(evil)
  msg = str(e.value)
  assert "not a PyTorch weights file that loads safely" in msg and "\n" not in msg
  assert not marker.exists()                      # weights_only: the payload was never called
  torch.load(evil, weights_only=False)            # (the file does carry the payload)
  assert marker.exists()


def test_missing_and_corrupt_weights_files(tmp_path, monkeypatch):
  monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
  with pytest.raises(ZooError) as e:
    inception.load_fid_weights(tmp_path / "nowhere.pth")
  msg = str(e.value)
  assert inception.FID_WEIGHTS_URL in msg and "--inception-weights" in msg
  assert str(tmp_path / "cache" / inception.FID_WEIGHTS_NAME) in msg
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a pickle")
  with pytest.raises(CheckpointError, match="not a PyTorch weights file that loads safely"):
    inception.load_fid_weights(junk)
  named = tmp_path / inception.FID_WEIGHTS_NAME     # the standard name with the wrong content
  named.write_bytes(b"truncated download")
  with pytest.raises(CheckpointError, match="corrupt or incomplete"):
    inception.load_fid_weights(named)



def test_default_weights_are_downloaded_checked_or_explained(tmp_path, monkeypatch):
  import io
  import urllib.error
  import urllib.request
  monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
  monkeypatch.delenv("ZOO_INCEPTION_WEIGHTS", raising=False)
  dest = tmp_path / "cache" / inception.FID_WEIGHTS_NAME
  urls = []

  def offline(url, timeout=None):
    urls.append(url)
    raise urllib.error.URLError("no network")

  monkeypatch.setattr(urllib.request, "urlopen", offline)
  with pytest.raises(ZooError) as e:
    inception.load_fid_weights()
  msg = str(e.value)
  assert urls == [inception.FID_WEIGHTS_URL] and "downloading it failed: no network" in msg
  assert str(dest) in msg and "\n" not in msg
  monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>moved</html>"))
  with pytest.raises(CheckpointError, match="corrupt or incomplete"):
    inception.load_fid_weights()
  assert not dest.exists() and not list(dest.parent.glob("*.part"))    # nothing bad is kept
  with pytest.raises(ZooError, match="--inception-weights"):            # a given path is never fetched
    inception.load_fid_weights(tmp_path / "elsewhere.pth")
  assert len(urls) == 1
