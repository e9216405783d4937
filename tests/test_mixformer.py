"""MixFormer: the mixing block against a window-by-window definition (non-shifted windows, padded keys left out,
windows shrunk to small maps), which gate goes where (the channel gate scales the attention's values, the
spatial gate the conv branch), parameter counts from the official module list, the stem, and keywords."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import operators
from operators.mixformer import MixFormerMixer


def _bn(x: torch.Tensor, bn) -> torch.Tensor:
    """Eval-mode BatchNorm written out, on (B, C, ...)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def _pointwise(x: torch.Tensor, conv) -> torch.Tensor:
    """A 1x1 conv as a matrix product on (B, C, H, W)."""
    return torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias.view(1, -1, 1, 1)


def _naive_mixer(m: MixFormerMixer, x: torch.Tensor) -> torch.Tensor:
    """The mixing attention of the paper on (B, H, W, C), one window and one head at a time.

    Windows are the non-shifted M x M tiles of the map from the top-left corner (M shrunk to the map per axis);
    a window at the bottom/right border holds only its real pixels. Channel gate: the depthwise branch averaged
    over the map -> 1x1, BN, GELU, 1x1 -> sigmoid, multiplying v's channels (head-major). Spatial gate: the
    attention output -> 1x1, BN, GELU, 1x1 -> sigmoid, multiplying the projected conv branch, then BN."""
    b, h, w, c = x.shape
    half, heads = c // 2, m.heads
    d = half // heads
    a = F.layer_norm(x @ m.proj_attn.weight.T + m.proj_attn.bias, (half,), m.proj_attn_norm.weight,
                     m.proj_attn_norm.bias)
    cnn = F.layer_norm(x @ m.proj_cnn.weight.T + m.proj_cnn.bias, (c,), m.proj_cnn_norm.weight, m.proj_cnn_norm.bias)
    dw = m.dwconv.conv
    cnn = F.gelu(_bn(F.conv2d(cnn.permute(0, 3, 1, 2), dw.weight, dw.bias, padding=dw.padding, groups=c), m.dwconv.bn))
    ci1, ci2 = m.channel_interaction[0], m.channel_interaction[1]
    pooled = cnn.mean((2, 3), keepdim=True)
    channel_gate = torch.sigmoid(_pointwise(F.gelu(_bn(_pointwise(pooled, ci1.conv), ci1.bn)), ci2))[:, :, 0, 0]
    cnn = _pointwise(cnn, m.projection)
    qkv = a @ m.qkv.weight.T + m.qkv.bias
    q, k, v = qkv[..., :half], qkv[..., half:2 * half], qkv[..., 2 * half:]
    v = v * channel_gate[:, None, None, :]
    wh, ww = min(m.window, h), min(m.window, w)
    ext = m.rel.extent
    att = torch.zeros(b, h, w, half)
    for n in range(b):
        for y0 in range(0, h, wh):
            for x0 in range(0, w, ww):
                cells = [(yy, xx) for yy in range(y0, min(y0 + wh, h)) for xx in range(x0, min(x0 + ww, w))]
                ys, xs = torch.tensor([y for y, _ in cells]), torch.tensor([x for _, x in cells])
                # table row of the offset (query - key) inside the window, as Swin indexes it
                idx = (ys[:, None] - ys[None, :] + ext - 1) * (2 * ext - 1) + xs[:, None] - xs[None, :] + ext - 1
                for head in range(heads):
                    ch = slice(head * d, (head + 1) * d)
                    qs, ks, vs = (t[n, ys, xs, ch] for t in (q, k, v))
                    out = torch.softmax(qs @ ks.T / math.sqrt(d) + m.rel.table[idx, head], dim=-1) @ vs
                    for i, (yy, xx) in enumerate(cells):
                        att[n, yy, xx, ch] = out[i]
    si1, si2 = m.spatial_interaction[0], m.spatial_interaction[1]
    spatial = att.permute(0, 3, 1, 2)
    spatial_gate = torch.sigmoid(_pointwise(F.gelu(_bn(_pointwise(spatial, si1.conv), si1.bn)), si2))
    cnn = _bn(spatial_gate * cnn, m.conv_norm)
    a_out = F.layer_norm(att, (half,), m.attn_norm.weight, m.attn_norm.bias)
    return torch.cat([a_out, cnn.permute(0, 2, 3, 1)], -1) @ m.proj.weight.T + m.proj.bias


