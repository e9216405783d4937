"""HaloNet blocked local attention: each query of block (i, j) attends to exactly the (b + 2h)^2 window around its
block, keys outside the map (the padding) excluded, with relative logits q . r_h(dy) + q . r_w(dx); strided
queries are the block's every other pixel; FLOPs as the formula says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import operators
from nas.flops import count_flops
from operators.halo import HaloAttention, halo_attention, halo_offsets


def dense_halo(q, k, v, rel_h, rel_w, heads: int, b: int, h: int, step: int) -> torch.Tensor:
    """Loop reference: query (i, j) sits at pixel (step i, step j); it sees the keys inside the map whose rows and
    columns lie within h of its b x b block, the block containing its pixel."""
    _, c, hk, wk = k.shape
    d = c // heads
    ky, kx = (t.flatten() for t in torch.meshgrid(torch.arange(hk), torch.arange(wk), indexing="ij"))
    out = torch.zeros(1, c, *q.shape[-2:])
    for i in range(q.shape[2]):
        for j in range(q.shape[3]):
            y, x = step * i, step * j
            y0, x0 = y // b * b, x // b * b
            keep = ((ky >= y0 - h) & (ky < y0 + b + h) & (kx >= x0 - h) & (kx < x0 + b + h)).nonzero().squeeze(1)
            for n in range(heads):
                ch = slice(n * d, (n + 1) * d)
                qv = q[0, ch, i, j]
                keys, vals = k[0, ch].flatten(1)[:, keep], v[0, ch].flatten(1)[:, keep]
                logits = qv @ keys * d ** -0.5
                logits = logits + rel_h[ky[keep] - y + b + h - 1] @ qv + rel_w[kx[keep] - x + b + h - 1] @ qv
                out[0, ch, i, j] = vals @ logits.softmax(0)
    return out


def _projections(mixer: HaloAttention, x: torch.Tensor):
    k, v = mixer.kv(x).chunk(2, dim=1)
    return mixer.q(x), k, v


@pytest.mark.parametrize("stride", [1, 2])
def test_blocked_attention_equals_dense_attention_with_an_explicit_window_mask(stride):
    """10 x 13 at b = 4, h = 1: the last block row and column are padded (12 x 16), and the padding is masked."""
    torch.manual_seed(0)
    mixer = HaloAttention(8, stride, heads=2, block=4, halo=1)
    assert mixer.step == stride  # b = 4 is a multiple of 2: strided queries, no pooling
    x = torch.randn(1, 8, 10, 13)
    with torch.no_grad():
        q, k, v = _projections(mixer, x)
        got = halo_attention(q, k, v, mixer.rel_h, mixer.rel_w, 2, 4, 1, stride)
        want = dense_halo(q, k, v, mixer.rel_h, mixer.rel_w, 2, 4, 1, stride)
    assert got.shape == (1, 8, math.ceil(10 / stride), math.ceil(13 / stride))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_query_depends_on_exactly_its_blocks_window():
    """The input pixels a query's output depends on (1x1 projections: pixel by pixel) are its block's window cut
    to the map: query (9, 12) of a 10 x 13 map, block rows 8..11 and columns 12..15 at b = 4, h = 1, sees rows 7..9
    and columns 11..12; query (5, 6), block 4..7 x 4..7, sees rows 3..8 and columns 3..8."""
    torch.manual_seed(0)
    mixer = HaloAttention(8, 1, heads=2, block=4, halo=1)
    for (y, x), rows, cols in [((9, 12), range(7, 10), range(11, 13)), ((5, 6), range(3, 9), range(3, 9))]:
        inp = torch.randn(1, 8, 10, 13, requires_grad=True)
        out = halo_attention(*_projections(mixer, inp), mixer.rel_h, mixer.rel_w, 2, 4, 1, 1)
        out[0, :, y, x].sum().backward()
        seen = inp.grad.abs().sum(1)[0] > 0
        want = torch.zeros(10, 13, dtype=torch.bool)
        want[rows.start:rows.stop, cols.start:cols.stop] = True
        assert torch.equal(seen, want), (y, x)


def test_padded_keys_would_change_the_output():
    """Masking matters: letting the zero-padded keys in (logit q . r, as timm's zero padding does) gives another
    result at a map that is not a multiple of the block."""
    torch.manual_seed(0)
    mixer = HaloAttention(8, 1, heads=2, block=4, halo=1)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        q, k, v = _projections(mixer, x)
        masked = halo_attention(q, k, v, mixer.rel_h, mixer.rel_w, 2, 4, 1, 1)
        # the same map padded by hand to 8 x 8 with zero keys and values: nothing is masked there but the halo
        zp = [F.pad(t, (0, 2, 0, 2)) for t in (q, k, v)]
        unmasked = halo_attention(*zp, mixer.rel_h, mixer.rel_w, 2, 4, 1, 1)[:, :, :6, :6]
    assert not torch.allclose(masked, unmasked, atol=1e-3)


def test_relative_tables_hold_the_offsets_a_window_can_hold():
    """2(b + h) - 1 = 21 rows at b = 8, h = 3; offsets in pixels, also for strided queries (2 pixels apart)."""
    mixer = HaloAttention(64, 1)
    assert mixer.rel_h.shape == mixer.rel_w.shape == (21, 8)
    idx = halo_offsets(8, 3, 1)
    assert idx.shape == (8, 14) and idx.min() == 0 and idx.max() == 20
    assert idx[0, 3] == 10  # query at the block origin, key at the same pixel (window column h = 3): offset 0
    strided = halo_offsets(8, 3, 2)
    assert strided.shape == (4, 14)
    torch.testing.assert_close(strided, idx[::2])  # query i of a strided block is pixel 2i


def test_relative_embedding_init_is_truncated_normal_at_head_dim_scale():
    torch.manual_seed(0)
    mixer = HaloAttention(256, heads=1)  # head dim 256: std 1/16
    z = torch.cat([mixer.rel_h.detach().flatten(), mixer.rel_w.detach().flatten()]).double() * 16
    assert abs(z.std().item() - 1) < 5 * math.sqrt(1 / (2 * z.numel()))
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())


def test_odd_block_strides_by_pooling():
    """An odd block cannot be subsampled by 2 evenly: attention at stride 1, then 2x2 average pooling (ceil)."""
    torch.manual_seed(0)
    pooled = HaloAttention(8, 2, heads=2, block=3, halo=1).eval()
    assert pooled.step == 1
    x = torch.randn(1, 8, 7, 9)
    with torch.no_grad():
        attn = halo_attention(*_projections(pooled, x), pooled.rel_h, pooled.rel_w, 2, 3, 1, 1)
        want = torch.relu(pooled.bn(F.avg_pool2d(attn, 2, 2, ceil_mode=True)))
        torch.testing.assert_close(pooled(x), want)


def halo_block_flops(c: int, h: int, w: int, stride: int = 1, b: int = 8, halo: int = 3, heads: int = 8) -> int:
    """Multiply-adds of the halo bottleneck (in = out = c, expansion 4) in deploy form: reduce, q, k/v, q.k and
    attention x v over the padded blocks, q . r_h and q . r_w, expand, and the projection shortcut at stride 2."""
    m, d = c // 4, c // 4 // heads
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    blocks = math.ceil(h / b) * math.ceil(w / b)
    queries, win = (b // stride) ** 2, b + 2 * halo
    attn = blocks * heads * queries * win ** 2 * 2 * d
    rel = blocks * heads * queries * win * d * 2
    convs = h * w * c * m + ho * wo * m * m + h * w * m * 2 * m + ho * wo * m * c
    return convs + attn + rel + (ho * wo * c * c if stride == 2 else 0)


@pytest.mark.parametrize("stride,size", [(1, 20), (2, 16)])
def test_flops_follow_the_formula(stride, size):
    op = operators.create_op("halo", 64, 64, stride)
    assert count_flops(op, (1, 64, size, size)) == halo_block_flops(64, size, size, stride)


def test_flops_at_56_by_256():
    """The figure reported for the catalog: 225.6 M multiply-adds (ResNet-50's 3x3 bottleneck: 218.4 M)."""
    assert halo_block_flops(256, 56, 56) == 225_591_296


@pytest.mark.parametrize("bad", [dict(block_size=0), dict(halo_size=-1), dict(block_size=2.5), dict(expansion=0)])
def test_bad_keywords_are_refused(bad):
    with pytest.raises(ValueError, match="halo: " + next(iter(bad))):
        operators.create_op("halo", 16, 32, **bad)
