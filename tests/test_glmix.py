"""GLMix (GLNet): the two softmax axes, the slots against a loop reference, the slot grid at small maps, the
dispatch reusing the initial slots' logits, the exact FLOPs formula, the stage alternation and the init."""

from __future__ import annotations

import math

import pytest
import torch

import operators
from nas.flops import count_flops
from nas.network import stage_layers
from operators.glmix import GLMixMHSA, GLMixMixer, glmix


def _mixer(dim: int = 8, heads: int = 2, slots: int = 16, scale: float = 3.0, seed: int = 0) -> GLMixMixer:
    torch.manual_seed(seed)
    m = GLMixMixer(dim, heads, slots, 5).double()
    with torch.no_grad():
        m.slot_scale.fill_(scale)  # peaked softmaxes: a wrong axis shows
        for p in m.attn.parameters():
            p.add_(0.1 * torch.randn_like(p))  # biases off zero
    return m


def _naive_global(m: GLMixMixer, x: torch.Tensor) -> torch.Tensor:
    """The global branch for one image by loops: adaptive-pooled initial slots (bins [floor(i H / g),
    ceil((i + 1) H / g)), the grid shrunk to the map), scaled cosine logits, softmax over pixels to cluster,
    per-head attention among the slots, softmax over slots (same logits) to dispatch."""
    c, h, w = x.shape
    gh, gw = min(m.grid, h), min(m.grid, w)
    init = []
    for i in range(gh):
        for j in range(gw):
            r0, r1 = i * h // gh, -(-(i + 1) * h // gh)
            c0, c1 = j * w // gw, -(-(j + 1) * w // gw)
            init.append(x[:, r0:r1, c0:c1].mean((1, 2)))
    pixels = [x[:, r, col] for r in range(h) for col in range(w)]
    s, n = len(init), len(pixels)
    logit = [[float(m.slot_scale) * float(a @ p) / (float(a.norm()) * float(p.norm())) for p in pixels]
             for a in init]
    slots = []
    for i in range(s):
        z = sum(math.exp(logit[i][k]) for k in range(n))
        slots.append(sum(math.exp(logit[i][k]) / z * pixels[k] for k in range(n)))
    heads, d = m.attn.heads, c // m.attn.heads
    qkv = [m.attn.qkv.weight @ t + m.attn.qkv.bias for t in slots]
    mixed = []
    for i in range(s):
        out = []
        for hd in range(heads):
            q = qkv[i][hd * d:(hd + 1) * d]
            e = [math.exp(float(q @ qkv[j][c + hd * d:c + (hd + 1) * d]) / math.sqrt(d)) for j in range(s)]
            out.append(sum(e[j] / sum(e) * qkv[j][2 * c + hd * d:2 * c + (hd + 1) * d] for j in range(s)))
        mixed.append(m.attn.proj.weight @ torch.cat(out) + m.attn.proj.bias)
    res = torch.zeros(c, h * w, dtype=x.dtype)
    for k in range(n):
        z = sum(math.exp(logit[i][k]) for i in range(s))
        res[:, k] = sum(math.exp(logit[i][k]) / z * mixed[i] for i in range(s))
    return res.view(c, h, w)


