"""CvT transformer block with convolutional projections, and CvT's convolutional token embedding (stem and
stage downsampler).

Paper: Wu et al., "CvT: Introducing Convolutions to Vision Transformers", ICCV 2021; official code
microsoft/CvT (``lib/models/cls_cvt.py``, config ``experiments/imagenet/cvt/cvt-13-224x224.yaml``).

Block: x <- x + Attention(LN(x)); x <- x + MLP(LN(x)), MLP ratio 4, GELU, head dim 64 (CvT-13: 1/3/6 heads
at 64/192/384). The attention's convolutional projection: for each of q, k and v, a depthwise k x k conv
(k = 3, no bias, padding k // 2) and a BatchNorm on the normalized map, stride 1 for q and ``kv_stride``
(2) for k and v, then a linear projection (with bias, CvT-13's QKV_BIAS); softmax attention of the H x W
queries over all ceil(H/2) x ceil(W/2) keys; an output linear. No position embedding: the convs are the
only spatial information. Logits are scaled by dim ** -0.5 (the whole width, not the head dim), as the
official code does.

Token embedding (``register_stem("cvt")``, ``register_downsampler("cvt")``): a k x k conv with stride s,
then LayerNorm over the channels: 7x7 stride 4 padding 2 for the stem, 3x3 stride 2 padding 1 before
stages 2 and 3. CvT-13 is the stem ``cvt`` (width 64) and ``downsample: cvt`` on stages 2 and 3, whose
blocks then run at stride 1 and constant width. A block built with a stride of 2 or a width change (a
stage without a separate downsampler) starts with the same 3x3 token embedding itself (stride 1 too when
only the width changes, where CvT has no such layer).

Re-parameterization: each projection's BN folds into its depthwise conv (which gains a bias); the deploy
form has no BatchNorm left.

Departures:
- The input of the token embedding is zero-padded on the bottom/right to a multiple of its stride, so that
  the 7x7 stride-4 stem gives ceil(H/4) at any size; at 224 px (and any multiple of the stride) nothing
  is padded and the embedding is the official one. The 3x3 stride-2 embedding and the k/v convs give
  ceil(H/2) anyway (a 1x1 map stays 1x1).
- No class token: CvT-13 adds one to stage 3 (it joins the attention, skips the conv projections, and the
  head classifies its normalized value). Our networks are token-free; the reference uses the closest head,
  LayerNorm then mean-pool then linear (``norm_pool_linear``), which is what the official code does when
  CLS_TOKEN is off. In CvT-13 the token costs 384 parameters and 19.6 M multiply-adds at 224 px (one more
  token in each of the 10 stage-3 blocks, 2.0 M each: 0.4 % of the total).
- The MLP's GELU is the exact one; the official model passes QuickGELU (x * sigmoid(1.702 x)), an
  approximation of it (the shared ``Mlp`` takes no activation).
- The in-block embedding at stride 1 (width change only) has no counterpart in CvT.

Init as the official code (``_init_weights_trunc_normal``, CvT-13's INIT 'trunc_norm'): every Linear
N(0, 0.02^2) truncated to [-2, 2], biases 0, LayerNorm and BatchNorm weight 1 and bias 0 ("trunc_normal");
it touches no conv, so the token-embedding conv and the depthwise projection convs keep PyTorch's default
("torch_default").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import attend, merge_heads, split_heads
from ._layers import (
    ConvNormAct,
    LayerNorm2d,
    Mlp,
    check_int,
    check_positive,
    init_weights,
    resolve_heads,
)
from ._registry import register_downsampler, register_op, register_stem

CVT_PAPER = "Wu et al., CvT: Introducing Convolutions to Vision Transformers, ICCV 2021"


class CvTConvEmbed(nn.Module):
    """CvT's convolutional token embedding: (N, in, H, W) -> (N, out, ceil(H/s), ceil(W/s)), a k x k conv of
    stride s then LayerNorm; the input is zero-padded on the bottom/right to a multiple of s first."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding)
        self.norm = LayerNorm2d(out_chs)
        init_weights(self, "torch_default")  # the official init applies to Linear layers only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            h, w = x.shape[-2:]
            x = F.pad(x, (0, -w % self.stride, 0, -h % self.stride))
        return self.norm(self.proj(x))


