"""The layouts the zoo knows, by name. Each is data: a tuple of rules (see :mod:`zoo.interop.layout`).

``zoo``: the zoo's own PyTorch twin of every family. A PyTorch module that mirrors a family, with one
attribute per player and the zoo's module names below it (``torch.nn.Linear`` where we have a Dense,
``Conv2d`` for a convolution, ``ConvTranspose2d`` for the modules named ``deconv*``, ``BatchNorm2d``
for batch norm), has exactly this state dict: ``<player>.<module>....<weight|bias|running_mean|...>``.
Leaves that are not a layer's weight keep their path (``model.visible_bias`` of an RBM); non-trainable
collections other than batch statistics are prefixed with their collection (``data_stats.model.mean``),
so an export holds everything a sampler or an evaluation needs and export-then-import is the identity.

``gan_zoo_dcgan``, ``gan_zoo_pgan``: the checkpoints of facebookresearch/pytorch_GAN_zoo (its
``models/networks/DCGAN_nets.py`` and ``progressive_conv_net.py``), as its trainers save them and its
``hubconf.py`` publishes them: ``{"config": <BaseConfig>, "netG": ..., "netD": ..., "avgG": ...}``.
Our generator is read from ``avgG``, the moving average that project samples with (``netG``, the raw
weights, is skipped; an export writes ``avgG``). The DCGAN layout maps both players; the PGAN layout maps
the generator only: its discriminator's minibatch standard deviation differs from ours (unbiased
variance over consecutive groups), so our discriminator starts fresh on import.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from zoo.errors import CheckpointError, nearest
from zoo.interop.layout import Layout, Rule

__all__ = ["LAYOUTS", "get_layout"]

_P = r"params/(?P<p>.+)"

ZOO = Layout(
    name="zoo",
    description="the zoo's own PyTorch twin of each family: <player>.<module>.weight, torch conventions",
    rules=(
        Rule(_P + r"/(?P<m>deconv[^/]*)/kernel", r"\g<p>/\g<m>.weight", "conv_transpose", ndim=4),
        Rule(_P + r"/kernel", r"\g<p>.weight", "conv", ndim=4),
        Rule(_P + r"/kernel", r"\g<p>.weight", "linear", ndim=2),
        Rule(_P + r"/scale", r"\g<p>.weight", ndim=1),
        Rule(_P, r"\g<p>"),
        Rule(r"batch_stats/(?P<p>.+)/mean", r"\g<p>.running_mean"),
        Rule(r"batch_stats/(?P<p>.+)/var", r"\g<p>.running_var"),
        Rule(r"(?P<c>[^/]+)/(?P<p>.+)", r"\g<c>/\g<p>"),
    ),
    # written by torch.nn.BatchNorm2d beside its statistics; the zoo's batch norm has no counter
    ignore=(r".*\.num_batches_tracked",),
)

_GAN_ZOO = dict(ignore=(r"netG\..*", r".*\.num_batches_tracked"), nested=("netG", "netD", "avgG"),
                inert=("models.utils.config.BaseConfig",))


def _batch_norm(ours: str, theirs: str) -> tuple[Rule, ...]:
  return (Rule(rf"params/{ours}/scale", f"{theirs}.weight"), Rule(rf"params/{ours}/bias", f"{theirs}.bias"),
          Rule(rf"batch_stats/{ours}/mean", f"{theirs}.running_mean"),
          Rule(rf"batch_stats/{ours}/var", f"{theirs}.running_var"))


def gan_zoo_dcgan(family: Any) -> Layout:
  """pytorch_GAN_zoo's DCGAN (``GNet``/``DNet`` of depth d: our dcgan with d + 1 entries in g_features
  and d_features). Its layers have no biases where ours do (G's output, D's input and output layers):
  those are zero on import."""
  if getattr(family, "name", None) != "dcgan":
    name = getattr(family, "name", family)
    raise CheckpointError(f"layout 'gan_zoo_dcgan' is for the dcgan family, not {name!r}")
  h, w, _ = family.model_shape
  n, m = len(family.g_features), len(family.d_features)
  g, d = "params/generator", "params/discriminator"
  rules = [Rule(rf"{g}/project/kernel", "avgG.formatLayer.weight", "project", hw=(h >> n, w >> n))]
  for i in range(n):
    rules += _batch_norm(f"generator/bn_{i}", f"avgG.main.batchNorm{i}")
    theirs = f"avgG.main.convTranspose{i + 1}" if i < n - 1 else "avgG.main.outlayer"
    rules.append(Rule(rf"{g}/deconv_{i}/kernel", f"{theirs}.weight", "conv_transpose"))
  rules += [Rule(rf"{g}/deconv_{n - 1}/bias", transform="zero"), Rule(rf"{d}/conv_0/bias", transform="zero")]
  for i in range(m):
    rules.append(Rule(rf"{d}/conv_{i}/kernel", f"netD.main.convTranspose{m - 1 - i}.weight", "conv"))
    if i > 0:
      rules += _batch_norm(f"discriminator/bn_{i}", f"netD.main.batchNorm{m - 1 - i}")
  rules += [Rule(rf"{d}/out/kernel", "netD.decisionLayer.weight", "conv_head", hw=(h >> m, w >> m)),
            Rule(rf"{d}/out/bias", transform="zero")]
  return Layout("gan_zoo_dcgan", "pytorch_GAN_zoo's DCGAN checkpoints (netD, avgG)", tuple(rules), **_GAN_ZOO)


def _equalized(ours: str, theirs: str, transform: str = "conv", kernel: str = "conv/kernel",
               gain_ratio: float = 1.0, **kw) -> tuple[Rule, ...]:
  """An equalized-learning-rate layer of ours (``<ours>/<kernel>``, ``<ours>/bias``) and pytorch_GAN_zoo's
  ``ConstrainedLayer`` (``<theirs>.module.weight``, ``.bias``): same stored N(0, 1) weights up to our gain
  over theirs (sqrt(2) in every layer), and their bias scaled at run time."""
  bias_transform = "vector_chw" if transform == "linear_chw_out" else "none"
  return (Rule(rf"params/{ours}/{kernel}", f"{theirs}.module.weight", transform, scale=gain_ratio, **kw),
          Rule(rf"params/{ours}/bias", f"{theirs}.module.bias", bias_transform, eq_bias_of=kernel, **kw))


GAN_ZOO_PGAN = Layout(
    name="gan_zoo_pgan",
    description="pytorch_GAN_zoo's PGAN checkpoints (the generator, from avgG)",
    rules=(
        *_equalized("generator/first", "avgG.formatLayer", "linear_chw_out", kernel="kernel", hw=(4, 4)),
        *_equalized("generator/first_conv", "avgG.groupScale0.0"),
        *_equalized(r"generator/conv_a_(\d+)", r"avgG.scaleLayers.\1.0"),
        *_equalized(r"generator/conv_b_(\d+)", r"avgG.scaleLayers.\1.1"),
        # our toRGB layers have gain 1 (Karras et al.'s code); theirs sqrt(2) like every other layer
        *_equalized(r"generator/to_rgb_(\d+)", r"avgG.toRGBLayers.\1", gain_ratio=1 / math.sqrt(2.0)),
    ),
    ignore=_GAN_ZOO["ignore"] + (r"netD\..*",), nested=_GAN_ZOO["nested"], inert=_GAN_ZOO["inert"])

LAYOUTS: dict[str, Layout | Callable[[Any], Layout]] = {"zoo": ZOO, "gan_zoo_dcgan": gan_zoo_dcgan,
                                                        "gan_zoo_pgan": GAN_ZOO_PGAN}


def get_layout(name: str, family: Any = None) -> Layout:
  """The layout ``name``; ``family`` (a Family) for the layouts whose names depend on the architecture."""
  if name not in LAYOUTS:
    raise CheckpointError(f"unknown layout {name!r}{nearest(name, LAYOUTS)}; known: {', '.join(LAYOUTS)}")
  layout = LAYOUTS[name]
  if isinstance(layout, Layout):
    return layout
  if family is None:
    raise CheckpointError(f"layout {name!r} depends on the model; give the family")
  return layout(family)
