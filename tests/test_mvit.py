"""MViTv2 (operators/mvit.py): the scaled relative offsets, a loop reference of the whole block, residual pooling,
the q and k/v resolutions of MViTv2-T, the shortcut, the stem, the init and the reference's size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import operators
from operators.mvit import mvit_rel_index


def official_offset(i: int, j: int, q: int, k: int) -> int:
    """MViTv2's ``cal_rel_pos_spatial`` index for query i, key j on one axis, less its index of offset 0."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    c = (k - 1) * k_ratio
    return math.floor(i * q_ratio - j * k_ratio + c) - math.floor(c)


def test_offsets_by_hand():
    # q 4 rows, k 2 rows: a key step is 2 query rows, offset i - 2j; q 2 rows, k 4 rows: offset 2i - j.
    e = 8
    assert (mvit_rel_index(4, 2, e) - (e - 1)).tolist() == [[0, -2], [1, -1], [2, 0], [3, 1]]
    assert (mvit_rel_index(2, 4, e) - (e - 1)).tolist() == [[0, -1, -2, -3], [2, 1, 0, -1]]
    assert (mvit_rel_index(3, 3, e) - (e - 1)).tolist() == [[0, -1, -2], [1, 0, -1], [2, 1, 0]]
    # Clamped to +-(extent - 1) = +-1, then shifted to rows 0..2.
    assert mvit_rel_index(4, 2, 2).tolist() == [[1, 0], [2, 0], [2, 1], [2, 2]]


@pytest.mark.parametrize("q,k", [(56, 14), (28, 14), (14, 28), (7, 14), (28, 28), (7, 4), (4, 7), (3, 2), (5, 3),
                                 (3, 5), (1, 1), (1, 4), (4, 1)])
def test_offsets_follow_the_official_formula(q, k):
    e = 64
    want = torch.tensor([[official_offset(i, j, q, k) for j in range(k)] for i in range(q)])
    assert torch.equal(mvit_rel_index(q, k, e) - (e - 1), want)


