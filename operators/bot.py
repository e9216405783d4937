"""BoTNet bottleneck (Srinivas et al., "Bottleneck Transformers for Visual Recognition", CVPR 2021).

The ResNet bottleneck with its 3x3 conv replaced by global multi-head self-attention: 1x1 q, k, v
projections without bias, 4 heads, content-content logits q.k plus content-position logits q.r from
separate height and width relative embeddings, no output projection; then BN + ReLU. At stride 2 the
attention output is 2x2 average pooled (the paper's choice), ceil for odd maps.

Departure: the relative embeddings have a fixed extent (``rel_extent``, default 14: BoT-S1-50's c5 map at
224 px) and longer offsets share the edge entries, so the same block runs at any resolution.

Re-parameterization: the BN after the attention folds into the v projection (softmax rows sum to 1 and
average pooling keeps constants, so a per-channel affine map of the output is the same map of v).

Init as timm's BoTNet (``byobnet._init_weights`` over ``byoanet``'s bottleneck-attention blocks): every conv,
the qkv projection included, He normal with fan-out ("fan_out", ResNet's ``Bottleneck``), BN weight 1 and bias
0, the last BN zero-initialized (``zero_init_last``); the relative embeddings N(0, 1 / head_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import RelPosLogits, attend, merge_heads, split_heads
from ._layers import NormActMixer, check_heads, conv_with, default_heads, fuse_bn, pool_ceil
from ._registry import register_op
from .resnet import Bottleneck


class ValueNormMixer(NormActMixer):
    """The BN + ReLU tail of the attention bottleneck mixers whose output is attention alone (BoT, HaloNet,
    SASA). At deploy the BN folds into the value rows of the 1x1 projection named by ``values`` (the attention
    output, and its average pooling, are convex combinations of values, so a per-channel affine map of the
    output is the same map of the values)."""

    values = "qkv"  # the attribute holding the 1x1 conv whose last ``dim`` outputs are the values

    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        setattr(self, self.values, fold_bn_into_values(getattr(self, self.values), bn))


class BoTMHSA(ValueNormMixer):
    def __init__(self, dim: int, stride: int = 1, heads: int = 4, rel_extent: int = 14):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.rel = RelPosLogits(dim // heads, rel_extent)
        self.pool = pool_ceil(stride)
        self.add_norm_act(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).flatten(2).transpose(1, 2)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        q = q * (c // self.heads) ** -0.5
        out = merge_heads(attend(q, k, v, self.rel(q, h, w), scale=1.0))
        return self.finish(self.pool(out.transpose(1, 2).reshape(b, c, h, w)))


def fold_bn_into_values(qkv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of the 1x1 qkv conv whose v rows (the last bn.num_features outputs) absorb ``bn``."""
    c = bn.num_features
    w = qkv.weight.clone()
    bias = qkv.bias.clone() if qkv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    w[-c:], bias[-c:] = fuse_bn(w[-c:], bias[-c:], bn)
    return conv_with(w, bias, 1, 0)


def bot(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, expansion: int = 4,
        rel_extent: int = 14) -> nn.Module:
    def mixer(mid: int, s: int) -> nn.Module:
        h = check_heads("bot", mid, heads or default_heads(mid, mid / 4))  # 4 heads as in the paper
        return BoTMHSA(mid, s, h, rel_extent)
    return Bottleneck(in_chs, out_chs, stride, mixer, expansion=expansion)


register_op("bot", bot, family="global",
            paper="Srinivas et al., Bottleneck Transformers for Visual Recognition, CVPR 2021")
