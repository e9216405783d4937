"""LESA: the binary term is full 2D global attention with the official code's three logit terms (q . k,
q . r_q(p_i - p_j), k . r_k(p_j - p_i)) and two output terms (sum a v, sum a r_v(p_i - p_j)), each behind its own
BN, checked against loops; the gate is input-dependent and a closed gate leaves the unary term alone; stride 2
pools the fused output; the deploy form equals the reference; FLOPs as the formula says."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import operators
from nas.flops import count_flops
from operators._layers import reparameterize_model
from operators.lesa import LesaBinary, LesaLayer, _lesa_heads, lesa_offsets


@torch.no_grad()
def _randomize_bns(module: nn.Module) -> None:
    """Eval-mode BNs with statistics and affines far from the identity, so that every BN matters."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-1, 1)
    module.eval()


def _affine(bn: nn.BatchNorm2d, t: torch.Tensor, ch: int) -> torch.Tensor:
    return (t - bn.running_mean[ch]) / torch.sqrt(bn.running_var[ch] + bn.eps) * bn.weight[ch] + bn.bias[ch]


def naive_binary(m: LesaBinary, x: torch.Tensor) -> torch.Tensor:
    """Loops over heads, queries and keys; the table row of offset (dy, dx) is written out from its definition."""
    _, c, h, w = x.shape
    g, dqk, dv, e = m.heads, m.dqk, m.dv, m.extent
    qkv = m.qkv(x)[0].flatten(1)  # (2 g dqk + c, n)
    pos = [(y, xx) for y in range(h) for xx in range(w)]

    def row(dy: int, dx: int) -> torch.Tensor:
        dy, dx = max(-(e - 1), min(e - 1, dy)), max(-(e - 1), min(e - 1, dx))
        return m.rel[(dy + e - 1) * (2 * e - 1) + dx + e - 1]

    out = torch.zeros(c, h * w)
    for n in range(g):
        q = qkv[n * dqk:(n + 1) * dqk]
        k = qkv[(g + n) * dqk:(g + n + 1) * dqk]
        v = qkv[2 * g * dqk + n * dv:2 * g * dqk + (n + 1) * dv]
        for i, (yi, xi) in enumerate(pos):
            logits, r_v = [], []
            for j, (yj, xj) in enumerate(pos):
                r_q = row(yi - yj, xi - xj)[:dqk]
                r_k = row(yj - yi, xj - xi)[dqk:2 * dqk]
                logits.append(_affine(m.bn_qk, q[:, i] @ k[:, j], n) + _affine(m.bn_qr, q[:, i] @ r_q, n)
                              + _affine(m.bn_kr, k[:, j] @ r_k, n))
                r_v.append(row(yi - yj, xi - xj)[2 * dqk:])
            a = torch.stack(logits).softmax(0)
            ch = slice(n * dv, (n + 1) * dv)
            sv, sve = v @ a, torch.stack(r_v, 1) @ a
            out[ch, i] = _affine(m.bn_sv, sv, ch) + _affine(m.bn_sve, sve, ch)
    return out.view(1, c, h, w)


@pytest.mark.parametrize("heads,size", [(2, (3, 4)), (1, (2, 5))])
def test_binary_term_and_its_deploy_form_equal_loops(heads, size):
    """Global attention: every query sees every key. extent 2 clamps the offsets |dx| >= 2 of these maps onto the
    edge rows of the table; 1 head of 6 value channels gives q and k 3 channels (half the value width)."""
    m = LesaBinary(6, heads, extent=2)
    _randomize_bns(m)
    x = torch.randn(1, 6, *size)
    with torch.no_grad():
        want = naive_binary(m, x)
        torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)
        deploy = reparameterize_model(m)
        assert not any(isinstance(b, nn.BatchNorm2d) for b in deploy.modules())
        torch.testing.assert_close(deploy(x), want, rtol=1e-5, atol=1e-5)


def test_offsets_are_2d_and_clamped():
    """2 x 3 map, extent 2 (table 3 x 3, row (dy + 1) * 3 + dx + 1): p_i - p_j = (-1, -2) clamps to (-1, -1) -> 0;
    (1, 2) -> (1, 1) -> 8; the diagonal is offset (0, 0) -> 4. The flattened-index offset of the official code
    would give (0, +1) and (+1, 1 - W) one entry: here they differ."""
    idx = lesa_offsets(2, 3, 2)
    assert idx.shape == (6, 6)
    assert idx[0, 5] == 0 and idx[5, 0] == 8 and (idx.diagonal() == 4).all()
    assert idx[1, 0] == 4 + 1 and idx[3, 2] == (1 + 1) * 3 + (-2 + 1) + 1  # (0, +1); (+1, -2) clamped to (+1, -1)


def test_binary_term_is_global():
    """A change at one corner reaches the opposite corner of a 9 x 9 map through the binary term, not the unary."""
    layer = LesaLayer(8, heads=2).eval()
    x = torch.randn(1, 8, 9, 9)
    y = x.clone()
    y[..., 0, 0] += 3.0
    with torch.no_grad():
        (u1, b1, _), (u2, b2, _) = layer.terms(x), layer.terms(y)
    assert torch.equal(u1[..., 8, 8], u2[..., 8, 8])
    assert (b1[..., 8, 8] - b2[..., 8, 8]).abs().max() > 1e-4


