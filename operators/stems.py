"""Stems and stage downsamplers of the families in the catalog, registered under the names that a space or an
Arch gives in ``stem: {type: ...}`` and ``downsample: ...``.

Each is initialized in its constructor as its family's official code does (``_layers.init_weights`` names the
schemes): ResNet's stem, the small-image stems and the conv downsampler He fan-out (timm's ``resnet.py``); the
patchify stem truncated normal 0.02, as ConvNeXt's (the official Swin leaves its patch conv at PyTorch's
default); CoAtNet's stem He fan-out (timm's ``maxxvit``); RepVGG's stem PyTorch's default (the official code).
Families with a stem of their own (NAT, CvT, LeViT, ...) register it in their own file.

The small-image stems (``small1`` .. ``small8``, at half the stride of the stem they replace) are what
``nas.network`` puts in place of an Arch's stem for inputs of at most 64 px; they can also be named directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormAct, LayerNorm2d, init_weights
from ._registry import register_downsampler, register_stem
from .convnext import PatchDown
from .repvgg import repvgg


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv, then LayerNorm (Swin, ConvNeXt: eps 1e-6; UniFormer: 1e-5); pads to
    a multiple of the patch."""

    def __init__(self, in_chs: int, out_chs: int, patch: int = 4, eps: float = 1e-6):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chs, out_chs, patch, patch)
        self.norm = LayerNorm2d(out_chs, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.patch, 0, -h % self.patch))
        return self.norm(self.proj(x))


def stem_conv7_pool(in_chs: int, width: int) -> nn.Module:
    """ResNet: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool."""
    return init_weights(nn.Sequential(ConvNormAct(in_chs, width, 7, 2), nn.MaxPool2d(3, 2, 1)), "fan_out")


def stem_patch4(in_chs: int, width: int) -> nn.Module:
    """Swin / ConvNeXt: 4x4 stride-4 patchify, LayerNorm."""
    return init_weights(PatchEmbed(in_chs, width, 4), "trunc_normal")


def stem_conv3x2(in_chs: int, width: int) -> nn.Module:
    """CoAtNet S0 and MaxViT: 3x3 stride-2 conv, BN, GELU, then a 3x3 conv (the next block pre-norms)."""
    stem = nn.Sequential(ConvNormAct(in_chs, width, 3, 2, act=nn.GELU), nn.Conv2d(width, width, 3, 1, 1))
    return init_weights(stem, "fan_out")


def stem_repvgg(in_chs: int, width: int) -> nn.Module:
    """RepVGG: a RepVGG block of stride 2 (initialized by the block itself)."""
    return repvgg(in_chs, width, 2)


def stem_small1(in_chs: int, width: int) -> nn.Module:
    """Small images: one 3x3 conv, BN, ReLU, stride 1."""
    return init_weights(ConvNormAct(in_chs, width, 3, 1), "fan_out")


def stem_small2(in_chs: int, width: int) -> nn.Module:
    """Small images: one 3x3 conv, BN, ReLU, stride 2."""
    return init_weights(ConvNormAct(in_chs, width, 3, 2), "fan_out")


def _halvings(in_chs: int, width: int, steps: int) -> nn.Module:
    """``steps`` 3x3 stride-2 conv, BN, ReLU: a stem that halves the map at each step, as LeViT's own does."""
    layers = [ConvNormAct(in_chs if i == 0 else width, width, 3, 2) for i in range(steps)]
    return init_weights(nn.Sequential(*layers), "fan_out")


def stem_small4(in_chs: int, width: int) -> nn.Module:
    """Small images, in place of a stride-8 stem: two halvings."""
    return _halvings(in_chs, width, 2)


def stem_small8(in_chs: int, width: int) -> nn.Module:
    """Small images, in place of a stride-16 stem (LeViT's): three halvings."""
    return _halvings(in_chs, width, 3)


def conv_down(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """A stage's separate downsampling layer: 3x3 conv, BN, ReLU."""
    return init_weights(ConvNormAct(in_chs, out_chs, 3, stride), "fan_out")


register_stem("conv7_pool", stem_conv7_pool, stride=4, paper="He et al., Deep Residual Learning, CVPR 2016")
register_stem("patch4", stem_patch4, stride=4, paper="Liu et al., Swin Transformer, ICCV 2021; ConvNeXt, CVPR 2022")
register_stem("conv3x2", stem_conv3x2, stride=2, paper="Dai et al., CoAtNet, NeurIPS 2021; Tu et al., MaxViT, ECCV 2022")
register_stem("repvgg", stem_repvgg, stride=2, paper="Ding et al., RepVGG, CVPR 2021")
register_stem("small1", stem_small1, stride=1, paper="opmix: the small-image stem (nas.network)")
register_stem("small2", stem_small2, stride=2, paper="opmix: the small-image stem (nas.network)")
register_stem("small4", stem_small4, stride=4, paper="opmix: the small-image stem (nas.network)")
register_stem("small8", stem_small8, stride=8, paper="opmix: the small-image stem (nas.network)")
register_downsampler("conv", conv_down, paper="opmix: 3x3 conv, BN, ReLU")
register_downsampler("patch", PatchDown, paper="Liu et al., A ConvNet for the 2020s, CVPR 2022")
