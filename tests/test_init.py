"""Initialization: every operator, stem, downsampler and head starts as its official implementation does.

Every Conv2d and Linear records the scheme that initialized it (``init_scheme``, set by
``operators._layers.init_weights``). The tables below declare, independently of the code, which schemes each
operator, stem, downsampler and head may use; the tests hold the layers to those declarations and the weights
to each scheme's formula (the spread, the shape of the law and the biases), and the norms, zero-initialized
last BNs, layer scales, rates and relative-position tables to what the docstrings state.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import operators
from nas.arch import HEAD_TYPES
from nas.network import Head
from operators._attention import RelPosBias, RelPosLogits
from operators.dynamic_conv import DynamicConv2d

CASES = [(name, kw) for name in operators.list_ops() for kw in operators.get_spec(name).variants]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]

# The schemes an attention add-on (``attn=``, operators/attention_modules.py) brings to a conv operator: ECA's conv
# keeps PyTorch's default; GC's mask conv He fan-in, its first 1x1 He fan-out, its last 1x1 zeros; SE and CBAM
# take the operator's own scheme.
ATTN_SCHEMES = {"torch_default", "fan_in", "fan_out", "zeros"}
# Per operator: the schemes its convs and linears may carry, and whether the last BN of its residual branch
# starts at zero (timm's zero_init_last: one such BN, the block starts as ReLU(x)), or "identity": every
# identity-residual branch ends in a BN at zero and nothing follows the sums, so the block starts as x where
# the shape allows (EfficientViT's zero_last_gamma). The source of each is in the operator's module docstring.
# A newly registered operator fails test_every_operator_declares_its_init until it is added here.
DECLARED: dict[str, tuple[set[str], bool | str]] = {
    "resnet_basic": ({"fan_out"} | ATTN_SCHEMES, True),  # timm resnet.py
    "resnet_bottleneck": ({"fan_out"} | ATTN_SCHEMES, True),  # timm resnet.py
    "bot": ({"fan_out"}, True),  # timm byobnet / byoanet
    "xvolution": ({"fan_out"}, True),  # no official code: the ResNet scheme
    "attention_augmented": ({"fan_out"}, True),  # no official PyTorch code: the ResNet scheme
    "acmix": ({"fan_out", "shift", "trunc_normal", "torch_default"}, False),  # LeapLabTHU/ACmix, both layouts
    "mbconv": ({"fan_out"} | ATTN_SCHEMES, False),  # timm maxxvit _init_conv, efficientnet _init_weight_goog
    "convnext": ({"trunc_normal"} | ATTN_SCHEMES, False),  # facebookresearch/ConvNeXt
    "swin": ({"trunc_normal"}, False),  # microsoft/Swin-Transformer
    "transformer": ({"xavier"}, False),  # timm maxxvit _init_transformer, ViT's JAX code
    "repvgg": ({"torch_default"} | ATTN_SCHEMES, False),  # DingXiaoH/RepVGG sets nothing
    "mobileone": ({"torch_default"} | ATTN_SCHEMES, False),  # apple/ml-mobileone sets nothing
    "qna": ({"lecun_normal"}, False),  # moabarar/qna: flax lecun_normal
    "levit": ({"torch_default"}, False),  # facebookresearch/LeViT sets no init (its zero BNs are BatchNorm1d)
    "nat": ({"trunc_normal", "torch_default"}, False),  # SHI-Labs/NAT _init_weights: Linear only
    "halo": ({"fan_out"}, True),  # timm byobnet _init_weights over byoanet HaloAttn
    "sasa": ({"fan_out"}, True),  # no official code: the ResNet / timm byobnet scheme
    "maxvit": ({"fan_out", "xavier"}, False),  # timm maxxvit _init_conv / _init_transformer
    "cvt": ({"trunc_normal", "torch_default"}, False),  # microsoft/CvT: Linear only, convs PyTorch's default
    "mvit": ({"trunc_normal", "torch_default"}, False),  # facebookresearch/mvit: Linear only, pooling convs default
    "uniformer": ({"trunc_normal", "torch_default"}, False),  # Sense-X/UniFormer _init_weights: Linear only
    "elsa": ({"trunc_normal", "torch_default"}, False),  # damo-cv/ELSA: timm _init_vit_weights, Linear only
    "gnconv": ({"trunc_normal"}, False),  # raoyongming/HorNet _init_weights
    "mixformer": ({"trunc_normal", "paddle_default"}, False),  # PaddleClas mixformer.py: Linear; convs Paddle's default
    "glmix": ({"xavier", "trunc_normal", "torch_default"}, False),  # rayleizhu/GLMix over nn.MultiheadAttention
    "global_context": ({"fan_out", "fan_in", "zeros"}, True),  # xvjiarui/GCNet ContextBlock + timm resnet
    "lesa": ({"fan_out"}, False),  # Chenglin-Yang/LESA_classification: kaiming fan_out, zero_init_residual off
    # mit-han-lab/efficientvit init_modules + zero_last_gamma: every residual branch (LiteMLA, MBConv) ends at 0
    "linear_attention": ({"trunc_normal"}, "identity"),
    "quadratic_attention": ({"trunc_normal"}, False),  # epfml/attention-cnn: BERT N(0, 0.02^2) on Linear
    # no official code: He fan-out per kernel (test_dynamic_conv_kernels_...), every BN at 1 as ODConv's DY-ResNet
    "dynamic_conv": ({"fan_out"}, False),
    # pkuyym/EvolvingAttention (TF): variance_scaling_initializer() on every conv, no zero-initialized BN
    "evolving_attention": ({"lecun_normal"}, False),
}
# RelPosLogits embeddings: N(0, 1 / head_dim) (BoTNet, AA), except where the official code draws otherwise:
# EvolvingAttention's tf.random_normal_initializer(d ** -0.5) passes d ** -0.5 as the mean, std 1.
REL_LOGITS_LAW = {"evolving_attention": lambda d: (d ** -0.5, 1.0)}
STEM_DECLARED = {"conv7_pool": "fan_out", "patch4": "trunc_normal", "conv3x2": "fan_out", "repvgg": "torch_default",
                 "small1": "fan_out", "small2": "fan_out", "small4": "fan_out", "small8": "fan_out",
                 "levit": "torch_default", "nat": "torch_default",
                 "cvt": "torch_default", "mvit": "torch_default", "uniformer": "torch_default",
                 "mixformer": "paddle_default", "glnet": "torch_default", "efficientvit": "trunc_normal"}
# Stems with a residual block whose last BN starts at 0: EfficientViT's DSConv (zero_last_gamma)
STEM_ZERO_LAST = {"efficientvit"}
DOWNSAMPLER_DECLARED = {"conv": "fan_out", "patch": "trunc_normal", "nat": "torch_default", "cvt": "torch_default",
                        "uniformer": "torch_default", "glnet": "torch_default"}
HEAD_DECLARED = {"pool_linear": "torch_default", "norm_pool_linear": "trunc_normal", "pool_norm_linear": "trunc_normal"}

# timm's trunc_normal_(w, std=.02), as the official Swin and ConvNeXt call it: bounds [-2, 2] in absolute units.
TRUNC_STD, TRUNC_BOUND = 0.02, 2.0
LAYERS = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm2d, nn.LayerNorm)


def truncated_std(b: float) -> float:
    """Standard deviation of N(0, 1) truncated to [-b, b]: sqrt(1 - 2 b phi(b) / (Phi(b) - Phi(-b)))."""
    phi = math.exp(-b * b / 2) / math.sqrt(2 * math.pi)
    return math.sqrt(1 - 2 * b * phi / math.erf(b / math.sqrt(2)))


def fans(m: nn.Module) -> tuple[int, int]:
    """PyTorch's (fan_in, fan_out) of a conv or linear weight: channels times the kernel area."""
    w = m.weight
    area = math.prod(w.shape[2:])
    return w.shape[1] * area, w.shape[0] * area