@pytest.mark.parametrize("size", [(5, 6), (2, 5), (1, 1)])  # 3x3 grid: overlapping bins, shrunk, one slot
def test_mixer_matches_the_loop_reference(size):
    m = _mixer(slots=9)
    x = torch.randn(1, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        got, want = m(x) - m.local(x), _naive_global(m, x[0])
    torch.testing.assert_close(got[0], want, rtol=1e-9, atol=1e-10)


def test_clustering_sums_over_pixels_and_dispatching_over_slots():
    m = _mixer(scale=5.0)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        cluster, dispatch = m.assignments(x)
    assert cluster.shape == (2, 16, 42) and dispatch.shape == (2, 42, 16)
    ones = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(cluster.sum(-1), ones.expand(2, 16))  # each slot: a convex combination of pixels
    torch.testing.assert_close(dispatch.sum(-1), ones.expand(2, 42))  # each pixel: a convex combination of slots
    assert (cluster.sum(1) - 1).abs().max() > 0.1  # ... and not the other way round
    assert (dispatch.sum(1) - 1).abs().max() > 0.1


def test_dispatch_uses_the_initial_slots_logits():
    """Scaling the slot attention's output scales the global branch exactly: the dispatch weights do not depend
    on the updated slots (a second comparison with them would change the weights)."""
    m = _mixer()
    x = torch.randn(1, 8, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        before = m(x) - m.local(x)
        m.attn.proj.weight.mul_(3.0)
        m.attn.proj.bias.mul_(3.0)
        torch.testing.assert_close(m(x) - m.local(x), 3.0 * before)


@pytest.mark.parametrize("size,slots", [((16, 16), 64), ((9, 8), 64), ((5, 7), 35), ((1, 1), 1), ((1, 12), 8)])
def test_slot_grid_is_8x8_shrunk_to_the_map(size, slots):
    m = GLMixMixer(16, 2)
    with torch.no_grad():
        assert m.logits(torch.randn(1, 16, *size)).shape == (1, slots, size[0] * size[1])


def test_one_pixel_map_is_attention_over_that_pixel():
    """1x1: one slot, the pixel itself; attention over one token returns its value: proj(W_v p + b_v)."""
    m = _mixer()
    x = torch.randn(3, 8, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        v = x.flatten(1) @ m.attn.qkv.weight[16:].T + m.attn.qkv.bias[16:]
        want = m.attn.proj(v).view(3, 8, 1, 1) + m.local(x)
        torch.testing.assert_close(m(x), want)


@pytest.mark.parametrize("side", [8, 16])
def test_flops_formula(side):
    """Deploy form, C = 16, side x side map (N pixels), S = 64 slots, 2 heads, MLP 3C: every multiply-add
    counted, and linear in N. Per pixel: CPE 9C, norm as DW 1x1 C, local 2C^2 + 25C, pooling C (fvcore: one
    per input element), logits, clustering and dispatching 3SC, MLP 2 x 3C^2 + 27C (fc1, DW 3x3 on 3C, fc2);
    per image: qkv 3SC^2, attention among the slots 2S^2C, projection SC^2."""
    c, n, s = 16, side * side, 64
    want = n * (9 * c + c + 2 * c * c + 25 * c + c + 3 * s * c + 6 * c * c + 27 * c) + 3 * s * c * c \
        + 2 * s * s * c + s * c * c
    assert count_flops(glmix(16, 16, heads=2), (1, 16, side, side)) == want


def test_stage_alternates_glmix_and_mhsa_only_when_asked():
    def kinds(**kw):
        layers = stage_layers(glmix, 16, 16, 4, 1, operators.get_spec("glmix").alternate, heads=2, **kw)
        return [type(layer.mixer).__name__ for layer in layers]
    assert kinds() == ["GLMixMixer"] * 4
    assert kinds(mixer="glmix_mhsa") == ["GLMixMixer", "GLMixMHSA"] * 2  # GLNet: i % 2 == 0 is GLMix
    assert kinds(mixer="mhsa") == ["GLMixMHSA"] * 4


def test_init_as_the_official_code():
    torch.manual_seed(0)
    block = glmix(32, 64, stride=2)
    mixer = block.mixer
    assert mixer.slot_scale.item() == pytest.approx(64 ** -0.5)  # learnable, C^-1/2
    assert mixer.attn.qkv.init_scheme == "xavier" and mixer.attn.proj.init_scheme == "trunc_normal"
    bound = math.sqrt(6 / (64 + 3 * 64))  # Glorot over the whole (3C, C) in_proj, as nn.MultiheadAttention
    assert mixer.attn.qkv.weight.abs().max() <= bound and mixer.attn.qkv.weight.abs().max() > 0.9 * bound
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.init_scheme == "torch_default" for m in convs)
    assert isinstance(glmix(64, 64, mixer="mhsa").mixer, GLMixMHSA)


@pytest.mark.parametrize("bad,match", [({"slots": 50}, "square"), ({"mixer": "mha"}, "glmix_mhsa"),
                                       ({"kernel_size": 4}, "odd"), ({"cpe_kernel": 2}, "odd"),
                                       ({"heads": 3}, "divisor of 64")])
def test_bad_keywords_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        glmix(64, 64, **bad)


def test_stem_and_downsampler_shapes_and_deploy():
    stem = operators.get_stem("glnet").factory(3, 16)
    down = operators.get_downsampler("glnet").factory(16, 32, 2)
    x = torch.randn(2, 3, 30, 29)
    with torch.no_grad():
        y = stem.train()(x)
        z = down.train()(y)
    assert y.shape == (2, 16, 8, 8) and z.shape == (2, 32, 4, 4)
    assert stem[0].conv.bias is not None and stem[0].conv.out_channels == 8  # width / 2, convs with bias
    stem.eval()
    deploy = operators.reparameterize_model(stem)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), stem(x), rtol=1e-4, atol=1e-5)
