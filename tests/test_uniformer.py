"""UniFormer: the dynamic position embedding before both mixers, the local aggregator (BN, 1x1, depthwise 5x5,
1x1: no softmax) and the global one against loop-by-loop references, a hand-computed block, the patch
embedding (conv then LayerNorm), the deploy form, and UniFormer-S's counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from op_helpers import randomize
from torch import nn

import operators
from nas.flops import count_flops, count_params
from nas.network import build_uninitialized
from nas.space import load_reference
from operators.uniformer import uniformer_embed


def _block(mixer: str, dim: int = 4, **kw) -> nn.Module:
    block = operators.create_op("uniformer", dim, dim, 1, mixer=mixer, **kw)
    randomize(block)
    return block.eval()


def _dw_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Depthwise k x k conv with zero padding k // 2 and bias, by loops on a (C, H, W) map."""
    c, h, w = x.shape
    k = conv.weight.shape[-1]
    xp = F.pad(x, (k // 2,) * 4)
    out = torch.zeros(c, h, w)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                out[ch, i, j] = (xp[ch, i:i + k, j:j + k] * conv.weight[ch, 0]).sum() + conv.bias[ch]
    return out


def _pointwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """1x1 conv with bias on a (C, H, W) map."""
    return torch.einsum("oc,chw->ohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean[:, None, None]) * t[:, None, None] + bn.bias[:, None, None]


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _reference_local(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CBlock on one (C, H, W) map: x + DPE(x); x + conv2(dw5(conv1(BN(x)))); x + fc2(GELU(fc1(BN(x))))."""
    x = x + _dw_conv(x, block.pos_embed)
    a = block.attn
    x = x + _pointwise(_dw_conv(_pointwise(_bn(x, block.norm1), a.conv1), a.dw), a.conv2)
    m = block.mlp
    return x + _pointwise(_gelu(_pointwise(_bn(x, block.norm2), m.fc1)), m.fc2)


def _reference_global(block: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """SABlock on one (C, H, W) map: x + DPE(x), then softmax attention over all tokens by loops, then the MLP."""
    c, h, w = x.shape
    x = x + _dw_conv(x, block.pos_embed)
    tokens = x.reshape(c, h * w).T  # (HW, C)
    attn = block.attn
    qkv = _layer_norm(tokens, block.norm1) @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    d = c // heads
    out = torch.zeros(h * w, c)
    for n in range(heads):
        sl = slice(n * d, (n + 1) * d)
        for t in range(h * w):
            logits = torch.stack([q[t, sl] @ k[s, sl] for s in range(h * w)]) * d ** -0.5
            p = torch.exp(logits - logits.max())
            p = p / p.sum()
            out[t, sl] = sum(p[s] * v[s, sl] for s in range(h * w))
    tokens = tokens + out @ attn.proj.weight.T + attn.proj.bias
    m = block.mlp
    hid = _gelu(_layer_norm(tokens, block.norm2) @ m.fc1.weight.T + m.fc1.bias)
    tokens = tokens + hid @ m.fc2.weight.T + m.fc2.bias
    return tokens.T.reshape(c, h, w)


@torch.no_grad()
def test_local_block_matches_the_loop_reference():
    block = _block("local", 3)
    x = torch.randn(1, 3, 5, 6)
    torch.testing.assert_close(block(x)[0], _reference_local(block, x[0]), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_global_block_matches_the_loop_reference():
    block = _block("global", 4, head_dim=2)  # 2 heads of 2 channels
    assert block.attn.heads == 2
    x = torch.randn(1, 4, 3, 4)
    torch.testing.assert_close(block(x)[0], _reference_global(block, x[0], 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixer", ["local", "global"])
@torch.no_grad()
def test_position_embedding_comes_before_the_mixer(mixer):
    # A DPE kernel with only its centre c (bias 0) is x -> (1 + c) x: the whole block then equals the block
    # with a zeroed DPE applied to (1 + c) x. A DPE placed anywhere else (after the mixer, parallel to it)
    # would not give this, and the zeroed DPE must leave everything else untouched.
    block = _block(mixer)
    x = torch.randn(2, 4, 5, 5)
    block.pos_embed.weight.zero_()
    block.pos_embed.bias.zero_()
    plain = block(1.7 * x)
    block.pos_embed.weight[:, 0, 1, 1] = 0.7
    torch.testing.assert_close(block(x), plain, rtol=1e-5, atol=1e-5)
    # and with the DPE zeroed, the block is exactly its two residual steps on x
    block.pos_embed.weight.zero_()
    y = block(x)
    if mixer == "local":
        ref = torch.stack([_reference_local(block, xi) for xi in x])
    else:
        ref = torch.stack([_reference_global(block, xi, block.attn.heads) for xi in x])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_local_aggregator_is_a_depthwise_5x5_after_batchnorm_without_softmax():
    block = _block("local", 8)
    assert isinstance(block.norm1, nn.BatchNorm2d) and isinstance(block.norm2, nn.BatchNorm2d)
    dw = block.attn.dw
    assert dw.kernel_size == (5, 5) and dw.groups == 8 and dw.padding == (2, 2)
    # With the MLP's output and the DPE zeroed, the eval-mode block is x + A(BN(x)): affine in x, no softmax.
    block.mlp.fc2.weight.zero_()
    block.mlp.fc2.bias.zero_()
    block.pos_embed.weight.zero_()
    block.pos_embed.bias.zero_()
    a, b, zero = torch.randn(1, 8, 7, 7), torch.randn(1, 8, 7, 7), torch.zeros(1, 8, 7, 7)
    torch.testing.assert_close(block(a + b) + block(zero), block(a) + block(b), rtol=1e-4, atol=1e-4)
    # the global mixer is not affine (softmax)
    att = _block("global", 8)
    att.mlp.fc2.weight.zero_()
    att.mlp.fc2.bias.zero_()
    att.pos_embed.weight.zero_()
    att.pos_embed.bias.zero_()
    assert not torch.allclose(att(a + b) + att(zero), att(a) + att(b), atol=1e-3)


@torch.no_grad()
def test_local_block_reaches_three_pixels_and_global_block_everything():
    # DPE 3x3 (1 pixel) then the depthwise 5x5 (2 pixels); the MLP is pointwise: a change at the centre of an
    # 11 x 11 map reaches exactly Chebyshev distance 3 in the local block, every pixel in the global one.
    x = torch.randn(1, 4, 11, 11)
    x2 = x.clone()
    x2[0, :, 5, 5] += 1.0
    yy, xx = torch.meshgrid(torch.arange(11), torch.arange(11), indexing="ij")
    dist = torch.maximum((yy - 5).abs(), (xx - 5).abs())
    local = _block("local")
    changed = (local(x2) - local(x)).abs().amax(1)[0] > 1e-6
    assert torch.equal(changed, dist <= 3)
    glob = _block("global")
    assert ((glob(x2) - glob(x)).abs().amax(1)[0] > 1e-6).all()


@torch.no_grad()
def test_hand_computed_local_block():
    # One channel, 1 x 1 map, x = 1 (MLP ratio 4: 4 hidden channels).
    block = operators.create_op("uniformer", 1, 1, 1).eval()
    for p in block.parameters():
        p.zero_()
    block.pos_embed.weight[0, 0, 1, 1] = 2.0  # DPE: 1 + (2 * 1 + 0.5) = 3.5
    block.pos_embed.bias.fill_(0.5)
    n1 = block.norm1  # BN: (3.5 - 0.5) / sqrt(4) * 1 + 0 = 1.5
    n1.eps, n1.running_mean[:], n1.running_var[:], n1.weight[:] = 0.0, 0.5, 4.0, 1.0
    block.attn.conv1.weight.fill_(2.0)  # 3
    block.attn.dw.weight[0, 0, 2, 2] = 1 / 3  # 1 (the only tap inside a 1 x 1 map)
    block.attn.dw.weight[0, 0, 0, 0] = 100.0  # reads zero padding only
    block.attn.conv2.weight.fill_(1.0)  # 1 + 1 = 2: x = 3.5 + 2 = 5.5
    block.attn.conv2.bias.fill_(1.0)
    n2 = block.norm2  # BN: (5.5 - 1.5) / 2 * 3 - 1 = 5
    n2.eps, n2.running_mean[:], n2.running_var[:], n2.weight[:], n2.bias[:] = 0.0, 1.5, 4.0, 3.0, -1.0
    block.mlp.fc1.weight[0, 0, 0, 0] = 0.2  # hidden 0: 1 -> GELU(1) = 0.841345; hidden 1: -1 -> GELU(-1) = -0.158655
    block.mlp.fc1.weight[1, 0, 0, 0] = -0.2
    block.mlp.fc2.weight[0, :, 0, 0] = torch.tensor([1.0, 2.0, 0.0, 0.0])  # 0.841345 - 0.317310 = 0.524035
    block.mlp.fc2.bias.fill_(0.25)
    y = block(torch.ones(1, 1, 1, 1))
    assert y.item() == pytest.approx(5.5 + 0.524035 + 0.25, abs=1e-5)
    deploy = operators.reparameterize_model(block)
    assert deploy(torch.ones(1, 1, 1, 1)).item() == pytest.approx(5.5 + 0.524035 + 0.25, abs=1e-5)


@torch.no_grad()
def test_deploy_folds_both_batchnorms_and_keeps_the_static_convs():
    block = _block("local", 8)
    deploy = operators.reparameterize_model(block)
    assert deploy.norm1 is None and deploy.norm2 is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    for name in ("pos_embed.weight", "pos_embed.bias", "attn.dw.weight", "attn.dw.bias", "attn.conv2.weight"):
        torch.testing.assert_close(deploy.get_parameter(name), block.get_parameter(name), rtol=0, atol=0)
    assert not torch.equal(deploy.attn.conv1.weight, block.attn.conv1.weight)
    assert not torch.equal(deploy.mlp.fc1.weight, block.mlp.fc1.weight)
    x = torch.randn(2, 8, 6, 7)
    torch.testing.assert_close(deploy(x), block(x), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_patch_embedding_is_conv_then_layernorm_padded_bottom_right():
    # UniFormer's PatchEmbed normalizes the conv's *output*: every pixel of the output has channel mean 0 and
    # variance 1 at init (ConvNeXt's "patch" downsampler normalizes the input instead).
    for make in (operators.get_downsampler("uniformer").factory, lambda i, o, s: operators.create_op(
            "uniformer", i, o, s).embed):
        down = make(8, 16, 2)
        y = down(torch.randn(2, 8, 5, 7) * 3 + 1)
        assert y.shape == (2, 16, 3, 4)
        torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 4), rtol=0, atol=1e-5)
        torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 3, 4), rtol=0, atol=1e-3)
    # A 1 x 1 map is padded to 2 x 2 on the bottom/right: only the kernel's top-left tap sees the pixel.
    emb = uniformer_embed(3, 6, 2)
    x = torch.randn(1, 3, 1, 1)
    pre = emb.proj.weight[:, :, 0, 0] @ x[0, :, 0, 0] + emb.proj.bias
    ref = F.layer_norm(pre, (6,), eps=1e-5)
    torch.testing.assert_close(emb(x)[0, :, 0, 0], ref)
    assert operators.get_stem("uniformer").stride == 4
    stem = operators.get_stem("uniformer").factory(3, 8)
    assert stem.proj.kernel_size == (4, 4) and stem.proj.stride == (4, 4)
    assert stem(torch.randn(1, 3, 9, 9)).shape == (1, 8, 3, 3)
    # at stride 1 with a width change the block's own embedding is a 1x1 conv + LN
    assert operators.create_op("uniformer", 8, 16, 1).embed.proj.kernel_size == (1, 1)


@pytest.mark.parametrize("bad", [{"mixer": "window"}, {"head_dim": 0}, {"heads": 3}, {"mlp_ratio": 0}])
def test_bad_keywords_are_refused(bad):
    with pytest.raises(ValueError, match="uniformer"):
        operators.create_op("uniformer", 64, 64, 1, **bad)


def test_heads_default_to_a_head_dim_of_64():
    assert operators.create_op("uniformer", 320, 320, mixer="global").attn.heads == 5  # UniFormer-S stage 3
    assert operators.create_op("uniformer", 512, 512, mixer="global").attn.heads == 8  # stage 4


def test_uniformer_s_counts():
    # Per block at width C (MLP ratio 4, every conv and linear with bias):
    #   local  = DPE 10C + BN 2C + 1x1 (C^2 + C) + DW5x5 26C + 1x1 (C^2 + C) + BN 2C + MLP (8C^2 + 5C) = 10C^2 + 47C
    #   global = DPE 10C + LN 2C + qkv (3C^2 + 3C) + proj (C^2 + C) + LN 2C + MLP (8C^2 + 5C)      = 12C^2 + 23C
    # patch embedding p x p from a to b: a p^2 b + b + 2b (LN); head: LN 2 x 512 + fc 512 x 1000 + 1000.
    def local(c):
        return 10 * c * c + 47 * c

    def glob(c):
        return 12 * c * c + 23 * c

    def embed(a, b, p):
        return a * p * p * b + 3 * b

    expected = (embed(3, 64, 4) + 3 * local(64) + embed(64, 128, 2) + 4 * local(128) + embed(128, 320, 2)
                + 8 * glob(320) + embed(320, 512, 2) + 3 * glob(512) + 2 * 512 + 512 * 1000 + 1000)
    net = build_uninitialized(load_reference("uniformer_s"))
    assert count_params(net, deploy=False) == expected == 21_545_256
    # deploy: the 4C BN affine parameters of a local block fold into the following 1x1 convs
    assert count_params(operators.create_op("uniformer", 64, 64)) == local(64) - 4 * 64
    # published: 22 M params, 3.6 G multiply-adds at 224 px
    assert expected == pytest.approx(22e6, rel=0.05)
    assert count_flops(net) == pytest.approx(3.6e9, rel=0.05)
