"""MViTv2 block: pooling attention with decomposed relative positions and residual pooling (Li et al.,
"MViTv2: Improved Multiscale Vision Transformers for Classification and Detection", CVPR 2022).

x <- Pool(Shortcut(x)) + Proj(PoolingAttention(LN(x))); x <- x + MLP(LN(x)), MLP ratio 4, GELU, head dim 96
(MViTv2-T: 1/2/4/8 heads at 96/192/384/768).

Pooling attention: one linear layer gives q, k and v at the block's output width (MViTv2 changes the width in
the attention, the official ``DIM_MUL_IN_ATT``). Each of q, k, v is pooled per head by a 3x3 depthwise conv
(padding 1, no bias; one kernel of head-dim channels shared by the heads, the official "conv" mode) and a
LayerNorm over the head dim. q is pooled at the block's stride (2 at a stage's first block, else 1), k and v at
the k/v stride (below). The logits are ``(q k^T) / sqrt(d) + q . R_h[dy] + q . R_w[dx]``, the decomposed
relative positions, where R_h, R_w are tables shared by the heads. When q and k/v have different resolutions
the offsets are measured on the finer grid: dy = i * max(k_h / q_h, 1) - j * max(q_h / k_h, 1) (the official
``cal_rel_pos_spatial``). Residual pooling adds the pooled q to the attention's output, then a linear
projection. Shortcut: the block's input, or, when the width changes, a linear projection of the normed input
(the official code projects ``norm1(x)``); max-pooled (kernel 3, stride 2, padding 1) when the block strides.

k/v stride. The official MViTv2 sets it per block from ``POOL_KV_STRIDE_ADAPTIVE`` (4 at 224 px), divided by
each q stride met so far: 4, 2, 1, 1 over the stages, applied to the block's input, so that k/v are 14x14 up to
the last stage (7x7 there), the transition blocks' k/v 28, 28 and 14. A block here does not know its stage.
``kv_stride=None`` (the default) chooses it at run time from the q map, ``max(1, q_side // kv_size)`` per axis
with ``kv_size=14``, which gives the official strides at 224 px for every block, transition blocks included;
``kv_size`` is a spatial extent that a low-resolution proxy scales with the map. ``kv_stride=s`` fixes it.

Departures:
- Relative position tables. The official tables have 2 * max(q side, k side) - 1 rows, from the training
  resolution. Here they have 2 * ``rel_extent`` - 1 rows at any resolution (default 56, the stage-1 map at
  224 px, so no offset is clamped at 224 px in any stage): the official index, re-centred so that offset 0 is
  the middle row, clamped to +-(rel_extent - 1). The official index is a float32 expression truncated to an
  integer; here it is the same expression in exact integer arithmetic (equal whenever one side divides the
  other, as at 224 px; at ratios like 7:4 the float32 form can differ by one row where the exact value is an
  integer).
- Non-square maps: the official code asserts a square input; here every size works (per-axis k/v strides).
- No stochastic depth (drop path 0.1 in MViTv2-T): the catalog's blocks leave regularization to training.

At 28-32 px the proxy's maps (14 to 2 px) are at most the default ``rel_extent``, and the scaled ``kv_size``
keeps k/v pooled in the first stage; a 1x1 map attends to itself.

Init as the official code (facebookresearch/mvit ``MViT._init_weights``): every Linear N(0, 0.02^2) truncated to
[-2, 2], biases 0, LayerNorm weight 1 and bias 0 ("trunc_normal"); the relative position tables likewise
(``trunc_normal_(std=0.02)``); the pooling convs keep PyTorch's default ("torch_default"), since the official
init touches Linear and LayerNorm only. The stem (``mvit``: 7x7 conv, stride 4, padding 3, bias, no norm, as the
official ``PatchEmbed``) also keeps PyTorch's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import attend, merge_heads
from ._layers import Mlp, check_int, check_positive, init_weights, resolve_heads, trunc_normal_
from ._registry import register_op, register_stem

MVIT_LN_EPS = 1e-6  # the official norm_layer: LayerNorm(eps=1e-6), in the blocks and the pooling


def mvit_rel_index(q_len: int, k_len: int, extent: int, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, k_len) rows of a (2 * extent - 1)-row table for query i and key j of one axis.

    The offset is measured on the finer of the two grids, as MViTv2's ``cal_rel_pos_spatial``:
    floor(i * max(k/q, 1) - j * max(q/k, 1) + c) - floor(c), c = (k - 1) * max(q/k, 1), in exact integer
    arithmetic; then clamped to +-(extent - 1) and shifted so that offset 0 is row extent - 1.
    """
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    if q_len >= k_len:  # k is coarser: k positions step q / k query rows
        offset = torch.div(i * k_len + (k_len - 1 - j) * q_len, k_len, rounding_mode="floor")
        offset = offset - (k_len - 1) * q_len // k_len
    else:  # q is coarser: q positions step k / q key rows
        offset = torch.div(i * k_len, q_len, rounding_mode="floor") - j
    return offset.clamp(-(extent - 1), extent - 1) + extent - 1