def law(m: nn.Module, scheme: str) -> tuple[float, bool]:
    """(the standard deviation the scheme gives ``m``'s weight, whether its law is uniform rather than normal)."""
    fan_in, fan_out = fans(m)
    if scheme == "fan_out":  # He et al.: N(0, 2 / fan_out), fan_out per group as timm and TF count it
        return math.sqrt(2 / (fan_out / getattr(m, "groups", 1))), False
    if scheme == "trunc_normal":
        return TRUNC_STD * truncated_std(TRUNC_BOUND / TRUNC_STD), False
    if scheme == "xavier":  # Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)), std a / sqrt(3)
        return math.sqrt(2 / (fan_in + fan_out)), True
    if scheme == "fan_in":  # He et al. in fan-in mode: N(0, 2 / fan_in)
        return math.sqrt(2 / fan_in), False
    if scheme == "paddle_default":  # Paddle's Conv2D default: N(0, 2 / (in_channels x area)), groups not divided out
        return math.sqrt(2 / (fan_in * getattr(m, "groups", 1))), False
    if scheme == "lecun_normal":  # flax: variance 1 / fan_in, truncated at 2 standard deviations of its parameter
        return 1 / math.sqrt(fan_in), False
    if scheme == "torch_default":  # kaiming_uniform_(a=sqrt(5)): U(-a, a), a = 1 / sqrt(fan_in), std a / sqrt(3)
        return 1 / math.sqrt(3 * fan_in), True
    raise AssertionError(f"no formula for scheme {scheme!r}")


