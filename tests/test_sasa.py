"""Stand-alone self-attention: the logit of a neighbour at offset (dy, dx) is q . (k + [r_row(dy); r_col(dx)]) /
sqrt(d), the row half and the column half of each head's channels apart; neighbours outside the map take no
part; stride 2 is 2x2 average pooling after the attention; FLOPs as the formula says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import operators
from nas.flops import count_flops
from operators.sasa import SASAttention, sasa_attention, sasa_heads, sasa_logits


def naive_sasa(q, k, v, rel_row, rel_col, heads: int, kernel: int) -> torch.Tensor:
    """Loop reference over pixels, heads and the neighbours that lie inside the map."""
    _, c, h, w = q.shape
    d, p = c // heads, kernel // 2
    out = torch.zeros_like(v)
    for y in range(h):
        for x in range(w):
            for n in range(heads):
                ch = slice(n * d, (n + 1) * d)
                qv = q[0, ch, y, x] * d ** -0.5
                logits, vals = [], []
                for dy in range(-p, p + 1):
                    for dx in range(-p, p + 1):
                        if 0 <= y + dy < h and 0 <= x + dx < w:
                            r = torch.cat([rel_row[n, :, dy + p], rel_col[n, :, dx + p]])
                            logits.append(qv @ (k[0, ch, y + dy, x + dx] + r))
                            vals.append(v[0, ch, y + dy, x + dx])
                out[0, ch, y, x] = torch.stack(logits).softmax(0) @ torch.stack(vals)
    return out


def _qkv(mixer: SASAttention, x: torch.Tensor):
    return mixer.qkv(x).chunk(3, dim=1)


def test_one_logit_by_hand():
    """Head 1 of 2 (d = 4: channels 4, 5 carry the row embedding, 6, 7 the column one), query (2, 3), neighbour at
    offset (dy, dx) = (-1, +1) of a 3 x 3 neighbourhood on a 5 x 6 map."""
    torch.manual_seed(0)
    mixer = SASAttention(8, heads=2, kernel=3)
    x = torch.randn(1, 8, 5, 6)
    wq, wk, _ = mixer.qkv.weight[:, :, 0, 0].chunk(3)
    q, k = wq @ x[0, :, 2, 3], wk @ x[0, :, 1, 4]
    qh, kh = q[4:8] / 2.0, k[4:8]  # 1 / sqrt(4)
    want = qh @ kh + qh[:2] @ mixer.rel_row[1, :, 0] + qh[2:] @ mixer.rel_col[1, :, 2]
    with torch.no_grad():
        logits = sasa_logits(*_qkv(mixer, x)[:2], mixer.rel_row, mixer.rel_col, 2, 3)
    assert logits.shape == (1, 2, 30, 9)
    torch.testing.assert_close(logits[0, 1, 2 * 6 + 3, 0 * 3 + 2], want.detach())


def test_out_of_map_neighbours_are_excluded():
    """Corner query (0, 0): the 5 neighbours at dy = -1 or dx = -1 are -inf, the 4 others finite; a 1 x 1 map
    gives each pixel its own value (the only neighbour)."""
    torch.manual_seed(0)
    mixer = SASAttention(8, heads=2, kernel=3)
    with torch.no_grad():
        logits = sasa_logits(*_qkv(mixer, torch.randn(1, 8, 5, 6))[:2], mixer.rel_row, mixer.rel_col, 2, 3)
        corner = logits[0, :, 0].view(2, 3, 3)
        assert torch.isinf(corner[:, 0, :]).all() and torch.isinf(corner[:, :, 0]).all()
        assert torch.isfinite(corner[:, 1:, 1:]).all()
        q, k, v = _qkv(mixer, torch.randn(2, 8, 1, 1))
        torch.testing.assert_close(sasa_attention(q, k, v, mixer.rel_row, mixer.rel_col, 2, 3), v)


@pytest.mark.parametrize("heads,kernel,size", [(2, 3, (5, 6)), (1, 5, (4, 6))])
def test_attention_equals_naive_loops(heads, kernel, size):
    """2 heads of 3 channels (row half 2, column half 1) at k = 3 on 5 x 6; 1 head of 6 channels (3 / 3) at k = 5
    on 4 x 6, a map shorter than the neighbourhood. Border pixels lose neighbours in both."""
    torch.manual_seed(0)
    mixer = SASAttention(6, heads=heads, kernel=kernel)
    x = torch.randn(1, 6, *size)
    with torch.no_grad():
        q, k, v = _qkv(mixer, x)
        got = sasa_attention(q, k, v, mixer.rel_row, mixer.rel_col, heads, kernel)
        want = naive_sasa(q, k, v, mixer.rel_row, mixer.rel_col, heads, kernel)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_odd_head_dim_gives_the_row_half_the_extra_channel():
    mixer = SASAttention(6, heads=2, kernel=7)
    assert mixer.rel_row.shape == (2, 2, 7) and mixer.rel_col.shape == (2, 1, 7)


def test_stride_two_average_pools_after_the_attention():
    torch.manual_seed(0)
    mixer = SASAttention(8, stride=2, heads=2, kernel=3).eval()
    x = torch.randn(1, 8, 7, 9)
    with torch.no_grad():
        attn = sasa_attention(*_qkv(mixer, x), mixer.rel_row, mixer.rel_col, 2, 3)
        want = torch.relu(mixer.bn(F.avg_pool2d(attn, 2, 2, ceil_mode=True)))
        got = mixer(x)
    assert got.shape == (1, 8, 4, 5)
    torch.testing.assert_close(got, want)


def test_default_heads():
    """8 heads where the bottleneck width allows an even head dim, fewer otherwise; at least 2 channels a head."""
    assert [sasa_heads(m, None) for m in (64, 16, 8, 24, 9, 2)] == [8, 8, 4, 6, 3, 1]
    assert operators.create_op("sasa", 256, 256).mixer.heads == 8
    with pytest.raises(ValueError, match="sasa: heads=16"):
        sasa_heads(16, 16)
    with pytest.raises(ValueError, match="bottleneck width of 1"):
        operators.create_op("sasa", 4, 4)


@pytest.mark.parametrize("bad", [dict(kernel=6), dict(kernel=0), dict(expansion=0), dict(heads=3)])
def test_bad_keywords_are_refused(bad):
    with pytest.raises(ValueError, match="sasa: " + next(iter(bad))):
        operators.create_op("sasa", 64, 64, **bad)


def test_relative_embedding_init_is_normal_at_head_dim_scale():
    torch.manual_seed(0)
    mixer = SASAttention(256, heads=1, kernel=7)  # head dim 256: std 1/16
    z = torch.cat([mixer.rel_row.detach().flatten(), mixer.rel_col.detach().flatten()]).double() * 16
    assert abs(z.std().item() - 1) < 5 * math.sqrt(1 / (2 * z.numel()))


def sasa_block_flops(c: int, h: int, w: int, stride: int = 1, kernel: int = 7) -> int:
    """Multiply-adds of the SASA bottleneck (in = out = c, expansion 4) in deploy form: reduce, qkv, q . k and
    attention x v over the k^2 neighbourhood (masked neighbours included), q_row . r_row and q_col . r_col over
    k offsets each (m / 2 channels each), expand after the pooling, and the projection shortcut at stride 2."""
    m = c // 4
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    attn = h * w * m * kernel ** 2 * 2 + h * w * m * kernel
    convs = h * w * c * m + h * w * m * 3 * m + ho * wo * m * c
    return convs + attn + (ho * wo * c * c if stride == 2 else 0)


@pytest.mark.parametrize("stride,size", [(1, 12), (2, 11)])
def test_flops_follow_the_formula(stride, size):
    op = operators.create_op("sasa", 64, 64, stride)
    assert count_flops(op, (1, 64, size, size)) == sasa_block_flops(64, size, size, stride)


def test_flops_at_56_by_256():
    """The figure reported for the catalog: 162.4 M multiply-adds (ResNet-50's 3x3 bottleneck: 218.4 M)."""
    assert sasa_block_flops(256, 56, 56) == 162_369_536
