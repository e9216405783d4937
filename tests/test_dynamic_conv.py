"""Dynamic convolution (Chen et al., CVPR 2020): the per-sample aggregated kernels against a loop reference (stride,
groups, bias; the grouped conv and the exported matmul form), the per-kernel init, the softmax temperature and
its schedule through the trainer, the units' structure, the exact deploy form, and the multiply-adds against a
formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from op_helpers import randomize
from torch import nn

import operators
from nas.flops import count_flops
from nas.train import TrainConfig, train_proxy
from operators.dynamic_conv import DyInvertedResidual, DynamicConv2d, DynamicConvNormAct
from operators.resnet import BasicBlock, Bottleneck
from tests.train_helpers import square_task


def _naive(conv: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    """Sample by sample: pi from the pooled sample by hand, W~ = sum_k pi_k W_k and b~ = sum_k pi_k b_k by a loop
    over the K kernels, then one F.conv2d of that sample with W~ and b~."""
    outs = []
    tau = 1.0 if conv.tau is None else conv.tau.item()
    for xi in x.double():
        pooled = xi.mean((1, 2))
        hidden = torch.relu(conv.fc1.weight.double() @ pooled + conv.fc1.bias.double())
        pi = torch.softmax((conv.fc2.weight.double() @ hidden + conv.fc2.bias.double()) / tau, dim=0)
        w = sum(pi[k] * conv.weight[k].double() for k in range(conv.weight.shape[0]))
        b = None if conv.bias is None else sum(pi[k] * conv.bias[k].double() for k in range(conv.weight.shape[0]))
        k = conv.weight.shape[-1]
        outs.append(F.conv2d(xi[None], w, b, conv.stride, k // 2, groups=conv.groups))
    return torch.cat(outs).float()


# (in, out, kernel, stride, groups, bias): dense, grouped, depthwise as in the inverted unit, a strided 1x1
LAYERS = [(6, 8, 3, 1, 1, True), (6, 8, 3, 2, 2, True), (8, 8, 3, 2, 8, True), (5, 7, 1, 2, 1, False)]


@pytest.mark.parametrize("exported", [False, True], ids=["grouped-conv", "exported-matmul"])
@pytest.mark.parametrize("cin,cout,k,stride,groups,bias", LAYERS)
def test_per_sample_kernels_match_a_loop_reference(cin, cout, k, stride, groups, bias, exported, monkeypatch):
    torch.manual_seed(0)
    conv = DynamicConv2d(cin, cout, k, stride, groups, bias=bias, reduction=2, temperature=3.0)
    randomize(conv)
    if exported:  # the form torch.export and the ONNX export record (batch-independent shapes)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    x = torch.randn(3, cin, 7, 5)
    with torch.no_grad():
        got = conv(x)
        assert got.shape == (3, cout, math.ceil(7 / stride), math.ceil(5 / stride))
        torch.testing.assert_close(got, _naive(conv, x), rtol=1e-4, atol=1e-4)
        # the samples' attentions differ, so a kernel shared across the batch would fail the comparison above
        assert (conv.attention(x) - conv.attention(x[:1])).abs().max() > 1e-3


def test_batch_one_is_one_ordinary_conv_and_a_batch_one_grouped_conv(monkeypatch):
    seen = []
    conv2d = F.conv2d

    def spy(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        seen.append((tuple(x.shape), tuple(w.shape), groups))
        return conv2d(x, w, b, stride, padding, dilation, groups)

    monkeypatch.setattr(F, "conv2d", spy)
    conv = DynamicConv2d(8, 12, 3, 1, groups=2)
    with torch.no_grad():
        conv(torch.randn(1, 8, 5, 5))
        conv(torch.randn(3, 8, 5, 5))
    assert seen == [((1, 8, 5, 5), (12, 4, 3, 3), 2), ((1, 24, 5, 5), (36, 4, 3, 3), 6)]


@pytest.mark.parametrize("cin,cout,groups", [(64, 128, 1), (256, 256, 256)])
def test_each_kernel_has_its_own_convs_fans(cin, cout, groups):
    """He fan-out of one kernel, C_out k^2 / groups, as init_weights' "fan_out" gives a Conv2d. PyTorch's fans
    of the (K, C_out, C_in / g, k, k) tensor read C_out as the input axis and K as the output axis: Kaiming
    over the whole tensor would draw with the wrong spread."""
    torch.manual_seed(0)
    k, kernels = 3, 4
    conv = DynamicConv2d(cin, cout, k, groups=groups, kernels=kernels)
    want = math.sqrt(2 / (cout * k * k / groups))
    n = conv.weight[0].numel()
    for w in conv.weight:  # every kernel alone, within 5 standard errors of its std
        assert abs(w.std().item() / want - 1) < 5 * math.sqrt(1 / (2 * n))
        assert abs(w.mean().item()) < 5 * want / math.sqrt(n)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(conv.weight)
    assert (fan_in, fan_out) == (cout * (cin // groups) * k * k, kernels * (cin // groups) * k * k)
    assert abs(math.sqrt(2 / fan_out) / want - 1) > 0.2 and abs(math.sqrt(2 / fan_in) / want - 1) > 0.2
    assert conv.init_scheme == "fan_out" and conv.fc1.init_scheme == conv.fc2.init_scheme == "fan_out"
    assert not conv.fc1.bias.any() and not conv.fc2.bias.any()


def test_attention_sums_to_one_and_a_high_temperature_flattens_it():
    torch.manual_seed(0)
    conv = DynamicConv2d(16, 16, 3)
    randomize(conv)
    x = torch.randn(4, 16, 6, 6)
    with torch.no_grad():
        hot = conv.attention(x)
        conv.tau.fill_(1.0)
        cold = conv.attention(x)
    torch.testing.assert_close(hot.sum(1), torch.ones(4))
    torch.testing.assert_close(cold.sum(1), torch.ones(4))
    assert hot.shape == (4, 4) and conv.tau.item() == 1.0
    spread = lambda p: (p.max(1).values - p.min(1).values).max().item()  # noqa: E731
    assert spread(hot) < 0.5 * spread(cold)


def _schedule(epochs: int, **kw) -> list[float]:
    conv = DynamicConv2d(4, 4, **kw)
    taus = []
    for epoch in range(1, epochs + 1):
        conv.on_train_epoch(epoch, epochs)
        taus.append(conv.tau.item())
    return taus


def test_temperature_schedule():
    """30 down to 1 over the first anneal x epochs, linearly by epoch: the paper's 10 of 100 by default."""
    paper = _schedule(100)
    assert paper[:11] == pytest.approx([30 - 2.9 * e for e in range(10)] + [1.0])
    assert paper[10:] == [1.0] * 90
    assert _schedule(3) == [30.0, 1.0, 1.0]
    assert _schedule(3, anneal=0.5) == pytest.approx([30.0, 1 + 29 / 3, 1.0])
    assert _schedule(2, anneal=0.0) == [1.0, 1.0]
    assert _schedule(4, temperature=1.0) == [1.0] * 4
    conv = DynamicConv2d(4, 4).eval()
    conv.reparameterize()
    conv.on_train_epoch(1, 3)  # a deploy form has no temperature left to set
    assert conv.tau is None


