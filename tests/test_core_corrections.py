"""Details of ACmix-Swin and X-volution that the generic contract does not see, checked against slow references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import operators
from nas.flops import count_flops
from operators.xvolution import XVolution, pixel_shift_products


@torch.no_grad()
def _jitter(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.1)


def _official_conv_path(mixer, qkv: torch.Tensor) -> torch.Tensor:
    """ACmix's convolution path on channels-last qkv (B, H, W, 3C) laid out as the official Swin code does it:
    the 3 x heads groups as channels of a 1x1 conv (B, 3 heads, HW, head_dim), then the grouped 3x3 conv."""
    b, h, w, c3 = qkv.shape
    heads, hd = mixer.heads, c3 // 3 // mixer.heads
    groups = qkv.reshape(b, h * w, 3 * heads, hd).permute(0, 2, 1, 3)
    fc = mixer.conv_path.fc
    f = F.conv2d(groups, fc.weight[:, :, None, None], fc.bias)  # (B, 9, HW, head_dim)
    f = f.permute(0, 3, 1, 2).reshape(b, -1, h, w)  # channel d * 9 + j
    dep = mixer.conv_path.dep_conv
    return F.conv2d(f, dep.weight, dep.bias, padding=1, groups=hd).permute(0, 2, 3, 1)


@pytest.mark.parametrize("size,roll", [((14, 14), (3, 3)), ((9, 11), (3, 3)), ((5, 12), (0, 3)), ((5, 5), (0, 0))])
@torch.no_grad()
def test_acmix_window_runs_its_conv_path_on_the_rolled_map(size, roll):
    """Official Swin-ACmix: the block rolls its input by -window // 2, the mixer's two paths both read the rolled
    map, and the mixer's output is rolled back; so the conv path's zero padding sits on the seam of the roll.
    A window larger than the map shrinks to it and is not shifted on that axis."""
    torch.manual_seed(0)
    mixer = operators.create_op("acmix", 32, 32, 1, layout="window", shift=True).mixer.eval()
    _jitter(mixer)
    mixer.rate1.zero_()  # the conv path alone
    x = torch.randn(2, *size, 32)
    qkv = mixer.qkv(x)
    expected = torch.roll(_official_conv_path(mixer, torch.roll(qkv, (-roll[0], -roll[1]), (1, 2))), roll, (1, 2))
    torch.testing.assert_close(mixer(x), mixer.rate2 * expected, rtol=1e-4, atol=1e-5)
    unrolled = mixer.rate2 * _official_conv_path(mixer, qkv)
    assert (roll == (0, 0)) == torch.allclose(mixer(x), unrolled, rtol=1e-4, atol=1e-5)


def test_acmix_fc_has_a_bias_in_the_swin_layout_only():
    """The official Swin version's fc is Conv2d(3 heads, 9, 1) with a bias; the ResNet version's has none."""
    window = operators.create_op("acmix", 32, 32, 1, layout="window").mixer.conv_path.fc
    bottleneck = operators.create_op("acmix", 32, 32, 1).mixer.conv_path.fc
    assert window.bias is not None and window.bias.shape == (9,) and bottleneck.bias is None


def _naive_pssa(x: torch.Tensor, shift: int, stride: int) -> torch.Tensor:
    n, c, h, w = x.shape
    out = torch.zeros(n, c, -(-h // stride), -(-w // stride), dtype=x.dtype)
    for i in range(0, h, stride):
        for j in range(0, w, stride):
            acc = torch.zeros(n, c, dtype=x.dtype)
            for dy in (-shift, 0, shift):
                for dx in (-shift, 0, shift):
                    if (dy or dx) and 0 <= i + dy < h and 0 <= j + dx < w:
                        acc += x[:, :, i + dy, j + dx]
            out[:, :, i // stride, j // stride] = x[:, :, i, j] * acc / 8
    return out


@pytest.mark.parametrize("shift,stride,size", [(1, 1, (5, 6)), (2, 1, (6, 5)), (1, 2, (7, 6)), (2, 2, (5, 5))])
def test_pssa_products_match_a_loop(shift, stride, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(pixel_shift_products(x, shift, stride), _naive_pssa(x, shift, stride))


@pytest.mark.parametrize("kernel,shift,stride", [(3, 1, 1), (3, 1, 2), (5, 2, 1)])
@torch.no_grad()
def test_xvolution_deploy_is_the_papers_dynamic_convolution(kernel, shift, stride):
    """Deployed, X-volution is one k x k convolution on the input x whose kernel at each output position is the
    folded static kernel plus diag(g * x_centre) at the 8 taps at distance ``shift``: computed here pixel by
    pixel, kernel by kernel, against the module's deploy form and its training form (eval mode)."""
    torch.manual_seed(0)
    c, h, w = 4, 7, 6
    m = XVolution(c, stride, kernel, shift)
    _jitter(m)
    for bn in (m.conv.bn, m.attn_norm):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    m.eval()
    x = torch.randn(1, c, h, w, dtype=torch.float64)
    m.double()
    trained = m(x)
    m.reparameterize()
    assert m.conv.in_channels == c and not any(isinstance(t, torch.nn.BatchNorm2d) for t in m.modules())
    deployed = m(x)
    weight, bias, gain, r = m.conv.weight, m.conv.bias, m.gain, kernel // 2
    padded = F.pad(x, (r, r, r, r))[0]
    out = torch.zeros_like(trained)[0]
    for oi, i in enumerate(range(0, h, stride)):
        for oj, j in enumerate(range(0, w, stride)):
            centre = x[0, :, i, j]
            dynamic = weight.clone()  # (C_out, C_in, k, k)
            for dy in (-shift, 0, shift):
                for dx in (-shift, 0, shift):
                    if dy or dx:
                        dynamic[:, :, r + dy, r + dx] += torch.diag(gain * centre)
            window = padded[:, i: i + kernel, j: j + kernel]
            out[:, oi, oj] = torch.einsum("oiyx,iyx->o", dynamic, window) + bias
    out = torch.relu(out)[None]
    torch.testing.assert_close(deployed, out)
    torch.testing.assert_close(trained, out)


@pytest.mark.parametrize("stride", [1, 2])
def test_xvolution_costs_one_k_by_k_convolution(stride):
    """The paper's deploy form is one conv on the C input channels (not on [x ; PSSA(x)], 2C channels)."""
    c, h, w = 16, 14, 14
    m = XVolution(c, stride)
    ho, wo = -(-h // stride), -(-w // stride)
    assert count_flops(m, (1, c, h, w)) == c * c * 9 * ho * wo


def test_xvolution_refuses_a_shift_outside_its_kernel():
    with pytest.raises(ValueError, match="shift=2"):
        operators.create_op("xvolution", 16, 32, shift=2)
    operators.create_op("xvolution", 16, 32, kernel_size=5, shift=2)
