"""HaloNet bottleneck (Vaswani et al., "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
CVPR 2021).

Blocked local self-attention in place of the 3x3 conv of a ResNet bottleneck: 1x1 reduce + BN + ReLU, halo
attention, BN + ReLU, 1x1 expand + BN, plus the shortcut (1x1 conv + BN when stride or width changes). The map is
cut into non-overlapping b x b query blocks (``block_size`` b = 8); each block attends to the (b + 2h)^2 window
of keys and values around it (``halo_size`` h = 3), every query of a block to the same window. The
logits are content plus relative position, separate height and width embeddings:
``q . k / sqrt(d) + q . r_h(dy) + q . r_w(dx)`` (timm's default ``scale_pos_embed=False``: the position term
unscaled), (dy, dx) the key's offset from the query in pixels. 8 heads,
q, k and v of the same width, 1x1 projections without bias, no output projection (the expand conv follows).

Stride 2 is the paper's strided self-attention, as timm's ``HaloAttn`` does it when the block is a multiple of
the stride: the queries are subsampled (a strided 1x1 q projection, so (b / 2)^2 queries per block) while the
keys and values keep the full-resolution (b + 2h)^2 window. With an odd block (which a proxy's scaling can give)
the attention runs at stride 1 and a 2x2 average pooling (ceil) follows, timm's fallback.

Departures:
- Any H, W: the map is zero-padded on the bottom/right to a multiple of b (and by h all around for the
  windows); padded keys get -inf logits and padded queries are cropped away. timm asserts divisible maps, and
  its zero-padded halo keys take part in the softmax with logit q . r.
- Relative offsets are measured in input pixels for strided queries too (timm indexes the query by its position
  in the subsampled block, which halves its offsets). Each table has the 2(b + h) - 1 offsets a window can hold;
  timm allocates 2(b + 2h) - 1 rows and never reads 2h of them.
- Width: ResNet's bottleneck ratio (``expansion`` 4, timm's halonet26t / halonet50ts) instead of the H-series'
  value and bottleneck multipliers r_v, r_b; heads 8 (timm's default), head dim = mid / 8, fewer heads where
  the width has no divisor near 8.
- A proxy scales ``block_size`` and ``halo_size`` with the map (``extents``); a block larger than the map is one
  padded block, i.e. masked global attention.

Computation: keys outside the map are masked by putting -inf into the row term (r_h) of out-of-map rows and
the column term (r_w) of out-of-map columns before the two are broadcast into the bias, so the bias is built in
one pass with no separate masking pass over the (b/s)^2 x (b + 2h)^2 logits of each block.

Re-parameterization: the BN after the attention folds into the v rows of the k/v projection (softmax rows sum
to 1 over the unmasked keys, and average pooling keeps constants).

Init as timm's HaloNets (``byobnet._init_weights`` over ``byoanet``'s self-attention blocks): every conv, the q
and k/v projections included, He normal with fan-out ("fan_out": byobnet's init runs after ``HaloAttn``'s own
fan-in init and replaces it), BN weight 1 and bias 0, the last BN zero-initialized (``zero_init_last``); the
relative embeddings keep ``HaloAttn.reset_parameters``' truncated normal with std head_dim^-0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import attend
from ._layers import check_heads, check_int, default_heads, pool_ceil, trunc_normal_
from ._registry import register_op
from .bot import ValueNormMixer
from .resnet import Bottleneck


def halo_offsets(block: int, halo: int, step: int, device: torch.device | None = None) -> torch.Tensor:
    """(block // step, block + 2 * halo) table rows of the key - query offset along one axis, in 0 .. 2(b+h)-2:
    query i of a block sits at pixel step * i of the block, key j of the window at pixel j - halo."""
    q = torch.arange(0, block, step, device=device)
    k = torch.arange(block + 2 * halo, device=device) - halo
    return k[None, :] - q[:, None] + block + halo - 1


def _outside(size: int, block: int, halo: int, blocks: int, like: torch.Tensor) -> torch.Tensor:
    """(blocks, block + 2 halo): 0 where window position j of block i lies inside an axis of ``size`` pixels,
    -inf where it falls on the padding."""
    first = torch.arange(blocks, device=like.device)[:, None] * block - halo  # each window's first pixel
    pos = first + torch.arange(block + 2 * halo, device=like.device)
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.where((pos >= 0) & (pos < size), zero, float("-inf"))


def halo_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                   heads: int, block: int, halo: int, step: int) -> torch.Tensor:
    """Blocked local attention; returns (B, C, H', W') like ``q``.

    ``k`` and ``v`` are the (B, C, H, W) projections; ``q`` is the query projection sampled every ``step``
    pixels, (B, C, H', W') = (B, C, ceil(H / step), ceil(W / step)). ``rel_h``, ``rel_w``: (2(b + h) - 1, C / heads).
    """
    bsz, c, h, w = k.shape
    d, bq, win = c // heads, block // step, block + 2 * halo
    nh, nw = -(-h // block), -(-w // block)
    ho, wo = q.shape[-2:]
    # queries: (B, heads, blocks, bq, bq, d)
    q = F.pad(q, (0, nw * bq - wo, 0, nh * bq - ho))
    q = q.view(bsz, heads, d, nh, bq, nw, bq).permute(0, 1, 3, 5, 4, 6, 2).reshape(bsz, heads, nh * nw, bq, bq, d)
    # keys and values: the (win x win) window of each block, (B, heads, blocks, win^2, d)
    pad = (halo, halo + nw * block - w, halo, halo + nh * block - h)

    def windows(t: torch.Tensor) -> torch.Tensor:
        t = F.unfold(F.pad(t, pad), win, stride=block).view(t.shape[0], -1, d, win * win, nh * nw)
        return t.permute(0, 1, 4, 3, 2)

    idx = halo_offsets(block, halo, step, q.device)
    # q . r_h(key row - query row), batched over the query row y: (..., y, x, d) @ (y, d, win) -> (..., y, x, win);
    # the same over the query column for r_w. Matmuls rather than einsums: fvcore counts those exactly.
    lh = q @ rel_h[idx].transpose(1, 2)
    lw = (q.transpose(3, 4) @ rel_w[idx].transpose(1, 2)).transpose(3, 4)
    # A key is outside the map when its row or its column is: -inf goes into the row term of the one and the
    # column term of the other (per block row / column), so the bias needs no separate masking pass.
    lh = (lh.view(bsz, heads, nh, nw, bq, bq, win) + _outside(h, block, halo, nh, k)[:, None, None, None, :])
    lw = (lw.view(bsz, heads, nh, nw, bq, bq, win) + _outside(w, block, halo, nw, k)[None, :, None, None, :])
    bias = (lh[..., :, None] + lw[..., None, :]).reshape(bsz, heads, nh * nw, bq * bq, win * win)
    # SDPA on 4D tensors (heads x blocks as one axis), the form ONNX export takes
    fold = (bsz, heads * nh * nw)
    out = attend(q.reshape(*fold, bq * bq, d), windows(k).reshape(*fold, win * win, d),
                 windows(v).reshape(*fold, win * win, d), bias.reshape(*fold, bq * bq, win * win), scale=d ** -0.5)
    out = out.view(bsz, heads, nh, nw, bq, bq, d).permute(0, 1, 6, 2, 4, 3, 5)
    out = out.clone(memory_format=torch.contiguous_format).view(bsz, c, nh * bq, nw * bq)  # see merge_heads
    return out[:, :, :ho, :wo]


class HaloAttention(ValueNormMixer):
    """The bottleneck mixer: halo attention, then BN + ReLU."""

    values = "kv"

    def __init__(self, dim: int, stride: int = 1, heads: int = 8, block: int = 8, halo: int = 3):
        super().__init__()
        self.heads, self.block, self.halo = heads, block, halo
        self.step = stride if block % stride == 0 else 1  # query subsampling inside each block
        self.q = nn.Conv2d(dim, dim, 1, stride=self.step, bias=False)
        self.kv = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        d = dim // heads
        self.rel_h = nn.Parameter(trunc_normal_(torch.zeros(2 * (block + halo) - 1, d), std=d ** -0.5))
        self.rel_w = nn.Parameter(trunc_normal_(torch.zeros(2 * (block + halo) - 1, d), std=d ** -0.5))
        self.pool = pool_ceil(stride // self.step)
        self.add_norm_act(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(x).chunk(2, dim=1)
        out = halo_attention(self.q(x), k, v, self.rel_h, self.rel_w, self.heads, self.block, self.halo,
                             self.step)
        return self.finish(self.pool(out))


def halo(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, block_size: int = 8,
         halo_size: int = 3, expansion: int = 4) -> nn.Module:
    check_int("halo", "block_size", block_size, 1, "the paper uses 8")
    check_int("halo", "halo_size", halo_size, 0, "the paper uses 3; 0: non-overlapping blocks")
    check_int("halo", "expansion", expansion, 1, "ResNet's bottleneck uses 4")

    def mixer(mid: int, s: int) -> nn.Module:
        h = check_heads("halo", mid, heads or default_heads(mid, mid / 8))  # 8 heads, as timm's HaloAttn
        return HaloAttention(mid, s, h, block_size, halo_size)
    return Bottleneck(in_chs, out_chs, stride, mixer, expansion=expansion)


# keywords named as timm's HaloAttn names them (``block`` is the network builder's own argument)
register_op("halo", halo, family="local", extents=("block_size", "halo_size"),
            variants=({}, {"block_size": 3, "halo_size": 1}),
            paper="Vaswani et al., Scaling Local Self-Attention for Parameter Efficient Visual Backbones, CVPR 2021")