@torch.no_grad()
def _random_eval_mixer(dim: int = 16, heads: int = 2, window: int = 7, seed: int = 0) -> MixFormerMixer:
    torch.manual_seed(seed)
    m = MixFormerMixer(dim, heads, window)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    for p in m.parameters():
        p.add_(torch.randn_like(p) * 0.2)
    return m.eval()


@pytest.mark.parametrize("h,w,window", [(14, 14, 7), (9, 11, 7), (3, 5, 7), (7, 10, 3)])
def test_mixer_matches_its_definition(h, w, window):
    """14x14: 4 full windows (a shifted window or a per-window conv would differ); 9x11: padded to 14x14 and the
    padding kept out of the softmax, the conv and the pooling; 3x5: the window shrinks to the map; 7x10 at
    window 3: 3x4 windows, ragged on both axes."""
    m = _random_eval_mixer(window=window)
    x = torch.randn(2, h, w, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _naive_mixer(m, x), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_channel_gate_scales_the_attention_values():
    """A channel gate of 0 on head 0's channels zeroes head 0's attention output and nothing else; a gate of 0
    everywhere makes the output independent of the queries and keys (all values are 0). Were the gate applied
    to the conv branch instead, neither would hold."""
    m = _random_eval_mixer()
    last = m.channel_interaction[1]
    d = (16 // 2) // m.heads
    last.weight[:d].zero_()
    last.bias[:d] = -1e4
    seen = []
    m.attn_norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 9, 9, 16)
    m(x)
    att = seen[0]
    assert att[..., :d].abs().max() == 0
    assert att[..., d:].abs().min() > 0
    last.weight.zero_()
    last.bias.fill_(-1e4)
    before = m(x)
    m.qkv.weight[:16].normal_()  # the query and key rows
    torch.testing.assert_close(m(x), before, rtol=0, atol=0)


@torch.no_grad()
def test_spatial_gate_multiplies_the_conv_branch():
    """With a spatial gate of 0 the projected conv branch is gone, so the projection's weights no longer matter
    (the channel gate is taken before the projection); with the gate open they do."""
    m = _random_eval_mixer()
    x = torch.randn(2, 9, 9, 16)
    before = m(x)
    m.projection.weight.normal_()
    assert not torch.allclose(m(x), before)
    last = m.spatial_interaction[1]
    last.weight.zero_()
    last.bias.fill_(-1e4)
    before = m(x)
    m.projection.weight.normal_()
    m.projection.bias.normal_()
    torch.testing.assert_close(m(x), before, rtol=0, atol=0)


def _block_params(c: int, heads: int, window: int = 7, mlp_ratio: int = 4) -> int:
    """The official MixingBlock's parameters, module by module (every conv and linear with a bias)."""
    half, r8, r16 = c // 2, c // 8, c // 16
    return (2 * c  # norm1
            + c * half + half + 2 * half  # proj_attn, proj_attn_norm
            + c * c + c + 2 * c  # proj_cnn, proj_cnn_norm
            + 9 * c + c + 2 * c  # depthwise 3x3 + BN
            + c * r8 + r8 + 2 * r8 + r8 * half + half  # channel interaction
            + c * half + half + 2 * half  # projection, conv_norm
            + half * 3 * half + 3 * half + (2 * window - 1) ** 2 * heads  # qkv, relative bias table
            + half * r16 + r16 + 2 * r16 + r16 + 1  # spatial interaction
            + 2 * half + c * c + c  # attn_norm, proj
            + 2 * c + c * mlp_ratio * c + mlp_ratio * c + mlp_ratio * c * c + c)  # norm2, MLP


@pytest.mark.parametrize("c,heads", [(64, 4), (512, 32)])
def test_block_parameters_match_the_official_module_list(c, heads):
    with torch.device("meta"):
        op = operators.create_op("mixformer", c, c)
    assert op.mixer.heads == heads  # head dim 8 on the c / 2 attention channels: MixFormer-B4's 4 ... 32
    assert sum(p.numel() for p in op.parameters()) == _block_params(c, heads)


def test_merging_is_bn_then_2x2_conv_and_folds():
    """ConvMerging: BN(in) + 2x2 stride-2 conv with bias; deploy folds the BN exactly, odd maps included."""
    with torch.device("meta"):
        op = operators.create_op("mixformer", 64, 128, 2)
    assert sum(p.numel() for p in op.down.parameters()) == 2 * 64 + 64 * 128 * 4 + 128
    torch.manual_seed(0)
    op = operators.create_op("mixformer", 8, 16, 2)
    with torch.no_grad():
        op.down.norm.running_mean.normal_()
        op.down.norm.running_var.uniform_(0.5, 2)
        op.down.norm.bias.normal_()
    op.eval()
    x = torch.randn(2, 8, 5, 7)
    deploy = operators.reparameterize_model(op)
    assert deploy.down.norm is None
    torch.testing.assert_close(deploy.down(x), op.down(x), rtol=1e-5, atol=1e-5)


def test_stem_shapes_parameters_and_deploy_form():
    with torch.device("meta"):
        stem = operators.get_stem("mixformer").factory(3, 64)
    def conv_bn(cin: int, cout: int, k: int) -> int:  # conv with bias, BN
        return cin * cout * k * k + cout + 2 * cout

    want = conv_bn(3, 32, 3) + 2 * conv_bn(32, 32, 3) + 32 * 64 * 4 + 64 + 2 * 64
    assert sum(p.numel() for p in stem.parameters()) == want
    torch.manual_seed(0)
    stem = operators.get_stem("mixformer").factory(3, 16)
    stem.train()
    stem(torch.randn(4, 3, 16, 16))  # BN statistics off their init
    stem.eval()
    deploy = operators.reparameterize_model(stem)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deploy.modules())
    for size in (1, 7, 9, 16):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert stem(x).shape == (2, 16, math.ceil(size / 4), math.ceil(size / 4))
            torch.testing.assert_close(deploy(x), stem(x), rtol=1e-4, atol=1e-5)


