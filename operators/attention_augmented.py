"""Attention-augmented convolution (Bello et al., "Attention Augmented Convolutional Networks", ICCV 2019).

A k x k conv with out - d_v output channels, concatenated with global multi-head self-attention giving d_v
channels (1x1 q, k, v projections; 2D relative logits from separate height and width embeddings; a 1x1
output projection). d_k = 0.2 x out and d_v = 0.1 x out (the paper's kappa = 2 upsilon = 0.2), rounded up
to a multiple of the heads; 8 heads (fewer when the width is too small for 8). As in AA-ResNet the
augmented conv replaces the 3x3 conv of the ResNet bottleneck, followed by BN + ReLU.

Departures: at stride 2 the attention runs on a 2x2 average-pooled input (ceil for odd maps), a choice the
paper leaves open; relative embeddings have a fixed extent (``rel_extent``, default 14) and longer offsets
share the edge entries, so the block runs at any resolution. Re-parameterization folds the BN into the
conv (its first out - d_v channels) and into the output projection (the last d_v).

The attention is written out (q k^T, the relative terms added in place, softmax, times v) rather than
through SDPA with the relative logits as its mask: d_k and d_v differ per head, so SDPA would take its math
path, build a second (HW)^2 tensor for the bias and scan every row for -inf. Same numbers and multiply-adds.

Init: no official PyTorch code is public, so the ResNet scheme of AA-ResNet's bottleneck (timm's
``resnet.py``): He normal fan-out on the conv, the q, k, v and output projections, biases 0, the last BN of the
bottleneck zeroed; the relative embeddings as the paper's TensorFlow listing draws them,
``tf.random_normal_initializer(d_kh ** -0.5)``, whose first argument is the mean: N(d_kh^-1/2, 1), d_kh = d_k
per head (read as N(0, 1 / d_kh) until issue 21; the evolving-attention code, built on this listing, draws the
same).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._attention import RelPosLogits, merge_heads, split_heads
from ._layers import NormActMixer, conv_with, fuse_bn, pool_ceil
from ._registry import register_op
from .resnet import Bottleneck


def _round_up(x: float, m: int) -> int:
    return max(m, m * math.ceil(x / m))


class AugmentedConv(NormActMixer):
    def __init__(self, dim: int, stride: int = 1, heads: int | None = None, kappa: float = 0.2,
                 upsilon: float = 0.1, kernel_size: int = 3, rel_extent: int = 14):
        super().__init__()
        heads = heads or max(1, min(8, dim // 8))
        dk, dv = _round_up(kappa * dim, heads), _round_up(upsilon * dim, heads)
        if dv >= dim:
            raise ValueError(f"attention_augmented: width {dim} leaves no conv channels with d_v={dv} "
                             f"({heads} heads); use a wider stage, fewer heads or a smaller upsilon")
        self.heads, self.dk, self.dv = heads, dk, dv
        self.conv = nn.Conv2d(dim, dim - dv, kernel_size, stride, kernel_size // 2, bias=False)
        self.pool = pool_ceil(stride)
        self.qkv = nn.Conv2d(dim, 2 * dk + dv, 1, bias=False)
        self.rel = RelPosLogits(dk // heads, rel_extent)
        self.proj = nn.Conv2d(dv, dv, 1)
        self.add_norm_act(dim)
        with torch.no_grad():  # the paper's listing: tf.random_normal_initializer(d_kh ** -0.5), a mean
            for table in (self.rel.rel_h, self.rel.rel_w):
                table.normal_((dk // heads) ** -0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv(x)
        xa = self.pool(x)
        b, _, h, w = xa.shape
        qkv = self.qkv(xa).flatten(2).transpose(1, 2)
        q, k, v = (split_heads(t, self.heads) for t in qkv.split([self.dk, self.dk, self.dv], dim=-1))
        q = q * (self.dk // self.heads) ** -0.5
        # softmax(q k^T + rel) v written out rather than through SDPA with rel as its mask: head dims of q and v
        # differ (d_k != d_v), so SDPA takes its math path, which builds the (hw)^2 bias, adds it, and checks
        # every row for -inf; here the relative terms go into the logits in place (multiply-adds as before)
        logits = self.rel.add_to(q @ k.transpose(-1, -2), q, h, w)
        att = merge_heads(logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, h, w)
        return self.finish(torch.cat([conv, self.proj(att)], dim=1))

    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        """The BN's first out - d_v channels fold into the conv, the last d_v into the output projection."""
        split = self.conv.out_channels
        parts = []
        for layer, rows in ((self.conv, slice(0, split)), (self.proj, slice(split, None))):
            w, b = fuse_bn(layer.weight, layer.bias, bn, rows)
            parts.append(conv_with(w, b, layer.stride, layer.padding))
        self.conv, self.proj = parts


def attention_augmented(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None,
                        kappa: float = 0.2, upsilon: float = 0.1, expansion: int = 4,
                        rel_extent: int = 14) -> nn.Module:
    return Bottleneck(in_chs, out_chs, stride,
                      lambda mid, s: AugmentedConv(mid, s, heads, kappa, upsilon, 3, rel_extent),
                      expansion=expansion)


register_op("attention_augmented", attention_augmented, family="global",
            paper="Bello et al., Attention Augmented Convolutional Networks, ICCV 2019")