def check_weights(layers: list[nn.Module], scheme: str) -> None:
    """The layers' weights, each divided by the std its scheme gives it, pooled: mean 0, std 1, and the tail
    beyond sqrt(3) of the scheme's law (none for a uniform law, erfc(sqrt(3 / 2)), about 8%, for a normal one).
    Tolerances are 5 standard errors at the pooled size n: 1 / sqrt(n) for the mean, sqrt((kurtosis - 1) / 4n) for
    the std (kurtosis <= 3 for every law here) and sqrt(p (1 - p) / n) for the tail fraction p."""
    z = torch.cat([m.weight.detach().flatten() / law(m, scheme)[0] for m in layers]).double()
    n = z.numel()
    uniform = law(layers[0], scheme)[1]
    if uniform:
        tail = 0.0
    else:  # a normal truncated at +-b standard deviations of its parameter (b = infinity: not truncated)
        b = {"trunc_normal": TRUNC_BOUND / TRUNC_STD, "lecun_normal": 2.0}.get(scheme, math.inf)
        s = truncated_std(b) if math.isfinite(b) else 1.0
        tail = (math.erfc(math.sqrt(3) * s / math.sqrt(2)) - math.erfc(b / math.sqrt(2))) / math.erf(b / math.sqrt(2))
    assert abs(z.mean().item()) < 5 / math.sqrt(n), (scheme, z.mean().item(), n)
    assert abs(z.std().item() - 1) < 5 * math.sqrt(2 / (4 * n)), (scheme, z.std().item(), n)
    frac = (z.abs() > math.sqrt(3)).double().mean().item()
    assert abs(frac - tail) <= 5 * math.sqrt(tail * (1 - tail) / n) + 1e-12, (scheme, frac, tail, n)


def check_biases(layers: list[nn.Module], scheme: str) -> None:
    for m in layers:
        if m.bias is None:
            continue
        if scheme == "torch_default":  # uniform in +-1 / sqrt(fan_in)
            assert m.bias.abs().max() <= 1 / math.sqrt(fans(m)[0]) and m.bias.abs().sum() > 0
        else:
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), (scheme, m)


