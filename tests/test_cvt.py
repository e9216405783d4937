"""CvT: the convolutional projections (strides, BN, no position embedding) against a loop-by-loop reference,
and the convolutional token embeddings (stem, downsampler, and the block's own)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from op_helpers import randomize
from torch import nn

import operators
from operators._attention import RelPosBias, RelPosLogits
from operators.cvt import CvTAttention


def _layer_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """LayerNorm over the last axis by its formula."""
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _dw_conv_bn(x: torch.Tensor, cna: nn.Module, stride: int) -> torch.Tensor:
    """Depthwise 3x3 conv, zero padding 1, then eval-mode BN, by loops on a (C, H, W) map."""
    c, h, w = x.shape
    k = cna.conv.weight  # (C, 1, 3, 3)
    xp = F.pad(x, (1, 1, 1, 1))
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    out = torch.zeros(c, ho, wo)
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                y, x0 = i * stride, j * stride
                out[ch, i, j] = (xp[ch, y:y + 3, x0:x0 + 3] * k[ch, 0]).sum()
    bn = cna.bn
    return (out - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]


def _reference_block(block: nn.Module, x: torch.Tensor, heads: int, kv_stride: int) -> torch.Tensor:
    """One CvT block on one (C, H, W) map, by its definition, with the official scale C ** -0.5."""
    c, h, w = x.shape
    attn = block.attn
    tokens = x.reshape(c, h * w).T  # (HW, C)
    normed = _layer_norm(tokens, block.norm1).T.reshape(c, h, w)

    def project(conv, linear, stride):
        m = _dw_conv_bn(normed, conv, stride)
        return m.reshape(c, -1).T @ linear.weight.T + linear.bias  # (tokens, C)

    q = project(attn.conv_q, attn.proj_q, 1)
    k = project(attn.conv_k, attn.proj_k, kv_stride)
    v = project(attn.conv_v, attn.proj_v, kv_stride)
    d = c // heads
    out = torch.zeros(h * w, c)
    for n in range(heads):
        sl = slice(n * d, (n + 1) * d)
        for t in range(h * w):
            logits = torch.stack([q[t, sl] @ k[s, sl] for s in range(k.shape[0])]) * c ** -0.5
            p = torch.exp(logits - logits.max())
            p = p / p.sum()
            out[t, sl] = sum(p[s] * v[s, sl] for s in range(k.shape[0]))
    tokens = tokens + out @ attn.proj.weight.T + attn.proj.bias
    mlp = block.mlp
    hid = _layer_norm(tokens, block.norm2) @ mlp.fc1.weight.T + mlp.fc1.bias
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # exact GELU
    tokens = tokens + hid @ mlp.fc2.weight.T + mlp.fc2.bias
    return tokens.T.reshape(c, h, w)


@pytest.mark.parametrize("h,w,heads,kv_stride", [(5, 3, 2, 2), (4, 4, 1, 2), (3, 4, 2, 1), (1, 1, 2, 2)])
def test_block_matches_its_definition(h, w, heads, kv_stride):
    torch.manual_seed(0)
    c = 4
    block = operators.create_op("cvt", c, c, 1, heads=heads, kv_stride=kv_stride)
    randomize(block)
    block.eval()
    x = torch.randn(1, c, h, w)
    with torch.no_grad():
        want = _reference_block(block, x[0], heads, kv_stride)
        torch.testing.assert_close(block(x)[0], want, rtol=1e-4, atol=1e-5)
        deploy = operators.reparameterize_model(block)
        torch.testing.assert_close(deploy(x)[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("h,w", [(1, 1), (7, 9), (8, 8), (15, 2)])
def test_keys_and_values_are_subsampled_and_queries_are_not(h, w):
    attn = CvTAttention(12, heads=3)
    seen = []
    attn.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    x = torch.randn(2, 12, h, w)
    q, k, v = attn.qkv(x)
    n_kv = math.ceil(h / 2) * math.ceil(w / 2)
    assert q.shape == (2, 3, h * w, 4)
    assert k.shape == v.shape == (2, 3, n_kv, 4)
    attn(x)
    assert seen == [(2, h * w, 12)]  # one output token per query, whatever the number of keys


def test_kv_stride_one_keeps_every_key():
    q, k, v = CvTAttention(8, heads=2, kv_stride=1).qkv(torch.randn(1, 8, 7, 9))
    assert q.shape == k.shape == v.shape == (1, 2, 63, 4)


def test_no_position_embedding():
    """Nothing besides LN, conv + BN projections, linears and MLP: the parameter count is the formula."""
    c, heads = 48, 3
    block = operators.create_op("cvt", c, c, 1, heads=heads)
    assert not any(isinstance(m, (RelPosBias, RelPosLogits)) for m in block.modules())
    assert not any("pos" in name or "rel" in name or "table" in name for name, _ in block.named_parameters())
    norms = 2 * (2 * c)
    projections = 3 * (9 * c + 2 * c + c * c + c)  # dw 3x3 (no bias), BN affine, linear with bias
    out = c * c + c
    mlp = c * 4 * c + 4 * c + 4 * c * c + c
    assert sum(p.numel() for p in block.parameters()) == norms + projections + out + mlp
    # The deploy form: each BN gone, its shift now the depthwise conv's bias.
    deploy = operators.reparameterize_model(block.eval())
    assert sum(p.numel() for p in deploy.parameters()) == norms + projections - 3 * c + out + mlp


def test_stem_is_the_official_embedding_at_multiples_of_four_and_ceil_elsewhere():
    torch.manual_seed(0)
    stem = operators.get_stem("cvt").factory(3, 8)
    assert operators.get_stem("cvt").stride == 4
    assert stem.proj.kernel_size == (7, 7) and stem.proj.stride == (4, 4) and stem.proj.padding == (2, 2)
    x = torch.randn(1, 3, 16, 12)
    with torch.no_grad():
        y = F.conv2d(x, stem.proj.weight, stem.proj.bias, stride=4, padding=2)
        want = F.layer_norm(y.permute(0, 2, 3, 1), (8,), stem.norm.weight, stem.norm.bias).permute(0, 3, 1, 2)
        torch.testing.assert_close(stem(x), want)
    for size in (1, 2, 3, 5, 7, 29, 224):
        assert stem(torch.randn(1, 3, size, size + 1)).shape[-2:] == (math.ceil(size / 4), math.ceil((size + 1) / 4))


def test_downsampler_is_a_3x3_stride_2_embedding():
    down = operators.get_downsampler("cvt").factory(8, 16, 2)
    assert down.proj.kernel_size == (3, 3) and down.proj.stride == (2, 2) and down.proj.padding == (1, 1)
    assert isinstance(down.norm, nn.LayerNorm)
    for h, w in [(1, 1), (7, 9), (56, 56)]:
        assert down(torch.randn(1, 8, h, w)).shape == (1, 16, math.ceil(h / 2), math.ceil(w / 2))


def test_block_with_stride_embeds_as_the_downsampler_then_a_block():
    torch.manual_seed(0)
    block = operators.create_op("cvt", 8, 16, 2, heads=2)
    down = operators.get_downsampler("cvt").factory(8, 16, 2)
    plain = operators.create_op("cvt", 16, 16, 1, heads=2)
    randomize(block)
    down.load_state_dict(block.embed.state_dict())
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("embed.")})
    for m in (block, down, plain):
        m.eval()
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(down(x)))
    assert block(x).shape == (2, 16, 4, 5)


def test_init_follows_the_official_code():
    """Linear: trunc normal 0.02, bias 0; convs keep PyTorch's default; BN and LN weight 1, bias 0."""
    block = operators.create_op("cvt", 16, 32, 2)
    schemes = {name: m.init_scheme for name, m in block.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert schemes["embed.proj"] == "torch_default" and schemes["attn.conv_k.conv"] == "torch_default"
    assert schemes["attn.proj_q"] == schemes["attn.proj"] == schemes["mlp.fc1"] == "trunc_normal"
    assert {s for n, s in schemes.items() if "conv" in n or "embed" in n} == {"torch_default"}
    assert block.attn.proj_v.bias.abs().sum() == 0 and block.attn.proj_v.weight.abs().max() <= 2.0
    assert block.attn.conv_q.conv.bias is None  # bias=False, as the official dw_bn projection


@pytest.mark.parametrize("bad,match", [({"heads": 5}, "divisor of 32"), ({"kernel_size": 4}, "kernel_size=4"),
                                       ({"kv_stride": 0}, "kv_stride=0"), ({"mlp_ratio": 0}, "mlp_ratio=0")])
def test_bad_keywords_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        operators.create_op("cvt", 32, 32, **bad)


def test_default_heads_give_cvt13s_head_dim_64():
    for width, heads in [(64, 1), (192, 3), (384, 6)]:
        assert operators.create_op("cvt", width, width).attn.heads == heads
