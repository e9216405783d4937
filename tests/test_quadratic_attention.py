"""Quadratic-encoding attention (Cordonnier et al.): the layer against a loop reference (global, windowed with
its border renormalisation, with content), the paper's theorem (nine heads on the 3x3 grid are a 3x3
convolution, to a tolerance set by alpha), the single convolution that is exact in the interior, the deploy
form, the cache per resolution, the multiply-adds against a formula, and the official init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import operators
from nas.flops import count_flops
from operators.quadratic_attention import QuadraticAttention

GRID = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _naive(attn: QuadraticAttention, x: torch.Tensor) -> torch.Tensor:
    """(H, W, C) -> (H, W, C_out) by loops: head h scores key k from query q by -alpha_h / 2 ||k - q - mu_h||^2
    (+ q.k / sqrt(d) with content), softmax over the keys of the map (inside the K x K window around q when
    windowed: the renormalisation at the borders), averages the full-width x; value, then dense."""
    h, w, c = x.shape
    r = attn.window // 2
    mu, alpha = attn.centers.double(), attn.spreads.double() ** 2
    if attn.qk is not None:
        q, k = attn.qk(x).double().reshape(h, w, 2, attn.heads, attn.key_dim).unbind(2)
    out = torch.zeros(h, w, attn.heads, c, dtype=torch.float64)
    for qy in range(h):
        for qx in range(w):
            for head in range(attn.heads):
                logits, values = [], []
                for ky in range(h):
                    for kx in range(w):
                        dy, dx = ky - qy, kx - qx
                        if attn.window and (abs(dy) > r or abs(dx) > r):
                            continue
                        s = -alpha[head] / 2 * ((dy - mu[head, 0]) ** 2 + (dx - mu[head, 1]) ** 2)
                        if attn.qk is not None:
                            s = s + q[qy, qx, head] @ k[ky, kx, head] / math.sqrt(attn.key_dim)
                        logits.append(s)
                        values.append(x[ky, kx].double())
                p = torch.stack(logits).softmax(0)
                out[qy, qx, head] = (p[:, None] * torch.stack(values)).sum(0)
    return attn.dense(attn.value(out.reshape(h, w, -1).float()))


@pytest.mark.parametrize("kw,size", [({}, (3, 4)), ({"window": 3}, (4, 5)), ({"window": 5}, (2, 6)),
                                     ({"content": True, "key_dim": 4}, (3, 3)), ({"heads": 2}, (1, 1))])
def test_layer_matches_a_loop_reference(kw, size):
    torch.manual_seed(0)
    kw = {"heads": 3, **kw}
    attn = operators.create_op("quadratic_attention", 6, 5, **kw).attn
    x = torch.randn(*size, 6)
    with torch.no_grad():
        torch.testing.assert_close(attn(x[None])[0], _naive(attn, x), rtol=1e-4, atol=1e-5)


def _on_the_grid(attn: QuadraticAttention, alpha: float) -> torch.Tensor:
    """Put the nine heads' centres on the 3x3 grid with spread sqrt(alpha); return the 3x3 kernel built from
    the value blocks W_h (head h at its offset mu_h)."""
    with torch.no_grad():
        attn.centers.copy_(torch.tensor(GRID, dtype=torch.float32))
        attn.spreads.fill_(math.sqrt(alpha))
    blocks, _ = attn.value_blocks()
    kernel = torch.zeros(blocks.shape[0], blocks.shape[2], 3, 3)
    for head, (dy, dx) in enumerate(GRID):
        kernel[:, :, dy + 1, dx + 1] = blocks[:, head]
    return kernel


@pytest.mark.parametrize("alpha", [60.0, 12.0, 6.0])
def test_the_theorem_nine_heads_on_the_grid_are_a_3x3_convolution(alpha):
    """Cordonnier et al., Theorem 1: with N_h = 9 heads centred on the 3x3 grid and alpha large, the layer is
    the 3x3 convolution whose kernel holds W_h at offset mu_h. On the whole map, the nearest key inside the map
    to q + mu_h is q + mu_h clamped: replicate padding. Every other key is at least one squared pixel farther,
    so the error is below 2 max|x| sum_h ||W_h||_inf 5 exp(-alpha / 2): the tolerance that alpha sets."""
    torch.manual_seed(0)
    attn = operators.create_op("quadratic_attention", 8, 6, heads=9).attn.eval()
    kernel = _on_the_grid(attn, alpha)
    blocks, bias = attn.value_blocks()
    x = torch.randn(2, 7, 9, 8)
    with torch.no_grad():
        got = attn(x)
        conv = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate"), kernel, bias)
    err = (got - conv.permute(0, 2, 3, 1)).abs().max().item()
    bound = 2 * x.abs().max().item() * blocks.abs().sum(2).max(0).values.sum().item() * 5 * math.exp(-alpha / 2)
    assert err <= bound + 1e-5, (err, bound)
    if alpha <= 6:
        assert err > 1e-3  # a small alpha is not yet a convolution: the tolerance is alpha's
    with torch.no_grad():  # the single conv of the theorem (zero padding) holds the same kernel
        single = attn.equivalent_conv(3)
    torch.testing.assert_close(single.weight, kernel, atol=bound + 1e-6, rtol=0)
    with torch.no_grad():
        interior = single(x.permute(0, 3, 1, 2))[:, :, 1:-1, 1:-1]
    torch.testing.assert_close(interior, conv[:, :, 1:-1, 1:-1], atol=bound + 1e-5, rtol=0)


@pytest.mark.parametrize("window,size", [(3, (6, 7)), (5, (9, 8)), (7, (11, 12))])
def test_windowed_layer_is_one_convolution_in_the_interior_only(window, size):
    """For any centres and spreads, the windowed layer equals ``equivalent_conv`` (one K x K convolution) at
    every query whose window lies inside the map, exactly; at the borders the per-head renormalisation differs
    from it, which is why the deploy form keeps the per-head form (module docstring)."""
    torch.manual_seed(1)
    attn = operators.create_op("quadratic_attention", 8, 6, heads=9, window=window).attn.eval()
    with torch.no_grad():
        attn.centers.mul_(0.5)  # keep most of each head's mass inside the window, as training finds it
        x = torch.randn(2, *size, 8)
        got = attn(x).permute(0, 3, 1, 2)
        single = attn.equivalent_conv()(x.permute(0, 3, 1, 2))
    r = window // 2
    torch.testing.assert_close(single[:, :, r:-r, r:-r], got[:, :, r:-r, r:-r], rtol=1e-5, atol=1e-5)
    assert (single - got).abs().amax((0, 1))[0].max() > 1e-3  # the top row: renormalised, not zero padded


@pytest.mark.parametrize("kw", [{}, {"window": 5}, {"content": True}])
def test_deploy_folds_the_dense_and_fixes_the_window_kernels(kw):
    torch.manual_seed(0)
    op = operators.create_op("quadratic_attention", 16, 24, 2, **kw).eval()
    with torch.no_grad():
        for p in op.parameters():
            p.add_(0.1 * torch.randn_like(p))
    deploy = operators.reparameterize_model(op)
    assert deploy.attn.dense is None
    if kw.get("window"):
        assert deploy.attn.centers is None and deploy.attn.kernel.shape == (9, 5, 5)
    x = torch.randn(2, 16, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), op(x), rtol=1e-4, atol=1e-5)  # everywhere, borders included
    shape = (1, 16, 14, 14)
    assert count_flops(deploy, shape) < count_flops(op, shape, deploy=False)


def test_probabilities_are_cached_per_resolution_and_see_changed_parameters():
    torch.manual_seed(0)
    attn = operators.create_op("quadratic_attention", 8, 8).attn.eval()
    x, y = torch.randn(1, 5, 6, 8), torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        first = attn(x)
        assert len(attn._cache) == 1
        torch.testing.assert_close(attn(x), first, rtol=0, atol=0)
        attn(y)
        assert len(attn._cache) == 2
        attn.centers.add_(1.0)  # a new parameter version: the cached probabilities are stale
        moved = attn(x)
    fresh = attn(x)  # with autograd on nothing is cached
    torch.testing.assert_close(moved, fresh.detach())
    assert (moved - first).abs().max() > 1e-3
    attn.train()
    with torch.no_grad():
        attn._cache.clear()
        attn(x)
    assert not attn._cache  # training mode never caches


def test_multiply_adds_match_the_formula():
    """One multiply-add = one FLOP, deploy form (the dense folded): the averages N_h N^2 C, the value map
    N N_h C C_out, the FFN 2 N C M, two LayerNorms (fvcore: 5 per element); windowed, N N_h K^2 C and the
    normaliser's N N_h K^2 instead of N_h N^2 C; with content, q and k (N C 2 N_h d) and their products N_h N^2 d."""
    c, side, heads, k, d = 32, 6, 9, 5, 8
    n, m = side * side, round(1.28 * c)
    rest = n * heads * c * c + 2 * n * c * m + 10 * n * c
    shape = (1, c, side, side)
    assert count_flops(operators.create_op("quadratic_attention", c, c), shape) == heads * n * n * c + rest
    assert count_flops(operators.create_op("quadratic_attention", c, c), shape, deploy=False) == \
        heads * n * n * c + rest + n * c * c
    windowed = operators.create_op("quadratic_attention", c, c, window=k)
    assert count_flops(windowed, shape) == n * heads * k * k * c + n * heads * k * k + rest
    content = operators.create_op("quadratic_attention", c, c, content=True, key_dim=d)
    assert count_flops(content, shape) == heads * n * n * c + rest + n * c * 2 * heads * d + heads * n * n * d


