"""The formulations that issue 19 replaced, kept to time the new ones against (``bench_operators.py
--compare-old``): ACmix's local attention and SASA by ``F.unfold`` of keys and values, HaloNet with a separate
``torch.where`` masking pass over its bias, attention-augmented convolution through SDPA with a materialised
relative bias. (NAT's index gather is unchanged, so it has no old form here.)

``old_form(module)`` wraps a built operator so that its forward (and an ONNX export traced through it) runs the
old code with the same weights; the current code is untouched outside the wrapper's call.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

import operators.acmix
import operators.attention_augmented
import operators.halo
import operators.sasa
from operators._attention import attend, merge_heads, split_heads
from operators.halo import halo_offsets


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


def sasa_logits(q: torch.Tensor, k: torch.Tensor, rel_row: torch.Tensor, rel_col: torch.Tensor, heads: int,
                kernel: int) -> torch.Tensor:
    """(B, heads, H * W, kernel^2) logits of each query over its neighbours (row-major offsets, -inf outside
    the map) from (B, C, H, W) q and k; ``rel_row`` (heads, d_row, kernel), ``rel_col`` (heads, d - d_row, kernel).
    """
    bsz, c, h, w = q.shape
    d, kk, n, d_row = c // heads, kernel * kernel, h * w, rel_row.shape[1]
    qh = (q * d ** -0.5).reshape(bsz, heads, d, n).transpose(-1, -2)  # (B, heads, n, d)
    keys = F.unfold(k, kernel, padding=kernel // 2).view(bsz, heads, d, kk, n).permute(0, 1, 4, 2, 3)
    logits = (qh.unsqueeze(-2) @ keys).squeeze(-2)  # q . k_j: (B, heads, n, kk)
    # q . r_j with r_j = [r_row(dy); r_col(dx)]: row half against the row table, column half against the column one
    lr = qh[..., :d_row] @ rel_row  # (B, heads, n, kernel), one logit per row offset
    lc = qh[..., d_row:] @ rel_col  # one per column offset
    logits = logits + (lr[..., :, None] + lc[..., None, :]).reshape(bsz, heads, n, kk)
    ones = torch.ones(1, 1, h, w, dtype=q.dtype, device=q.device)
    inside = F.unfold(ones, kernel, padding=kernel // 2).transpose(1, 2).unsqueeze(1) > 0  # (1, 1, n, kk)
    return torch.where(inside, logits, float("-inf"))


def sasa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_row: torch.Tensor, rel_col: torch.Tensor,
                   heads: int, kernel: int) -> torch.Tensor:
    """Local attention of every pixel over its kernel x kernel neighbourhood, (B, C, H, W) -> (B, C, H, W)."""
    bsz, c, h, w = v.shape
    d, kk, n = c // heads, kernel * kernel, h * w
    attn = sasa_logits(q, k, rel_row, rel_col, heads, kernel).softmax(dim=-1)
    vals = F.unfold(v, kernel, padding=kernel // 2).view(bsz, heads, d, kk, n).permute(0, 1, 4, 3, 2)
    out = attn.unsqueeze(-2) @ vals  # (B, heads, n, 1, d)
    return out.squeeze(-2).transpose(-1, -2).reshape(bsz, c, h, w)


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

    ones = torch.ones(1, 1, h, w, dtype=k.dtype, device=k.device)
    inside = F.unfold(F.pad(ones, pad), win, stride=block) > 0  # (1, win^2, blocks): key inside the map
    idx = halo_offsets(block, halo, step, q.device)
    # q . r_h(key row - query row), batched over the query row y: (..., y, x, d) @ (y, d, win) -> (..., y, x, win);
    # the same over the query column for r_w. Matmuls rather than einsums: fvcore counts those exactly.
    lh = q @ rel_h[idx].transpose(1, 2)
    lw = (q.transpose(3, 4) @ rel_w[idx].transpose(1, 2)).transpose(3, 4)
    rel = (lh[..., :, None] + lw[..., None, :]).reshape(bsz, heads, nh * nw, bq * bq, win * win)
    bias = torch.where(inside.transpose(1, 2).reshape(1, 1, nh * nw, 1, win * win), rel, float("-inf"))
    # SDPA on 4D tensors (heads x blocks as one axis), the form ONNX export takes
    fold = (bsz, heads * nh * nw)
    out = attend(q.reshape(*fold, bq * bq, d), windows(k).reshape(*fold, win * win, d),
                 windows(v).reshape(*fold, win * win, d), bias.reshape(*fold, bq * bq, win * win), scale=d ** -0.5)
    out = out.view(bsz, heads, nh, nw, bq, bq, d).permute(0, 1, 6, 2, 4, 3, 5)
    out = out.clone(memory_format=torch.contiguous_format).view(bsz, c, nh * bq, nw * bq)  # see merge_heads
    return out[:, :, :ho, :wo]


def old_augmented_forward(self, x: torch.Tensor) -> torch.Tensor:
    conv = self.conv(x)
    xa = self.pool(x)
    b, _, h, w = xa.shape
    qkv = self.qkv(xa).flatten(2).transpose(1, 2)
    q, k, v = (split_heads(t, self.heads) for t in qkv.split([self.dk, self.dk, self.dv], dim=-1))
    q = q * (self.dk // self.heads) ** -0.5
    att = merge_heads(attend(q, k, v, self.rel(q, h, w), scale=1.0)).transpose(1, 2).reshape(b, -1, h, w)
    return self.finish(torch.cat([conv, self.proj(att)], dim=1))


# operator name -> the keyword sets to time (one row each)
OLD_FORMS = {
    "acmix": ({},),
    "attention_augmented": ({},),
    "sasa": ({},),
    "halo": ({},),
}

PATCHES = (
    (operators.acmix, "local_attention", local_attention),
    (operators.sasa, "sasa_attention", sasa_attention),
    (operators.halo, "halo_attention", halo_attention),
    (operators.attention_augmented.AugmentedConv, "forward", old_augmented_forward),
)


class OldForm(nn.Module):
    """``model`` (same parameters, not a copy) run with the old formulations patched in during each call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            for owner, name, old in PATCHES:
                stack.enter_context(mock.patch.object(owner, name, old))
            return self.model(x)


def old_form(model: nn.Module) -> nn.Module:
    return OldForm(model)
