"""LeViT: the attention bias by absolute offsets, the shrink attention's two grids, Hardswish before the
output projection, the value width, the Linear+BN folding, the official init and the stride-16 stem, each
checked against a slow reference or a formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import operators
from operators.levit import LeViTAbsPosBias, LeViTLinearBN


@torch.no_grad()
def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affines, random bias tables: nothing at its init value, then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
            m.bias.copy_(0.2 * torch.randn(n, generator=gen))
        if isinstance(m, LeViTAbsPosBias):
            m.table.copy_(torch.randn(m.table.shape, generator=gen))
    return module.eval()


def _naive_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """LeViT's attention by loops on (H, W, C) ``x``: query (i, j) at full-grid pixel (s i, s j) attends to
    every key (y, x) with the bias table[h, min(|s i - y|, E - 1), min(|s j - x|, E - 1)]; then Hardswish,
    then the output projection."""
    h, w, _ = x.shape
    s, n, kd, vd, e = attn.stride, attn.heads, attn.key_dim, attn.val_dim, attn.bias.extent
    if attn.qkv is not None:
        qkv = attn.qkv(x).view(h, w, n, 2 * kd + vd)
        q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
    else:
        q = attn.q(x[::s, ::s]).view(-1, (w + s - 1) // s, n, kd)  # every s-th row and column, from 0
        kv = attn.kv(x).view(h, w, n, kd + vd)
        k, v = kv[..., :kd], kv[..., kd:]
    hq, wq = q.shape[:2]
    table = attn.bias.table
    out = torch.zeros(hq, wq, n, vd)
    for i in range(hq):
        for j in range(wq):
            bias = torch.stack([torch.stack([table[:, min(abs(s * i - y), e - 1), min(abs(s * j - xx), e - 1)]
                                             for xx in range(w)]) for y in range(h)])  # (h, w, heads)
            logits = (q[i, j] * k).sum(-1) / math.sqrt(kd) + bias  # (h, w, heads)
            p = logits.reshape(h * w, n).softmax(0)
            out[i, j] = (p[:, :, None] * v.reshape(h * w, n, vd)).sum(0)
    out = out.reshape(hq, wq, n * vd)
    return attn.proj(out * F.relu6(out + 3) / 6)  # Hardswish written out


def _naive_block(block, x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (C', H', W'): attention (residual when the block neither strides nor widens), then MLP."""
    t = x.permute(1, 2, 0)
    y = _naive_attention(block.attn, t)
    t = t + y if block.residual else y
    mlp = block.mlp
    hid = mlp.fc1(t)
    t = t + mlp.fc2(hid * F.relu6(hid + 3) / 6)
    return t.permute(2, 0, 1)


@pytest.mark.parametrize("stride,in_chs,out_chs,size,extent", [
    (1, 8, 8, (5, 6), 14),   # LeViT's Attention, the table larger than the map
    (1, 8, 8, (6, 5), 3),    # offsets beyond the extent share the table's edge entries
    (2, 8, 12, (5, 7), 14),  # the shrink attention on an odd map: queries at rows/columns 0, 2, 4
    (2, 8, 12, (6, 4), 2),
    (1, 8, 12, (3, 4), 14),  # a width change at stride 1: the shrink attention without subsampling
])
def test_block_matches_a_loop_reference(stride, in_chs, out_chs, size, extent):
    torch.manual_seed(0)
    block = _randomize(operators.create_op("levit", in_chs, out_chs, stride, key_dim=4, heads=2, shrink_heads=3,
                                           bias_extent=extent))
    x = torch.randn(2, in_chs, *size)
    with torch.no_grad():
        fast = block(x)
        for b in range(2):
            torch.testing.assert_close(fast[b], _naive_block(block, x[b]), rtol=1e-4, atol=1e-5)


