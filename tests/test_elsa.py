"""ELSA (operators/elsa.py): the neighbourhood softmax, a naive per-pixel reference of the whole mixer (zero
padding, head layout, ghost head), the exactness of the ghost-head fold, the FLOPs fvcore counts against a
formula, the parameter count of an ELSA-Swin-T block, the init and the keyword checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import operators
from nas.flops import flop_analysis, unsupported_ops
from operators.elsa import ElsaAttention, elsa_qk_dim

MODES = ("add", "mul", "both", "none")


def _mixer(ghost: str, dim: int = 16, heads: int = 2, kernel: int = 3, seed: int = 0) -> ElsaAttention:
    """A tiny float64 mixer with every parameter moved off its init (zero biases, a 0.02 ghost)."""
    torch.manual_seed(seed)
    m = ElsaAttention(dim, heads, kernel, ghost, group_width=8).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


@torch.no_grad()
def naive_elsa(m: ElsaAttention, x: torch.Tensor) -> torch.Tensor:
    """ELSA pixel by pixel from the parameters, (B, H, W, C) -> (B, H, W, C): official semantics written out.

    Neighbours outside the map count as zero values (and zero inputs of the grouped conv), but keep their
    softmax weight, as the official zero-padded unfold does."""
    b, h, w, c = x.shape
    k, r, heads, dqk = m.kernel, m.kernel // 2, m.heads, m.dim_qk
    d = c // heads
    wp, bp = m.pre_proj.weight[:, :, 0, 0], m.pre_proj.bias
    conv, logit_conv = m.attn[0], m.attn[2]
    gw = dqk // conv.groups
    wg = conv.weight.view(conv.groups, gw, gw, k, k)  # (group, out in group, in in group, k, k)
    g_mul = m.ghost_mul if m.ghost_mul is not None else torch.ones(c, k, k, dtype=x.dtype)
    g_add = m.ghost_add if m.ghost_add is not None else torch.zeros(c, k, k, dtype=x.dtype)
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]  # row-major, as F.unfold
    out = torch.zeros_like(x)
    for n in range(b):
        qkv = torch.einsum("oc,yxc->yxo", wp, x[n]) + bp
        q, key, v = qkv[..., :dqk], qkv[..., dqk:2 * dqk], qkv[..., 2 * dqk:]
        had = q * key  # (H, W, dqk)
        for y in range(h):
            for x0 in range(w):
                hid = conv.bias.clone()
                for dy, dx in offsets:
                    if 0 <= y + dy < h and 0 <= x0 + dx < w:
                        patch = had[y + dy, x0 + dx].view(conv.groups, gw)
                        hid += torch.einsum("goi,gi->go", wg[..., dy + r, dx + r], patch).reshape(-1)
                hid = F.gelu(hid)
                logits = logit_conv.weight[:, :, 0, 0] @ hid + logit_conv.bias  # (heads * k^2,)
                acc = torch.zeros(c, dtype=x.dtype)
                for head in range(heads):
                    e = logits[head * k * k:(head + 1) * k * k].exp()
                    attn = e / e.sum()
                    for j, (dy, dx) in enumerate(offsets):
                        if not (0 <= y + dy < h and 0 <= x0 + dx < w):
                            continue  # a zero value, whatever its weight
                        ch = slice(head * d, (head + 1) * d)
                        filt = g_mul[ch, dy + r, dx + r] * attn[j] + g_add[ch, dy + r, dx + r]
                        acc[ch] += filt * v[y + dy, x0 + dx, ch]
                out[n, y, x0] = m.post_proj.weight @ acc + m.post_proj.bias
    return out


@pytest.mark.parametrize("ghost", MODES)
def test_matches_a_naive_per_pixel_reference(ghost):
    m = _mixer(ghost)
    for h, w in [(3, 4), (1, 2)]:  # a 1 x 2 map: almost every neighbour is outside
        x = torch.randn(1, h, w, 16, dtype=torch.float64)
        torch.testing.assert_close(m(x), naive_elsa(m, x), rtol=1e-9, atol=1e-10)


def test_attention_is_a_softmax_over_each_neighbourhood():
    torch.manual_seed(0)
    m = ElsaAttention(16, 2, 5, "both").double()  # at init the logits are small: nearly uniform weights
    x = torch.randn(2, 16, 4, 6, dtype=torch.float64)
    attn, v = m.attention(x)
    assert attn.shape == (2, 2, 25, 24) and v.shape == (2, 16, 4, 6)
    assert (attn > 0).all()
    torch.testing.assert_close(attn.sum(dim=2), torch.ones(2, 2, 24, dtype=torch.float64))
    # Zero padding, not masking: the top-left pixel gives weight to its 16 outside neighbours (offsets with
    # dy < 0 or dx < 0 in the 5 x 5 window, row-major) although their values are 0: about 16 / 25 of it.
    outside = torch.tensor([dy < 0 or dx < 0 for dy in range(-2, 3) for dx in range(-2, 3)])
    assert int(outside.sum()) == 16
    assert (attn[:, :, outside, 0].sum(dim=2) > 0.4).all()


@pytest.mark.parametrize("ghost", MODES)
def test_ghost_fold_is_exact(ghost):
    m = _mixer(ghost, kernel=5)
    before = sum(p.numel() for p in m.parameters())
    g_add = None if m.ghost_add is None else m.ghost_add.detach().clone()
    xs = [torch.randn(2, h, w, 16, dtype=torch.float64) for h, w in [(1, 1), (2, 3), (7, 9)]]
    want = [m(x) for x in xs]
    m.reparameterize()
    m.reparameterize()  # idempotent
    if g_add is None:  # nothing static to fold: G_mul multiplies the input-dependent attention
        assert m.ghost_dw is None
    else:
        assert m.ghost_add is None
        torch.testing.assert_close(m.ghost_dw, g_add.unsqueeze(1), rtol=0, atol=0)  # a (C, 1, k, k) kernel
    assert sum(p.numel() for p in m.parameters()) == before
    for x, y in zip(xs, want):
        torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)


def test_fold_identity_with_an_independent_depthwise_conv():
    """sum_j v_j (G_mul,j A_j + G_add,j) = sum_j v_j G_mul,j A_j + depthwise_conv(v, G_add), zero padding."""
    torch.manual_seed(1)
    c, k, h, w = 4, 3, 5, 4
    a = torch.rand(1, 1, k * k, h * w, dtype=torch.float64)  # one head
    v = torch.randn(1, c, h, w, dtype=torch.float64)
    g_mul, g_add = torch.randn(c, k * k, 1, dtype=torch.float64), torch.randn(c, k, k, dtype=torch.float64)
    vals = F.unfold(v, k, padding=1).view(1, c, k * k, h * w)
    fused = (vals * (g_mul * a[0] + g_add.view(c, k * k, 1))).sum(2).view(1, c, h, w)
    split = (vals * g_mul * a[0]).sum(2).view(1, c, h, w) + F.conv2d(v, g_add.unsqueeze(1), padding=1, groups=c)
    torch.testing.assert_close(fused, split)


@pytest.mark.parametrize("ghost", ["add", "both", "none"])
def test_flops_are_the_formula(ghost):
    dim, heads, k, h, w = 32, 2, 3, 8, 6
    n, dqk = h * w, elsa_qk_dim(dim, 8)
    assert dqk == 24  # 32 // 3 * 2 = 20, rounded up to a multiple of 8
    m = ElsaAttention(dim, heads, k, ghost, group_width=8).eval()
    x = torch.zeros(1, h, w, dim)
    convs = n * (dim * (2 * dqk + dim) + dqk * 8 * k * k + dqk * heads * k * k)  # qkv, grouped k x k, logits
    fold = n * dim * k * k if ghost != "none" else 0  # the folded G_add: a depthwise k x k conv
    for model, conv_flops in [(m, convs), (operators.reparameterize_model(m), convs + fold)]:
        with torch.no_grad():
            counts = flop_analysis(model, (x,)).by_operator()
        assert counts["conv"] == conv_flops and counts["linear"] == n * dim * dim  # post_proj
        # the filters on the unfolded values; fvcore's einsum count keeps 4 significant digits (numpy's print)
        assert counts["einsum"] == pytest.approx(n * dim * k * k, rel=1e-3)
    for deploy in (True, False):
        assert not unsupported_ops(m, tuple(x.shape), deploy=deploy)


def test_elsa_swin_t_block_parameters():
    """One ELSA-Swin-T stage-1 block (C = 96, 3 heads, k = 7, group width 4, ghost 'add', MLP ratio 4)."""
    c, k, dqk, gw = 96, 7, 64, 4
    want = (2 * 2 * c  # two LayerNorms
            + c * (2 * dqk + c) + (2 * dqk + c)  # qkv 1x1 conv with bias
            + dqk * gw * k * k + dqk  # grouped k x k conv
            + dqk * 3 * k * k + 3 * k * k  # logits 1x1 conv
            + c * k * k  # ghost G_add
            + c * c + c  # post_proj
            + 2 * c * 4 * c + 4 * c + c)  # MLP
    op = operators.create_op("elsa", c, c, group_width=gw)
    assert op.mixer.heads == 3 and op.mixer.dim_qk == dqk
    assert sum(p.numel() for p in op.parameters()) == want


def test_init_as_the_official_code():
    torch.manual_seed(0)
    op = operators.create_op("elsa", 64, 64, ghost="both")
    m = op.mixer
    assert {m.pre_proj.init_scheme, m.attn[0].init_scheme, m.attn[2].init_scheme} == {"torch_default"}
    assert m.post_proj.init_scheme == op.mlp.fc1.init_scheme == "trunc_normal"
    assert m.pre_proj.bias.abs().sum() > 0  # PyTorch's default bias, not zeroed
    n = m.ghost_mul.numel()
    assert abs(m.ghost_mul.std().item() - 1.0) < 5 / math.sqrt(2 * n)  # torch.randn
    assert abs(m.ghost_add.std().item() / 0.02 - 1.0) < 5 / math.sqrt(2 * n)  # trunc normal 0.02


@pytest.mark.parametrize("bad,match", [({"kernel": 4}, "odd"), ({"ghost": "sum"}, "not one of"),
                                       ({"heads": 5}, "divisor"), ({"group_width": 0}, "an integer >= 1")])
def test_bad_keywords_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        operators.create_op("elsa", 32, 32, **bad)
