"""The attention add-ons (SE, ECA, CBAM, GC) against slow references, where each conv operator puts them, their
deploy forms, and GCNet's zero start."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import operators
from operators._layers import SqueezeExcite
from operators.attention_modules import (
    CBAMAttention,
    EfficientChannelAttention,
    GlobalContextModule,
    eca_kernel_size,
)

HOSTS = ["resnet_basic", "resnet_bottleneck", "mbconv", "convnext", "repvgg", "mobileone"]
ADDONS = ["se", "eca", "cbam", "gc"]
KINDS = {"se": SqueezeExcite, "eca": EfficientChannelAttention, "cbam": CBAMAttention, "gc": GlobalContextModule}


@torch.no_grad()
def _jitter(module: nn.Module, scale: float = 0.3, skip: tuple[nn.Parameter, ...] = ()) -> None:
    for p in module.parameters():
        if not any(p is s for s in skip):
            p.add_(torch.randn_like(p) * scale)


def _addons(op: nn.Module, kind: str) -> list[nn.Module]:
    return [m for m in op.modules() if type(m) is KINDS[kind]]


@pytest.mark.parametrize("chs,k", [(64, 3), (256, 5), (512, 5), (128, 5), (16, 3), (4, 1)])
def test_eca_kernel_size_is_the_papers_odd_rounding(chs, k):
    t = (math.log2(chs) + 1) / 2  # |log2(C) / gamma + b / gamma| with gamma = 2, b = 1: 3.5, 4.5, 5, 4, 2.5, 1.5
    assert eca_kernel_size(chs) == k and k % 2 == 1 and abs(k - t) <= 1
    assert EfficientChannelAttention(chs).conv.kernel_size == (1, k)


def test_eca_matches_a_loop_over_channels():
    torch.manual_seed(0)
    eca = EfficientChannelAttention(12, kernel_size=5)
    x = torch.randn(2, 12, 4, 3)
    w = eca.conv.weight.reshape(5)
    want = torch.empty_like(x)
    for n in range(2):
        s = x[n].mean((1, 2))
        for c in range(12):  # neighbours c - 2 .. c + 2, zero outside the channel range
            z = sum(w[j] * s[c + j - 2] for j in range(5) if 0 <= c + j - 2 < 12)
            want[n, c] = x[n, c] * torch.sigmoid(z)
    torch.testing.assert_close(eca(x), want)
    assert sum(p.numel() for p in eca.parameters()) == 5  # k weights, no bias


def _cbam_reference(m: CBAMAttention, x: torch.Tensor, pools=("avg", "max"), channel_first: bool = True):
    """CBAM by hand in eval mode: the shared MLP as matrices, the 7x7 conv and BN as loops over pixels."""
    w1, b1 = m.fc1.weight[:, :, 0, 0], m.fc1.bias
    w2, b2 = m.fc2.weight[:, :, 0, 0], m.fc2.bias
    conv, bn = m.spatial.conv.weight[0], m.spatial.bn  # (2, 7, 7)

    def channel(t):
        descriptors = {"avg": t.mean((2, 3)), "max": t.flatten(2).max(-1)[0]}
        z = sum(torch.relu(descriptors[p] @ w1.T + b1) @ w2.T + b2 for p in pools)
        return t * torch.sigmoid(z)[:, :, None, None]

    def spatial(t):
        maps = F.pad(torch.stack([t.mean(1), t.max(1)[0]], 1), (3, 3, 3, 3))
        h, w = t.shape[-2:]
        z = torch.empty(t.shape[0], h, w)
        for i in range(h):
            for j in range(w):
                z[:, i, j] = (maps[:, :, i:i + 7, j:j + 7] * conv).sum((1, 2, 3))
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return t * torch.sigmoid(z)[:, None]

    return spatial(channel(x)) if channel_first else channel(spatial(x))


def test_cbam_is_channel_then_spatial_and_uses_both_pools():
    torch.manual_seed(0)
    m = CBAMAttention(32)
    _jitter(m)
    with torch.no_grad():
        m.spatial.bn.running_mean.fill_(0.2)
        m.spatial.bn.running_var.fill_(1.5)
    m.eval()
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, _cbam_reference(m, x))
        for wrong in (_cbam_reference(m, x, channel_first=False), _cbam_reference(m, x, pools=("avg",)),
                      _cbam_reference(m, x, pools=("max",))):
            assert (y - wrong).abs().max() > 1e-3
    assert m.fc1.out_channels == 8 and CBAMAttention(256).fc1.out_channels == 256 // 16  # r = 16, floor 8


def test_gc_matches_a_loop_over_pixels_and_adds():
    torch.manual_seed(0)
    gc = GlobalContextModule(32)
    _jitter(gc)
    x = torch.randn(2, 32, 3, 5)
    with torch.no_grad():
        want = torch.empty_like(x)
        for n in range(2):
            pixels = [x[n, :, i, j] for i in range(3) for j in range(5)]
            logits = torch.stack([gc.mask.weight[0, :, 0, 0] @ p for p in pixels])
            context = sum(a * p for a, p in zip(logits.softmax(0), pixels))  # softmax over the H x W pixels
            t = gc.fc1.weight[:, :, 0, 0] @ context + gc.fc1.bias  # C -> 8 (C / 16 = 2, floored at 8)
            t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + gc.norm.eps)
            t = torch.relu(t * gc.norm.weight.flatten() + gc.norm.bias.flatten())
            want[n] = x[n] + (gc.fc2.weight[:, :, 0, 0] @ t + gc.fc2.bias)[:, None, None]
        torch.testing.assert_close(gc(x), want)
        # Fusion by addition: with the last conv's weight 0 the module adds its bias at every position.
        gc.fc2.weight.zero_()
        torch.testing.assert_close(gc(x) - x, gc.fc2.bias[None, :, None, None].expand_as(x))


def test_gc_init_is_the_official_one():
    torch.manual_seed(0)
    gc = GlobalContextModule(256)
    assert not gc.fc2.weight.any() and not gc.fc2.bias.any()  # zero last conv: the module adds 0 at init
    assert (gc.mask.init_scheme, gc.fc1.init_scheme, gc.fc2.init_scheme) == ("fan_in", "fan_out", "zeros")
    assert abs(gc.mask.weight.std().item() / math.sqrt(2 / 256) - 1) < 0.3  # He fan-in: std sqrt(2 / C)
    assert gc.norm.normalized_shape == (16, 1, 1)
    x = torch.randn(2, 256, 4, 4)
    assert torch.equal(gc(x), x)


@pytest.mark.parametrize("name", ["resnet_bottleneck", "global_context", "convnext", "repvgg"])
def test_block_with_gc_at_init_equals_the_block_without_it(name):
    """Every other weight random, the GC's last conv as initialized (0): removing GC changes nothing."""
    torch.manual_seed(0)
    op = operators.create_op(name, 16, 32, 2, **({} if name == "global_context" else {"attn": "gc"}))
    (gc,) = _addons(op, "gc")
    _jitter(op, skip=(gc.fc2.weight, gc.fc2.bias))
    op.eval()
    x = torch.randn(2, 16, 7, 9)
    with torch.no_grad():
        y = op(x)
        op.attn = None
        torch.testing.assert_close(op(x), y, rtol=0, atol=0)


