"""NAT: neighbourhood attention against a loop-by-loop definition (windows shifted inward at the borders,
bias indexed by the offset inside the shifted window), its FLOPs formula, stem, downsampler and init."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

import operators
from nas.flops import count_flops
from operators.nat import NeighborhoodAttention, neighborhood_attention


def _naive_na(q, k, v, rpb, h, w, kernel):
    """NA by its definition, one query at a time: the window of query (y, x) starts at
    clamp(y - kernel // 2, 0, h - kh) (kh = min(kernel, h)) and likewise on x, so it always holds kh x kw keys;
    key (y2, x2) gets bias rpb[:, y2 - y + kernel - 1, x2 - x + kernel - 1]. q, k, v: (heads, h * w, d)."""
    heads = q.shape[0]
    kh, kw = min(kernel, h), min(kernel, w)
    out = torch.zeros_like(q)
    for y in range(h):
        for x in range(w):
            y0 = min(max(y - kernel // 2, 0), h - kh)
            x0 = min(max(x - kernel // 2, 0), w - kw)
            nbrs = [(y2, x2) for y2 in range(y0, y0 + kh) for x2 in range(x0, x0 + kw)]
            assert len(nbrs) == kh * kw and (y, x) in nbrs
            for n in range(heads):
                keys = torch.stack([k[n, y2 * w + x2] for y2, x2 in nbrs])
                vals = torch.stack([v[n, y2 * w + x2] for y2, x2 in nbrs])
                bias = torch.stack([rpb[n, y2 - y + kernel - 1, x2 - x + kernel - 1] for y2, x2 in nbrs])
                out[n, y * w + x] = torch.softmax(keys @ q[n, y * w + x] + bias, 0) @ vals
    return out


@pytest.mark.parametrize("h,w,kernel", [(9, 11, 3), (9, 11, 5), (4, 6, 7), (5, 9, 7), (1, 1, 7), (7, 7, 7)])
def test_neighborhood_attention_matches_its_definition(h, w, kernel):
    """9x11 at k 3 and 5 (interior and shifted border windows), maps smaller than k on both axes (4x6) and on
    one (5x9: the window shrinks to 5 rows and still shifts along x), 1x1, and a map exactly k x k."""
    torch.manual_seed(0)
    heads, d = 2, 4
    q, k, v = (torch.randn(1, heads, h * w, d) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1)
    got = neighborhood_attention(q, k, v, rpb, h, w, kernel, backend="torch")
    torch.testing.assert_close(got[0], _naive_na(q[0], k[0], v[0], rpb, h, w, kernel), rtol=1e-5, atol=1e-5)


def test_border_windows_shift_inward_rather_than_shrink():
    """With zero queries and bias the weights are uniform over the window: the corner query's output is the
    mean of v over the whole top-left k x k block (k^2 keys), not over the (k//2 + 1)^2 keys SASA would keep;
    and an edge query one pixel in uses the same block."""
    h = w = 9
    kernel = 5
    v = torch.randn(1, 1, h * w, 3)
    zeros = torch.zeros(1, 1, h * w, 3)
    out = neighborhood_attention(zeros, zeros, v, torch.zeros(1, 9, 9), h, w, kernel, backend="torch")
    block = v[0, 0].view(h, w, 3)[:kernel, :kernel].reshape(-1, 3).mean(0)
    torch.testing.assert_close(out[0, 0, 0], block)
    torch.testing.assert_close(out[0, 0, 1 * w + 1], block)  # (1, 1): its centred window would leave the map
    sasa = v[0, 0].view(h, w, 3)[:3, :3].reshape(-1, 3).mean(0)
    assert not torch.allclose(out[0, 0, 0], sasa)


def test_bias_follows_the_shifted_window():
    """A large bias at offset (+3, +4) only: the corner query (0, 0) of a 9x9 map with k = 7 puts almost all its
    weight on key (3, 4), which a centred window would not even index (offsets there stop at +3)."""
    h = w = 9
    kernel = 7
    rpb = torch.zeros(1, 13, 13)
    rpb[0, 3 + kernel - 1, 4 + kernel - 1] = 50.0
    v = torch.randn(1, 1, h * w, 2)
    zeros = torch.zeros(1, 1, h * w, 2)
    out = neighborhood_attention(zeros, zeros, v, rpb, h, w, kernel, backend="torch")
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 3 * w + 4])
    torch.testing.assert_close(out[0, 0, 2 * w + 1], v[0, 0, 5 * w + 5])  # (2, 1): window rows/cols 0..6
    # (4, 4): window rows and columns 1..7, offsets up to +3 only: the bias is not reached, the weights are uniform
    torch.testing.assert_close(out[0, 0, 4 * w + 4], v[0, 0].view(h, w, 2)[1:8, 1:8].reshape(-1, 2).mean(0))


@pytest.mark.parametrize("h,w,kernel", [(14, 14, 7), (5, 9, 7)])
def test_flops_are_projections_plus_two_b_heads_hw_k2_d(h, w, kernel):
    """qkv (3 C^2) and proj (C^2) per pixel, plus q k^T and attention x V:
    2 x B x heads x H x W x kh kw x head_dim multiply-adds, kh = min(k, H), kw = min(k, W)."""
    b, c, heads = 2, 64, 4
    attn = NeighborhoodAttention(c, heads, kernel)
    kk = min(kernel, h) * min(kernel, w)
    want = b * h * w * (4 * c * c + 2 * heads * kk * (c // heads))
    assert count_flops(attn, (b, h, w, c)) == want


def test_block_at_stride_two_starts_with_the_conv_downsampler():
    op = operators.create_op("nat", 16, 32, 2)
    assert op.down.reduction.kernel_size == (3, 3) and op.down.reduction.stride == (2, 2)
    assert op.down.reduction.bias is None and isinstance(op.down.norm, nn.LayerNorm)
    assert operators.create_op("nat", 32, 32, 1).down is None


def test_defaults_are_nat_t():
    """Head dim 32 gives NAT-T's 2/4/8/16 heads at 64/128/256/512; kernel 7, MLP ratio 3, table (heads, 13, 13)."""
    for width, heads in [(64, 2), (128, 4), (256, 8), (512, 16)]:
        op = operators.create_op("nat", width, width)
        assert op.attn.heads == heads and op.attn.rpb.shape == (heads, 13, 13)
        assert op.mlp.fc1.out_features == 3 * width


@pytest.mark.parametrize("bad", [{"kernel": 4}, {"kernel": 1}, {"mlp_ratio": 0}, {"heads": 5},
                                 {"layer_scale": -1.0}])
def test_bad_keywords_are_refused(bad):
    with pytest.raises(ValueError, match="nat"):
        operators.create_op("nat", 64, 64, **bad)


def test_stem_is_two_convs_then_layernorm():
    """ConvTokenizer: conv(3 -> w/2, 3x3, s2) then conv(w/2 -> w, 3x3, s2) with nothing between, LayerNorm."""
    torch.manual_seed(0)
    stem = operators.get_stem("nat").factory(3, 64)
    assert operators.get_stem("nat").stride == 4
    c1, c2 = stem.proj
    x = torch.randn(2, 3, 13, 17)
    y = c2(c1(x)).permute(0, 2, 3, 1)
    want = nn.functional.layer_norm(y, (64,), stem.norm.weight, stem.norm.bias, 1e-5).permute(0, 3, 1, 2)
    torch.testing.assert_close(stem(x), want)
    assert stem(x).shape == (2, 64, 4, 5) and c1.out_channels == 32


def test_init_as_the_official_code():
    """Linear trunc normal 0.02 with zero bias, convs PyTorch's default, the bias table trunc normal 0.02."""
    torch.manual_seed(0)
    op = operators.create_op("nat", 64, 128, 2, heads=16)
    linears = [m for m in op.modules() if isinstance(m, nn.Linear)]
    assert {m.init_scheme for m in linears} == {"trunc_normal"}
    assert all(not m.bias.any() for m in linears)
    assert op.down.reduction.init_scheme == "torch_default"
    bound = 1 / math.sqrt(64 * 9)  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    weight = op.down.reduction.weight.detach()
    assert weight.abs().max() <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    rpb = op.attn.rpb.detach()
    assert rpb.std().item() == pytest.approx(0.02, rel=0.1) and rpb.abs().max() < 0.1
    assert operators.get_downsampler("nat").factory(64, 128, 2).reduction.init_scheme == "torch_default"


def test_layer_scale_starts_at_its_value_and_folds():
    op = operators.create_op("nat", 32, 32, layer_scale=1e-5).eval()
    assert torch.equal(op.gamma1, torch.full((32,), 1e-5)) and torch.equal(op.gamma2, torch.full((32,), 1e-5))
    with torch.no_grad():
        op.gamma1.fill_(0.5)
        op.gamma2.fill_(2.0)
        op.attn.proj.bias.normal_()
        x = torch.randn(1, 32, 6, 7)
        want = op(x)
        deploy = operators.reparameterize_model(op)
        assert deploy.gamma1 is None and deploy.gamma2 is None
        torch.testing.assert_close(deploy(x), want)


natten_missing = importlib.util.find_spec("natten") is None


@pytest.mark.skipif(natten_missing, reason="natten is not installed (an optional accelerator: shi-labs.com/natten)")
def test_natten_matches_the_pure_path():
    from operators.nat import _natten_kernels

    if _natten_kernels() is None:
        pytest.skip("this natten release offers no 2D kernels with a relative position bias")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    for h, w, kernel in [(9, 11, 3), (14, 14, 7), (15, 9, 5)]:
        q, k, v = (torch.randn(2, 2, h * w, 32, device=device) for _ in range(3))
        rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1, device=device)
        want = neighborhood_attention(q, k, v, rpb, h, w, kernel, backend="torch")
        got = neighborhood_attention(q, k, v, rpb, h, w, kernel, backend="natten")
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_backend_is_checked():
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match="backend='cuda'"):
        neighborhood_attention(q, q, q, torch.zeros(1, 5, 5), 2, 2, 3, backend="cuda")
    if natten_missing:
        with pytest.raises(ImportError, match="pip install natten"):
            neighborhood_attention(q, q, q, torch.zeros(1, 5, 5), 2, 2, 3, backend="natten")