@pytest.mark.parametrize("anneal,expected", [(0.1, [30.0, 1.0, 1.0]), (0.5, [30.0, 1 + 29 / 3, 1.0])])
def test_a_three_epoch_proxy_training_moves_tau_as_documented(anneal, expected):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), operators.create_op("dynamic_conv", 8, 8, 2, anneal=anneal),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    convs = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert len(convs) == 3 and all(m.tau.item() == 30.0 for m in convs)
    seen = []
    used = []  # the temperature of every training forward pass, as the attention divides by it
    convs[0].register_forward_pre_hook(lambda m, _: used.append(m.tau.item()) if m.training else None)
    cfg = TrainConfig(epochs=3, batch_size=32, max_train=None, augment=False, device="cpu")
    train_proxy(model, square_task(n_train=64, n_val=16), cfg,
                report=lambda epoch, acc, loss: seen.append([m.tau.item() for m in convs]))
    assert seen == [pytest.approx([t] * 3) for t in expected]
    assert used == pytest.approx([t for t in expected for _ in range(2)])  # two steps an epoch


def test_units_are_the_catalogs_with_every_conv_dynamic():
    basic = operators.create_op("dynamic_conv", 16, 32, 2)
    assert isinstance(basic, BasicBlock) and isinstance(basic.shortcut, DynamicConvNormAct)
    assert basic.conv1.conv.weight.shape == (4, 32, 16, 3, 3) and basic.conv1.conv.stride == 2
    bottleneck = operators.create_op("dynamic_conv", 64, 128, 2, unit="bottleneck")
    assert isinstance(bottleneck, Bottleneck) and bottleneck.mixer.conv.stride == 2
    assert bottleneck.reduce.conv.weight.shape == (4, 32, 64, 1, 1)
    inverted = operators.create_op("dynamic_conv", 16, 24, 2, unit="inverted")
    assert isinstance(inverted, DyInvertedResidual) and not inverted.residual
    assert inverted.expand.conv.weight.shape == (4, 96, 16, 1, 1)  # 6 x in_chs
    assert inverted.dw.conv.groups == 96 and inverted.dw.conv.stride == 2 and inverted.expand.conv.stride == 1
    assert isinstance(inverted.dw.act, nn.ReLU6) and inverted.project.act is None
    first = operators.create_op("dynamic_conv", 32, 16, unit="inverted", expansion=1)  # MobileNetV2's first block
    assert first.expand is None and first.dw.conv.weight.shape == (4, 32, 1, 3, 3)
    assert operators.create_op("dynamic_conv", 24, 24, unit="inverted").residual
    for op in (basic, bottleneck, inverted):
        assert not any(isinstance(m, nn.Conv2d) for m in op.modules())  # every conv is dynamic
        bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    attention = basic.conv2.conv
    assert attention.fc1.out_features == 8 and attention.fc2.out_features == 4  # C / 4, then K


