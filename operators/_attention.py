"""Attention pieces shared by the attention operators: relative position terms that work at any size,
window partitioning, and multi-head attention over 2D maps.

Relative position tables have a fixed *extent* E (offsets -(E-1)..E-1 per axis). Queries and keys that are
further apart than E-1 on an axis share the edge entry of the table (offsets are clamped), so one network
runs at the 32-px proxy resolution and the 224-px target with the same parameters. Inside windows of side
<= E (Swin) the clamp never triggers and the table is exactly the paper's.

Window and global attention go through ``F.scaled_dot_product_attention``; ``nas.flops`` counts it as
2 x batch x heads x N_q x N_k x head_dim multiply-adds. Local attention (ACmix, SASA) reads each query's
neighbours from ``neighbourhoods`` (stacked shifted slices, no multiply-adds) and multiplies with matmuls,
which fvcore counts the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import trunc_normal_


def relative_index(size: int, extent: int, device: torch.device | None = None) -> torch.Tensor:
    """(size, size) table indices of the clamped offset i - j, in 0 .. 2 * extent - 2."""
    pos = torch.arange(size, device=device)
    return (pos[:, None] - pos[None, :]).clamp(-(extent - 1), extent - 1) + extent - 1


class RelPosBias(nn.Module):
    """A learned per-head scalar added to the logits, indexed by the 2D offset (dy, dx) (Swin, CoAtNet)."""

    def __init__(self, heads: int, extent: int):
        super().__init__()
        self.heads, self.extent = heads, extent
        self.table = nn.Parameter(trunc_normal_(torch.zeros((2 * extent - 1) ** 2, heads)))

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(heads, h * w, h * w) bias for a row-major h x w grid of queries and keys."""
        dev = self.table.device
        ry, rx = relative_index(h, self.extent, dev), relative_index(w, self.extent, dev)
        idx = ry[:, None, :, None] * (2 * self.extent - 1) + rx[None, :, None, :]  # (h, w, h, w)
        bias = self.table[idx.reshape(-1)].view(h * w, h * w, self.heads)
        return bias.permute(2, 0, 1)