def check_shift(m: nn.Conv2d) -> None:
    """ACmix's shift kernels: input map i of each group is read at kernel cell i only."""
    k = m.kernel_size[0]
    want = torch.zeros(k * k, k, k)
    for i in range(k * k):
        want[i, i // k, i % k] = 1.0
    assert torch.equal(m.weight, want.expand_as(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def check_module(module: nn.Module, allowed: set[str]) -> dict[str, list[nn.Module]]:
    """Every conv and linear carries an allowed scheme and follows it; returns the layers by scheme."""
    by_scheme: dict[str, list[nn.Module]] = {}
    for name, m in module.named_modules():
        if isinstance(m, LAYERS):
            scheme = getattr(m, "init_scheme", None)
            assert scheme in allowed, f"{name or type(m).__name__}: init {scheme!r}, declared {sorted(allowed)}"
            by_scheme.setdefault(scheme, []).append(m)
    for scheme, layers in by_scheme.items():
        if scheme == "shift":
            for m in layers:
                check_shift(m)
        elif scheme == "zeros":
            for m in layers:
                assert not m.weight.any() and (m.bias is None or not m.bias.any()), m
        else:
            check_weights(layers, scheme)
            check_biases(layers, scheme)
    return by_scheme


def norm_weights(module: nn.Module) -> list[torch.Tensor]:
    """The weight of every BatchNorm and LayerNorm (LayerNorm2d included); each bias must be 0."""
    weights = []
    for m in module.modules():
        if isinstance(m, NORMS) and m.weight is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), m
            weights.append(m.weight.detach())
    return weights


def test_every_operator_declares_its_init():
    missing = sorted(set(operators.list_ops()) - set(DECLARED))
    assert not missing, f"declare the init of {missing} in DECLARED (and state it in the operator's docstring)"


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_layers_follow_the_declared_scheme(name, kw):
    torch.manual_seed(0)
    op = operators.create_op(name, 32, 64, 2, **kw)  # in != out, so fan-in and fan-out formulas differ
    check_module(op, DECLARED[name][0])


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_norms_start_at_one_and_last_bn_at_zero_where_declared(name, kw):
    zero_last = DECLARED[name][1]
    for in_chs, out_chs, stride in [(32, 32, 1), (16, 32, 2)]:
        op = operators.create_op(name, in_chs, out_chs, stride, **kw)
        weights = norm_weights(op)
        zeroed = sum(1 for w in weights if not w.any())
        if zero_last != "identity":  # "identity": as many as the branches; the start below checks them all
            assert zeroed == int(zero_last), f"{zeroed} norms start at weight 0, declared {int(zero_last)}"
        assert all(torch.equal(w, torch.ones_like(w)) for w in weights if w.any())
    if zero_last:  # the residual branches add 0: the block starts as ReLU(identity), or as the identity
        op = operators.create_op(name, 32, 32, 1, **kw)
        x = torch.randn(2, 32, 9, 9)
        with torch.no_grad():
            want = x if zero_last == "identity" else torch.relu(x)
            torch.testing.assert_close(op(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_relative_position_tables(name, kw):
    """Swin / CoAtNet bias tables: trunc normal 0.02; BoTNet / AA embeddings: N(0, 1 / head_dim); evolving
    attention's N(head_dim^-1/2, 1) (REL_LOGITS_LAW)."""
    torch.manual_seed(0)
    op = operators.create_op(name, 64, 64, 1, **kw)
    for m in op.modules():
        if isinstance(m, RelPosBias):
            tables, std = [m.table], TRUNC_STD * truncated_std(TRUNC_BOUND / TRUNC_STD)
            mean = 0.0
        elif isinstance(m, RelPosLogits):
            d = m.rel_h.shape[1]
            tables, (mean, std) = [m.rel_h, m.rel_w], REL_LOGITS_LAW.get(name, lambda d: (0.0, d ** -0.5))(d)
        else:
            continue
        z = (torch.cat([t.detach().flatten() for t in tables]).double() - mean) / std
        assert abs(z.mean().item()) < 5 / math.sqrt(z.numel()), (type(m).__name__, z.mean().item())
        assert abs(z.std().item() - 1) < 5 * math.sqrt(2 / (4 * z.numel())), (type(m).__name__, z.std().item())


def test_convnext_layer_scale_starts_at_1e_6():
    op = operators.create_op("convnext", 32, 32)
    assert torch.equal(op.gamma, torch.full_like(op.gamma, 1e-6))


@pytest.mark.parametrize("layout", ["bottleneck", "window"])
def test_acmix_keeps_its_official_parts(layout):
    """Shift kernels, rates 0.5, and the fc as the official layout has it: He fan-out in the ResNet, PyTorch's
    default in the Swin (whose init touches only Linear layers, and the fc is a conv there)."""
    op = operators.create_op("acmix", 32, 64, 1, layout=layout)
    mixer = op.mixer
    assert mixer.conv_path.dep_conv.init_scheme == "shift"
    assert mixer.conv_path.fc.init_scheme == ("fan_out" if layout == "bottleneck" else "torch_default")
    assert mixer.rate1.item() == mixer.rate2.item() == 0.5
    other = {getattr(m, "init_scheme") for m in op.modules() if isinstance(m, LAYERS)} - {"shift", "torch_default"}
    assert other == ({"fan_out"} if layout == "bottleneck" else {"trunc_normal"})


@pytest.mark.parametrize("kw", operators.get_spec("dynamic_conv").variants, ids=str)
def test_dynamic_conv_kernels_follow_the_scheme_one_kernel_at_a_time(kw):
    """A dynamic conv holds its K kernels in one (K, C_out, C_in / groups, k, k) tensor, not in Conv2d layers:
    each kernel is checked as the conv it stands for, with that conv's fans (not the 5-d tensor's)."""
    torch.manual_seed(0)
    op = operators.create_op("dynamic_conv", 32, 64, 2, **kw)
    convs = [m for m in op.modules() if isinstance(m, DynamicConv2d)]
    assert convs and not any(isinstance(m, nn.Conv2d) for m in op.modules())
    for scheme in {m.init_scheme for m in convs}:
        assert scheme in DECLARED["dynamic_conv"][0], scheme
        kernels = [SimpleNamespace(weight=w, bias=None, groups=m.groups)
                   for m in convs if m.init_scheme == scheme for w in m.weight]
        check_weights(kernels, scheme)


@pytest.mark.parametrize("kind", operators.list_stems())
def test_stems(kind):
    assert set(operators.list_stems()) == set(STEM_DECLARED), "declare the init of every stem in STEM_DECLARED"
    torch.manual_seed(0)
    stem = operators.get_stem(kind).factory(3, 96)
    check_module(stem, {STEM_DECLARED[kind]})
    weights = norm_weights(stem)
    assert sum(1 for w in weights if not w.any()) == (kind in STEM_ZERO_LAST)
    assert all(torch.equal(w, torch.ones_like(w)) for w in weights if w.any())


@pytest.mark.parametrize("kind", operators.list_downsamplers())
def test_downsamplers(kind):
    assert set(operators.list_downsamplers()) == set(DOWNSAMPLER_DECLARED), "declare the init of every downsampler"
    torch.manual_seed(0)
    layer = operators.get_downsampler(kind).factory(64, 128, 2)
    check_module(layer, {DOWNSAMPLER_DECLARED[kind]})
    assert all(torch.equal(w, torch.ones_like(w)) for w in norm_weights(layer))


@pytest.mark.parametrize("hidden", [0, 192])
@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_heads(kind, hidden):
    assert set(HEAD_TYPES) == set(HEAD_DECLARED), "declare the init of every head type in HEAD_DECLARED"
    torch.manual_seed(0)
    head = Head(kind, 256, 100, hidden)
    check_module(head, {HEAD_DECLARED[kind]})
    assert all(torch.equal(w, torch.ones_like(w)) for w in norm_weights(head))


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_operators_build_on_the_meta_device(name, kw):
    """``build_uninitialized`` builds under torch.device("meta"): the init code must run there too."""
    with torch.device("meta"):
        op = operators.create_op(name, 16, 32, 2, **kw)
    assert all(p.is_meta for p in op.parameters())