class MViTRelPos(nn.Module):
    """Decomposed relative position logits q . R_h[dy] + q . R_w[dx] between a q grid and a k grid."""

    def __init__(self, head_dim: int, extent: int):
        super().__init__()
        self.extent = extent
        self.rel_h = nn.Parameter(trunc_normal_(torch.zeros(2 * extent - 1, head_dim)))
        self.rel_w = nn.Parameter(trunc_normal_(torch.zeros(2 * extent - 1, head_dim)))

    def forward(self, q: torch.Tensor, q_shape: tuple[int, int], k_shape: tuple[int, int]) -> torch.Tensor:
        """q: (B, heads, qh * qw, d) -> (B, heads, qh * qw, kh * kw) logits."""
        (qh, qw), (kh, kw) = q_shape, k_shape
        b, n, _, d = q.shape
        rh = self.rel_h[mvit_rel_index(qh, kh, self.extent, q.device)]  # (qh, kh, d)
        rw = self.rel_w[mvit_rel_index(qw, kw, self.extent, q.device)]  # (qw, kw, d)
        q = q.reshape(b, n, qh, qw, d)
        lh = torch.einsum("bnhwd,hkd->bnhwk", q, rh)
        lw = torch.einsum("bnhwd,wkd->bnhwk", q, rw)
        logits = lh[..., :, None] + lw[..., None, :]  # (b, n, qh, qw, kh, kw)
        return logits.reshape(b, n, qh * qw, kh * kw)


