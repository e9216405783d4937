"""GCNet's GC-ResNet block (Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCV Workshops 2019 / "Global Context Networks", TPAMI 2020).

``global_context``: ResNet's bottleneck (``resnet.Bottleneck``) with the GC module (``attention_modules.
GlobalContextModule``) after the expand BN, before the addition (GCNet's "after 1x1" placement, the one its
ResNet-50 results use), reduction 16, He init and timm's zero-initialized last BN as ``resnet_bottleneck``.
GCNet's own figures are for a GC block in every bottleneck of stages 2-4 (c3-c5); a stage of ``global_context``
in stage 1 too is the search's choice. A file of its own because it builds on both ResNet and the add-ons, and
ResNet takes the add-ons: the imports point one way.
"""

from __future__ import annotations

from torch import nn

from ._registry import register_op
from .attention_modules import ATTENTION_REDUCTION, attention_factory
from .resnet import Bottleneck


def global_context(in_chs: int, out_chs: int, stride: int = 1, reduction: int = ATTENTION_REDUCTION,
                   expansion: int = 4) -> nn.Module:
    """GCNet's GC-ResNet bottleneck: ``resnet_bottleneck`` with the GC module after the expand BN."""
    return Bottleneck(in_chs, out_chs, stride, expansion=expansion,
                      attn=attention_factory("global_context", "gc", reduction))


GC_PAPER = ("Cao et al., GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond, ICCV Workshops "
            "2019 (Global Context Networks, TPAMI 2020)")
register_op("global_context", global_context, family="conv", paper=GC_PAPER)
