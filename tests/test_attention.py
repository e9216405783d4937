"""The attention primitives against direct, loop-by-loop definitions on small maps."""

from __future__ import annotations

import pytest
import torch

from operators._attention import RelPosBias, RelPosLogits, local_attention, window_attention


def _softmax_attend(q, keys, vals, logits_extra):
    logits = keys @ q * q.shape[0] ** -0.5 + logits_extra
    return torch.softmax(logits, 0) @ vals


def _naive_windows(q, k, v, heads, m, shift, rel):
    """Swin by its definition: roll the (padded) map by -shift, cut M x M windows, and let a query see the
    keys of its window that come from the same region of the unrolled map and are not padding."""
    b, h, w, c = q.shape
    wh, ww = min(m, h), min(m, w)
    sy = wh // 2 if shift and h > wh else 0
    sx = ww // 2 if shift and w > ww else 0
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    d = c // heads

    def place(y, size, win, s):  # rolled coordinate, window index, Swin region label
        r = (y - s) % size
        label = 0 if not s else int(r >= size - win) + int(r >= size - s)
        return r, r // win, label

    out = torch.zeros_like(q)
    table = rel.table.view(2 * rel.extent - 1, 2 * rel.extent - 1, heads)
    for y in range(h):
        for x in range(w):
            ry, wy, ly = place(y, hp, wh, sy)
            rx, wx, lx = place(x, wp, ww, sx)
            keys = [(y2, x2) for y2 in range(h) for x2 in range(w)
                    if place(y2, hp, wh, sy)[1:] == (wy, ly) and place(x2, wp, ww, sx)[1:] == (wx, lx)]
            for n in range(heads):
                sl = slice(n * d, (n + 1) * d)
                kk = torch.stack([k[0, y2, x2, sl] for y2, x2 in keys])
                vv = torch.stack([v[0, y2, x2, sl] for y2, x2 in keys])
                bias = torch.stack([table[ry - place(y2, hp, wh, sy)[0] + rel.extent - 1,
                                          rx - place(x2, wp, ww, sx)[0] + rel.extent - 1, n] for y2, x2 in keys])
                out[0, y, x, sl] = _softmax_attend(q[0, y, x, sl], kk, vv, bias)
    return out


@pytest.mark.parametrize("h,w,m,shift", [(8, 8, 4, False), (8, 8, 4, True), (9, 10, 4, True), (3, 11, 4, True),
                                         (5, 5, 7, True), (7, 9, 3, False)])
def test_window_attention_matches_its_definition(h, w, m, shift):
    heads, c = 2, 8
    q, k, v = (torch.randn(1, h, w, c) for _ in range(3))
    rel = RelPosBias(heads, m)
    with torch.no_grad():
        rel.table.normal_()
        got = window_attention(q, k, v, heads, m, shift, rel)
        want = _naive_windows(q, k, v, heads, m, shift, rel)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h,w,kernel,stride", [(6, 7, 3, 1), (6, 7, 5, 2), (1, 1, 7, 1), (9, 4, 7, 2)])
def test_local_attention_matches_its_definition(h, w, kernel, stride):
    heads, c = 2, 6
    d = c // heads
    q, k, v = (torch.randn(1, c, h, w) for _ in range(3))
    pos = torch.randn(1, d, h, w)
    got = local_attention(q, k, v, pos, heads, kernel, stride)
    r = kernel // 2
    for y in range(0, h, stride):
        for x in range(0, w, stride):
            nbrs = [(y2, x2) for y2 in range(y - r, y + r + 1) for x2 in range(x - r, x + r + 1)
                    if 0 <= y2 < h and 0 <= x2 < w]
            for n in range(heads):
                sl = slice(n * d, (n + 1) * d)
                keys = torch.stack([k[0, sl, y2, x2] + pos[0, :, y, x] - pos[0, :, y2, x2] for y2, x2 in nbrs])
                vals = torch.stack([v[0, sl, y2, x2] for y2, x2 in nbrs])
                want = _softmax_attend(q[0, sl, y, x], keys, vals, 0.0)
                torch.testing.assert_close(got[0, sl, y // stride, x // stride], want, rtol=1e-4, atol=1e-5)


def test_relative_logits_match_their_definition_with_clamped_offsets():
    h, w, d, extent = 5, 6, 4, 3
    rel = RelPosLogits(d, extent)
    q = torch.randn(1, 1, h * w, d)
    got = rel(q, h, w)[0, 0]
    clamp = lambda o: max(-(extent - 1), min(extent - 1, o)) + extent - 1  # noqa: E731
    for i in range(h * w):
        for j in range(h * w):
            (y, x), (y2, x2) = divmod(i, w), divmod(j, w)
            want = q[0, 0, i] @ (rel.rel_h[clamp(y - y2)] + rel.rel_w[clamp(x - x2)])
            torch.testing.assert_close(got[i, j], want, rtol=1e-5, atol=1e-5)


def test_relative_bias_is_the_papers_table_inside_its_extent():
    rel = RelPosBias(heads=3, extent=7)
    bias = rel(7, 7)
    table = rel.table.view(13, 13, 3)
    for i, j in [(0, 48), (48, 0), (10, 24), (24, 24)]:
        (y, x), (y2, x2) = divmod(i, 7), divmod(j, 7)
        torch.testing.assert_close(bias[:, i, j], table[y - y2 + 6, x - x2 + 6])


def test_relative_logits_added_in_place_equal_the_built_bias():
    rel = RelPosLogits(4, 3)
    q, k = torch.randn(2, 3, 5 * 6, 4), torch.randn(2, 3, 5 * 6, 4)
    logits = q @ k.transpose(-1, -2)
    torch.testing.assert_close(rel.add_to(logits.clone(), q, 5, 6), logits + rel(q, 5, 6))


@pytest.mark.parametrize("stride,size", [(1, 6), (2, 7)])
def test_augmented_conv_equals_sdpa_with_the_relative_bias(stride, size):
    """The written-out attention of AugmentedConv against its former form: SDPA with rel(q) as the mask."""
    import torch.nn.functional as F

    from operators.attention_augmented import AugmentedConv

    torch.manual_seed(0)
    mixer = AugmentedConv(24, stride, heads=3, rel_extent=4).eval()
    x = torch.randn(2, 24, size, size)

    def old(x):
        xa = mixer.pool(x)
        b, _, h, w = xa.shape
        qkv = mixer.qkv(xa).flatten(2).transpose(1, 2)
        q, k, v = (t.unflatten(-1, (mixer.heads, -1)).transpose(1, 2)
                   for t in qkv.split([mixer.dk, mixer.dk, mixer.dv], dim=-1))
        q = q * (mixer.dk // mixer.heads) ** -0.5
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mixer.rel(q, h, w), scale=1.0)
        att = att.transpose(1, 2).reshape(b, h * w, -1).transpose(1, 2).reshape(b, -1, h, w)
        return mixer.finish(torch.cat([mixer.conv(x), mixer.proj(att)], dim=1))

    with torch.no_grad():
        torch.testing.assert_close(mixer(x), old(x), rtol=1e-4, atol=1e-5)
