"""Lightweight attention add-ons for the conv operators: SE, ECA, CBAM and GCNet's global context module.

Papers: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 (SE); Wang et al., "ECA-Net: Efficient Channel
Attention for Deep Convolutional Neural Networks", CVPR 2020 (ECA); Woo et al., "CBAM: Convolutional Block
Attention Module", ECCV 2018; Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and Beyond",
ICCV Workshops 2019 / "Global Context Networks", TPAMI 2020 (GC).

Each add-on maps (N, C, H, W) to the same shape; ``attention_factory`` turns the operators' ``attn`` keyword
(None, "se", "eca", "cbam", "gc") into ``chs -> module``:
- "se": ``_layers.SqueezeExcite`` (the one MBConv uses): global average pool -> 1x1 (C -> C / 16) -> ReLU ->
  1x1 -> sigmoid gate, the SE-ResNet reduction 16.
- "eca": ``EfficientChannelAttention``: global average pool -> 1D conv across the channels, kernel
  k = |log2(C) / 2 + 1 / 2|_odd, no bias -> sigmoid gate. No reduction, k weights in all.
- "cbam": ``CBAMAttention``: channel gate sigmoid(MLP(avgpool) + MLP(maxpool)) (one shared MLP, C -> C / 16 ->
  C), applied first; then the spatial gate sigmoid(BN(conv7x7([mean_c; max_c]))) on the refined map.
- "gc": ``GlobalContextModule``: context = sum_j softmax_j(W_k x_j) x_j (a 1x1 conv to one map, softmax over the
  pixels), transform 1x1 (C -> C / 16) -> LayerNorm([C / 16, 1, 1]) -> ReLU -> 1x1 (-> C), ADDED to every
  position (GCNet's "channel add" fusion, its default).

Where each operator puts it (the official SE-ResNet / CBAM / GCNet / RepVGG / MobileOne code): on the residual
branch after its last BN, before the addition (ResNet); in place of the built-in SE (MBConv); after the re-
parameterizable conv's BN sum, before its ReLU (RepVGG's ``use_se``, MobileOne's ``use_se``, in both units);
after ConvNeXt's branch, before the layer scale; after the expand BN of ResNet's bottleneck in GCNet's GC-ResNet
block (the ``global_context`` operator, ``global_context.py``). The operators' docstrings say more. The add-ons
have no training-only structure except CBAM's spatial BN, which folds into its 7x7 conv (``ConvNormAct``); GC's
LayerNorm stays, so the deploy form of every operator stays exact.

Departures:
- Reduced widths never go below 8 channels (or C, if smaller): ``max(C // 16, min(C, 8))``, the floor of
  timm's ``make_divisible(C / 16, 8)``. The official SE, CBAM and GC code has C // 16, which is 0 below C = 16
  and 1 below C = 32, widths a proxy at width_mult 0.25 reaches; and GC's LayerNorm over C / 16 values leaves
  nothing at 1 value (the transform becomes a constant) and only a sign at 2. From C = 128 up (every
  ResNet-50 width) the floor changes nothing.
- ECA's 1D conv is a Conv2d with a 1 x k kernel over the pooled channels laid along the width (the same
  arithmetic, counted and exported as a conv). The kernel formula is the paper's, without timm's floor of 3
  (C <= 7 gives k = 1: a gate shared by all channels).
- GC's mask conv has no bias: a constant added to every logit leaves the softmax over the pixels unchanged, so
  the official conv's bias does nothing and never gets a gradient (one parameter per block less).
- CBAM's channel MLP is two 1x1 convs with biases (the official code uses Linear layers, the same map), and the
  spatial conv's input is [mean; max] in the paper's order (the official code stacks [max; mean]: a permutation
  of the conv's two input channels).

Init:
- SE and CBAM: the host operator's conv init, applied by its ``init_weights`` (as timm's SE-ResNet and
  CBAM-ResNet, EfficientNet's SE, and RepVGG's and MobileOne's ``SEBlock`` under their PyTorch defaults), BN
  weight 1. CBAM's official ResNet (Jongchan/attention-module) instead leaves the MLP at PyTorch's default
  weights and zeroes the spatial BN's weight (a constant 0.5 spatial gate at init); we follow timm's CbamModule.
- ECA: PyTorch's default ("torch_default"), set here: the official ECA-Net code's Conv1d escapes its ResNet's
  Conv2d-only init loop (so do timm's), so it keeps PyTorch's kaiming_uniform(a = sqrt(5)) in every family.
- GC, set here as the official code (xvjiarui/GCNet ``ContextBlock2d.reset_parameters`` and its ResNet's
  ``kaiming_init``): the mask conv He normal with fan-in, std sqrt(2 / C) (tagged "fan_in"); the first
  transform conv He normal fan-out, bias 0 ("fan_out"); the last transform conv weight and bias 0 (tagged
  "zeros"), so the module adds 0 at init; LayerNorm weight 1, bias 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormAct, SqueezeExcite, init_weights

ATTENTION_ADDONS = ("se", "eca", "cbam", "gc")
ATTENTION_REDUCTION = 16  # SE-ResNet, CBAM and GCNet's backbone setting: C -> C / 16 in the bottleneck MLPs
ATTENTION_MIN_CHS = 8  # floor of the reduced width (timm's make_divisible divisor), at most C


def attention_reduced(chs: int, reduction: int) -> int:
    """The hidden width of an add-on's bottleneck: C // reduction, floored at min(C, 8)."""
    return max(chs // reduction, min(chs, ATTENTION_MIN_CHS))


def eca_kernel_size(chs: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA-Net's adaptive kernel size k = |log2(C) / gamma + beta / gamma|_odd: the integer part, made odd by
    adding 1 (C = 64 -> 3, 256 -> 5, 512 -> 5)."""
    t = int(abs((math.log2(chs) + beta) / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
    """ECA (Wang et al., "ECA-Net", CVPR 2020): global average pool, a k-tap conv across neighbouring channels
    (no bias, k from ``eca_kernel_size``), sigmoid gate on the input."""

    def __init__(self, chs: int, kernel_size: int | None = None):
        super().__init__()
        k = kernel_size or eca_kernel_size(chs)
        self.conv = nn.Conv2d(1, 1, (1, k), padding=(0, k // 2), bias=False)
        init_weights(self, "torch_default")  # the official Conv1d escapes every family's Conv2d init loop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True).permute(0, 2, 3, 1)  # (N, 1, 1, C): the channels along the width
        return x * torch.sigmoid(self.conv(s)).permute(0, 3, 1, 2)


class CBAMAttention(nn.Module):
    """CBAM (Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018): a channel gate from the
    average- and max-pooled descriptors through one shared MLP, then a spatial gate from the channel-wise
    mean and max maps through a 7x7 conv + BN, each a sigmoid multiplied onto the map, channel first."""

    def __init__(self, chs: int, reduction: int = ATTENTION_REDUCTION, kernel_size: int = 7,
                 act: type[nn.Module] = nn.ReLU):
        super().__init__()
        rd = attention_reduced(chs, reduction)
        self.fc1 = nn.Conv2d(chs, rd, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(rd, chs, 1)
        self.spatial = ConvNormAct(2, 1, kernel_size, act=None)

    def mlp(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(s)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg, mx = x.mean((2, 3), keepdim=True), F.adaptive_max_pool2d(x, 1)
        x = x * torch.sigmoid(self.mlp(avg) + self.mlp(mx))
        maps = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(self.spatial(maps))


@torch.no_grad()
def _gc_init(module: nn.Conv2d, scheme: str) -> None:
    """GCNet's own inits, tagged like ``init_weights``: "fan_in" (He normal, std sqrt(2 / fan_in), bias 0) or
    "zeros" (weight and bias 0)."""
    if scheme == "fan_in":
        fan_in = module.weight[0].numel()
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
    else:
        nn.init.zeros_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    module.init_scheme = scheme


class GlobalContextModule(nn.Module):
    """GC block (Cao et al., "GCNet", ICCV-W 2019 / TPAMI 2020): context = attention pooling (a 1x1 conv to one
    logit map, softmax over the H x W pixels, weighted sum of the features), transform 1x1 (C -> C / r) ->
    LayerNorm([C / r, 1, 1]) -> ReLU -> 1x1 (-> C), added to every position; the last conv starts at zero."""

    def __init__(self, chs: int, reduction: int = ATTENTION_REDUCTION):
        super().__init__()
        rd = attention_reduced(chs, reduction)
        self.mask = nn.Conv2d(chs, 1, 1, bias=False)  # a bias would shift every logit alike: softmax ignores it
        self.fc1 = nn.Conv2d(chs, rd, 1)
        self.norm = nn.LayerNorm([rd, 1, 1])
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, chs, 1)
        _gc_init(self.mask, "fan_in")
        _gc_init(self.fc2, "zeros")
        init_weights(self.fc1, "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        weights = self.mask(x).flatten(2).softmax(-1)  # (N, 1, HW)
        context = torch.matmul(x.flatten(2), weights.transpose(1, 2)).reshape(n, c, 1, 1)
        return x + self.fc2(self.act(self.norm(self.fc1(context))))


def attention_factory(op: str, attn: str | None, reduction: int = ATTENTION_REDUCTION
                      ) -> Callable[[int], nn.Module] | None:
    """``chs -> add-on`` for an operator's ``attn`` keyword (None or "none", which a space file can list among its
    choices, give None); a bad name raises ValueError."""
    if attn is None or attn == "none":
        return None
    if attn not in ATTENTION_ADDONS:
        raise ValueError(f"{op}: attn={attn!r} is not one of None, 'none', {', '.join(map(repr, ATTENTION_ADDONS))}; "
                         f"pass one of them, or leave attn out for the block without an add-on")
    if not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"{op}: reduction={reduction!r} must be a positive integer (the papers use 16)")
    if attn == "se":
        return lambda chs: SqueezeExcite(chs, attention_reduced(chs, reduction), act=nn.ReLU)
    if attn == "eca":
        return EfficientChannelAttention
    if attn == "cbam":
        return lambda chs: CBAMAttention(chs, reduction)
    return lambda chs: GlobalContextModule(chs, reduction)
