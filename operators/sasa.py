"""Stand-alone self-attention bottleneck (Ramachandran et al., "Stand-Alone Self-Attention in Vision Models",
NeurIPS 2019).

The ResNet bottleneck with its 3x3 conv replaced by local multi-head self-attention: 1x1 reduce + BN + ReLU,
attention, BN + ReLU, 1x1 expand + BN, plus the shortcut (1x1 conv + BN when stride or width changes). Each
pixel's query attends to the ``kernel`` x ``kernel`` (7 x 7) neighbourhood centred on it, 8 heads, q, k, v from
1x1 projections without bias, no output projection. Relative position is added to the keys: a neighbour at
offset (dy, dx) is compared as ``q . (k + r) / sqrt(d)``, where r, of the head's width d, is the concatenation
[r_row(dy); r_col(dx)]: the first half of every head's channels carries a learned row-offset embedding, the
second half a column-offset embedding (the paper's 1/2 d_out each, split by heads like q and k). At stride 2 the
attention output is 2x2 average pooled (ceil for odd maps), the paper's spatial downsampling ("a 2x2 average
pooling with stride 2 following the attention layer").

Departures:
- Neighbours outside the map are masked out (-inf logits), where the paper zero-pads; masking is what makes a
  corner pixel's attention the same at any map size, and maps smaller than the kernel (proxies) need no pad.
- The logits are scaled by 1/sqrt(d) (Vaswani et al.'s dot-product attention, which SASA builds on; the paper's
  equation omits the temperature).
- Each head has its own row and column halves. Read literally, concatenating r_row (d_out / 2) and r_col
  (d_out / 2) and then splitting by heads would give the first half of the heads rows only and the second half
  columns only (as some reimplementations do); we split every head, so each head sees 2D offsets.
- An odd head dim gives the row half one channel more. Default heads: 8 where the bottleneck width allows an
  even head dim, else the largest count up to 8 that does; a head needs at least 2 channels.
- The ``kernel`` is an extent a proxy scales (``extents``).
- There is no official code; the attention stem of the fully attentional model is not part of this block.

Computation: keys and values are read per query from ``neighbourhoods`` (kernel^2 shifted slices of the padded
map stacked once, each query's neighbours one contiguous matrix for the matmuls), the border mask is index
arithmetic; the earlier ``F.unfold`` needed a second, transposing copy and was a slow gather in ONNX Runtime.

Re-parameterization: the BN after the attention folds into the v rows of the qkv projection (softmax rows sum to
1 over the unmasked neighbours, and average pooling keeps constants).

Init: no official code was released, so the ResNet scheme as timm writes it for its attention bottlenecks
(``byobnet._init_weights``): every conv, the qkv projection included, He normal with fan-out ("fan_out"), BN
weight 1 and bias 0, the last BN zero-initialized (``zero_init_last``); the relative embeddings N(0, 1 / d), the
head-dim scale timm's ``byoanet`` attention layers and BoTNet give theirs.
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import neighbourhood_inside, neighbourhoods
from ._layers import check_int, pool_ceil
from ._registry import register_op
from .bot import ValueNormMixer
from .resnet import Bottleneck


def sasa_logits(q: torch.Tensor, k: torch.Tensor, rel_row: torch.Tensor, rel_col: torch.Tensor, heads: int,
                kernel: int) -> torch.Tensor:
    """(B, heads, H * W, kernel^2) logits of each query over its neighbours (row-major offsets, -inf outside
    the map) from (B, C, H, W) q and k; ``rel_row`` (heads, d_row, kernel), ``rel_col`` (heads, d - d_row, kernel).
    """
    bsz, c, h, w = q.shape
    d, kk, n, d_row = c // heads, kernel * kernel, h * w, rel_row.shape[1]
    qh = (q * d ** -0.5).reshape(bsz, heads, d, n).transpose(-1, -2)  # (B, heads, n, d)
    logits = (qh.unsqueeze(-2) @ neighbourhoods(k, heads, kernel).transpose(-1, -2)).squeeze(-2)  # q . k_j
    # q . r_j with r_j = [r_row(dy); r_col(dx)]: row half against the row table, column half against the column one
    lr = qh[..., :d_row] @ rel_row  # (B, heads, n, kernel), one logit per row offset
    lc = qh[..., d_row:] @ rel_col  # one per column offset
    logits = logits + (lr[..., :, None] + lc[..., None, :]).reshape(bsz, heads, n, kk)
    return logits.masked_fill(~neighbourhood_inside(h, w, kernel, device=q.device), float("-inf"))


def sasa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_row: torch.Tensor, rel_col: torch.Tensor,
                   heads: int, kernel: int) -> torch.Tensor:
    """Local attention of every pixel over its kernel x kernel neighbourhood, (B, C, H, W) -> (B, C, H, W)."""
    bsz, c, h, w = v.shape
    attn = sasa_logits(q, k, rel_row, rel_col, heads, kernel).softmax(dim=-1)
    out = attn.unsqueeze(-2) @ neighbourhoods(v, heads, kernel)  # (B, heads, n, 1, d)
    return out.squeeze(-2).transpose(-1, -2).reshape(bsz, c, h, w)


class SASAttention(ValueNormMixer):
    """The bottleneck mixer: SASA local attention (average pooled at stride 2), then BN + ReLU."""

    def __init__(self, dim: int, stride: int = 1, heads: int = 8, kernel: int = 7):
        super().__init__()
        self.heads, self.kernel = heads, kernel
        d = dim // heads
        d_row = d - d // 2
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        self.rel_row = nn.Parameter(torch.randn(heads, d_row, kernel) * d ** -0.5)
        self.rel_col = nn.Parameter(torch.randn(heads, d - d_row, kernel) * d ** -0.5)
        self.pool = pool_ceil(stride)
        self.add_norm_act(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return self.finish(self.pool(sasa_attention(q, k, v, self.rel_row, self.rel_col, self.heads, self.kernel)))


def sasa_heads(dim: int, heads: int | None) -> int:
    """``heads`` checked, or the default: the most heads up to 8 with an even head dim, else with >= 2 channels."""
    if heads is not None:
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or dim % heads or dim // heads < 2:
            raise ValueError(f"sasa: heads={heads!r} must divide the bottleneck width {dim} and leave at least 2 "
                             f"channels per head (a row and a column half); pass a divisor of {dim} up to "
                             f"{dim // 2}, or leave it to the default")
        return heads
    for even in (True, False):
        for h in range(min(8, dim // 2), 0, -1):
            if dim % h == 0 and (not even or (dim // h) % 2 == 0):
                return h
    raise ValueError(f"sasa: a bottleneck width of {dim} channel leaves no room for a row and a column "
                     f"embedding; use out_chs >= 2 * expansion")


def sasa(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, kernel: int = 7,
         expansion: int = 4) -> nn.Module:
    check_int("sasa", "kernel", kernel, 1, "a centred neighbourhood; the paper uses 7", odd=True)
    check_int("sasa", "expansion", expansion, 1, "ResNet's bottleneck uses 4")

    def mixer(mid: int, s: int) -> nn.Module:
        return SASAttention(mid, s, sasa_heads(mid, heads), kernel)
    return Bottleneck(in_chs, out_chs, stride, mixer, expansion=expansion)


register_op("sasa", sasa, family="local", extents=("kernel",),
            paper="Ramachandran et al., Stand-Alone Self-Attention in Vision Models, NeurIPS 2019")
