"""EfficientViT's linear attention block: LiteMLA against a loop reference (the per-head interleaving of q, k
and v, the ReLU kernel, the row of ones that gives the normaliser), the block's structure at a stride or width
change and without attention, the official init, the BN folding, the multiply-adds against a formula, and
EfficientViT's stem."""

from __future__ import annotations

import pytest
import torch
from op_helpers import randomize
from torch import nn

import operators
from nas.flops import count_flops
from operators.linear_attention import LITEMLA_EPS, EfficientViTStem, LiteMLA, relu_linear_attention


def _naive_litemla(mla: LiteMLA, x: torch.Tensor) -> torch.Tensor:
    """LiteMLA by loops: head g of the 2 x heads heads reads its q, k, v from channels 3 d g .. 3 d (g + 1) of
    [qkv ; aggregated qkv] (q first, then k, then v); out_i = sum_j (k_j . q_i) v_j / (sum_j k_j . q_i + eps)."""
    qkv = mla.qkv(x)
    qkv = torch.cat([qkv, mla.aggreg(qkv)], dim=1).double()
    b, total, h, w = qkv.shape
    d, n = mla.dim, h * w
    out = torch.zeros(b, total // 3, n, dtype=torch.float64)
    for s in range(b):
        for g in range(total // (3 * d)):
            base = 3 * d * g
            q = qkv[s, base:base + d].reshape(d, n).clamp(min=0)
            k = qkv[s, base + d:base + 2 * d].reshape(d, n).clamp(min=0)
            v = qkv[s, base + 2 * d:base + 3 * d].reshape(d, n)
            for i in range(n):
                num, den = torch.zeros(d, dtype=torch.float64), 0.0
                for j in range(n):
                    sim = float(k[:, j] @ q[:, i])
                    num += sim * v[:, j]
                    den += sim
                out[s, g * d:(g + 1) * d, i] = num / (den + LITEMLA_EPS)
    return mla.proj(out.reshape(b, total // 3, h, w).float())


@pytest.mark.parametrize("chs,dim,size", [(16, 8, (3, 4)), (12, 4, (2, 5)), (8, 16, (1, 3))])
def test_litemla_matches_a_loop_reference(chs, dim, size):
    torch.manual_seed(0)
    mla = LiteMLA(chs, chs, dim, scale=3)
    randomize(mla)
    mla.eval()
    x = torch.randn(2, chs, *size)
    with torch.no_grad():
        torch.testing.assert_close(mla(x), _naive_litemla(mla, x), rtol=1e-4, atol=1e-4)


def test_litemla_layout_is_the_official_one():
    mla = LiteMLA(64, 64, 16, scale=5)
    heads, total = 4, 3 * 64
    assert mla.qkv.out_channels == total and mla.qkv.bias is None
    dw, group = mla.aggreg
    assert dw.groups == total and dw.kernel_size == (5, 5) and dw.bias is None
    assert group.groups == 3 * heads and group.kernel_size == (1, 1) and group.bias is None
    assert mla.proj.conv.in_channels == 2 * heads * 16 and isinstance(mla.proj.bn, nn.BatchNorm2d)


def test_attention_is_computed_in_float32():
    mla = LiteMLA(16, 16, 8).eval()
    seen = []
    handle = mla.proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    with torch.no_grad():
        mla.double()(torch.randn(1, 16, 4, 4, dtype=torch.float64))
    handle.remove()
    assert seen == [torch.float64]  # computed in float32, handed back in the input's dtype
    qkv = torch.randn(1, 3 * 8, 4, 4, dtype=torch.float64)
    assert relu_linear_attention(qkv, 8).dtype == torch.float32


def test_block_structure_at_a_shape_change_and_without_attention():
    same = operators.create_op("linear_attention", 64, 64)
    assert same.entry is None and same.context is not None and same.local.point.bn is not None
    assert same.local.inverted.bn is None and same.local.inverted.conv.bias is not None  # fewer_norm
    down = operators.create_op("linear_attention", 64, 128, 2)
    entry = down.entry
    assert entry.depthwise.conv.stride == (2, 2) and entry.inverted.conv.stride == (1, 1)
    assert entry.inverted.conv.out_channels == 4 * 64 and entry.inverted.bn is None  # expansion x in_chs
    local = operators.create_op("linear_attention", 64, 64, attention=False)
    assert local.entry is None and local.context is None and local.local.inverted.bn is not None
    first = operators.create_op("linear_attention", 64, 128, 2, attention=False)
    assert first.local is None and first.context is None and first.entry.depthwise.bn is not None


@pytest.mark.parametrize("attention", [True, False])
def test_block_starts_as_the_identity_and_ends_residual_branches_in_a_zero_bn(attention):
    torch.manual_seed(0)
    op = operators.create_op("linear_attention", 32, 32, attention=attention).eval()
    x = torch.randn(2, 32, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(op(x), x, rtol=0, atol=0)
    zeroed = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.any()]
    assert len(zeroed) == (2 if attention else 1)
    down = operators.create_op("linear_attention", 16, 32, 2, attention=attention)
    assert all(m.weight.all() for m in down.entry.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("stride,in_chs,out_chs,attention", [(1, 32, 32, True), (2, 16, 32, True),
                                                             (2, 16, 32, False)])
def test_deploy_folds_every_bn_exactly(stride, in_chs, out_chs, attention):
    torch.manual_seed(0)
    op = operators.create_op("linear_attention", in_chs, out_chs, stride, attention=attention)
    randomize(op)
    op.eval()
    deploy = operators.reparameterize_model(op)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    x = torch.randn(2, in_chs, 9, 11)
    with torch.no_grad():
        want = op(x)  # random weights of std 0.5 give outputs of about 1e3: the tolerance follows the scale
        torch.testing.assert_close(deploy(x), want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


def _mbconv_flops(n: int, cin: int, cout: int, stride_n: int, expansion: int = 4) -> int:
    """1x1 at the input map, depthwise 3x3 and 1x1 at the output map (the stride on the depthwise)."""
    mid = expansion * cin
    return n * cin * mid + stride_n * mid * 9 + stride_n * mid * cout


@pytest.mark.parametrize("chs,dim,side", [(64, 16, 8), (96, 32, 7)])
def test_multiply_adds_match_the_formula(chs, dim, side):
    """Deploy form, one multiply-add = one FLOP: LiteMLA's qkv 1x1, depthwise 5x5 and grouped 1x1 (groups
    3 x heads: dim inputs each), both attention matmuls over 2 x heads heads of width dim + 1 (the row of
    ones is real work), the projection; then the MBConv."""
    heads, n = chs // dim, side * side
    t = heads * dim
    mla = n * chs * 3 * t + n * 3 * t * 25 + n * 3 * t * dim + 2 * (2 * heads) * n * dim * (dim + 1) + n * 2 * t * chs
    op = operators.create_op("linear_attention", chs, chs, head_dim=dim)
    assert count_flops(op, (1, chs, side, side)) == mla + _mbconv_flops(n, chs, chs, n)
    down = operators.create_op("linear_attention", chs, 2 * chs, 2, head_dim=dim, attention=False)
    m = ((side + 1) // 2) ** 2
    assert count_flops(down, (1, chs, side, side)) == _mbconv_flops(n, chs, 2 * chs, m)


def test_stem():
    torch.manual_seed(0)
    stem = operators.get_stem("efficientvit").factory(3, 32)
    assert isinstance(stem, EfficientViTStem) and operators.get_stem("efficientvit").stride == 2
    assert not stem.point.bn.weight.any()  # the DSConv residual branch starts at 0
    x = torch.randn(2, 3, 15, 16)
    assert stem(x).shape == (2, 32, 8, 8)
    randomize(stem)
    stem.eval()
    with torch.no_grad():
        want = stem.conv(x)
        want = want + stem.point(stem.depthwise(want))
        torch.testing.assert_close(stem(x), want)
        deploy = operators.reparameterize_model(stem)
        torch.testing.assert_close(deploy(x), want, rtol=1e-4, atol=1e-4)
    assert isinstance(stem.conv.act, nn.Hardswish) and stem.depthwise.conv.groups == 32


@pytest.mark.parametrize("key,value,match", [("head_dim", 0, "head_dim=0"), ("scale", 4, "scale=4"),
                                             ("expansion", 0.0, "expansion=0.0"),
                                             ("attention", "yes", "attention='yes' must be true or false")])
def test_bad_keywords_are_refused_in_one_line(key, value, match):
    with pytest.raises(ValueError, match=rf"^linear_attention: {match}"):
        operators.create_op("linear_attention", 32, 32, **{key: value})


def test_hardswish_and_relu_are_where_the_paper_puts_them():
    op = operators.create_op("linear_attention", 32, 32)
    assert isinstance(op.local.inverted.act, nn.Hardswish) and isinstance(op.local.depthwise.act, nn.Hardswish)
    assert op.local.point.act is None and op.context.proj.act is None
    # the kernel function is a ReLU on q and k only: negative v values pass through
    qkv = torch.zeros(1, 3 * 4, 1, 2)
    qkv[:, 8:] = -1.0  # v = -1 everywhere
    qkv[:, :8] = 1.0  # q = k = 1
    out = relu_linear_attention(qkv, 4)
    torch.testing.assert_close(out, torch.full_like(out, -1.0))


def test_a_query_whose_relu_is_zero_reads_zero_not_nan():
    """Its normaliser is 0 + eps: the output is 0 (small head dims meet such queries; the ONNX test of the
    head_dim=8 variant checks that the exported graph keeps the eps)."""
    qkv = torch.randn(1, 3 * 4, 2, 3)
    qkv[:, :4, 0, 0] = -1.0  # the first query's q is all negative
    out = relu_linear_attention(qkv, 4)
    assert torch.isfinite(out).all() and not out[0, :, 0, 0].any()
