"""gnConv (HorNet): the channel widths of the gating steps, the recursion and the block against a loop-by-loop
definition, the 1/3 scale of the depthwise output, its folding at deploy, the FLOPs formula and the keywords."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import operators
from nas.flops import count_flops
from operators.gnconv import GnConv, gnconv_widths


def _conv1x1(conv, x):
    """A 1x1 conv written as a channel contraction."""
    return torch.einsum("oi,nihw->nohw", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None, None]


def _depthwise_loop(conv, x):
    """Depthwise k x k conv, zero padding k // 2, one kernel offset at a time."""
    k = conv.weight.shape[-1]
    n, c, h, w = x.shape
    xp = F.pad(x, (k // 2,) * 4)
    out = conv.bias[None, :, None, None].expand(n, c, h, w).clone()
    for a in range(k):
        for b in range(k):
            for i in range(h):
                for j in range(w):
                    out[:, :, i, j] += conv.weight[:, 0, a, b] * xp[:, :, i + a, j + b]
    return out


def _naive_gnconv(m: GnConv, x: torch.Tensor, order: int) -> torch.Tensor:
    """gnConv by its definition: widths C / 2^(n-1-k); p_1 = p_0 * q_0, p_{k+1} = pw_k(p_k) * q_k; q = dw(.) / 3."""
    c = x.shape[1]
    widths = [c // 2 ** (order - 1 - k) for k in range(order)]
    y = _conv1x1(m.proj_in, x)
    p, rest = y[:, :widths[0]], y[:, widths[0]:]
    assert rest.shape[1] == sum(widths) == 2 * c - widths[0]
    q = _depthwise_loop(m.dw, rest) * (1.0 / 3.0)
    starts = [sum(widths[:k]) for k in range(order)]
    qs = [q[:, s:s + d] for s, d in zip(starts, widths)]
    p = p * qs[0]
    for k in range(1, order):
        p = _conv1x1(m.pws[k - 1], p) * qs[k]
    return _conv1x1(m.proj_out, p)


@torch.no_grad()
def _jitter(module):
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.3)


def test_split_widths_at_64_channels():
    """d_k = C / 2^(n-1-k): the smallest part first, C last; 2C = d_0 + sum(d_k) for the input conv."""
    expected = {2: [32, 64], 3: [16, 32, 64], 4: [8, 16, 32, 64], 5: [4, 8, 16, 32, 64]}
    for order, widths in expected.items():
        assert gnconv_widths(64, order) == widths
        m = GnConv(64, order)
        assert m.proj_in.out_channels == 128 == widths[0] + sum(widths)
        assert m.dw.in_channels == m.dw.out_channels == m.dw.groups == 128 - widths[0]
        assert [tuple(pw.weight.shape[:2]) for pw in m.pws] == [(widths[k + 1], widths[k]) for k in range(order - 1)]
        assert tuple(m.proj_out.weight.shape[:2]) == (64, 64)
        params = (64 * 128 + 128) + (128 - widths[0]) * (49 + 1) + sum(
            widths[k] * widths[k + 1] + widths[k + 1] for k in range(order - 1)) + (64 * 64 + 64)
        assert sum(p.numel() for p in m.parameters()) == params


@pytest.mark.parametrize("order", [2, 3, 5])
def test_gating_recursion_matches_a_loop(order):
    torch.manual_seed(order)
    m = GnConv(16, order)
    _jitter(m)
    x = torch.randn(2, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _naive_gnconv(m, x, order), rtol=1e-4, atol=1e-5)


def test_block_matches_its_definition_and_folds_at_deploy():
    """x + g1 * gnConv(LN(x)); x + g2 * fc2(GELU(fc1(LN(x)))), LayerNorm eps 1e-6 over the channels."""
    torch.manual_seed(0)
    block = operators.create_op("gnconv", 16, 16, 1, order=3)
    assert block.gamma1.eq(1e-6).all() and block.gamma2.eq(1e-6).all()
    _jitter(block)
    block.eval()
    x = torch.randn(1, 16, 4, 5)

    def ln(t, norm):  # channels-last layer norm of an (N, C, H, W) map
        return F.layer_norm(t.permute(0, 2, 3, 1), (16,), norm.weight, norm.bias, 1e-6)

    with torch.no_grad():
        y = x + block.gamma1[None, :, None, None] * _naive_gnconv(block.gnconv, ln(x, block.norm1).permute(0, 3, 1, 2), 3)
        h = F.gelu(F.linear(ln(y, block.norm2), block.mlp.fc1.weight, block.mlp.fc1.bias))
        want = y + (block.gamma2 * F.linear(h, block.mlp.fc2.weight, block.mlp.fc2.bias)).permute(0, 3, 1, 2)
        torch.testing.assert_close(block(x), want, rtol=1e-4, atol=1e-5)
        deploy = operators.reparameterize_model(block)
        torch.testing.assert_close(deploy(x), want, rtol=1e-4, atol=1e-5)
    # s = 1/3 went into the depthwise kernel and bias, the layer scales into the branches' last layers
    assert deploy.gnconv.scale == 1.0 and deploy.gamma1 is None and deploy.gamma2 is None
    torch.testing.assert_close(deploy.gnconv.dw.weight, block.gnconv.dw.weight / 3)
    torch.testing.assert_close(deploy.gnconv.dw.bias, block.gnconv.dw.bias / 3)


@pytest.mark.parametrize("order", [2, 4])
def test_depthwise_scale_is_one_third_and_multiplies_every_gate(order):
    """With the 1x1 biases after the input conv removed, the output is homogeneous of degree n in the scaled
    depthwise output (one factor q_k per gate): s = 1/3 scales it by 3^-n, which it would not if s touched only
    part of q or sat elsewhere."""
    torch.manual_seed(1)
    block = operators.create_op("gnconv", 8, 8, 1, order=order)
    m = block.gnconv
    assert m.scale == 1.0 / 3.0
    _jitter(m)
    with torch.no_grad():
        for conv in (*m.pws, m.proj_out):
            conv.bias.zero_()
        x = torch.randn(1, 8, 6, 6)
        scaled = m(x)
        m.scale = 1.0
        torch.testing.assert_close(scaled, m(x) / 3 ** order, rtol=1e-4, atol=1e-6)


def test_flops_are_the_convolutions_only():
    """Multiply-adds of one gnConv at H x W: input 1x1 (C -> 2C), depthwise 7x7 on 2C - d_0 channels, the
    gating 1x1s (d_k -> d_{k+1}), output 1x1; the gating products are elementwise (no accumulate)."""
    c, order, h, w = 32, 4, 14, 14
    d = [4, 8, 16, 32]
    want = h * w * (c * 2 * c + (2 * c - d[0]) * 49 + sum(d[k] * d[k + 1] for k in range(order - 1)) + c * c)
    assert count_flops(GnConv(c, order), (1, c, h, w)) == want


def test_widths_that_do_not_divide_keep_every_part():
    """24 channels at order 5: d_k = max(1, 24 // 2^(4-k)); the input conv maps to d_0 + sum(d_k) = 47."""
    assert gnconv_widths(24, 5) == [1, 3, 6, 12, 24]
    assert gnconv_widths(6, 5) == [1, 1, 1, 3, 6]
    op = operators.create_op("gnconv", 8, 24, 2, order=5)
    assert op.gnconv.proj_in.out_channels == 47
    assert op(torch.randn(1, 8, 7, 9)).shape == (1, 24, 4, 5)


@pytest.mark.parametrize("bad,match", [(dict(order=0), "order=0"), (dict(order=6), "order=6"),
                                       (dict(order=2.0), "order=2.0"), (dict(kernel_size=4), "kernel_size=4"),
                                       (dict(mlp_ratio=0), "mlp_ratio=0"), (dict(layer_scale=-1), "layer_scale=-1")])
def test_bad_keywords_are_refused(bad, match):
    with pytest.raises(ValueError, match=f"gnconv: {match}"):
        operators.create_op("gnconv", 16, 16, 1, **bad)


def test_downsampling_is_convnext_patch_down():
    op = operators.create_op("gnconv", 16, 32, 2)
    assert type(op.down).__name__ == "PatchDown" and op.down.conv.kernel_size == (2, 2)
    assert op(torch.randn(1, 16, 15, 15)).shape == (1, 32, 8, 8)