def test_global_context_is_the_gc_resnet_bottleneck():
    torch.manual_seed(0)
    a = operators.create_op("global_context", 64, 256, 2)
    torch.manual_seed(0)
    b = operators.create_op("resnet_bottleneck", 64, 256, 2, attn="gc")
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert a.attn.fc1.out_channels == 256 // 16 and a.reduce.conv.out_channels == 64
    assert operators.create_op("global_context", 64, 256, reduction=4).attn.fc1.out_channels == 64


def test_se_reduction_and_mbconv_slot():
    assert operators.create_op("resnet_bottleneck", 64, 256, attn="se").attn.reduce.out_channels == 16
    assert operators.create_op("repvgg", 64, 64, attn="se").attn.reduce.out_channels == 8  # 64 / 16, floor 8
    assert operators.create_op("repvgg", 6, 6, attn="se").attn.reduce.out_channels == 6  # the floor is at most C
    # MBConv: "se" is its own SE (same parameters, same draws); another add-on takes the SE's place.
    torch.manual_seed(0)
    plain = operators.create_op("mbconv", 16, 16)
    torch.manual_seed(0)
    named = operators.create_op("mbconv", 16, 16, attn="se")
    assert all(torch.equal(v, named.state_dict()[k]) for k, v in plain.state_dict().items())
    for kind in ("eca", "cbam", "gc"):
        op = operators.create_op("mbconv", 16, 16, attn=kind)
        assert type(op.se) is KINDS[kind] and not _addons(op, "se")