def test_batch_of_one_trains_and_keeps_the_pooled_bn_statistics():
    """The channel interaction's BN sees one value per channel at batch 1: it uses its running statistics."""
    op = operators.create_op("mixformer", 16, 16).train()
    bn = op.mixer.channel_interaction[0].bn
    before = bn.running_mean.clone()
    op(torch.randn(1, 16, 5, 5)).sum().backward()
    assert torch.equal(bn.running_mean, before)
    assert op.mixer.dwconv.bn.num_batches_tracked.item() == 1  # the map-wide BNs still train


def test_paddle_default_conv_init():
    """Convs keep Paddle's default: N(0, 2 / (in_channels x kernel area)), groups not divided out, bias 0."""
    torch.manual_seed(0)
    op = operators.create_op("mixformer", 256, 256)
    dw = op.mixer.dwconv.conv
    assert dw.init_scheme == "paddle_default" and op.mixer.proj.init_scheme == "trunc_normal"
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.05)
    assert torch.equal(dw.bias, torch.zeros_like(dw.bias))


@pytest.mark.parametrize("kwargs,match", [
    ({"out_chs": 33}, "odd"), ({"heads": 3}, "divisor of the attention width 16"),
    ({"window": 0}, "window=0"), ({"dw_kernel": 4}, "dw_kernel=4"), ({"mlp_ratio": 0}, "mlp_ratio=0"),
])
def test_bad_keywords_are_refused(kwargs, match):
    args = {"in_chs": 32, "out_chs": 32} | kwargs
    with pytest.raises(ValueError, match=match):
        operators.create_op("mixformer", **args)