class PoolingAttention(nn.Module):
    """MViTv2's pooling attention on (B, H, W, in_dim) -> (B, ceil(H/s), ceil(W/s), out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, stride: int = 1, kv_stride: int | None = None,
                 kv_size: int = 14, pool_kernel: int = 3, rel_extent: int = 56):
        super().__init__()
        self.heads, self.head_dim = heads, out_dim // heads
        self.stride, self.kv_stride, self.kv_size = stride, kv_stride, kv_size
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        d = self.head_dim
        self.pool_q, self.pool_k, self.pool_v = (
            nn.Conv2d(d, d, pool_kernel, padding=pool_kernel // 2, groups=d, bias=False) for _ in range(3))
        self.norm_q, self.norm_k, self.norm_v = (nn.LayerNorm(d, eps=MVIT_LN_EPS) for _ in range(3))
        self.rel = MViTRelPos(d, rel_extent)
        self.proj = nn.Linear(out_dim, out_dim)
        for conv in (self.pool_q, self.pool_k, self.pool_v):
            init_weights(conv, "torch_default")  # the official init leaves convs alone

    def kv_strides(self, qh: int, qw: int) -> tuple[int, int]:
        """The k/v stride per axis: fixed, or adapted so that k/v are about kv_size a side (module docstring)."""
        if self.kv_stride is not None:
            return self.kv_stride, self.kv_stride
        return max(1, qh // self.kv_size), max(1, qw // self.kv_size)

    def _pool(self, t: torch.Tensor, conv: nn.Conv2d, norm: nn.LayerNorm, stride: tuple[int, int]):
        """(B, heads, d, H, W) -> (B, heads, h * w, d) pooled by the shared depthwise conv, then LN; and (h, w)."""
        b, n, d, h, w = t.shape
        t = F.conv2d(t.reshape(b * n, d, h, w), conv.weight, None, stride, conv.padding, groups=d)
        h, w = t.shape[-2:]
        return norm(t.reshape(b, n, d, h * w).transpose(-1, -2)), (h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).view(b, h, w, 3, self.heads, self.head_dim).permute(3, 0, 4, 5, 1, 2)
        s = self.stride
        q, q_shape = self._pool(qkv[0], self.pool_q, self.norm_q, (s, s))
        kv_stride = self.kv_strides(*q_shape)
        k, k_shape = self._pool(qkv[1], self.pool_k, self.norm_k, kv_stride)
        v, _ = self._pool(qkv[2], self.pool_v, self.norm_v, kv_stride)
        out = attend(q, k, v, self.rel(q, q_shape, k_shape), scale=self.head_dim ** -0.5)
        out = merge_heads(out + q)  # residual pooling: the pooled q joins the attention's output
        return self.proj(out).view(b, *q_shape, -1)


class MViTBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, mlp_ratio: float = 4.0,
                 kv_stride: int | None = None, kv_size: int = 14, pool_kernel: int = 3, rel_extent: int = 56):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_chs, eps=MVIT_LN_EPS)
        self.attn = PoolingAttention(in_chs, out_chs, heads, stride, kv_stride, kv_size, pool_kernel, rel_extent)
        self.proj = nn.Linear(in_chs, out_chs) if in_chs != out_chs else None
        self.pool_skip = nn.MaxPool2d(stride + 1, stride, (stride + 1) // 2) if stride > 1 else None
        self.norm2 = nn.LayerNorm(out_chs, eps=MVIT_LN_EPS)
        self.mlp = Mlp(out_chs, int(out_chs * mlp_ratio))
        init_weights(self, "trunc_normal")  # the pooling convs marked themselves "torch_default" first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x_norm = self.norm1(x)
        y = self.attn(x_norm)
        if self.proj is not None:
            x = self.proj(x_norm)
        if self.pool_skip is not None:
            x = self.pool_skip(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


def mvit(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 96,
         mlp_ratio: float = 4.0, kv_stride: int | None = None, kv_size: int = 14, pool_kernel: int = 3,
         rel_extent: int = 56) -> nn.Module:
    if kv_stride is not None and (isinstance(kv_stride, bool) or not isinstance(kv_stride, int) or kv_stride < 1):
        raise ValueError(f"mvit: kv_stride={kv_stride!r} must be a positive integer or None (None adapts it to "
                         f"the map: k/v about kv_size a side, MViTv2's 4/2/1/1 at 224 px)")
    for name, value, hint in (("kv_size", kv_size, "14, MViTv2's k/v side at 224 px"),
                              ("rel_extent", rel_extent, "56, the stage-1 map at 224 px"),
                              ("head_dim", head_dim, "96, MViTv2's")):
        check_int("mvit", name, value, 1, f"the default is {hint}")
    heads = resolve_heads("mvit", out_chs, heads, head_dim, "MViTv2 uses 96")
    check_int("mvit", "pool_kernel", pool_kernel, 1, "MViTv2 uses 3", odd=True)
    check_positive("mvit", "mlp_ratio", mlp_ratio, "MViTv2 uses 4")
    return MViTBlock(in_chs, out_chs, stride, heads, mlp_ratio, kv_stride, kv_size, pool_kernel, rel_extent)


def stem_mvit(in_chs: int, width: int) -> nn.Module:
    """MViTv2: 7x7 conv, stride 4, padding 3, with bias and no norm (the blocks pre-norm)."""
    return init_weights(nn.Conv2d(in_chs, width, 7, 4, 3), "torch_default")


MVIT_PAPER = "Li et al., MViTv2: Improved Multiscale Vision Transformers for Classification and Detection, CVPR 2022"
register_op("mvit", mvit, family="global", extents=("kv_size",),
            variants=({}, {"kv_stride": 2, "head_dim": 8}), paper=MVIT_PAPER)
register_stem("mvit", stem_mvit, stride=4, paper=MVIT_PAPER)