def _pool_loop(t: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """(H, W, d) pooled by a depthwise kxk kernel (d, 1, k, k), padding k // 2, as loops: (h, w, d)."""
    h, w, _ = t.shape
    kk = weight.shape[-1]
    p = kk // 2
    oh, ow = -(-h // stride[0]), -(-w // stride[1])
    out = torch.zeros(oh, ow, t.shape[-1])
    for oy in range(oh):
        for ox in range(ow):
            for dy in range(kk):
                for dx in range(kk):
                    y, x = oy * stride[0] + dy - p, ox * stride[1] + dx - p
                    if 0 <= y < h and 0 <= x < w:
                        out[oy, ox] += weight[:, 0, dy, dx] * t[y, x]
    return out


def _ln(t: torch.Tensor, norm) -> torch.Tensor:
    return F.layer_norm(t, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def block_loop(blk, x: torch.Tensor) -> torch.Tensor:
    """The MViTv2 block written out position by position, for a batch of one (1, C, H, W)."""
    attn = blk.attn
    heads, d, extent = attn.heads, attn.head_dim, attn.rel.extent
    xt = x[0].permute(1, 2, 0)
    h, w, _ = xt.shape
    xn = _ln(xt, blk.norm1)
    qkv = F.linear(xn, attn.qkv.weight, attn.qkv.bias)
    out_dim = heads * d
    s = attn.stride
    qh, qw = -(-h // s), -(-w // s)
    if attn.kv_stride is None:
        kv = (max(1, qh // attn.kv_size), max(1, qw // attn.kv_size))
    else:
        kv = (attn.kv_stride, attn.kv_stride)
    heads_out = []
    for n in range(heads):
        part = [qkv[..., t * out_dim + n * d: t * out_dim + (n + 1) * d] for t in range(3)]
        q = _ln(_pool_loop(part[0], attn.pool_q.weight, (s, s)), attn.norm_q)
        k = _ln(_pool_loop(part[1], attn.pool_k.weight, kv), attn.norm_k)
        v = _ln(_pool_loop(part[2], attn.pool_v.weight, kv), attn.norm_v)
        kh, kw = k.shape[:2]
        res = torch.zeros(qh, qw, d)
        for qy in range(qh):
            for qx in range(qw):
                logits = torch.zeros(kh, kw)
                for ky in range(kh):
                    for kx in range(kw):
                        ry = min(max(official_offset(qy, ky, qh, kh), 1 - extent), extent - 1) + extent - 1
                        rx = min(max(official_offset(qx, kx, qw, kw), 1 - extent), extent - 1) + extent - 1
                        qv = q[qy, qx]
                        logits[ky, kx] = (qv @ k[ky, kx]) * d ** -0.5 + qv @ attn.rel.rel_h[ry] + qv @ attn.rel.rel_w[rx]
                p = logits.flatten().softmax(0)
                res[qy, qx] = p @ v.reshape(kh * kw, d) + q[qy, qx]  # residual pooling
        heads_out.append(res)
    y = F.linear(torch.cat(heads_out, -1), attn.proj.weight, attn.proj.bias)
    short = F.linear(xn, blk.proj.weight, blk.proj.bias) if blk.proj is not None else xt
    if s == 2:
        pooled = torch.full((qh, qw, short.shape[-1]), -math.inf)
        for oy in range(qh):
            for ox in range(qw):
                for yy in range(2 * oy - 1, 2 * oy + 2):
                    for xx in range(2 * ox - 1, 2 * ox + 2):
                        if 0 <= yy < h and 0 <= xx < w:
                            pooled[oy, ox] = torch.maximum(pooled[oy, ox], short[yy, xx])
        short = pooled
    z = short + y
    z = z + blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(_ln(z, blk.norm2))))
    return z.permute(2, 0, 1)[None]


@pytest.mark.parametrize("in_chs,out_chs,stride,hw,kw", [
    (8, 16, 2, (5, 6), {"heads": 2, "kv_size": 1}),  # q 3x3, adaptive k/v stride 3: k 2x2 (ratio 1.5)
    (16, 16, 1, (5, 4), {"heads": 2, "kv_stride": 2, "rel_extent": 2}),  # q 5x4, k 3x2, offsets clamped at +-1
    (8, 8, 2, (4, 4), {"heads": 1, "kv_stride": 1}),  # q 2x2 against k 4x4
])
def test_block_matches_a_loop_reference(in_chs, out_chs, stride, hw, kw):
    torch.manual_seed(0)
    blk = operators.create_op("mvit", in_chs, out_chs, stride, **kw).eval()
    with torch.no_grad():
        for p in blk.parameters():  # norms and biases off their init, so that every term shows
            p.add_(0.2 * torch.randn_like(p))
        x = torch.randn(1, in_chs, *hw)
        torch.testing.assert_close(blk(x), block_loop(blk, x), rtol=1e-4, atol=1e-5)


def test_residual_pooling_adds_the_pooled_query():
    """v = 0 and an identity output projection leave the attention's output = the pooled q; the q path is set
    to give a known constant b (identity kernel, LN weight 0, LN bias b)."""
    torch.manual_seed(0)
    blk = operators.create_op("mvit", 8, 8, 2, heads=2)
    attn = blk.attn
    d = attn.head_dim
    b = torch.arange(1.0, d + 1)
    with torch.no_grad():
        attn.pool_q.weight.zero_()
        attn.pool_q.weight[:, 0, 1, 1] = 1.0
        attn.norm_q.weight.zero_()
        attn.norm_q.bias.copy_(b)
        attn.norm_v.weight.zero_()  # v = 0: softmax(...) v vanishes
        attn.norm_v.bias.zero_()
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
        out = attn(torch.randn(2, 7, 9, 8))
    assert out.shape == (2, 4, 5, 8)
    torch.testing.assert_close(out, b.repeat(2).expand(2, 4, 5, 8), rtol=0, atol=1e-6)


def _shapes(blk, x: torch.Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    seen = []
    hook = blk.attn.rel.register_forward_hook(lambda _m, args, _out: seen.append((tuple(args[1]), tuple(args[2]))))
    with torch.no_grad():
        blk(x)
    hook.remove()
    return seen[0]


# MViTv2-T at 224 px (facebookresearch/mvit, MVITv2_T.yaml: POOL_KV_STRIDE_ADAPTIVE 4, q strides at blocks 1, 3, 8):
# block input side, block stride -> q side, k/v side.
OFFICIAL_T = [(56, 1, 56, 14), (56, 2, 28, 28), (28, 1, 28, 14), (28, 2, 14, 28), (14, 1, 14, 14), (14, 2, 7, 14),
              (7, 1, 7, 7)]


@pytest.mark.parametrize("side,stride,q_side,kv_side", OFFICIAL_T)
def test_query_and_key_resolutions_are_mvitv2_t(side, stride, q_side, kv_side):
    blk = operators.create_op("mvit", 8, 8, stride)
    assert _shapes(blk, torch.randn(1, 8, side, side)) == ((q_side, q_side), (kv_side, kv_side))


def test_fixed_kv_stride_on_odd_maps():
    blk = operators.create_op("mvit", 8, 16, 2, kv_stride=2)
    assert _shapes(blk, torch.randn(1, 8, 7, 9)) == ((4, 5), (4, 5))
    blk = operators.create_op("mvit", 8, 16, 1, kv_stride=4)
    assert _shapes(blk, torch.randn(1, 8, 7, 9)) == ((7, 9), (2, 3))
    assert _shapes(blk, torch.randn(1, 8, 1, 1)) == ((1, 1), (1, 1))


@pytest.mark.parametrize("in_chs,out_chs", [(8, 16), (8, 8)])
def test_shortcut_is_the_max_pooled_normed_projection(in_chs, out_chs):
    """With the attention and MLP outputs zeroed the block is its shortcut: max-pool (3, stride 2, padding 1) of
    Linear(LN(x)) when the width changes (MViTv2's dim_mul_in_att), of x itself when it does not."""
    torch.manual_seed(0)
    blk = operators.create_op("mvit", in_chs, out_chs, 2)
    with torch.no_grad():
        for layer in (blk.attn.proj, blk.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
        x = torch.randn(2, in_chs, 7, 6)
        xt = x.permute(0, 2, 3, 1)
        short = blk.proj(blk.norm1(xt)) if in_chs != out_chs else xt
        want = F.max_pool2d(short.permute(0, 3, 1, 2), 3, 2, 1)
        torch.testing.assert_close(blk(x), want)
    assert (blk.proj is None) == (in_chs == out_chs)


def test_heads_follow_the_head_dim_96_and_share_the_pooling():
    for width, heads in [(96, 1), (192, 2), (384, 4), (768, 8)]:
        with torch.device("meta"):  # shapes only
            attn = operators.create_op("mvit", width, width).attn
        assert attn.heads == heads
        assert attn.pool_k.weight.shape == (96, 1, 3, 3)  # one depthwise kernel of head-dim channels
        assert attn.rel.rel_h.shape == (2 * 56 - 1, 96)


def test_init_is_the_official_one():
    torch.manual_seed(0)
    blk = operators.create_op("mvit", 64, 128, 2, heads=1)
    attn = blk.attn
    assert {attn.pool_q.init_scheme, attn.pool_k.init_scheme, attn.pool_v.init_scheme} == {"torch_default"}
    assert {m.init_scheme for m in blk.modules() if isinstance(m, torch.nn.Linear)} == {"trunc_normal"}
    tables = torch.cat([attn.rel.rel_h.flatten(), attn.rel.rel_w.flatten()])
    assert abs(tables.std().item() - 0.02) < 0.002 and tables.abs().max() < 0.1


def test_stem_is_a_7x7_stride_4_conv_without_norm():
    stem = operators.get_stem("mvit").factory(3, 96)
    assert operators.get_stem("mvit").stride == 4
    assert isinstance(stem, torch.nn.Conv2d) and stem.kernel_size == (7, 7) and stem.stride == (4, 4)
    assert stem.padding == (3, 3) and stem.bias is not None
    for side in (1, 7, 30, 224):
        assert stem(torch.randn(1, 3, side, side)).shape[-1] == -(-side // 4)


@pytest.mark.parametrize("bad,match", [({"kv_stride": 0}, "kv_stride=0"), ({"kv_size": 0}, "kv_size=0"),
                                       ({"pool_kernel": 2}, "pool_kernel=2"), ({"rel_extent": 0}, "rel_extent=0"),
                                       ({"heads": 5}, "divisor of 96")])
def test_bad_keywords_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        operators.create_op("mvit", 96, 96, **bad)


def test_mvitv2_t_parameters():
    """facebookresearch/mvit's MViTv2-T (MVITv2_T.yaml) holds 24 173 320 parameters; the reference sizes the
    tables of stage 3's and 4's later blocks at 55 and 27 rows where the official has 27 and 13: +24 192.
    The paper says 24 M."""
    from nas.arch import load_arch
    from nas.flops import count_params
    from nas.network import build_uninitialized

    net = build_uninitialized(load_arch(Path(__file__).parents[1] / "search_spaces" / "references" / "mvitv2_t.yaml"))
    assert count_params(net) == 24_173_320 + 2 * 96 * (4 * (55 - 27) + (27 - 13))
    assert count_params(net) == pytest.approx(24e6, rel=0.01)