def _placement(op: nn.Module, name: str) -> list[tuple[nn.Module, nn.Module]]:
    """(module whose output the add-on takes, add-on) pairs, as each operator's docstring places them."""
    if name == "resnet_basic":
        return [(op.conv2, op.attn)]
    if name == "resnet_bottleneck":
        return [(op.expand, op.attn)]
    if name == "mbconv":
        return [(op.dw, op.se)]
    if name == "convnext":
        return [(op.pw2, op.attn)]
    if name == "repvgg":
        return [(op.conv, op.attn)]
    return [(op.depthwise, op.dw_attn), (op.pointwise, op.pw_attn)]


@pytest.mark.parametrize("name", HOSTS)
def test_addon_takes_the_last_bn_output_and_feeds_the_addition_or_activation(name):
    torch.manual_seed(0)
    op = operators.create_op(name, 16, 16, 1, attn="se")
    _jitter(op)
    op.eval()
    seen: dict[nn.Module, dict[str, torch.Tensor]] = {}

    def record(m, inputs, output):
        seen[m] = {"in": inputs[0], "out": output}

    pairs = _placement(op, name)
    for before, addon in pairs:
        before.register_forward_hook(record)
        addon.register_forward_hook(record)
    x = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        y = op(x)
    for before, addon in pairs:
        fed = seen[before]["out"]
        fed = fed.permute(0, 3, 1, 2) if name == "convnext" else fed  # pw2 is a channels-last Linear
        torch.testing.assert_close(seen[addon]["in"], fed)
    out = seen[pairs[-1][1]]["out"]
    if name.startswith("resnet"):
        want = torch.relu(out + x)  # before the addition and the ReLU
    elif name == "convnext":
        want = x + out * op.gamma[:, None, None]  # before the layer scale
    elif name == "mbconv":
        want = x + op.project(out)
    else:
        want = torch.relu(out)  # before the ReLU
    torch.testing.assert_close(y, want)


@pytest.mark.parametrize("kind", ADDONS)
@pytest.mark.parametrize("name", HOSTS)
def test_deploy_form_is_exact_with_every_addon(name, kind):
    torch.manual_seed(0)
    op = operators.create_op(name, 8, 16, 2, attn=kind)
    assert _addons(op, kind)
    with torch.no_grad():
        op(torch.randn(4, 8, 7, 7) * 2 + 0.5)  # BN statistics off their init
    _jitter(op, 0.1)  # and the weights (zeroed last BN, zero GC conv, layer scale)
    op.eval()
    deploy = operators.reparameterize_model(op)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    assert _addons(deploy, kind)  # the add-on stays
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), op(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", HOSTS)
def test_bad_attn_is_refused(name):
    with pytest.raises(ValueError, match=rf"{name}: attn='sk' is not one of None, 'none', 'se', 'eca', 'cbam', 'gc'"):
        operators.create_op(name, 8, 8, attn="sk")
    with pytest.raises(ValueError, match="reduction=0"):
        operators.create_op("global_context", 8, 8, reduction=0)