def test_bias_is_indexed_by_absolute_offsets():
    torch.manual_seed(0)
    rel = LeViTAbsPosBias(heads=2, extent=4)
    with torch.no_grad():
        rel.table.copy_(torch.randn(2, 4, 4))
    h, w = 5, 6
    bias = rel(h, w, h, w, 1).view(2, h, w, h, w)
    # (dy, dx) and (-dy, dx), (dy, -dx), (-dy, -dx) read the same entry: query (2, 3), keys around it
    for dy, dx in [(1, 2), (2, 1), (0, 3), (2, 0)]:
        vals = {bias[:, 2, 3, 2 + sy * dy, 3 + sx * dx] for sy in (-1, 1) for sx in (-1, 1)
                if 0 <= 2 + sy * dy < h and 0 <= 3 + sx * dx < w}
        ref = rel.table[:, dy, dx]
        assert all(torch.equal(v, ref) for v in vals) and vals
    # |dy| and |dx| are not interchangeable, and a far offset reads the edge entry (3 = extent - 1)
    assert not torch.equal(bias[:, 0, 0, 1, 2], bias[:, 0, 0, 2, 1])
    assert torch.equal(bias[:, 0, 0, 4, 5], rel.table[:, 3, 3])
    # shrink: query (1, 2) of the stride-2 grid sits at pixel (2, 4); key (0, 0) is 2 and 4 away
    shrink = rel(3, 3, h, w, 2).view(2, 3, 3, h, w)
    assert torch.equal(shrink[:, 1, 2, 0, 0], rel.table[:, 2, 3])
    assert torch.equal(shrink[:, 1, 2, 2, 4], rel.table[:, 0, 0])


def test_shrink_queries_come_from_the_stride_two_grid_and_keys_from_the_full_grid():
    torch.manual_seed(0)
    block = _randomize(operators.create_op("levit", 8, 16, 2, key_dim=4))
    seen = {}
    block.attn.q.register_forward_hook(lambda m, a, o: seen.update(q=a[0].shape))
    block.attn.kv.register_forward_hook(lambda m, a, o: seen.update(kv=a[0].shape))
    x = torch.randn(1, 8, 7, 9)
    with torch.no_grad():
        y = block(x)
        assert seen == {"q": (1, 4, 5, 8), "kv": (1, 7, 9, 8)} and y.shape == (1, 16, 4, 5)
        # a change at an odd pixel (not a query) still changes every output: it is a key and a value
        x2 = x.clone()
        x2[0, :, 3, 5] += 1.0
        assert ((block(x2) - y).abs().amax(1) > 0).all()


def test_value_width_is_twice_the_key_width_and_shrink_four_times():
    heads, kd = 3, 8
    block = operators.create_op("levit", 64, 64, 1, key_dim=kd, heads=heads)
    attn = block.attn
    assert attn.qkv.linear.out_features == heads * (kd + kd + 2 * kd)
    assert attn.proj.linear.in_features == heads * 2 * kd and attn.proj.linear.out_features == 64
    assert block.mlp.fc1.linear.out_features == 2 * 64  # MLP ratio 2
    shrink = operators.create_op("levit", 64, 96, 2, key_dim=kd).attn
    assert shrink.heads == 64 // kd  # LeViT: in_dim // key_dim heads
    assert shrink.q.linear.out_features == shrink.heads * kd
    assert shrink.kv.linear.out_features == shrink.heads * (kd + 4 * kd)
    assert shrink.proj.linear.in_features == shrink.heads * 4 * kd and shrink.proj.linear.out_features == 96


def test_hardswish_precedes_the_output_projection():
    torch.manual_seed(0)
    block = _randomize(operators.create_op("levit", 16, 16, 1, key_dim=4, heads=2))
    seen = []
    block.attn.proj.register_forward_hook(lambda m, a, o: seen.append(a[0]) and None)
    with torch.no_grad():
        block(10 * torch.randn(2, 16, 6, 6))
    z = seen[0]
    # Hardswish's range is [-3/8, inf): the projection never sees what the attention gave below it
    assert z.min() >= -0.375 - 1e-6 and (z < -0.05).any() and (z > 3).any()
    assert isinstance(block.attn.act, nn.Hardswish)


