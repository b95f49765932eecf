"""Import and export of foreign checkpoints: file formats, layouts, PyTorch twins, the CLI."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn as tnn

from helpers import rel_error
import zoo
from zoo import registry
from zoo.interop import formats, from_foreign, get_layout, to_foreign
from zoo.interop.layout import leaf_paths

ZOO = get_layout("zoo")


def _variables(name, model, image_shape, seed=0):
  family = registry.build(name, model, image_shape)
  batch = {"image": np.zeros((2, *image_shape), np.float32)}
  return family, jax.device_get(family.init(jax.random.PRNGKey(seed), batch))


def _import(state_dict, template):
  """A torch state dict through the zoo layout into a variables dict shaped like ``template``."""
  tensors = {k: v.detach().numpy() for k, v in state_dict.items()}
  flat = from_foreign(ZOO, tensors, template)
  def put(path, leaf):
    key = "/".join(str(getattr(k, "key", k)) for k in path)
    return jnp.asarray(flat[key]) if key in flat else leaf
  return jax.tree_util.tree_map_with_path(put, template)


# -- safetensors


def test_safetensors_agrees_with_the_reference_library(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 5)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
             "c.half": rng.normal(size=(2, 2)).astype(np.float16), "d.mask": np.array([True, False]),
             "e.f64": np.array([1.5], np.float64), "f.empty": np.zeros((0, 3), np.float32),
             "g.bf16": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16)}
  ours = formats.write_safetensors(tmp_path / "ours.safetensors", tensors, {"family": "vae"})
  theirs = st.load_file(str(ours))
  assert set(theirs) == set(tensors)
  for k, v in tensors.items():
    assert theirs[k].dtype == v.dtype and theirs[k].shape == v.shape and np.array_equal(theirs[k], v)
  st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"x": "y"})
  back, meta = formats.read_safetensors(tmp_path / "theirs.safetensors")
  assert meta == {"x": "y"} and set(back) == set(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)
  assert formats.read_safetensors(ours)[1] == {"family": "vae"}
  # a 0-d tensor (shape []) round-trips too
  formats.write_safetensors(tmp_path / "scalar.safetensors", {"s": np.array(2.5, np.float32)})
  s = formats.read_safetensors(tmp_path / "scalar.safetensors")[0]["s"]
  assert s.shape == () and s == 2.5


def _raw(header: dict, data: bytes, size: int | None = None) -> bytes:
  h = json.dumps(header).encode()
  return (len(h) if size is None else size).to_bytes(8, "little") + h + data


@pytest.mark.parametrize("blob, why", [
    (b"abc", "shorter than"),
    (_raw({}, b"", size=10 ** 12), "header size"),
    (b"\x05\x00\x00\x00\x00\x00\x00\x00{abc}", "not JSON"),
    (_raw({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8), "fall outside"),
    (_raw({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "bytes for shape"),
    (_raw({"w": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "unknown dtype"),
    (_raw({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
           "v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "overlap"),
    (_raw({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""), "non-negative"),
])
def test_malformed_safetensors_fail_with_one_line(tmp_path, blob, why):
  path = tmp_path / "bad.safetensors"
  path.write_bytes(blob)
  with pytest.raises(zoo.CheckpointError, match=why) as e:
    formats.read_safetensors(path)
  assert "\n" not in str(e.value) and str(path) in str(e.value)


class _Payload:
  def __reduce__(self):       # what a malicious pickle does: call something on load
    return (print, ("this must never run",))


def test_torch_files_are_read_without_running_their_code(tmp_path, capsys):
  path = tmp_path / "evil.pth"
  torch.save({"w": torch.zeros(2), "payload": _Payload()}, path)
  with pytest.raises(zoo.CheckpointError, match="loads safely"):
    formats.read_torch(path)
  assert "never run" not in capsys.readouterr().out
  torch.save({"netG": {"w": torch.ones(2)}, "netD": {"w": torch.zeros(3)}, "step": 3}, tmp_path / "both.pth")
  with pytest.raises(zoo.CheckpointError, match="several state dicts.*--key"):
    formats.read_torch(tmp_path / "both.pth")
  assert formats.read_torch(tmp_path / "both.pth", key="netD")["w"].shape == (3,)
  with pytest.raises(zoo.CheckpointError, match="no key 'netX'"):
    formats.read_torch(tmp_path / "both.pth", key="netX")


# -- PyTorch twins of the families, in the zoo layout


class _Stack(tnn.Module):
  def __init__(self, sizes, names):
    super().__init__()
    self.names = names
    for n, (a, b) in zip(names, zip(sizes[:-1], sizes[1:])):
      setattr(self, n, tnn.Linear(a, b))

  def forward(self, x):
    for i, n in enumerate(self.names):
      x = getattr(self, n)(x)
      if i < len(self.names) - 1:
        x = torch.tanh(x)
    return x


def test_vae_twin_gives_the_same_outputs():
  model = dict(encoder="mlp", hidden=(40, 30), activation="tanh", latent_dim=8, likelihood="bernoulli")
  family, template = _variables("vae", model, (28, 28, 1))
  torch.manual_seed(0)
  twin = tnn.Module()
  twin.model = tnn.Module()
  twin.model.encoder = _Stack([784, 40, 30, 16], ["dense_0", "dense_1", "out"])
  twin.model.decoder = _Stack([8, 30, 40, 784], ["dense_0", "dense_1", "out"])
  variables = _import(twin.state_dict(), template)
  x = np.random.default_rng(1).random((5, 28, 28, 1)).astype(np.float32)
  z = np.random.default_rng(2).normal(size=(5, 8)).astype(np.float32)
  mean, log_std = family.encode(variables, {"image": jnp.asarray(x)})
  with torch.no_grad():
    h = twin.model.encoder(torch.from_numpy(x.reshape(5, -1)))
    image = torch.sigmoid(twin.model.decoder(torch.from_numpy(z))).reshape(5, 28, 28, 1)
  assert rel_error(mean, h[:, :8]) < 1e-5 and rel_error(log_std, h[:, 8:]) < 1e-5
  assert rel_error(family.decode(variables, jnp.asarray(z)), image) < 1e-5


def test_rbm_twin_gives_the_same_free_energy():
  from zoo.models.rbm import free_energy
  family, template = _variables("rbm", dict(num_hidden=20), (28, 28, 1))
  g = torch.Generator().manual_seed(0)
  sd = {"model.weight": 0.1 * torch.randn(20, 784, generator=g), "model.visible_bias": torch.randn(784, generator=g),
        "model.hidden_bias": torch.randn(20, generator=g)}
  sd.update({f"data_stats.{k}": torch.from_numpy(np.array(np.asarray(v) + 1.0))
             for k, v in leaf_paths(template["data_stats"]).items()})
  variables = _import(sd, template)
  v = (np.random.default_rng(0).random((6, 784)) < 0.3).astype(np.float32)
  tv = torch.from_numpy(v)
  want = -(tv @ sd["model.visible_bias"]) - torch.nn.functional.softplus(tv @ sd["model.weight"].T
                                                                            + sd["model.hidden_bias"]).sum(1)
  assert rel_error(free_energy(variables["params"]["model"], jnp.asarray(v)), want) < 1e-5
  assert np.array_equal(variables["data_stats"]["mean"], np.asarray(template["data_stats"]["mean"]) + 1.0)


class _DCGen(tnn.Module):
  def __init__(self, latent, feats, out_c, k=4):
    super().__init__()
    self.feats = feats
    self.project = tnn.Linear(latent, 4 * 4 * feats[0], bias=False)
    self.bn_0 = tnn.BatchNorm2d(feats[0], eps=1e-5)
    chans = list(feats) + [out_c]
    for i in range(len(feats)):
      setattr(self, f"deconv_{i}", tnn.ConvTranspose2d(chans[i], chans[i + 1], k, 2, 1, bias=i == len(feats) - 1))
      if i < len(feats) - 1:
        setattr(self, f"bn_{i + 1}", tnn.BatchNorm2d(chans[i + 1], eps=1e-5))

  def forward(self, z):
    x = self.project(z).reshape(z.shape[0], 4, 4, self.feats[0]).permute(0, 3, 1, 2)   # NHWC order
    x = torch.relu(self.bn_0(x))
    for i in range(len(self.feats)):
      x = getattr(self, f"deconv_{i}")(x)
      if i < len(self.feats) - 1:
        x = torch.relu(getattr(self, f"bn_{i + 1}")(x))
    return torch.tanh(x).permute(0, 2, 3, 1)


class _DCDisc(tnn.Module):
  def __init__(self, in_c, feats, size, k=4):
    super().__init__()
    self.feats = feats
    chans = [in_c] + list(feats)
    for i in range(len(feats)):
      setattr(self, f"conv_{i}", tnn.Conv2d(chans[i], chans[i + 1], k, 2, 1, bias=i == 0))
      if i > 0:
        setattr(self, f"bn_{i}", tnn.BatchNorm2d(chans[i + 1], eps=1e-5))
    self.out = tnn.Linear((size >> len(feats)) ** 2 * feats[-1], 1)

  def forward(self, x):
    x = x.permute(0, 3, 1, 2)
    for i in range(len(self.feats)):
      x = getattr(self, f"conv_{i}")(x)
      if i > 0:
        x = getattr(self, f"bn_{i}")(x)
      x = torch.nn.functional.leaky_relu(x, 0.2)
    return self.out(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))[:, 0]


def _randomize_batch_norms(module, seed):
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, tnn.BatchNorm2d):
      m.weight.data = 1 + 0.2 * torch.randn(m.weight.shape, generator=g)
      m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
      m.running_mean = 0.1 * torch.randn(m.running_mean.shape, generator=g)
      m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=g)


def _dcgan_twin():
  model = dict(latent_dim=12, g_features=(32, 16), d_features=(16, 32), kernel_size=4)
  family, template = _variables("dcgan", model, (16, 16, 3))
  torch.manual_seed(0)
  gen, disc = _DCGen(12, (32, 16), 3), _DCDisc(3, (16, 32), 16)
  _randomize_batch_norms(gen, 1)
  _randomize_batch_norms(disc, 2)
  sd = {**{f"generator.{k}": v for k, v in gen.state_dict().items()},
        **{f"discriminator.{k}": v for k, v in disc.state_dict().items()}}
  return family, template, gen.eval(), disc.eval(), sd


def test_dcgan_twin_gives_the_same_images_and_logits():
  family, template, gen, disc, sd = _dcgan_twin()
  variables = _import(sd, template)
  z = np.random.default_rng(0).uniform(-1, 1, (4, 12)).astype(np.float32)
  x = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  ours_g, _ = family.apply_net("generator", variables, jnp.asarray(z), train=False)
  ours_d, _ = family.apply_net("discriminator", variables, jnp.asarray(x), train=False)
  with torch.no_grad():
    theirs_g, theirs_d = gen(torch.from_numpy(z)), disc(torch.from_numpy(x))
  assert ours_g.shape == tuple(theirs_g.shape) and rel_error(ours_g, theirs_g) < 1e-5
  assert rel_error(ours_d, theirs_d) < 1e-5


# -- round trips and errors


def test_import_then_export_reproduces_the_original_tensors():
  _, template, _, _, sd = _dcgan_twin()
  variables = _import(sd, template)
  out = to_foreign(ZOO, variables)
  want = {k: v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  assert set(out) == set(want)
  for k, v in want.items():
    assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k


def test_a_file_that_does_not_fit_names_every_problem():
  _, template, _, _, sd = _dcgan_twin()
  tensors = {k: v.numpy() for k, v in sd.items()}
  missing = dict(tensors)
  del missing["generator.deconv_0.weight"]
  with pytest.raises(zoo.CheckpointError, match=r"missing 1: generator\.deconv_0\.weight") as e:
    from_foreign(ZOO, missing, template)
  assert "nothing was imported" in str(e.value)
  with pytest.raises(zoo.CheckpointError, match=r"unexpected 1: generator\.extra"):
    from_foreign(ZOO, {**tensors, "generator.extra": np.zeros(3, np.float32)}, template)
  wrong = {**tensors, "discriminator.out.weight": np.zeros((1, 5), np.float32)}
  with pytest.raises(zoo.CheckpointError, match=r"wrong shape 1: discriminator\.out\.weight \(1, 5\) "
                                                r"\(expected \(1, \d+\)\)"):
    from_foreign(ZOO, wrong, template)
  ints = {**tensors, "generator.bn_0.weight": np.zeros(32, np.int64)}
  with pytest.raises(zoo.CheckpointError, match=r"wrong dtype 1: generator\.bn_0\.weight int64"):
    from_foreign(ZOO, ints, template)


@pytest.mark.slow
def test_cli_import_sample_export(tmp_path, capsys):
  from zoo.cli import main
  torch.manual_seed(0)
  twin = tnn.Module()
  twin.model = tnn.Module()
  twin.model.encoder = _Stack([784, 32, 8], ["dense_0", "out"])
  twin.model.decoder = _Stack([4, 32, 784], ["dense_0", "out"])
  torch.save(twin.state_dict(), tmp_path / "twin.pth")
  spec = "experiments/kingma2013/vae.py:quick"
  sizes = ["--config.model.hidden=(32,)", "--config.model.latent_dim=4"]
  assert main(["import", "--from", "pytorch", str(tmp_path / "twin.pth"), "--config", spec,
               "--workdir", str(tmp_path / "run"), *sizes]) == 0
  assert main(["sample", "--workdir", str(tmp_path / "run"), "--num", "4",
               "--out", str(tmp_path / "grid.png")]) == 0
  assert (tmp_path / "grid.png").stat().st_size > 0
  loaded = zoo.load(tmp_path / "run")
  assert loaded.meta["imported"]["layout"] == "zoo" and loaded.meta["step"] == 0
  assert main(["export", "--workdir", str(tmp_path / "run"), "--out", str(tmp_path / "back.safetensors")]) == 0
  back, meta = formats.read_safetensors(tmp_path / "back.safetensors")
  assert meta["zoo_family"] == "vae"
  for k, v in twin.state_dict().items():
    assert np.array_equal(back[k], v.numpy()), k
  capsys.readouterr()
  assert main(["import", str(tmp_path / "twin.pth"), "--config", spec, "--workdir", str(tmp_path / "run"),
               *sizes]) == 2
  assert "holds checkpoints already" in capsys.readouterr().err
  small = ["--config.model.hidden=(16,)", "--config.model.latent_dim=4"]
  assert main(["import", str(tmp_path / "twin.pth"), "--config", spec, "--workdir", str(tmp_path / "run2"),
               *small]) == 2
  err = capsys.readouterr().err
  assert "wrong shape" in err and "nothing was imported" in err and len(err.strip().splitlines()) == 1