@pytest.mark.parametrize("kw", [{}, {"unit": "bottleneck"}, {"unit": "inverted"}], ids=str)
@pytest.mark.parametrize("stride,in_chs,out_chs", [(1, 32, 32), (2, 16, 32)])
def test_deploy_folds_bn_and_temperature_exactly(kw, stride, in_chs, out_chs):
    torch.manual_seed(0)
    op = operators.create_op("dynamic_conv", in_chs, out_chs, stride, temperature=7.0, **kw)
    randomize(op)
    for m in op.modules():
        if isinstance(m, DynamicConv2d):
            m.tau.fill_(7.0)  # randomize drew it
    op.eval()
    deploy = operators.reparameterize_model(op)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    convs = [m for m in deploy.modules() if isinstance(m, DynamicConv2d)]
    assert convs and all(m.tau is None and m.bias.shape == (4, m.weight.shape[1]) for m in convs)
    assert "tau" not in "".join(deploy.state_dict())
    for batch in (1, 3):
        x = torch.randn(batch, in_chs, 9, 11)
        with torch.no_grad():
            want = op(x)
            torch.testing.assert_close(deploy(x), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def _dyn(cin: int, cout: int, k: int, groups: int, pixels: int, kernels: int = 4, reduction: int = 4) -> int:
    """One deploy-form dynamic conv at batch 1: the conv with the aggregated kernel, the aggregation of the K
    kernels and K biases, the attention's FC1 (C_in -> C_in / 4) and FC2 (-> K)."""
    numel = cout * (cin // groups) * k * k
    hidden = cin // reduction
    return pixels * numel + kernels * (numel + cout) + cin * hidden + hidden * kernels


@pytest.mark.parametrize("batch", [1, 2])
def test_multiply_adds_match_the_formula(batch):
    """Deploy form, one multiply-add = one FLOP; every term is per sample, so batch 2 counts twice batch 1."""
    basic = _dyn(16, 32, 3, 1, 25) + _dyn(32, 32, 3, 1, 25) + _dyn(16, 32, 1, 1, 25)  # 9x9 -> 5x5, shortcut
    op = operators.create_op("dynamic_conv", 16, 32, 2)
    assert count_flops(op, (batch, 16, 9, 9)) == batch * basic
    bottleneck = _dyn(64, 16, 1, 1, 49) + _dyn(16, 16, 3, 1, 49) + _dyn(16, 64, 1, 1, 49)
    op = operators.create_op("dynamic_conv", 64, 64, unit="bottleneck")
    assert count_flops(op, (batch, 64, 7, 7)) == batch * bottleneck
    inverted = _dyn(16, 96, 1, 1, 81) + _dyn(96, 96, 3, 96, 25) + _dyn(96, 24, 1, 1, 25)
    op = operators.create_op("dynamic_conv", 16, 24, 2, unit="inverted")
    assert count_flops(op, (batch, 16, 9, 9)) == batch * inverted


@pytest.mark.parametrize("key,value,match", [
    ("unit", "block", "unit='block' must be one of basic, bottleneck, inverted"),
    ("kernels", 0, "kernels=0 must be an integer >= 1"),
    ("reduction", 2.0, "reduction=2.0 must be an integer >= 1"),
    ("temperature", 0.0, "temperature=0.0 must be > 0"),
    ("anneal", -0.1, "anneal=-0.1 must be >= 0"),
    ("expansion", 4, "expansion=4 applies to the bottleneck and inverted units only"),
])
def test_bad_keywords_are_refused_in_one_line(key, value, match):
    with pytest.raises(ValueError, match=rf"^dynamic_conv: {match}"):
        operators.create_op("dynamic_conv", 32, 32, **{key: value})
    with pytest.raises(ValueError, match=r"^dynamic_conv: expansion=2.5 must be an integer >= 1"):
        operators.create_op("dynamic_conv", 32, 32, unit="bottleneck", expansion=2.5)
