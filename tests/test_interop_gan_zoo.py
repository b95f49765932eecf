"""pytorch_GAN_zoo's DCGAN and PGAN checkpoints: twins with that project's module and parameter names,
saved as its trainers save them, imported through the zoo's layouts, compared output for output."""
from __future__ import annotations

import math
import sys
import types
from collections import OrderedDict

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from helpers import rel_error
import zoo
from zoo.errors import CheckpointError
from zoo.interop import export_checkpoint, import_checkpoint

DCGAN_SPEC = "experiments/radford2015/dcgan_gan_zoo.py"
PGAN_SPEC = "experiments/karras2017/pgan_celebahq_gan_zoo.py"


def _save_like_gan_zoo(path, monkeypatch, **state_dicts):
  """torch.save of {"config": <models.utils.config.BaseConfig>, **state_dicts}, as their trainers do."""
  for name in ("models", "models.utils", "models.utils.config"):     # their package, for pickle to name
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
  BaseConfig = type("BaseConfig", (), {"__module__": "models.utils.config"})
  sys.modules["models.utils.config"].BaseConfig = BaseConfig
  config = BaseConfig()
  config.depth, config.dimLatentVector, config.attribKeysOrder = 3, 64, None
  torch.save({"config": config, **state_dicts}, path)


# -- DCGAN (models/networks/DCGAN_nets.py: GNet, DNet)


class _GNet(tnn.Module):
  def __init__(self, latent, dim_g, out_c, depth):
    super().__init__()
    top = dim_g * 2 ** depth
    self.formatLayer = tnn.ConvTranspose2d(latent, top, 4, 1, 0, bias=False)
    seq, c = OrderedDict(), top
    seq["batchNorm0"], seq["relu0"] = tnn.BatchNorm2d(c), tnn.ReLU()
    for i in range(depth):
      seq[f"convTranspose{i + 1}"] = tnn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False)
      seq[f"batchNorm{i + 1}"], seq[f"relu{i + 1}"] = tnn.BatchNorm2d(c // 2), tnn.ReLU()
      c //= 2
    seq["outlayer"] = tnn.ConvTranspose2d(dim_g, out_c, 4, 2, 1, bias=False)
    self.main = tnn.Sequential(seq)

  def forward(self, z):
    return torch.tanh(self.main(self.formatLayer(z.view(z.shape[0], -1, 1, 1))))


class _DNet(tnn.Module):
  def __init__(self, in_c, dim_d, depth):
    super().__init__()
    seq, c = OrderedDict(), dim_d
    seq[f"convTranspose{depth}"] = tnn.Conv2d(in_c, c, 4, 2, 1, bias=False)
    seq[f"relu{depth}"] = tnn.LeakyReLU(0.2)
    for i in range(depth):
      k = depth - i - 1
      seq[f"convTranspose{k}"] = tnn.Conv2d(c, 2 * c, 4, 2, 1, bias=False)
      seq[f"batchNorm{k}"], seq[f"relu{k}"] = tnn.BatchNorm2d(2 * c), tnn.LeakyReLU(0.2)
      c *= 2
    self.main = tnn.Sequential(seq)
    self.decisionLayer = tnn.Conv2d(c, 1, 4, 1, 0, bias=False)

  def forward(self, x):
    return self.decisionLayer(self.main(x)).view(-1, 1)


def _randomized(module, seed):
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, (tnn.Conv2d, tnn.ConvTranspose2d)):
      m.weight.data = 0.1 * torch.randn(m.weight.shape, generator=g)
    if isinstance(m, tnn.BatchNorm2d):
      m.weight.data = 1 + 0.2 * torch.randn(m.weight.shape, generator=g)
      m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
      m.running_mean = 0.1 * torch.randn(m.running_mean.shape, generator=g)
      m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=g)
  return module.eval()


# a depth-1 version of their DCGAN (theirs is depth 3, 64x64): 4x4 -> 16x16
DCGAN_SMALL = ["--config.model.latent_dim=8", "--config.model.g_features=(16, 8)",
               "--config.model.d_features=(8, 16)", "--config.data.image_shape=(16, 16, 3)"]