class CvTAttention(nn.Module):
    """Multi-head attention with CvT's convolutional projections, (B, C, H, W) -> (B, H * W, C) tokens."""

    def __init__(self, dim: int, heads: int, kernel_size: int = 3, kv_stride: int = 2):
        super().__init__()
        self.heads = heads
        self.scale = dim ** -0.5  # the official code scales by the whole width, not the head dim

        def dw(stride: int) -> ConvNormAct:
            return init_weights(ConvNormAct(dim, dim, kernel_size, stride, groups=dim, act=None), "torch_default")

        self.conv_q, self.conv_k, self.conv_v = dw(1), dw(kv_stride), dw(kv_stride)
        self.proj_q, self.proj_k, self.proj_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, heads, H * W, d) and k, v (B, heads, ceil(H/s) * ceil(W/s), d) from a normalized map."""

        def project(conv: nn.Module, linear: nn.Linear) -> torch.Tensor:
            return split_heads(linear(conv(x).flatten(2).transpose(1, 2)), self.heads)

        return (project(self.conv_q, self.proj_q), project(self.conv_k, self.proj_k),
                project(self.conv_v, self.proj_v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(merge_heads(attend(*self.qkv(x), scale=self.scale)))


class CvTBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, mlp_ratio: float, kernel_size: int,
                 kv_stride: int):
        super().__init__()
        if stride > 1 or in_chs != out_chs:  # no separate downsampler: the block embeds the tokens itself
            self.embed: nn.Module = cvt_embed(in_chs, out_chs, stride)
        else:
            self.embed = nn.Identity()
        self.norm1 = LayerNorm2d(out_chs)
        self.attn = CvTAttention(out_chs, heads, kernel_size, kv_stride)
        self.norm2 = nn.LayerNorm(out_chs)
        self.mlp = Mlp(out_chs, max(1, int(out_chs * mlp_ratio)))
        init_weights(self, "trunc_normal")  # the convs above already carry "torch_default"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2) + self.attn(self.norm1(x))  # (B, H * W, C)
        x = x + self.mlp(self.norm2(x))
        return x.transpose(1, 2).reshape(b, c, h, w)


def cvt(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 64,
        mlp_ratio: float = 4.0, kernel_size: int = 3, kv_stride: int = 2) -> nn.Module:
    heads = resolve_heads("cvt", out_chs, heads, head_dim, "CvT uses 64")
    check_int("cvt", "kernel_size", kernel_size, 1, "CvT uses 3; odd, so that padding keeps the map", odd=True)
    check_int("cvt", "kv_stride", kv_stride, 1, "CvT uses 2; 1 keeps every key")
    check_positive("cvt", "mlp_ratio", mlp_ratio, "CvT uses 4")
    return CvTBlock(in_chs, out_chs, stride, heads, mlp_ratio, kernel_size, kv_stride)


def cvt_stem(in_chs: int, width: int) -> nn.Module:
    """CvT stage 1's token embedding: 7x7 conv stride 4 padding 2, LayerNorm."""
    return CvTConvEmbed(in_chs, width, 7, 4, 2)


def cvt_embed(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """CvT stages 2 and 3's token embedding: 3x3 conv stride ``stride`` padding 1, LayerNorm."""
    return CvTConvEmbed(in_chs, out_chs, 3, stride, 1)


register_op("cvt", cvt, family="global", variants=({}, {"heads": 2, "kv_stride": 1}), paper=CVT_PAPER)
register_stem("cvt", cvt_stem, stride=4, paper=CVT_PAPER)
register_downsampler("cvt", cvt_embed, paper=CVT_PAPER)