def test_gate_is_input_dependent_and_reads_both_terms():
    layer = LesaLayer(8, heads=2).eval()
    _randomize_bns(layer)
    with torch.no_grad():
        u1, b1, g1 = layer.terms(torch.randn(1, 8, 5, 5))
        _, _, g2 = layer.terms(torch.randn(1, 8, 5, 5))
        assert (g1 - g2).abs().max() > 1e-3  # two inputs, two gates
        assert g1.std(dim=(2, 3)).min() > 0  # it varies over the pixels of each channel
        assert ((g1 > 0) & (g1 < 1)).all()
        g_other = layer.gate(torch.cat([u1, b1 + torch.randn_like(b1)], dim=1))
        assert (g1 - g_other).abs().max() > 1e-3  # the binary term enters the gate, not just the unary one


@pytest.mark.parametrize("shift,opened", [(-100.0, False), (100.0, True)])
def test_a_closed_gate_gives_the_unary_term_alone(shift, opened):
    """The gate's last BN with weight 0 and a large bias pins sigmoid to 0 (or 1): out = ReLU(unary [+ binary])."""
    layer = LesaLayer(8, heads=2)
    _randomize_bns(layer)
    with torch.no_grad():
        layer.gate[2].bn.weight.zero_()
        layer.gate[2].bn.bias.fill_(shift)
        x = torch.randn(2, 8, 6, 7)
        unary, binary, _ = layer.terms(x)
        with_binary, without = torch.relu(unary + binary), torch.relu(unary)
        assert (with_binary - without).abs().max() > 1e-2  # the binary term would show if it were let in
        torch.testing.assert_close(layer(x), with_binary if opened else without, rtol=1e-6, atol=1e-6)


def test_stride_two_pools_the_fused_output():
    """Both terms and the gate at full resolution, 2x2 average pooling (ceil) of unary + g * binary, then ReLU."""
    layer = LesaLayer(8, stride=2, heads=2)
    _randomize_bns(layer)
    x = torch.randn(1, 8, 7, 9)
    with torch.no_grad():
        unary, binary, gate = layer.terms(x)
        want = torch.relu(F.avg_pool2d(unary + gate * binary, 2, 2, ceil_mode=True))
        got = layer(x)
    assert unary.shape[-2:] == (7, 9) and got.shape == (1, 8, 4, 5)
    torch.testing.assert_close(got, want)


def test_structure_and_widths_as_the_official_config():
    """LESA-ResNet-50 stage 4 (mid 512): 8 heads, q and k 32 channels a head, v 64; unary grouped 3x3 (8 groups)
    + 1x1; gate 1024 -> 512 -> 512. One head: no 1x1 after the 3x3 (the official code skips it)."""
    layer = LesaLayer(512, heads=_lesa_heads(512, None))
    b = layer.binary
    assert (b.heads, b.dqk, b.dv) == (8, 32, 64)
    assert b.qkv.conv.weight.shape == (1024, 512, 1, 1)
    assert b.rel.shape == (27 * 27, 32 + 32 + 64)
    assert layer.unary[0].groups == 8 and layer.unary[1].conv.weight.shape == (512, 512, 1, 1)
    assert [layer.gate[i].conv.weight.shape[:2] for i in (1, 2)] == [(512, 1024), (512, 512)]
    single = LesaLayer(6, heads=1)
    assert single.unary.conv.kernel_size == (3, 3) and single.unary.conv.groups == 1
    assert [_lesa_heads(m, None) for m in (256, 64, 8, 24, 2, 1)] == [8, 8, 4, 8, 1, 1]


def test_init_as_the_official_code():
    """qkv N(0, 1 / C_in) (the official Conv1d's reset_parameters), table N(0, 1 / d_v), no zero-initialized
    last BN: the residual branch is live at init (zero_init_residual is off in the official ResNet)."""
    op = operators.create_op("lesa", 1024, 1024)  # mid 256: d_v 32
    b = op.mixer.binary
    z = b.qkv.conv.weight.detach().double().flatten() * math.sqrt(256)
    assert abs(z.std().item() - 1) < 5 * math.sqrt(1 / (2 * z.numel()))
    z = b.rel.detach().double().flatten() * math.sqrt(32)
    assert abs(z.std().item() - 1) < 5 * math.sqrt(1 / (2 * z.numel()))
    assert torch.equal(op.expand.bn.weight, torch.ones(1024))
    x = torch.randn(1, 1024, 3, 3)
    with torch.no_grad():
        assert (op(x) - torch.relu(x)).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [dict(heads=3), dict(heads=0), dict(rel_extent=0), dict(expansion=0)])
def test_bad_keywords_are_refused(bad):
    with pytest.raises(ValueError, match="lesa: " + next(iter(bad))):
        operators.create_op("lesa", 64, 64, **bad)


def lesa_layer_flops(c: int, g: int, h: int, w: int) -> int:
    """Multiply-adds of the deploy-form layer (dqk = c / 2g, dv = c / g): qkv 1x1 (c -> 2c); q . k, q . r_q, k . r_k
    (dqk each) and a v, a r_v (dv each) over n^2 pairs; unary grouped 3x3 + 1x1; gate 1x1 2c -> c and c -> c."""
    n = h * w
    dqk, dv = c // (2 * g), c // g
    attention = g * n * n * (3 * dqk + 2 * dv)
    return n * c * 2 * c + attention + n * c * 9 * c // g + n * c * c + n * 2 * c * c + n * c * c


@pytest.mark.parametrize("stride", [1, 2])
def test_flops_follow_the_formula(stride):
    layer = LesaLayer(16, stride, heads=4).eval()
    deploy = reparameterize_model(layer)
    assert count_flops(deploy, (1, 16, 6, 5)) == lesa_layer_flops(16, 4, 6, 5)


def test_deploy_form_of_the_block_is_equal_and_leaner():
    op = operators.create_op("lesa", 16, 32, 2)
    _randomize_bns(op)
    deploy = reparameterize_model(copy.deepcopy(op))
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), op(x), rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in deploy.parameters()) < sum(p.numel() for p in op.parameters())