def test_init_is_the_official_one():
    torch.manual_seed(0)
    attn = QuadraticAttention(4, 4, heads=4000)
    mu, spread = attn.centers.detach().double(), attn.spreads.detach().double()
    n = mu.numel()
    assert abs(mu.mean().item()) < 5 * 2 / math.sqrt(n) and abs(mu.std().item() - 2) < 5 * 2 / math.sqrt(2 * n)
    assert abs(spread.mean().item() - 1) < 5 * 0.01 / math.sqrt(4000)
    assert abs(spread.std().item() - 0.01) < 5 * 0.01 / math.sqrt(2 * 4000)


@pytest.mark.parametrize("kw,match", [({"window": 4}, "window=4"), ({"window": True}, "window=True"),
                                      ({"content": True, "window": 7}, "content=True needs the global"),
                                      ({"heads": 0}, "heads=0"), ({"mlp_ratio": 0.0}, "mlp_ratio=0.0"),
                                      ({"content": 1}, "content=1")])
def test_bad_keywords_are_refused_in_one_line(kw, match):
    with pytest.raises(ValueError, match=rf"^quadratic_attention: {match}"):
        operators.create_op("quadratic_attention", 16, 16, **kw)


def test_content_layer_is_no_convolution():
    attn = operators.create_op("quadratic_attention", 8, 8, content=True).attn
    with pytest.raises(ValueError, match="no convolution"):
        attn.equivalent_conv(3)
