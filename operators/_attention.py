"""Attention pieces shared by the attention operators: relative position terms that work at any size,
window partitioning, and multi-head attention over 2D maps.

Relative position tables have a fixed *extent* E (offsets -(E-1)..E-1 per axis). Queries and keys that are
further apart than E-1 on an axis share the edge entry of the table (offsets are clamped), so one network
runs at the 32-px proxy resolution and the 224-px target with the same parameters. Inside windows of side
<= E (Swin) the clamp never triggers and the table is exactly the paper's.

Attention itself goes through ``F.scaled_dot_product_attention``; ``nas.flops`` counts it as
2 x batch x heads x N_q x N_k x head_dim multiply-adds.
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


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, heads: int,
                    kernel: int, stride: int) -> torch.Tensor:
    """Multi-head attention of each query over its kernel x kernel neighbourhood, on (B, C, H, W) maps.

    ``pos`` (1, C / heads, H, W) is a positional encoding shared by the heads; a key at offset j is compared
    as ``q . (k_j + pos_centre - pos_j)`` (the relative form of ACmix and SASA). Queries are taken every
    ``stride`` pixels, so the output is (B, C, ceil(H/stride), ceil(W/stride)). Neighbours outside the map are
    masked out, not padded in. The products are matmuls, so fvcore counts them.
    """
    b, c, h, w = k.shape
    d, kk, p = c // heads, kernel * kernel, kernel // 2
    qs = q[:, :, ::stride, ::stride]
    ho, wo = qs.shape[-2:]
    n = ho * wo

    def unfold(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, kk, n)
        return F.unfold(t, kernel, padding=p, stride=stride).view(t.shape[0], t.shape[1], kk, n)

    rel = pos[:, :, ::stride, ::stride].reshape(1, d, 1, n) - unfold(pos)  # (1, d, kk, n)
    keys = unfold(k).view(b, heads, d, kk, n) + rel.unsqueeze(1)
    qh = (qs * d ** -0.5).reshape(b, heads, d, n).permute(0, 1, 3, 2).unsqueeze(-2)  # (B, h, n, 1, d)
    logits = qh @ keys.permute(0, 1, 4, 2, 3)  # (B, h, n, 1, kk)
    inside = unfold(torch.ones(1, 1, h, w, dtype=q.dtype, device=q.device)) > 0  # (1, 1, kk, n)
    logits = logits.masked_fill(~inside.permute(0, 1, 3, 2).unsqueeze(-2), float("-inf"))
    vals = unfold(v).view(b, heads, d, kk, n).permute(0, 1, 4, 3, 2)  # (B, h, n, kk, d)
    out = logits.softmax(dim=-1) @ vals  # (B, h, n, 1, d)
    return out.squeeze(-2).permute(0, 1, 3, 2).reshape(b, c, ho, wo)
