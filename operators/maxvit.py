"""MaxViT block (Tu, Talebi, Zhang, Yang, Milanfar, Bovik and Li, "MaxViT: Multi-Axis Vision Transformer",
ECCV 2022).

One op is one MaxViT block, three residual units in a row:

1. MBConv: pre-norm BN -> 1x1 expand to 4 x out_chs + BN + GELU -> depthwise 3x3 + BN + GELU (the depthwise
   conv carries the stride, the official ``downsample_loc='depth_conv'`` and timm's ``stride_mode='dw'``) ->
   squeeze-excitation (reduction to int(0.25 x out_chs), SiLU, sigmoid gate: the official ``SE`` layer) ->
   1x1 project (with bias). Shortcut: identity, or 2x2 average pooling at stride 2 followed by a 1x1 conv
   when the width changes (the official ``shortcut_pool`` + ``shortcut_conv``, timm's ``Downsample2d``).
2. Block attention: x <- x + Attn(LN(x)) inside non-overlapping P x P windows (the map viewed as
   (H/P, P, W/P, P): a window is P x P adjacent pixels); x <- x + FFN(LN(x)), FFN ratio 4, GELU.
3. Grid attention: the same, inside the windows of a G x G grid: the map viewed as (G, H/G, G, W/G), and a
   window gathers the G x G pixels that share their index inside the H/G x W/G cells, so its pixels are H/G
   (resp. W/G) apart and span the whole map (sparse global attention).

Both attentions: head dim 32, a learned relative position bias of (2P - 1)^2 (resp. (2G - 1)^2) entries per
head, indexed by the 2D offset between the tokens' positions inside the window (for the grid: their grid
coordinates). MaxViT-T: P = G = 7, widths 64/128/256/512, depths 2/2/5/2.

Departures, all for sizes the official code refuses (it requires H and W divisible by P and G):
- Any H, W: the map is zero-padded at the bottom/right to a multiple of P (block) or of G (grid) and the
  padded keys are masked out of the softmax. For the grid that makes the stride ceil(H/G): a 10-row map at
  G = 7 is padded to 14 rows and a grid window holds rows r, r + 2, r + 4, ... (5 of them real).
- A map smaller than P (resp. G) on an axis shrinks the window (resp. the grid) to the map on that axis, as
  Swin does at low resolution, and the relative table's central entries serve it. At such sizes (the proxy's
  last stages) block and grid attention both cover the whole map: the block is MBConv + two global
  attention layers, each with its own weights.
- ``grid`` is a keyword of its own (the paper ties G = P = 7) and both are declared spatial extents, so a
  low-resolution proxy shrinks the block windows and the grid alike and the grid stays a sparse subset of the
  map, as at 224 px.
- The depthwise conv pads k // 2 on every side (PyTorch's convention, as torchvision's MaxViT), where the TF
  code's 'same' padding at stride 2 pads only the bottom/right: same output size, sampling grid one pixel
  apart. Odd maps at stride 2: the shortcut's 2x2 pooling covers the last row/column partially (ceil).
- BN epsilon 1e-5 and exact GELU (PyTorch defaults, as torchvision's MaxViT and timm's ``maxvit_*_rw``),
  where the TF code has epsilon 1e-3 and the tanh GELU. No dropout or stochastic depth (the catalog has none).
- A width change at stride 1 (which MaxViT never has) gets the 1x1 shortcut conv without pooling, which is
  what the official ``shortcut_conv`` does whenever the width changes.

Re-parameterization: the BNs after the expand and depthwise convs fold into them, and the pre-norm BN folds
into the 1x1 expand conv that follows it (exact: that conv is 1x1 and unpadded).

Init as timm's ``maxxvit`` for MaxViT (its default "vit_eff" scheme; the official TF code draws every kernel
from N(0, 0.02^2) instead): the MBConv's convs, SE and shortcut included, He normal with fan-out = kernel area x
out channels / groups, biases 0 (``_init_conv``, "fan_out"); the attention and FFN linears Glorot uniform,
biases 0 (``_init_transformer``, "xavier"; departure: timm draws the FFN biases from N(0, 1e-6^2), here 0 as in
``transformer.py``); BN and LayerNorm weight 1 and bias 0; the relative bias tables N(0, 0.02^2) (timm's
``RelPosBiasTf``; ``RelPosBias`` truncates at +-2, which cuts nothing at that spread).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import (RelPosBias, WindowAttentionBase, attend, merge_heads, split_heads, window_merge,
                         window_partition)
from ._layers import (ConvNormAct, Mlp, SqueezeExcite, check_int, check_positive, fold_bn_into_next_conv, init_weights,
                      pool_ceil, resolve_heads)
from ._registry import register_op


def grid_partition(x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(B, H, W, C) with H % gh == W % gw == 0 -> (B * H/gh * W/gw, gh * gw, C).

    Window (cy, cx) holds the pixels (gy * H/gh + cy, gx * W/gw + cx) for gy < gh, gx < gw, in row-major order
    of (gy, gx): pixels H/gh rows and W/gw columns apart. ``window_partition`` is the (H/P, P, W/P, P) view.
    """
    b, h, w, c = x.shape
    x = x.view(b, gh, h // gh, gw, w // gw, c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, gh * gw, c)


def grid_merge(x: torch.Tensor, gh: int, gw: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``grid_partition``."""
    c = x.shape[-1]
    x = x.view(b, h // gh, w // gw, gh, gw, c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, h, w, c)


def partition_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, size: int,
                        rel: RelPosBias, grid: bool) -> torch.Tensor:
    """Multi-head attention of (B, H, W, C) maps inside size x size windows (``grid=False``: adjacent pixels)
    or a size x size grid (``grid=True``: pixels ceil(H/size) apart), with a relative position bias.

    Each axis is zero-padded to a multiple of its window (the size, or the map when the map is smaller) and
    the padded keys are masked; a padded query attends to itself only, and is cut off at the end.
    """
    b, h, w, _ = q.shape
    sh, sw = min(size, h), min(size, w)  # tokens per window along each axis
    hp, wp = -(-h // sh) * sh, -(-w // sw) * sw
    part, merge = (grid_partition, grid_merge) if grid else (window_partition, window_merge)

    def to_windows(t: torch.Tensor) -> torch.Tensor:
        return split_heads(part(F.pad(t, (0, 0, 0, wp - w, 0, hp - h)), sh, sw), heads)

    bias = rel(sh, sw).unsqueeze(0)  # (1, heads, N, N)
    if hp > h or wp > w:
        real = F.pad(torch.ones(1, h, w, 1, dtype=q.dtype, device=q.device), (0, 0, 0, wp - w, 0, hp - h))
        real = part(real, sh, sw)[..., 0] > 0  # (nW, N): which tokens of each window are pixels of the map
        keep = real[:, None, :] | torch.eye(sh * sw, dtype=torch.bool, device=q.device)
        mask = torch.zeros(keep.shape, dtype=bias.dtype, device=q.device).masked_fill(~keep, float("-inf"))
        bias = (bias + mask.unsqueeze(1)).repeat(b, 1, 1, 1)  # windows are batch-major: (b, nW) flattened
    out = merge_heads(attend(to_windows(q), to_windows(k), to_windows(v), bias))
    return merge(out, sh, sw, b, hp, wp)[:, :h, :w]


class MaxVitMBConv(nn.Module):
    """MaxViT's pre-norm MBConv with the stride on the depthwise conv (module docstring)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expansion: float = 4.0,
                 se_ratio: float = 0.25, kernel_size: int = 3):
        super().__init__()
        mid = max(1, round(out_chs * expansion))  # the expansion counts from the output width, as MaxViT's
        self.pre_norm: nn.Module | None = nn.BatchNorm2d(in_chs)
        self.expand = ConvNormAct(in_chs, mid, 1, act=nn.GELU)
        self.dw = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, act=nn.GELU)
        self.se = SqueezeExcite(mid, max(1, int(out_chs * se_ratio)), act=nn.SiLU) if se_ratio > 0 else nn.Identity()
        self.project = nn.Conv2d(mid, out_chs, 1)
        proj = nn.Conv2d(in_chs, out_chs, 1) if in_chs != out_chs else nn.Identity()
        self.shortcut = nn.Sequential(pool_ceil(stride), proj) if stride > 1 or in_chs != out_chs else nn.Identity()
        init_weights(self, "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pre_norm(x) if self.pre_norm is not None else x
        return self.shortcut(x) + self.project(self.se(self.dw(self.expand(y))))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.pre_norm is None:
            return
        self.expand.reparameterize()  # its own BN first, so that the conv has the bias the fold updates
        fold_bn_into_next_conv(self.pre_norm, self.expand.conv)
        self.pre_norm = None


class PartitionAttention(WindowAttentionBase):
    """qkv projection, attention inside windows (block) or a dilated grid (grid), output projection."""

    def __init__(self, dim: int, heads: int, size: int, grid: bool):
        super().__init__(dim, heads, size)
        self.size, self.grid = size, grid

    def windowed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return partition_attention(q, k, v, self.heads, self.size, self.rel, self.grid)


class PartitionLayer(nn.Module):
    """Pre-norm transformer layer on (B, H, W, C): x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, size: int, grid: bool, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PartitionAttention(dim, heads, size, grid)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, max(1, round(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaxVitBlock(nn.Module):
    """MBConv -> block attention + FFN -> grid attention + FFN."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, window: int, grid: int,
                 mlp_ratio: float, expansion: float, se_ratio: float, kernel_size: int):
        super().__init__()
        self.conv = MaxVitMBConv(in_chs, out_chs, stride, expansion, se_ratio, kernel_size)
        self.block_attn = init_weights(PartitionLayer(out_chs, heads, window, False, mlp_ratio), "xavier")
        self.grid_attn = init_weights(PartitionLayer(out_chs, heads, grid, True, mlp_ratio), "xavier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.grid_attn(self.block_attn(x)).permute(0, 3, 1, 2)


def maxvit(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 32,
           window: int = 7, grid: int = 7, mlp_ratio: float = 4.0, expansion: float = 4.0,
           se_ratio: float = 0.25, kernel_size: int = 3) -> nn.Module:
    heads = resolve_heads("maxvit", out_chs, heads, head_dim, "the paper uses 32")
    for name, value in (("window", window), ("grid", grid)):
        check_int("maxvit", name, value, 1, "the paper uses 7")
    check_int("maxvit", "kernel_size", kernel_size, 1, "the paper uses 3", odd=True)
    if not 0 <= se_ratio < 1:
        raise ValueError(f"maxvit: se_ratio={se_ratio} must be in [0, 1) (the paper uses 0.25; 0 drops the SE)")
    for name, value in (("mlp_ratio", mlp_ratio), ("expansion", expansion)):
        check_positive("maxvit", name, value, "the paper uses 4")
    return MaxVitBlock(in_chs, out_chs, stride, heads, window, grid, mlp_ratio, expansion, se_ratio, kernel_size)


register_op("maxvit", maxvit, family="hybrid", extents=("window", "grid"),
            variants=({}, {"window": 3, "grid": 4}),
            paper="Tu et al., MaxViT: Multi-Axis Vision Transformer, ECCV 2022")
