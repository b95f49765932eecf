"""The ``zoo`` layout over every family: export-then-import is the identity for each registered family, and
PyTorch twins of NADE, MADE, PixelCNN, the MLP GAN and ProGAN, written from the math, give the same outputs.

A twin is a torch module whose state dict follows the zoo layout (``<player>.<module>.weight``, torch
conventions); its state dict goes through ``from_foreign`` into the flax variables, and both compute the
same function on the same random inputs (float32, relative error < 1e-5). The twins' forward passes use
torch only: no zoo code computes their outputs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from helpers import rel_error
from zoo import registry
from zoo.interop import from_foreign, get_layout, to_foreign
from zoo.interop.layout import leaf_paths, path_str

ZOO = get_layout("zoo")
TOL = 1e-5


def _variables(name, model, image_shape):
  """The family and the shapes and dtypes of its variables (``jax.ShapeDtypeStruct`` leaves: the layout
  needs no values, and tracing ``init`` costs no compilation)."""
  family = registry.build(name, model, image_shape)
  batch = {"image": np.zeros((2, *image_shape), np.float32)}
  return family, jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)


def _import(state_dict, template):
  """A torch state dict through the zoo layout into a variables dict shaped like ``template``."""
  tensors = {k: v.detach().numpy() for k, v in state_dict.items()}
  flat = from_foreign(ZOO, tensors, template)
  assert set(flat) == set(leaf_paths(template)), "the twin does not set every variable"
  return jax.tree_util.tree_map_with_path(lambda path, _: jnp.asarray(flat[path_str(path)]), template)


def _np(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy()


# -- export then import, every family


# One or more small configurations per registered family; options that add or rename variables each
# get a case (conv encoders, a Gaussian likelihood, persistent chains, labels, both PixelRNN cells).
ROUND_TRIPS = [
    ("autoencoder", dict(hidden=(16,), latent_dim=4, noise="masking", noise_level=0.25), (28, 28, 1)),
    ("autoencoder", dict(encoder="conv", hidden=(16,), conv_features=(4, 8), latent_dim=4), (8, 8, 1)),
    ("vae", dict(hidden=(16,), latent_dim=4), (28, 28, 1)),
    ("vae", dict(encoder="conv", hidden=(16,), conv_features=(4, 8), latent_dim=4, likelihood="gaussian"),
     (8, 8, 3)),
    ("rbm", dict(num_hidden=8), (28, 28, 1)),
    ("rbm", dict(num_hidden=8, persistent=True, num_chains=4), (28, 28, 1)),
    ("gaussian_rbm", dict(num_hidden=8, persistent=True, num_chains=4), (28, 28, 1)),
    ("dbn", dict(hidden=(8, 6), layer_steps=(1,)), (28, 28, 1)),
    ("dbn", dict(hidden=(8, 6, 4), cd_k=(1, 1, 1), layer_steps=(1, 1), persistent=True, num_chains=4),
     (28, 28, 1)),
    ("gan", dict(latent_dim=8, g_hidden=(16, 12), d_hidden=(12,)), (8, 8, 1)),
    ("gan", dict(latent_dim=8, g_hidden=(16,), d_hidden=(12, 10), d_activation="leaky_relu", output="tanh",
                 net_shape=(10, 10, 3)), (8, 8, 1)),
    ("dcgan", dict(latent_dim=12, g_features=(32, 16), d_features=(16, 32)), (16, 16, 3)),
    ("progan", dict(latent_dim=8, features=(8, 8, 4)), (16, 16, 3)),
    ("nade", dict(hidden=8), (8, 8, 1)),
    ("nade", dict(hidden=8, output="categorical", levels=4), (4, 4, 3)),
    ("made", dict(hidden=(16, 12), direct=True, num_masks=2, order_agnostic=True), (8, 8, 1)),
    ("made", dict(hidden=(), direct=True, output="categorical", levels=3), (4, 4, 2)),
    ("pixelcnn", dict(features=6, blocks=1, first_kernel=3, output_features=(6,)), (8, 8, 3)),
    ("gated_pixelcnn", dict(features=6, layers=2, first_kernel=3, output_features=(6,), num_labels=3),
     (8, 8, 3)),
    ("pixelrnn", dict(cell="row_lstm", layers=1, features=6, output_features=6), (8, 8, 3)),
    ("pixelrnn", dict(cell="diagonal_bilstm", layers=2, features=6, output_features=6), (8, 8, 1)),
]
ROUND_TRIP_IDS = ["autoencoder-mlp", "autoencoder-conv", "vae-mlp", "vae-conv-gaussian", "rbm", "rbm-persistent",
                  "gaussian_rbm-persistent", "dbn", "dbn-persistent", "gan-maxout", "gan-leaky-net_shape", "dcgan",
                  "progan", "nade", "nade-categorical", "made-direct-agnostic", "made-linear-categorical",
                  "pixelcnn", "gated_pixelcnn-labels", "pixelrnn-row_lstm", "pixelrnn-diagonal_bilstm"]


def test_every_registered_family_has_a_round_trip_case():
  missing = sorted(set(registry.names()) - {name for name, _, _ in ROUND_TRIPS})
  assert not missing, f"families without a zoo-layout round trip: {missing}"


def _torch_module_holding(tensors: dict[str, np.ndarray]) -> tnn.Module:
  """A torch module whose state dict is ``tensors``: nested submodules for the dotted names, a buffer per
  tensor. Fails (as torch does) where a name cannot be an attribute path of a torch module."""
  root = tnn.Module()
  for name, a in tensors.items():
    *parents, leaf = name.split(".")
    m = root
    for p in parents:
      if p not in m._modules:
        m.add_module(p, tnn.Module())
      m = m._modules[p]
    m.register_buffer(leaf, torch.from_numpy(np.array(a)))
  return root


def _random_like(template, seed):
  """Variables of ``template``'s shapes and dtypes, every value random."""
  rng = np.random.default_rng(seed)

  def fresh(leaf):
    dtype = np.dtype(leaf.dtype)
    if np.issubdtype(dtype, np.floating):
      return rng.standard_normal(leaf.shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
      return rng.integers(-100, 100, leaf.shape).astype(dtype)
    return rng.random(leaf.shape) < 0.5
  return jax.tree_util.tree_map(fresh, template)


@pytest.mark.parametrize("name, model, shape", ROUND_TRIPS, ids=ROUND_TRIP_IDS)
def test_export_then_import_through_a_torch_module_is_the_identity(name, model, shape):
  _, template = _variables(name, model, shape)
  other = _random_like(template, seed=1)
  mine = leaf_paths(other)
  assert set(mine) == set(leaf_paths(template))
  tensors = to_foreign(ZOO, other)
  assert len(tensors) == len(mine)          # one foreign tensor per variable (no two share a name)
  twin = _torch_module_holding(tensors)     # every name is a torch attribute path
  state = twin.state_dict()
  assert set(state) == set(tensors)
  back = from_foreign(ZOO, {k: v.numpy() for k, v in state.items()}, template)
  assert set(back) == set(mine)             # the zoo layout covers every variable
  for path, a in back.items():
    assert a.dtype == mine[path].dtype and a.shape == mine[path].shape, path
    assert np.array_equal(a, mine[path]), path


# -- twins written from the math


def _param(*shape, scale=1.0, g):
  return tnn.Parameter(scale * torch.randn(*shape, generator=g))


def _network_input(x: torch.Tensor, output: str, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
  """Data in [0, 1] -> (the discrete values, int64; what a network sees, float32)."""
  if output == "bernoulli":
    v = (x > 0.5).long()
    return v, v.float()
  v = torch.clamp(torch.round(x * (levels - 1)), 0, levels - 1).long()
  return v, v.float() * (2.0 / (levels - 1)) - 1.0


def _log_prob(v: torch.Tensor, logits: torch.Tensor, output: str) -> torch.Tensor:
  """Per-value log p of discrete values v (...) under logits (..., K)."""
  if output == "bernoulli":
    l = logits[..., 0]
    return v * l - F.softplus(l)
  return torch.log_softmax(logits, -1).gather(-1, v[..., None])[..., 0]


def _likelihood_and_logits(family, variables, x):
  """The family's log-likelihood (B,) and logits (B, H, W, C, K) of data-space images x, in one program."""
  f = jax.jit(lambda v, x: (family.log_likelihood(v, {"image": x}), family.logits(v, x)))
  return f(variables, jnp.asarray(x))


def _images(shape, num=3, seed=0):
  return np.random.default_rng(seed).random((num, *shape)).astype(np.float32)


# NADE: h_d = sigmoid(c + sum_{j<d} x_j W_j), logits_d = b_d + V_d . h_d


class _NADETwin(tnn.Module):
  def __init__(self, d, hidden, k, seed):
    super().__init__()
    g = torch.Generator().manual_seed(seed)
    self.model = tnn.Module()
    self.model.W = _param(d, hidden, scale=1 / math.sqrt(d), g=g)
    self.model.c = _param(hidden, scale=0.5, g=g)
    self.model.V = _param(d, hidden, k, scale=1 / math.sqrt(hidden), g=g)
    self.model.b = _param(d, k, scale=0.5, g=g)

  def logits(self, u):                              # u (B, D) what the network sees
    m = self.model
    contrib = u[:, :, None] * m.W[None]             # x_j W_j, (B, D, H)
    before = torch.cat([torch.zeros_like(contrib[:, :1]), torch.cumsum(contrib, 1)[:, :-1]], 1)  # j < d
    hid = torch.sigmoid(m.c + before)
    return torch.einsum("bdh,dhk->bdk", hid, m.V) + m.b


@pytest.mark.parametrize("output, levels, shape", [("bernoulli", 2, (8, 8, 1)), ("categorical", 5, (4, 4, 3))],
                         ids=["bernoulli", "categorical-rgb"])
def test_nade_twin_gives_the_same_log_likelihood(output, levels, shape):
  k = 1 if output == "bernoulli" else levels
  d = int(np.prod(shape))
  family, template = _variables("nade", dict(hidden=12, output=output, levels=levels), shape)
  twin = _NADETwin(d, 12, k, seed=0)
  variables = _import(twin.state_dict(), template)
  x = _images(shape)
  ours_ll, ours_logits = _likelihood_and_logits(family, variables, x)
  with torch.no_grad():
    v, u = _network_input(torch.from_numpy(x).reshape(3, -1), output, levels)
    logits = twin.logits(u)
    ll = _log_prob(v, logits, output).sum(1)
  assert rel_error(ours_logits.reshape(3, d, k), logits) < TOL
  assert rel_error(ours_ll, ll) < TOL
  assert np.all(np.asarray(ours_ll) < 0)


# MADE: a masked MLP; degrees of input d = its position in the ordering, hidden units see the units below
# of degree <= theirs, output d sees the last hidden units of degree < its position (and, direct, the
# inputs before it).


class _MADETwin(tnn.Module):
  def __init__(self, d, hidden, k, direct, seed):
    super().__init__()
    torch.manual_seed(seed)
    self.d, self.k, self.hidden, self.has_direct = d, k, hidden, direct
    self.model = tnn.Module()
    sizes = [d, *hidden]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      setattr(self.model, f"dense_{i}", tnn.Linear(a, b))
    self.model.out = tnn.Linear(sizes[-1], d * k)
    if direct and hidden:
      self.model.direct = tnn.Linear(d, d * k, bias=False)
    for p in self.parameters():            # biases away from zero too
      p.data.uniform_(-0.5, 0.5)

  def masks(self, order, degrees):
    """(out, in) 0/1 masks from an ordering (order[i]: the index generated at step i) and hidden degrees."""
    position = torch.empty(self.d, dtype=torch.long)
    position[torch.as_tensor(order, dtype=torch.long)] = torch.arange(self.d)
    below = [position] + [torch.as_tensor(np.asarray(g), dtype=torch.long) for g in degrees]
    hidden = [(below[l + 1][:, None] >= below[l][None, :]).float() for l in range(len(degrees))]
    out_position = position.repeat_interleave(self.k)
    out = (out_position[:, None] > below[-1][None, :]).float()
    direct = (out_position[:, None] > position[None, :]).float()
    return hidden, out, direct

  def logits(self, u, order, degrees):             # u (B, D) -> (B, D, K)
    m = self.model
    hidden, out, direct = self.masks(order, degrees)
    h = u
    for i, mask in enumerate(hidden):
      layer = getattr(m, f"dense_{i}")
      h = torch.relu(F.linear(h, layer.weight * mask, layer.bias))
    if not self.hidden:
      y = F.linear(u, m.out.weight * direct, m.out.bias)
    else:
      y = F.linear(h, m.out.weight * out, m.out.bias)
      if self.has_direct:
        y = y + F.linear(u, m.direct.weight * direct)
    return y.reshape(u.shape[0], self.d, self.k)


@pytest.mark.parametrize("model, shape", [
    (dict(hidden=(24, 20), direct=True, num_masks=2, order_agnostic=True), (8, 8, 1)),
    (dict(hidden=(16,), output="categorical", levels=3, num_masks=2), (4, 4, 2)),
], ids=["bernoulli-direct-agnostic", "categorical"])
def test_made_twin_gives_the_same_log_likelihood_per_mask_and_as_ensemble(model, shape):
  from zoo.models.made import connectivity     # the mask sets' random draw (data, like the weights)
  output, levels = model.get("output", "bernoulli"), model.get("levels", 2)
  k = 1 if output == "bernoulli" else levels
  d = int(np.prod(shape))
  family, template = _variables("made", model, shape)
  twin = _MADETwin(d, model["hidden"], k, model.get("direct", False), seed=0)
  variables = _import(twin.state_dict(), template)
  orders, degrees = connectivity(d, tuple(model["hidden"]), model["num_masks"],
                                 model.get("order_agnostic", False), 0)
  x = _images(shape)
  masks = range(model["num_masks"])

  @jax.jit
  def ours(variables, x):
    batch = {"image": x}
    return ([family.logits(variables, x, ordering=m) for m in masks],
            [family.log_likelihood(variables, batch, ordering=m) for m in masks],
            family.log_likelihood(variables, batch))

  ours_logits, ours_ll, ours_ensemble = ours(variables, jnp.asarray(x))
  with torch.no_grad():
    v, u = _network_input(torch.from_numpy(x).reshape(3, -1), output, levels)
    per_mask = []
    for m in masks:
      logits = twin.logits(u, orders[m], [g[m] for g in degrees])
      assert rel_error(ours_logits[m].reshape(3, d, k), logits) < TOL, m
      per_mask.append(_log_prob(v, logits, output).sum(1))
      assert rel_error(ours_ll[m], per_mask[-1]) < TOL, m
    ensemble = torch.logsumexp(torch.stack(per_mask), 0) - math.log(len(per_mask))
  assert rel_error(ours_ensemble, ensemble) < TOL
  assert not np.allclose(_np(per_mask[0]), _np(per_mask[1]))      # the mask sets differ


# PixelCNN: masked convolutions in raster order, channels split into C contiguous groups.


def _groups(num_features, channels):
  """The data channel of each feature: C contiguous groups."""
  return torch.div(torch.arange(num_features) * channels, num_features, rounding_mode="floor")


def _causal_mask(out_f, in_f, k, mask_type, channels):
  """(out, in, k, k) mask: rows above the centre and the centre row's taps left of it open; at the centre,
  output group g sees input groups < g (A) or <= g (B)."""
  rows, cols = torch.arange(k)[:, None], torch.arange(k)[None, :]
  c = k // 2
  spatial = ((rows < c) | ((rows == c) & (cols < c))).float()
  mask = spatial.expand(out_f, in_f, k, k).clone()
  g_out, g_in = _groups(out_f, channels)[:, None], _groups(in_f, channels)[None, :]
  mask[:, :, c, c] = ((g_in < g_out) if mask_type == "A" else (g_in <= g_out)).float()
  return mask


class _MaskedConv2d(tnn.Conv2d):
  def __init__(self, in_f, out_f, k, mask_type, channels):
    super().__init__(in_f, out_f, k, padding=k // 2)
    self.register_buffer("mask", _causal_mask(out_f, in_f, k, mask_type, channels), persistent=False)

  def forward(self, x):
    return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class _PixelCNNTwin(tnn.Module):
  def __init__(self, channels, features, blocks, first_kernel, output_features, k, seed):
    super().__init__()
    torch.manual_seed(seed)
    self.c, self.k, self.blocks, self.n_out = channels, k, blocks, len(output_features)
    self.model = tnn.Module()
    self.model.conv_a = _MaskedConv2d(channels, features, first_kernel, "A", channels)
    for i in range(blocks):
      setattr(self.model, f"block_{i}", _MaskedConv2d(features, features, 3, "B", channels))
    width = features
    for j, w in enumerate(output_features):
      setattr(self.model, f"out_{j}", _MaskedConv2d(width, w, 1, "B", channels))
      width = w
    self.model.logits = _MaskedConv2d(width, channels * k, 1, "B", channels)
    for p in self.parameters():
      p.data.uniform_(-0.4, 0.4)

  def logits(self, u):                              # u (B, H, W, C) -> (B, H, W, C, K)
    m = self.model
    h = m.conv_a(u.permute(0, 3, 1, 2))
    for i in range(self.blocks):
      h = h + getattr(m, f"block_{i}")(torch.relu(h))
    for j in range(self.n_out):
      h = getattr(m, f"out_{j}")(torch.relu(h))
    out = m.logits(torch.relu(h)).permute(0, 2, 3, 1)
    return out.reshape(*u.shape, self.k)


@pytest.mark.parametrize("model, shape", [
    (dict(features=8, blocks=2, first_kernel=7, output_features=(8,)), (8, 8, 1)),
    (dict(features=9, blocks=1, first_kernel=5, output_features=(6, 6), output="categorical", levels=4),
     (6, 6, 3)),
], ids=["bernoulli", "categorical-rgb"])
def test_pixelcnn_twin_gives_the_same_log_likelihood(model, shape):
  output, levels = model.get("output", "bernoulli"), model.get("levels", 2)
  k = 1 if output == "bernoulli" else levels
  family, template = _variables("pixelcnn", model, shape)
  twin = _PixelCNNTwin(shape[-1], model["features"], model["blocks"], model["first_kernel"],
                       model["output_features"], k, seed=0)
  variables = _import(twin.state_dict(), template)
  x = _images(shape)
  ours_ll, ours_logits = _likelihood_and_logits(family, variables, x)
  with torch.no_grad():
    v, u = _network_input(torch.from_numpy(x), output, levels)
    logits = twin.logits(u)
    ll = _log_prob(v, logits, output).sum((1, 2, 3))
  assert rel_error(ours_logits, logits) < TOL
  assert rel_error(ours_ll, ll) < TOL


# The MLP GAN of Goodfellow et al.: G a ReLU (or other) MLP with a sigmoid/tanh output reshaped to NHWC;
# D an MLP on the flattened NHWC image, maxout units (max over `pieces` neighbouring linear outputs).


def _gan_outputs(family, variables, z, x, kw):
  """G(z) and D(x) in inference mode (with the networks' keyword arguments ``kw``), and the sampler's
  images of z (``decode``), in one program."""
  @jax.jit
  def f(variables, z, x):
    g, _ = family.apply_net("generator", variables, z, train=False, **kw)
    d, _ = family.apply_net("discriminator", variables, x, train=False, **kw)
    return g, d, family.decode(variables, z)
  return f(variables, jnp.asarray(z), jnp.asarray(x))


def _act(name):
  return {"relu": torch.relu, "tanh": torch.tanh, "leaky_relu": lambda t: F.leaky_relu(t, 0.2)}[name]


class _MLPGen(tnn.Module):
  def __init__(self, latent, hidden, out_shape, activation, output):
    super().__init__()
    self.out_shape, self.act, self.output, self.n = out_shape, _act(activation), output, len(hidden)
    sizes = [latent, *hidden]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      setattr(self, f"dense_{i}", tnn.Linear(a, b))
    self.out = tnn.Linear(sizes[-1], int(np.prod(out_shape)))

  def forward(self, z):
    h = z
    for i in range(self.n):
      h = self.act(getattr(self, f"dense_{i}")(h))
    h = self.out(h)
    h = torch.sigmoid(h) if self.output == "sigmoid" else torch.tanh(h)
    return h.reshape(z.shape[0], *self.out_shape)


class _MLPDisc(tnn.Module):
  def __init__(self, in_dim, hidden, activation, pieces):
    super().__init__()
    self.hidden, self.activation, self.pieces = hidden, activation, pieces
    sizes = [in_dim, *hidden]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      setattr(self, f"dense_{i}", tnn.Linear(a, b * pieces if activation == "maxout" else b))
    self.out = tnn.Linear(sizes[-1], 1)

  def forward(self, x):                              # x (B, H, W, C): flattened in NHWC order
    h = x.reshape(x.shape[0], -1)
    for i, f in enumerate(self.hidden):
      h = getattr(self, f"dense_{i}")(h)
      if self.activation == "maxout":                # unit j: the max of outputs j*pieces .. j*pieces+pieces-1
        h = h.reshape(h.shape[0], f, self.pieces).amax(-1)
      else:
        h = _act(self.activation)(h)
    return self.out(h)[:, 0]


@pytest.mark.parametrize("model", [
    dict(latent_dim=10, g_hidden=(32, 24), g_activation="relu", output="sigmoid", d_hidden=(16, 12),
         d_activation="maxout", maxout_pieces=3),
    dict(latent_dim=10, g_hidden=(24,), g_activation="leaky_relu", output="tanh", d_hidden=(20, 12),
         d_activation="leaky_relu"),
], ids=["paper-maxout", "leaky-tanh"])
def test_mlp_gan_twin_gives_the_same_images_and_logits(model):
  shape = (12, 12, 1)
  family, template = _variables("gan", model, shape)
  torch.manual_seed(0)
  twin = tnn.Module()
  twin.generator = _MLPGen(10, model["g_hidden"], shape, model["g_activation"], model["output"])
  twin.discriminator = _MLPDisc(int(np.prod(shape)), model["d_hidden"], model["d_activation"],
                                model.get("maxout_pieces", 1))
  for p in twin.parameters():
    p.data.uniform_(-0.3, 0.3)
  variables = _import(twin.state_dict(), template)
  z = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
  x = np.random.default_rng(1).uniform(-1, 1, (4, *shape)).astype(np.float32)
  ours_g, ours_d, ours_images = _gan_outputs(family, variables, z, x, {})
  with torch.no_grad():
    theirs_g = twin.generator(torch.from_numpy(z))
    theirs_d = twin.discriminator(torch.from_numpy(x))
  assert ours_g.shape == tuple(theirs_g.shape) and rel_error(ours_g, theirs_g) < TOL
  assert ours_d.shape == (4,) and rel_error(ours_d, theirs_d) < TOL
  # in data space: the sampler's images are the generator's in [0, 1]
  data = _np(theirs_g) if model["output"] == "sigmoid" else 0.5 * (_np(theirs_g) + 1)
  assert rel_error(ours_images, np.clip(data, 0, 1)) < TOL


# Progressive GAN: equalized learning rate (unscaled weights, He's constant applied at run time), pixel
# norm, nearest-neighbour upsampling, LeakyReLU 0.2; D with 2x2 average pooling and minibatch stddev.


def _pixel_norm(x, dim=1):
  return x * torch.rsqrt(torch.mean(x * x, dim=dim, keepdim=True) + 1e-8)


def _lrelu(x):
  return F.leaky_relu(x, 0.2)


class _EqLinear(tnn.Module):
  def __init__(self, fan_in, out, gain=math.sqrt(2.0)):
    super().__init__()
    self.weight = tnn.Parameter(torch.randn(out, fan_in))
    self.bias = tnn.Parameter(0.3 * torch.randn(out))
    self.scale = gain / math.sqrt(fan_in)

  def forward(self, x):
    return F.linear(x, self.weight) * self.scale + self.bias


class _EqConv(tnn.Module):
  def __init__(self, fan_in, out, k, gain=math.sqrt(2.0)):
    super().__init__()
    self.conv = tnn.Conv2d(fan_in, out, k, padding=k // 2, bias=False)
    self.conv.weight.data.normal_()
    self.bias = tnn.Parameter(0.3 * torch.randn(out))
    self.scale = gain / math.sqrt(fan_in * k * k)

  def forward(self, x):
    return self.conv(x) * self.scale + self.bias.view(1, -1, 1, 1)


class _ProGen(tnn.Module):
  def __init__(self, latent, f, channels):
    super().__init__()
    self.f = f
    self.first = _EqLinear(latent, 16 * f[0])
    self.first_conv = _EqConv(f[0], f[0], 3)
    for l in range(1, len(f)):
      setattr(self, f"conv_a_{l - 1}", _EqConv(f[l - 1], f[l], 3))
      setattr(self, f"conv_b_{l - 1}", _EqConv(f[l], f[l], 3))
    for l in range(len(f)):
      setattr(self, f"to_rgb_{l}", _EqConv(f[l], channels, 1, gain=1.0))

  def forward(self, z):                              # the last level, alpha = 1; NHWC out
    h = _lrelu(self.first(_pixel_norm(z)))
    h = h.reshape(z.shape[0], 4, 4, self.f[0]).permute(0, 3, 1, 2)
    h = _pixel_norm(_lrelu(self.first_conv(_pixel_norm(h))))
    for l in range(1, len(self.f)):
      h = F.interpolate(h, scale_factor=2, mode="nearest")
      h = _pixel_norm(_lrelu(getattr(self, f"conv_a_{l - 1}")(h)))
      h = _pixel_norm(_lrelu(getattr(self, f"conv_b_{l - 1}")(h)))
    return getattr(self, f"to_rgb_{len(self.f) - 1}")(h).permute(0, 2, 3, 1)


class _ProDisc(tnn.Module):
  def __init__(self, f, channels, group):
    super().__init__()
    self.f, self.group = f, group
    for l in range(len(f)):
      setattr(self, f"from_rgb_{l}", _EqConv(channels, f[l], 1))
    for l in range(1, len(f)):
      setattr(self, f"conv_a_{l - 1}", _EqConv(f[l], f[l], 3))
      setattr(self, f"conv_b_{l - 1}", _EqConv(f[l], f[l - 1], 3))
    self.final_conv = _EqConv(f[0] + 1, f[0], 3)
    self.final_dense = _EqLinear(16 * f[0], f[0])
    self.out = _EqLinear(f[0], 1, gain=1.0)

  def forward(self, x):                              # the last level, alpha = 1; NHWC in
    top = len(self.f) - 1
    h = _lrelu(getattr(self, f"from_rgb_{top}")(x.permute(0, 3, 1, 2)))
    for l in range(top, 0, -1):
      h = _lrelu(getattr(self, f"conv_a_{l - 1}")(h))
      h = F.avg_pool2d(_lrelu(getattr(self, f"conv_b_{l - 1}")(h)), 2)
    b = h.shape[0]
    g = math.gcd(b, self.group)                      # groups: examples i, i + B/G, i + 2B/G, ...
    y = h.reshape(g, b // g, *h.shape[1:])
    std = torch.sqrt(y.var(0, unbiased=False) + 1e-8).mean((1, 2, 3))       # (B/G,)
    std = std.repeat(g)
    h = torch.cat([h, std.view(b, 1, 1, 1).expand(b, 1, *h.shape[2:])], 1)
    h = _lrelu(self.final_conv(h))
    h = _lrelu(self.final_dense(h.permute(0, 2, 3, 1).reshape(b, -1)))
    return self.out(h)[:, 0]


def test_progan_twin_gives_the_same_images_and_outputs_at_the_last_level():
  features, latent, shape = (8, 8, 4), 8, (16, 16, 3)
  family, template = _variables("progan", dict(latent_dim=latent, features=features, mbstd_group=2), shape)
  family = family.at_stage(len(features) - 1)
  assert family.level == len(features) - 1
  torch.manual_seed(0)
  twin = tnn.Module()
  twin.generator = _ProGen(latent, features, shape[-1])
  twin.discriminator = _ProDisc(features, shape[-1], group=2)
  twin.fade = tnn.Module()
  twin.fade.register_buffer("alpha", torch.tensor(1.0))
  variables = _import(twin.state_dict(), template)
  assert float(variables["fade"]["alpha"]) == 1.0
  z = np.random.default_rng(0).normal(size=(4, latent)).astype(np.float32)
  x = np.random.default_rng(1).uniform(-1, 1, (4, *shape)).astype(np.float32)
  kw = dict(level=family.level, alpha=jnp.float32(1.0))
  ours_g, ours_d, ours_images = _gan_outputs(family, variables, z, x, kw)
  with torch.no_grad():
    theirs_g, theirs_d = twin.generator(torch.from_numpy(z)), twin.discriminator(torch.from_numpy(x))
  assert ours_g.shape == tuple(theirs_g.shape) == (4, *shape)
  assert rel_error(ours_g, theirs_g) < TOL
  assert rel_error(ours_d, theirs_d) < TOL
  # the sampler at the last stage reads alpha from the imported 'fade' collection
  assert rel_error(ours_images, np.clip(0.5 * (_np(theirs_g) + 1), 0, 1)) < TOL