def _overrides(cli):
  return [a[len("--config."):] for a in cli]


@pytest.fixture(scope="module")
def dcgan_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("gan_zoo") / "dcgan.pth"
  netG, avgG = _randomized(_GNet(8, 8, 3, 1), 0), _randomized(_GNet(8, 8, 3, 1), 1)
  netD = _randomized(_DNet(3, 8, 1), 2)
  with pytest.MonkeyPatch.context() as mp:
    _save_like_gan_zoo(path, mp, netG=netG.state_dict(), netD=netD.state_dict(), avgG=avgG.state_dict())
  return path, avgG, netD


def test_dcgan_checkpoint_imports_with_one_command_and_gives_their_outputs(dcgan_file, tmp_path, capsys):
  from zoo.cli import main
  path, avgG, netD = dcgan_file
  assert main(["import", "--from", "pytorch", str(path), "--config", DCGAN_SPEC, "--layout", "gan_zoo_dcgan",
               "--workdir", str(tmp_path / "run"), *DCGAN_SMALL]) == 0
  loaded = zoo.load(tmp_path / "run")
  family, variables = loaded.family, loaded.variables
  z = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
  x = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  ours_g, _ = family.apply_net("generator", variables, jnp.asarray(z), train=False)
  ours_d, _ = family.apply_net("discriminator", variables, jnp.asarray(x), train=False)
  with torch.no_grad():
    theirs_g = avgG(torch.from_numpy(z)).permute(0, 2, 3, 1)          # the averaged generator
    theirs_d = netD(torch.from_numpy(x).permute(0, 3, 1, 2))[:, 0]
  assert ours_g.shape == (4, 16, 16, 3) and rel_error(ours_g, theirs_g) < 1e-5
  assert rel_error(ours_d, theirs_d) < 1e-5
  # the biases their layers lack are zero, and the sampler works on the imported run
  assert not np.any(np.asarray(variables["params"]["generator"]["deconv_1"]["bias"]))
  assert main(["sample", "--workdir", str(tmp_path / "run"), "--num", "4", "--out", str(tmp_path / "g.png")]) == 0
  # fine-tuning: `zoo train` continues the imported run (step 0) on data of the same shape
  images = np.random.default_rng(2).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
  np.savez(tmp_path / "data.npz", images=images)
  tune = [f"--config.data.name=npz:{tmp_path / 'data.npz'}", "--config.steps=2", "--config.batch_size=8",
          "--config.checkpoint_every=2", "--config.log_every=1", "--config.eval_split=train",
          "--config.eval_examples=16", "--config.eval_batch_size=16", "--config.num_samples=4", "--config.model.parzen_samples=16"]
  assert main(["train", "--config", DCGAN_SPEC, "--workdir", str(tmp_path / "run"), "--no-progress",
               *DCGAN_SMALL, *tune]) == 0
  tuned = zoo.load(tmp_path / "run")
  assert tuned.meta["step"] == 2 and tuned.meta["imported"]["layout"] == "gan_zoo_dcgan"
  moved = tuned.variables["params"]["generator"]["project"]["kernel"]
  assert not np.array_equal(moved, variables["params"]["generator"]["project"]["kernel"])


def test_dcgan_export_reproduces_their_tensors_in_their_nesting(dcgan_file, tmp_path):
  path, avgG, netD = dcgan_file
  import_checkpoint(path, DCGAN_SPEC, tmp_path / "run", layout="gan_zoo_dcgan", overrides=_overrides(DCGAN_SMALL))
  export_checkpoint(tmp_path / "run", tmp_path / "back.pth", layout="gan_zoo_dcgan")
  back = torch.load(tmp_path / "back.pth", weights_only=True)
  assert set(back) == {"avgG", "netD"}          # netG, the raw weights, is not part of the layout
  for name, want in (("avgG", avgG.state_dict()), ("netD", netD.state_dict())):
    want = {k: v for k, v in want.items() if not k.endswith("num_batches_tracked")}
    assert set(back[name]) == set(want), name
    for k, v in want.items():
      assert back[name][k].dtype == v.dtype and torch.equal(back[name][k], v), (name, k)
  # safetensors: the same tensors, flat, dotted
  export_checkpoint(tmp_path / "run", tmp_path / "back.safetensors", layout="gan_zoo_dcgan")
  from zoo.interop import formats
  flat, _ = formats.read_safetensors(tmp_path / "back.safetensors")
  assert np.array_equal(flat["avgG.formatLayer.weight"], avgG.formatLayer.weight.detach().numpy())