class WindowAttentionBase(nn.Module):
    """Multi-head attention on (B, H, W, C) inside size x size windows with a relative position bias: a qkv
    linear, the subclass's ``windowed`` attention (which windows, and how odd maps are padded), an output linear.
    Swin's W-MSA / SW-MSA, ACmix-Swin's attention path and MaxViT's block and grid attention differ only there."""

    def __init__(self, dim: int, heads: int, size: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel = RelPosBias(heads, size)
        self.proj = nn.Linear(dim, dim)

    def windowed(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) queries, keys and values -> the (B, H, W, C) attention output, heads merged."""
        raise NotImplementedError(f"{type(self).__name__} must say which windows it attends in (windowed)")

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """The attention output from ``self.qkv(x)`` (ACmix-Swin's conv path reuses the same projections)."""
        q, k, v = qkv.chunk(3, dim=-1)
        return self.proj(self.windowed(q, k, v))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(self.qkv(x))


class RelPosLogits(nn.Module):
    """2D relative logits q . r_dy + q . r_dx with separate height and width embeddings (BoTNet, AA-conv)."""

    def __init__(self, head_dim: int, extent: int):
        super().__init__()
        self.extent = extent
        self.rel_h = nn.Parameter(torch.randn(2 * extent - 1, head_dim) * head_dim ** -0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * extent - 1, head_dim) * head_dim ** -0.5)

    def forward(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """q: (B, heads, h * w, d) -> (B, heads, h * w, h * w) logits."""
        b, n, _, d = q.shape
        q = q.reshape(b, n, h, w, d)
        rh = self.rel_h[relative_index(h, self.extent, q.device)]  # (h, h', d)
        rw = self.rel_w[relative_index(w, self.extent, q.device)]  # (w, w', d)
        lh = torch.einsum("bnhwd,hkd->bnhwk", q, rh)
        lw = torch.einsum("bnhwd,wkd->bnhwk", q, rw)
        logits = lh[..., :, None] + lw[..., None, :]  # (b, n, h, w, h', w')
        return logits.reshape(b, n, h * w, h * w)

    def add_to(self, logits: torch.Tensor, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``logits + self(q, h, w)`` for (B, heads, h * w, h * w) logits, added in place as two broadcasts (the
        height term, then the width term) so that no second (h w)^2 tensor of relative logits is built."""
        b, n, _, d = q.shape
        qg = q.reshape(b, n, h, w, d)
        lh = torch.einsum("bnhwd,hkd->bnhwk", qg, self.rel_h[relative_index(h, self.extent, q.device)])
        lw = torch.einsum("bnhwd,wkd->bnhwk", qg, self.rel_w[relative_index(w, self.extent, q.device)])
        grid = logits.view(b, n, h, w, h, w)
        return grid.add_(lh[..., :, None]).add_(lw[..., None, :]).view(b, n, h * w, h * w)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads * d).

    The transposed heads are copied into a fresh contiguous tensor (``clone``) before the view, where a plain
    ``reshape`` would decide between a view and a copy from the strides of ``x``. On an attention output
    those strides depend on the kernel: the ONNX exporter's decomposition of ``scaled_dot_product_attention``
    gives other strides than the ones the graph was traced with, and the ``reshape`` traced as a view then
    fails ("Cannot view a tensor with shape ... and strides ..."; pytorch/pytorch#141107, #139508). ``clone``
    is recorded in the graph whatever the strides. The values are the same; so is the cost on the CPU, where
    the transposed output is not contiguous and ``reshape`` copied it too (a kernel that returns it
    contiguous, as some CUDA ones do, pays one extra copy of the attention output).
    """
    b, h, n, d = x.shape
    return x.transpose(1, 2).clone(memory_format=torch.contiguous_format).view(b, n, h * d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
           scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v on (B, heads, N, d) tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def window_sizes(h: int, w: int, window: int) -> tuple[int, int]:
    """The window actually used on an h x w map: the paper's M, shrunk to the map when the map is smaller
    (as Swin does when the resolution is at most the window)."""
    return min(window, h), min(window, w)


def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) with H % wh == W % ww == 0 -> (B * nW, wh * ww, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_merge(x: torch.Tensor, wh: int, ww: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``."""
    c = x.shape[-1]
    x = x.view(b, h // wh, w // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def shifted_window_mask(hp: int, wp: int, h: int, w: int, wh: int, ww: int, shift: tuple[int, int],
                        device: torch.device) -> torch.Tensor | None:
    """Additive mask (nW, N, N) that keeps attention inside each window of the rolled map and away from the
    zero padding (rows/columns >= h, w of the unrolled map). None when nothing needs masking."""
    sy, sx = shift
    if not (sy or sx or hp > h or wp > w):
        return None
    region = torch.zeros(hp, wp, device=device)
    # Label the regions that a cyclic shift brings together; a padded cell gets its own label.
    ys = torch.arange(hp, device=device)
    xs = torch.arange(wp, device=device)
    ry = torch.zeros(hp, device=device)
    rx = torch.zeros(wp, device=device)
    if sy:
        ry = (ys >= hp - wh).float() + (ys >= hp - sy).float()
    if sx:
        rx = (xs >= wp - ww).float() + (xs >= wp - sx).float()
    region = ry[:, None] * 3 + rx[None, :]
    # Padding sits at the bottom/right of the unrolled map: after rolling by -shift it moves by -shift too.
    pad = torch.zeros(hp, wp, dtype=torch.bool, device=device)
    pad[h:, :] = True
    pad[:, w:] = True
    pad = torch.roll(pad, (-sy, -sx), (0, 1))
    region = torch.where(pad, torch.full_like(region, -1.0), region)
    win = window_partition(region[None, :, :, None], wh, ww).squeeze(-1)  # (nW, N)
    same = win[:, :, None] == win[:, None, :]
    keep = same & (win[:, None, :] >= 0)
    keep = keep | torch.eye(win.shape[1], dtype=torch.bool, device=device)  # padded queries see themselves
    return torch.zeros(keep.shape, device=device).masked_fill(~keep, float("-inf"))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, window: int, shift: bool,
                     rel: RelPosBias) -> torch.Tensor:
    """Multi-head attention inside non-overlapping windows of (B, H, W, C) maps, as in Swin.

    The map is zero-padded on the bottom/right to a multiple of the window and the padding is masked out
    of the keys. With ``shift`` the map is rolled by half a window first and rolled back after, with Swin's
    mask keeping attention inside each window's original regions. A window larger than the map shrinks to
    it, and then there is nothing to shift on that axis (Swin's rule at low resolution).
    """
    b, h, w, _ = q.shape
    wh, ww = window_sizes(h, w, window)
    sy = wh // 2 if shift and h > wh else 0
    sx = ww // 2 if shift and w > ww else 0
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww

    def to_windows(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (0, 0, 0, wp - w, 0, hp - h))
        if sy or sx:
            t = torch.roll(t, (-sy, -sx), (1, 2))
        return split_heads(window_partition(t, wh, ww), heads)

    bias = rel(wh, ww).unsqueeze(0)
    mask = shifted_window_mask(hp, wp, h, w, wh, ww, (sy, sx), q.device)
    if mask is not None:
        bias = (bias + mask.unsqueeze(1).to(bias.dtype)).repeat(b, 1, 1, 1)
    out = merge_heads(attend(to_windows(q), to_windows(k), to_windows(v), bias))
    out = window_merge(out, wh, ww, b, hp, wp)
    if sy or sx:
        out = torch.roll(out, (sy, sx), (1, 2))
    return out[:, :h, :w]


def neighbourhoods(t: torch.Tensor, heads: int, kernel: int, stride: int = 1) -> torch.Tensor:
    """Every ``stride``-th pixel's kernel x kernel neighbourhood of a (B, C, H, W) map, zero outside the map:
    (B, heads, ceil(H/s) * ceil(W/s), kernel^2, C / heads), offsets row-major, each query's keys one contiguous
    (kernel^2, d) matrix, the layout a batched matmul reads without another copy.

    Built from shifted slices of the zero-padded channels-last map, where ``F.unfold`` writes (C kernel^2, n)
    and needs a second, transposing copy before the matmul (and becomes a slow gather in ONNX Runtime); the
    values are the same. The slices are taken in two passes, kernel column shifts stacked, then kernel row
    shifts of that stacked: 2 kernel slices instead of kernel^2, which keeps the exported graph small (49
    slices made an ACmix block's ONNX export six times slower than the unfold form's).
    """
    b, c, h, w = t.shape
    p = kernel // 2
    ho, wo = -(-h // stride), -(-w // stride)
    cl = t.view(b, heads, c // heads, h, w).permute(0, 1, 3, 4, 2).reshape(b * heads, h, w, c // heads)
    padded = F.pad(cl, (0, 0, p, p, p, p))
    rows, cols = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    across = torch.stack([padded[:, :, dx:dx + cols:stride] for dx in range(kernel)], dim=3)  # (BH, H+2p, wo, k, d)
    both = torch.stack([across[:, dy:dy + rows:stride] for dy in range(kernel)], dim=3)  # (BH, ho, wo, k, k, d)
    return both.view(b, heads, ho * wo, kernel * kernel, c // heads)


def neighbourhood_inside(h: int, w: int, kernel: int, stride: int = 1,
                         device: torch.device | None = None) -> torch.Tensor:
    """(ceil(H/s) * ceil(W/s), kernel^2) booleans: which neighbour of ``neighbourhoods`` lies inside the map."""
    off = torch.arange(kernel, device=device) - kernel // 2
    ys = torch.arange(0, h, stride, device=device)[:, None] + off  # (ho, kernel) neighbour rows
    xs = torch.arange(0, w, stride, device=device)[:, None] + off
    iy, ix = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
    return (iy[:, None, :, None] & ix[None, :, None, :]).reshape(ys.shape[0] * xs.shape[0], kernel * kernel)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, heads: int,
                    kernel: int, stride: int) -> torch.Tensor:
    """Multi-head attention of each query over its kernel x kernel neighbourhood, on (B, C, H, W) maps.

    ``pos`` (1, C / heads, H, W) is a positional encoding shared by the heads; a key at offset j is compared
    as ``q . (k_j + pos_centre - pos_j)`` (the relative form of ACmix and SASA). Queries are taken every
    ``stride`` pixels, so the output is (B, C, ceil(H/stride), ceil(W/stride)). Neighbours outside the map are
    masked out, not padded in. The products are matmuls, so fvcore counts them (heads x n x kernel^2 x d
    multiply-adds each).
    """
    b, c, h, w = k.shape
    d = c // heads
    qs = q[:, :, ::stride, ::stride]
    ho, wo = qs.shape[-2:]
    n = ho * wo
    centre = pos[:, :, ::stride, ::stride].reshape(1, 1, d, n).transpose(-1, -2).unsqueeze(-2)  # (1, 1, n, 1, d)
    keys = neighbourhoods(k, heads, kernel, stride) + (centre - neighbourhoods(pos, 1, kernel, stride))
    qh = (qs * d ** -0.5).reshape(b, heads, d, n).transpose(-1, -2).unsqueeze(-2)  # (B, h, n, 1, d)
    logits = qh @ keys.transpose(-1, -2)  # (B, h, n, 1, kk)
    inside = neighbourhood_inside(h, w, kernel, stride, q.device)
    logits = logits.masked_fill(~inside.unsqueeze(-2), float("-inf"))
    out = logits.softmax(dim=-1) @ neighbourhoods(v, heads, kernel, stride)  # (B, h, n, 1, d)
    return out.squeeze(-2).transpose(-1, -2).reshape(b, c, ho, wo)
