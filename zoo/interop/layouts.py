"""The layouts the zoo knows, by name. Each is data: a tuple of rules (see :mod:`zoo.interop.layout`).

``zoo``: the zoo's own PyTorch twin of every family. A PyTorch module that mirrors a family, with one
attribute per player and the zoo's module names below it (``torch.nn.Linear`` where we have a Dense,
``Conv2d`` for a convolution, ``ConvTranspose2d`` for the modules named ``deconv*``, ``BatchNorm2d``
for batch norm), has exactly this state dict: ``<player>.<module>....<weight|bias|running_mean|...>``.
Leaves that are not a layer's weight keep their path (``model.visible_bias`` of an RBM); non-trainable
collections other than batch statistics are prefixed with their collection (``data_stats.model.mean``),
so an export holds everything a sampler or an evaluation needs and export-then-import is the identity.
"""
from __future__ import annotations

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

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (ZOO,)}


def get_layout(name: str) -> Layout:
  if name not in LAYOUTS:
    raise CheckpointError(f"unknown layout {name!r}{nearest(name, LAYOUTS)}; known: {', '.join(LAYOUTS)}")
  return LAYOUTS[name]
