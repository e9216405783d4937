"""EfficientViT's block: multi-scale ReLU linear attention (LiteMLA), then an MBConv; and EfficientViT's stem.

Papers: Cai, Li, Hu, Gan & Han, "EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense
Prediction", ICCV 2023 (official code mit-han-lab/efficientvit, ``models/nn/ops.py``: ``LiteMLA``,
``EfficientViTBlock``, ``MBConv``, ``DSConv``; ``models/efficientvit/backbone.py``); the kernel form of
attention from Katharopoulos et al., "Transformers are RNNs", ICML 2020.

Block at stride 1, in == out: x <- x + LiteMLA(x); x <- x + MBConv(x). LiteMLA: a 1x1 conv to 3 x heads x dim
(no bias, no norm; heads = C // dim, dim 32); multi-scale tokens: a depthwise ``scale`` x ``scale`` conv then a
1x1 conv in 3 x heads groups, concatenated with the 1x1's output, giving 2 x heads heads; each head's q, k
and v are interleaved in the channels (reshape to (B, 2 heads, 3 dim, N)); ReLU on q and k; in float32,
v is padded with a row of ones and out = (v_pad k^T) q, divided by its last row + 1e-15 (that row is
sum_j k_j . q, the attention's normaliser); then a 1x1 conv + BN. The MBConv: 1x1 to 4 x C + hardswish,
depthwise 3x3 + hardswish (both with bias and no norm: the official "fewer_norm"), 1x1 + BN.

A block that strides or widens starts with EfficientViT's stage entry: an MBConv from in_chs to out_chs with
the stride on its depthwise conv, the same fewer-norm layout, expansion 4 x in_chs, no shortcut; then the
block above. So an opmix stage of depth d is an EfficientViT attention stage of d blocks (its depth list does
not count the entry either). ``attention=False`` gives the local blocks of EfficientViT's MBConv stages:
x <- x + MBConv(x) with a BN after every conv (hardswish after the first two), and, when the block strides or
widens, that MBConv alone without a shortcut, as the first block of those stages is.

Cost: both attention products are ``torch.matmul``, which fvcore counts (no handle needed): 2 x (2 heads) x N x
dim x (dim + 1) multiply-adds, the row of ones included, as the official code computes it; the test holds the
block's count to the formula. Re-parameterization: every BN follows a conv and folds into it (exact).

Init as the official code (``init_modules`` "trunc_normal" and ``zero_last_gamma``): every conv N(0, 0.02^2)
truncated to [-2, 2], biases 0, BN weight 1 and bias 0, except the last BN of each identity-residual branch
(LiteMLA's projection, the MBConv's, the stem's DSConv), whose weight starts at 0: the block starts as x.

Departures: LiteMLA's quadratic fallback for maps of at most ``dim`` pixels (the same values, fewer
multiply-adds there) is left out, so the cost is one formula at every size; heads are at least 1 (the
official ``C // dim`` is 0 below 32 channels); one aggregation scale (the B models' (5,)); no drop path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import ConvNormAct, check_int, check_positive, init_weights
from ._registry import register_op, register_stem

EFFICIENTVIT_PAPER = ("Cai et al., EfficientViT: Multi-Scale Linear Attention for High-Resolution Dense "
                      "Prediction, ICCV 2023; Katharopoulos et al., Transformers are RNNs, ICML 2020")
LITEMLA_EPS = 1e-15  # the official LiteMLA's eps


def relu_linear_attention(qkv: torch.Tensor, dim: int, eps: float = LITEMLA_EPS) -> torch.Tensor:
    """ReLU linear attention of (B, heads x 3 dim, H, W) tokens, each head's channels q, k, v in turn;
    returns (B, heads x dim, H, W). Computed in float32 (the official code disables autocast here)."""
    b, _, h, w = qkv.shape
    qkv = qkv.float().reshape(b, -1, 3 * dim, h * w)
    q, k, v = torch.relu(qkv[:, :, :dim]), torch.relu(qkv[:, :, dim:2 * dim]), qkv[:, :, 2 * dim:]
    v = F.pad(v, (0, 0, 0, 1), value=1.0)  # a row of ones: the last output row is the normaliser
    out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)  # (B, heads, dim + 1, N), matmuls fvcore counts
    # eps as a 1-element tensor, not a scalar: the ONNX exporter's optimizer drops "x + c" for a scalar c within
    # 1e-8 of 0 (onnxscript's add_0 rule), and a query whose ReLU'd q is 0 would then read 0 / 0
    den = out[:, :, -1:] + torch.full((1,), eps, dtype=out.dtype, device=out.device)
    return (out[:, :, :-1] / den).reshape(b, -1, h, w)


class LiteMLA(nn.Module):
    """EfficientViT's lightweight multi-scale linear attention on (B, C, H, W), C -> ``out_chs``."""

    def __init__(self, in_chs: int, out_chs: int, dim: int = 32, scale: int = 5):
        super().__init__()
        self.dim = dim
        heads = max(1, in_chs // dim)
        total = 3 * heads * dim
        self.qkv = nn.Conv2d(in_chs, total, 1, bias=False)
        self.aggreg = nn.Sequential(nn.Conv2d(total, total, scale, 1, scale // 2, groups=total, bias=False),
                                    nn.Conv2d(total, total, 1, groups=3 * heads, bias=False))
        self.proj = ConvNormAct(2 * heads * dim, out_chs, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv, self.aggreg(qkv)], dim=1)
        return self.proj(relu_linear_attention(qkv, self.dim).to(x.dtype))


class EfficientViTMBConv(nn.Module):
    """EfficientViT's MBConv: 1x1 (expansion x in_chs) + hardswish, depthwise 3x3 (the stride) + hardswish,
    1x1 + BN. ``fewer_norm``: the first two convs have a bias and no BN (the attention stages); otherwise a BN
    follows every conv (the MBConv stages)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion: float = 4.0, fewer_norm: bool = True):
        super().__init__()
        mid = max(1, round(in_chs * expansion))
        norm = not fewer_norm
        self.inverted = ConvNormAct(in_chs, mid, 1, act=nn.Hardswish, norm=norm)
        self.depthwise = ConvNormAct(mid, mid, 3, stride, groups=mid, act=nn.Hardswish, norm=norm)
        self.point = ConvNormAct(mid, out_chs, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point(self.depthwise(self.inverted(x)))


class EfficientViTBlock(nn.Module):
    """[stage entry MBConv when the shape changes] -> x + LiteMLA(x) -> x + MBConv(x) (module docstring)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, dim: int, expansion: float, scale: int,
                 attention: bool):
        super().__init__()
        entry = stride != 1 or in_chs != out_chs
        self.entry = EfficientViTMBConv(in_chs, out_chs, stride, expansion, fewer_norm=attention) if entry else None
        self.context = LiteMLA(out_chs, out_chs, dim, scale) if attention else None
        self.local = (EfficientViTMBConv(out_chs, out_chs, 1, expansion, fewer_norm=attention)
                      if attention or not entry else None)
        init_weights(self, "trunc_normal")
        # zero_last_gamma: each identity-residual branch ends in a BN that starts at 0
        if self.context is not None:
            nn.init.zeros_(self.context.proj.bn.weight)
        if self.local is not None:
            nn.init.zeros_(self.local.point.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = self.entry(x)
        if self.context is not None:
            x = x + self.context(x)
        if self.local is not None:
            x = x + self.local(x)
        return x


def linear_attention(in_chs: int, out_chs: int, stride: int = 1, head_dim: int = 32, expansion: float = 4.0,
                     scale: int = 5, attention: bool = True) -> nn.Module:
    """``head_dim``: LiteMLA's dim (heads = out_chs // head_dim); ``scale``: the aggregation's depthwise kernel;
    ``attention=False``: EfficientViT's MBConv-stage block without LiteMLA."""
    check_int("linear_attention", "head_dim", head_dim, 1, "EfficientViT-B3 uses 32")
    check_int("linear_attention", "scale", scale, 1, "EfficientViT uses 5", odd=True)
    check_positive("linear_attention", "expansion", expansion, "EfficientViT uses 4")
    if not isinstance(attention, bool):
        raise ValueError(f"linear_attention: attention={attention!r} must be true or false")
    return EfficientViTBlock(in_chs, out_chs, stride, head_dim, expansion, scale, attention)


class EfficientViTStem(nn.Module):
    """3x3 stride-2 conv + BN + hardswish, then a DSConv residual block: x + BN(1x1(hswish(BN(dw3x3(x)))))."""

    def __init__(self, in_chs: int, width: int):
        super().__init__()
        self.conv = ConvNormAct(in_chs, width, 3, 2, act=nn.Hardswish)
        self.depthwise = ConvNormAct(width, width, 3, 1, groups=width, act=nn.Hardswish)
        self.point = ConvNormAct(width, width, 1, act=None)
        init_weights(self, "trunc_normal")
        nn.init.zeros_(self.point.bn.weight)  # zero_last_gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.point(self.depthwise(x))


register_op("linear_attention", linear_attention, family="global", paper=EFFICIENTVIT_PAPER,
            variants=({}, {"attention": False}, {"head_dim": 8, "scale": 3}))
register_stem("efficientvit", EfficientViTStem, stride=2, paper=EFFICIENTVIT_PAPER)