def test_a_zoo_dcgan_with_nonzero_biases_cannot_be_written_in_their_layout(tmp_path):
  from zoo import registry
  from zoo.interop import get_layout, to_foreign
  import jax
  family = registry.build("dcgan", dict(latent_dim=8, g_features=(16, 8), d_features=(8, 16)), (16, 16, 3))
  variables = jax.device_get(family.init(jax.random.PRNGKey(0), {"image": np.zeros((2, 16, 16, 3), np.float32)}))
  variables["params"]["discriminator"]["conv_0"]["bias"] = np.full((8,), 0.5, np.float32)
  with pytest.raises(CheckpointError, match="no place for params/discriminator/conv_0/bias"):
    to_foreign(get_layout("gan_zoo_dcgan", family), variables)
  with pytest.raises(CheckpointError, match="for the dcgan family"):
    get_layout("gan_zoo_dcgan", registry.build("gan", {}, (28, 28, 1)))


def test_a_checkpoint_that_is_not_theirs_fails_with_one_line(dcgan_file, tmp_path, capsys, monkeypatch):
  from zoo.cli import main
  path, _, _ = dcgan_file
  # their 64x64 default config against this depth-1 file: every shape is wrong, nothing is written
  assert main(["import", str(path), "--config", DCGAN_SPEC, "--layout", "gan_zoo_dcgan",
               "--workdir", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err
  assert "wrong shape" in err and "nothing was imported" in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "run" / "checkpoints").exists()
  # a state dict without their nesting
  torch.save({"formatLayer.weight": torch.zeros(8, 16, 4, 4)}, tmp_path / "flat.pth")
  assert main(["import", str(tmp_path / "flat.pth"), "--config", DCGAN_SPEC, "--layout", "gan_zoo_dcgan",
               "--workdir", str(tmp_path / "run2"), *DCGAN_SMALL]) == 2
  assert "expected state dicts under netG, netD, avgG" in capsys.readouterr().err


# -- PGAN (models/networks/progressive_conv_net.py: GNet; custom_layers.py: ConstrainedLayer)


class _Constrained(tnn.Module):
  """Their equalized layer: N(0, 1) weights in ``.module``, output times sqrt(2 / fan_in) (bias too)."""

  def __init__(self, module):
    super().__init__()
    self.module = module
    self.scale = math.sqrt(2.0 / np.prod(module.weight.shape[1:]))

  def forward(self, x):
    return self.module(x) * self.scale


def _pixel_norm(x, dim=1):
  return x * torch.rsqrt((x ** 2).mean(dim=dim, keepdim=True) + 1e-8)


class _PGNet(tnn.Module):
  def __init__(self, latent, depths, out_c=3):
    super().__init__()
    d0 = depths[0]
    self.formatLayer = _Constrained(tnn.Linear(latent, 16 * d0))
    self.groupScale0 = tnn.ModuleList([_Constrained(tnn.Conv2d(d0, d0, 3, padding=1))])
    self.scaleLayers = tnn.ModuleList()
    self.toRGBLayers = tnn.ModuleList([_Constrained(tnn.Conv2d(d0, out_c, 1))])
    for prev, d in zip(depths, depths[1:]):
      self.scaleLayers.append(tnn.ModuleList([_Constrained(tnn.Conv2d(prev, d, 3, padding=1)),
                                              _Constrained(tnn.Conv2d(d, d, 3, padding=1))]))
      self.toRGBLayers.append(_Constrained(tnn.Conv2d(d, out_c, 1)))
    self.alpha = 0.0
    g = torch.Generator().manual_seed(3)
    for p in self.parameters():                  # random weights and biases (theirs start at zero)
      p.data = torch.randn(p.shape, generator=g) * (1.0 if p.ndim > 1 else 0.3)

  def forward(self, z):
    act = lambda t: torch.nn.functional.leaky_relu(t, 0.2)
    up = lambda t: t.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    x = act(self.formatLayer(_pixel_norm(z))).view(z.shape[0], -1, 4, 4)
    x = _pixel_norm(act(self.groupScale0[0](_pixel_norm(x))))
    y = None
    for scale, (a, b) in enumerate(self.scaleLayers):
      if self.alpha > 0 and scale == len(self.scaleLayers) - 1:
        y = up(self.toRGBLayers[-2](x))
      x = _pixel_norm(act(b(_pixel_norm(act(a(up(x)))))))
    x = self.toRGBLayers[-1](x)
    return x if y is None else self.alpha * y + (1 - self.alpha) * x


PGAN_SMALL = ["--config.model.latent_dim=16", "--config.model.features=(16, 16, 8)",
              "--config.data.image_shape=(16, 16, 3)"]


def test_pgan_checkpoint_imports_and_gives_their_images_at_every_fade(tmp_path, monkeypatch):
  avgG, netG = _PGNet(16, (16, 16, 8)), _PGNet(16, (16, 16, 8))
  netG.formatLayer.module.weight.data += 1.0            # the raw generator differs: it must be skipped
  disc = {"decisionLayer.module.weight": torch.zeros(1, 16)}       # not part of the layout
  _save_like_gan_zoo(tmp_path / "pgan.pth", monkeypatch, netG=netG.state_dict(), netD=disc,
                     avgG=avgG.state_dict())
  import_checkpoint(tmp_path / "pgan.pth", PGAN_SPEC, tmp_path / "run", layout="gan_zoo_pgan",
                    overrides=_overrides(PGAN_SMALL))
  loaded = zoo.load(tmp_path / "run")
  family, variables = loaded.family, loaded.variables
  # the run stands at the last level after its fade-in, where `zoo train` would fine-tune
  assert family.level == 2 and loaded.meta["step"] == family.level_start(2) + family.fade_steps
  assert int(loaded.state.step) == loaded.meta["step"]
  assert float(family.alpha_at(loaded.meta["step"])) == 1.0 == float(variables["fade"]["alpha"])
  assert loaded.run.at_step(loaded.meta["step"]).level == 2
  z = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
  for their_alpha in (0.0, 0.3):               # theirs blends the old resolution in by alpha; ours by 1 - alpha
    avgG.alpha = their_alpha
    ours, _ = family.apply_net("generator", variables, jnp.asarray(z), train=False, level=2,
                               alpha=jnp.float32(1.0 - their_alpha))
    with torch.no_grad():
      theirs = avgG(torch.from_numpy(z)).permute(0, 2, 3, 1)
    assert ours.shape == (4, 16, 16, 3) and rel_error(ours, theirs) < 1e-5, their_alpha
  # the imported run samples at the last level, fully faded in
  images = loaded.sample(4, seed=0)
  assert images.shape == (4, 16, 16, 3) and np.all(np.isfinite(images))
  # export gives their tensors back: the biases and toRGB weights go through a rescaling in float64
  export_checkpoint(tmp_path / "run", tmp_path / "back.pth", layout="gan_zoo_pgan")
  back = torch.load(tmp_path / "back.pth", weights_only=True)["avgG"]
  assert set(back) == set(avgG.state_dict())
  for k, v in avgG.state_dict().items():
    np.testing.assert_array_max_ulp(back[k].numpy(), v.numpy(), maxulp=1)


def test_a_foreign_object_other_than_their_config_is_still_refused(tmp_path, monkeypatch):
  module = types.ModuleType("evil")
  Payload = type("Payload", (), {"__module__": "evil", "__reduce__": lambda self: (print, ("ran",))})
  module.Payload = Payload
  monkeypatch.setitem(sys.modules, "evil", module)
  torch.save({"config": Payload(), "avgG": {"x": torch.zeros(1)}}, tmp_path / "bad.pth")
  with pytest.raises(CheckpointError, match="not a PyTorch weights file that loads safely"):
    import_checkpoint(tmp_path / "bad.pth", PGAN_SPEC, tmp_path / "run", layout="gan_zoo_pgan",
                      overrides=_overrides(PGAN_SMALL))