def test_linear_bn_folds_exactly_into_one_linear():
    torch.manual_seed(0)
    layer = _randomize(LeViTLinearBN(6, 5))
    x = torch.randn(3, 4, 6)
    with torch.no_grad():
        want = layer(x)
        t = layer.bn.weight / torch.sqrt(layer.bn.running_var + layer.bn.eps)  # written out, not fuse_bn
        by_hand = (x @ layer.linear.weight.T - layer.bn.running_mean) * t + layer.bn.bias
        torch.testing.assert_close(want, by_hand)
        layer.reparameterize()
        assert layer.bn is None and layer.linear.bias is not None
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride,out_chs", [(1, 16), (2, 24)])
def test_deploy_form_has_no_batchnorm_at_all(stride, out_chs):
    block = _randomize(operators.create_op("levit", 16, out_chs, stride, key_dim=4))
    deploy = operators.reparameterize_model(block)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deploy.modules())
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), block(x), rtol=1e-4, atol=1e-5)


def test_official_init():
    """bn_weight_init=0 on the residual attention's projection and the MLP's last BN, 1 elsewhere (the shrink
    projection included); tables 0; Linears without bias; a stride-1 block starts as the identity."""
    block = operators.create_op("levit", 16, 16, 1, key_dim=4)
    assert not block.attn.proj.bn.weight.any() and not block.mlp.fc2.bn.weight.any()
    for m in (block.attn.qkv, block.mlp.fc1):
        assert torch.equal(m.bn.weight, torch.ones_like(m.bn.weight))
    assert not block.attn.bias.table.any()
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Linear))
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(block.eval()(x), x, rtol=0, atol=0)
    shrink = operators.create_op("levit", 16, 24, 2, key_dim=4)
    assert torch.equal(shrink.attn.proj.bn.weight, torch.ones(24)) and not shrink.mlp.fc2.bn.weight.any()


def test_block_params_follow_the_formula():
    """LeViT-384 stage-2 block (512 wide, 9 heads, key dim 32) and its shrink block (384 -> 512, 12 heads):
    Linear weights, one bias per output after folding, and a 14 x 14 table per head."""
    d, h, kd = 512, 9, 32
    block = operators.create_op("levit", d, d, 1, heads=h)
    qkv, proj, mlp = d * h * 4 * kd, h * 2 * kd * d, 2 * d * 2 * d
    biases = h * 4 * kd + d + 2 * d + d
    deploy = sum(p.numel() for p in operators.reparameterize_model(block).parameters())
    assert deploy == qkv + proj + mlp + biases + h * 14 * 14
    c, n = 384, 12
    shrink = operators.create_op("levit", c, d, 2)
    weights = c * n * kd + c * n * 5 * kd + n * 4 * kd * d + mlp
    biases = n * kd + n * 5 * kd + d + 2 * d + d
    assert sum(p.numel() for p in operators.reparameterize_model(shrink).parameters()) == weights + biases + n * 196


def test_stem_is_four_stride_two_convs_with_hardswish_between():
    stem = operators.get_stem("levit")
    assert stem.stride == 16
    net = _randomize(stem.factory(3, 64))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (8, (3, 3), (2, 2)), (16, (3, 3), (2, 2)), (32, (3, 3), (2, 2)), (64, (3, 3), (2, 2))]
    assert sum(isinstance(m, nn.Hardswish) for m in net.modules()) == 3
    x = torch.randn(1, 3, 33, 50)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 64, 3, 4)  # ceil(33 / 16), ceil(50 / 16)
        deploy = operators.reparameterize_model(net)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
        torch.testing.assert_close(deploy(x), y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    ({"key_dim": 0}, "key_dim=0"), ({"heads": 0}, "heads=0"), ({"attn_ratio": -1.0}, "attn_ratio=-1.0"),
    ({"mlp_ratio": 0.0}, "mlp_ratio=0.0"), ({"bias_extent": 0}, "bias_extent=0"),
    ({"shrink_heads": -2}, "shrink_heads=-2"), ({"attn_ratio": 0.1, "key_dim": 4}, "value dim"),
])
def test_bad_keywords_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        operators.create_op("levit", 16, 16, 1, **bad)
