"""Initialization: every operator, stem, downsampler and head starts as its official implementation does.

Every Conv2d and Linear records the scheme that initialized it (``init_scheme``, set by
``operators._layers.init_weights``). The tables below declare, independently of the code, which schemes each
operator, stem, downsampler and head may use; the tests hold the layers to those declarations and the weights
to each scheme's formula (the spread, the shape of the law and the biases), and the norms (every affine
BatchNorm, LayerNorm and GroupNorm) and zero-initialized last BNs to what the docstrings state. Every other
parameter (relative-position tables, layer scales, learned queries, rates, ...) is a *free parameter*: FREE_PARAMS
declares its law, and an operator, stem, downsampler or head with a free parameter that no rule covers fails.
"""

from __future__ import annotations

import fnmatch
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import operators
from nas.arch import HEAD_TYPES
from nas.network import Head

CASES = [(name, kw) for name in operators.list_ops() for kw in operators.get_spec(name).variants]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]

# The schemes an attention add-on (``attn=``, operators/attention_modules.py) brings to a conv operator: ECA's conv
# keeps PyTorch's default; GC's mask conv He fan-in, its first 1x1 He fan-out, its last 1x1 zeros; SE and CBAM
# take the operator's own scheme.
ATTN_SCHEMES = {"torch_default", "fan_in", "fan_out", "zeros"}
# Per operator: the schemes its convs and linears may carry, and whether the last BN of its residual branch
# starts at zero (timm's zero_init_last: one such BN, the block starts as ReLU(x)), or "identity": every
# identity-residual branch ends in a BN at zero and nothing follows the sums, so the block starts as x where
# the shape allows (EfficientViT's zero_last_gamma, LeViT's bn_weight_init=0). The source of each is in the
# operator's module docstring.
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
    # facebookresearch/LeViT sets no init but bn_weight_init=0 on the BatchNorm1d that ends each residual unit (the
    # attention's projection, the MLP's second Linear): the stride-1 block starts as x (the shrink attention's BN at 1)
    "levit": ({"torch_default"}, "identity"),
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
    # no official code: He fan-out per kernel (FREE_PARAMS' "kernels" law), every BN at 1 as ODConv's DY-ResNet
    "dynamic_conv": ({"fan_out"}, False),
    # pkuyym/EvolvingAttention (TF): variance_scaling_initializer() on every conv, no zero-initialized BN
    "evolving_attention": ({"lecun_normal"}, False),
}
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
# Every norm with affine parameters: BatchNorm1d/2d/3d, InstanceNorm (the _NormBase family), LayerNorm (LayerNorm2d
# included), GroupNorm, RMSNorm (weight only).
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

# Free parameters: every parameter that is not the weight or bias of a LAYERS or NORMS module (those two are held
# to DECLARED and to norm_weights). Per operator (stems as "stem:<kind>", downsamplers "downsampler:<kind>", heads
# "head:<kind>"): a pattern over "<owning module's class>.<parameter name>" (fnmatch) -> its law, or a function of
# (owning module, parameter, build) giving it, build.kw being the variant's keywords and build.out_chs its width:
#   ("normal", mean, std)        N(mean, std^2)
#   ("trunc_normal", std, bound) N(0, std^2) truncated to [-bound, bound] (absolute bounds, as timm's trunc_normal_)
#   ("uniform", a, b)            U(a, b)
#   ("constant", value)          every entry equal to value
#   ("kernels", scheme)          a stack of conv kernels, each checked as the conv it stands for (check_weights)
# The source of each is the operator module's docstring (its "Init" paragraph), which states the official code's.
SMALL = 30  # below this many values a pool's std and tail are not checked (check_free_parameters)
TRUNC_02 = ("trunc_normal", TRUNC_STD, TRUNC_BOUND)  # timm's trunc_normal_(std=.02)
FREE_PARAMS: dict[str, dict[str, object]] = {
    # acmix: "rate1 = rate2 = 0.5"; layout="window" is "Swin's" init, whose table is trunc normal 0.02 (swin.py)
    "acmix": {"ACmix*.rate[12]": ("constant", 0.5), "RelPosBias.table": TRUNC_02},
    # attention_augmented: the paper's listing, tf.random_normal_initializer(d_kh ** -0.5): mean d_kh^-1/2, std 1
    "attention_augmented": {"RelPosLogits.rel_[hw]": lambda m, p, b: ("normal", p.shape[1] ** -0.5, 1.0)},
    # bot: "the relative embeddings N(0, 1 / head_dim)"
    "bot": {"RelPosLogits.rel_[hw]": lambda m, p, b: ("normal", 0.0, p.shape[1] ** -0.5)},
    # convnext: "layer scale 1e-6"
    "convnext": {"ConvNeXtBlock.gamma": lambda m, p, b: ("constant", b.kw.get("layer_scale", 1e-6))},
    # dynamic_conv: "init He fan-out per kernel" (the fan-out of one kernel, C_out k^2 / groups)
    "dynamic_conv": {"DynamicConv2d.weight": ("kernels", "fan_out")},
    # elsa: "G_mul ~ N(0, 1) (torch.randn), G_add trunc normal 0.02"
    "elsa": {"ElsaAttention.ghost_mul": ("normal", 0.0, 1.0), "ElsaAttention.ghost_add": TRUNC_02},
    # evolving_attention: "tf.random_normal_initializer(d_kh ** -0.5), whose first argument is the *mean*:
    # N(d_kh^-1/2, 1)", as AA's listing (not the N(0, 1 / d) of BoTNet)
    "evolving_attention": {"RelPosLogits.rel_[hw]": lambda m, p, b: ("normal", p.shape[1] ** -0.5, 1.0)},
    # glmix: "the slot temperature tau = C^-1/2 (slot_scale, learnable)", C the block's width
    "glmix": {"GLMixMixer.slot_scale": lambda m, p, b: ("constant", b.out_chs ** -0.5)},
    # gnconv: "layer scales 1e-6"
    "gnconv": {"HorNetBlock.gamma[12]": lambda m, p, b: ("constant", b.kw.get("layer_scale", 1e-6))},
    # halo: "the relative embeddings keep HaloAttn.reset_parameters' truncated normal with std head_dim^-0.5"
    # (timm's trunc_normal_, bounds +-2)
    "halo": {"HaloAttention.rel_[hw]": lambda m, p, b: ("trunc_normal", p.shape[1] ** -0.5, 2.0)},
    # lesa: "the relative table N(0, 1 / d_v)"
    "lesa": {"LesaBinary.rel": lambda m, p, b: ("normal", 0.0, m.dv ** -0.5)},
    # levit: "The bias tables start at 0"
    "levit": {"LeViTAbsPosBias.table": ("constant", 0.0)},
    # maxvit: "the relative bias tables N(0, 0.02^2)" (RelPosBias truncates at +-2: 100 standard deviations out)
    "maxvit": {"RelPosBias.table": ("normal", 0.0, TRUNC_STD)},
    # mixformer: "the relative bias table trunc normal 0.02"
    "mixformer": {"RelPosBias.table": TRUNC_02},
    # mvit: "the relative position tables likewise (trunc_normal_(std=0.02))"
    "mvit": {"MViTRelPos.rel_[hw]": TRUNC_02},
    # nat: "the bias table trunc normal 0.02"; "Layer scale, when on, starts at layer_scale"
    "nat": {"NeighborhoodAttention.rpb": TRUNC_02,
            "NATBlock.gamma[12]": lambda m, p, b: ("constant", b.kw["layer_scale"])},
    # qna: "the queries sqrt(1 / head_dim) x N(0, 1) truncated to [-2, 2]; the relative position bias 0; the
    # query-mixing weights a ~ N(0, 0.02^2)"
    "qna": {"QnAttention.query": lambda m, p, b: ("trunc_normal", m.head_dim ** -0.5, 2 * m.head_dim ** -0.5),
            "QnAttention.rel_bias": ("constant", 0.0), "QnAttention.mix": ("normal", 0.0, 0.02)},
    # quadratic_attention: "mu_h ~ N(0, 2^2), spread_h ~ 1 + N(0, 0.01^2)"
    "quadratic_attention": {"QuadraticAttention.centers": ("normal", 0.0, 2.0),
                            "QuadraticAttention.spreads": ("normal", 1.0, 0.01)},
    # sasa: "the relative embeddings N(0, 1 / d)", d the head dim (row and column halves together)
    "sasa": {"SASAttention.rel_*": lambda m, p, b: ("normal", 0.0, (m.rel_row.shape[1] + m.rel_col.shape[1]) ** -0.5)},
    # swin: "the relative bias table likewise" (trunc normal 0.02)
    "swin": {"RelPosBias.table": TRUNC_02},
    # transformer: "the relative bias table N(0, 0.02^2)"
    "transformer": {"RelPosBias.table": ("normal", 0.0, TRUNC_STD)},
}


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


def normal_tail(b: float) -> float:
    """The fraction beyond sqrt(3) of its own standard deviation of N(0, 1) truncated at +-b (b = infinity: not
    truncated): erfc(sqrt(3 / 2)), about 8%, untruncated."""
    if not math.isfinite(b):
        return math.erfc(math.sqrt(1.5))
    s, root2 = truncated_std(b), math.sqrt(2)
    return max(0.0, (math.erfc(math.sqrt(3) * s / root2) - math.erfc(b / root2)) / math.erf(b / root2))


def check_standardized(z: torch.Tensor, tail: float, what: object) -> None:
    """Values standardized by their law's mean and standard deviation, pooled: mean 0, std 1, and the fraction
    beyond sqrt(3) equal to the law's ``tail`` (0 for a uniform law, normal_tail for a normal one). Tolerances are 5
    standard errors at the pooled size n: 1 / sqrt(n) for the mean, sqrt((kurtosis - 1) / 4n) for the std (kurtosis
    <= 3 for every law here) and sqrt(p (1 - p) / n) for the tail fraction p."""
    z = z.double().flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n), (what, "mean", z.mean().item(), n)
    assert abs(z.std().item() - 1) < 5 * math.sqrt(2 / (4 * n)), (what, "std", z.std().item(), n)
    frac = (z.abs() > math.sqrt(3)).double().mean().item()
    assert abs(frac - tail) <= 5 * math.sqrt(tail * (1 - tail) / n) + 1e-12, (what, "tail", frac, tail, n)


def check_weights(layers: list[nn.Module], scheme: str) -> None:
    """The layers' weights, each divided by the std its scheme gives it, pooled, follow the scheme's law (the tail
    of a uniform law is 0, that of a normal one truncated at +-b standard deviations of its parameter normal_tail)."""
    z = torch.cat([m.weight.detach().flatten() / law(m, scheme)[0] for m in layers])
    b = {"trunc_normal": TRUNC_BOUND / TRUNC_STD, "lecun_normal": 2.0}.get(scheme, math.inf)
    check_standardized(z, 0.0 if law(layers[0], scheme)[1] else normal_tail(b), scheme)


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
    """The weight of every affine norm (NORMS: BatchNorm1d and 2d, LayerNorm and LayerNorm2d, GroupNorm, ...);
    each bias must be 0."""
    weights = []
    for m in module.modules():
        if isinstance(m, NORMS) and m.weight is not None:
            bias = getattr(m, "bias", None)
            assert bias is None or torch.equal(bias, torch.zeros_like(bias)), m
            weights.append(m.weight.detach())
    return weights


def free_parameters(module: nn.Module) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """(qualified name, owning module, name, parameter) of every parameter that is not the weight or bias of a
    LAYERS or NORMS module, each once."""
    held = {id(p) for m in module.modules() if isinstance(m, LAYERS + NORMS)
            for key, p in m.named_parameters(recurse=False) if key in ("weight", "bias")}
    found = []
    for prefix, m in module.named_modules():
        for key, p in m.named_parameters(recurse=False):
            if id(p) not in held:
                held.add(id(p))
                found.append((f"{prefix}.{key}" if prefix else key, m, key, p))
    return found


def free_rule(owner: str, m: nn.Module, key: str, p: nn.Parameter, what: str) -> str:
    """The one FREE_PARAMS pattern of ``owner`` that covers parameter ``key`` of module ``m``."""
    name = f"{type(m).__name__}.{key}"
    hits = [pattern for pattern in FREE_PARAMS.get(owner, {}) if fnmatch.fnmatchcase(name, pattern)]
    assert hits, (f"{owner}: {what} ({name}, shape {tuple(p.shape)}) has no declared init: declare its init in "
                  f"FREE_PARAMS[{owner!r}] (and state it in the module's docstring)")
    assert len(hits) == 1, f"{owner}: {what} ({name}) is covered by several FREE_PARAMS rules {hits}"
    return hits[0]


def free_pools(owner: str, builds: list[tuple[str, nn.Module, SimpleNamespace]]) -> dict[tuple, list]:
    """The free parameters of the modules built for ``owner`` (label, module, build: kw and out_chs), pooled by
    (FREE_PARAMS pattern, law) across the builds: (what, owning module, values) each."""
    pools: dict[tuple, list[tuple[str, nn.Module, torch.Tensor]]] = {}
    for label, module, build in builds:
        for qual, m, key, p in free_parameters(module):
            what = f"{qual} ({label})"
            pattern = free_rule(owner, m, key, p, what)
            rule = FREE_PARAMS[owner][pattern]
            found = rule(m, p, build) if callable(rule) else rule
            pools.setdefault((pattern, found), []).append((what, m, p.detach()))
    return pools


def drawn_sizes(pools: dict[tuple, list]) -> list[int]:
    """The number of values in each pool whose law is drawn (not a constant, not a kernel stack)."""
    return [sum(p.numel() for _, _, p in members) for (_, (kind, *_)), members in pools.items()
            if kind not in ("constant", "kernels")]


def check_free_parameters(owner: str, builds: list[tuple[str, nn.Module, SimpleNamespace]]) -> None:
    """Every free parameter of the modules built for ``owner`` follows the law FREE_PARAMS declares for it. Values
    are pooled per pattern and law across the builds, standardized by the law and checked as check_standardized
    does (with the law's bounds exactly); a pool of fewer than SMALL values is checked for its mean (5 standard
    errors, exact for a normal law), its spread (not a constant) and |z| <= 6 instead of its std and tail."""
    for (pattern, found), members in free_pools(owner, builds).items():
        kind, *args = found
        if kind == "constant":
            for what, _, p in members:
                assert torch.equal(p, torch.full_like(p, args[0])), (owner, what, f"not all {args[0]}", p.flatten()[:4])
            continue
        if kind == "kernels":  # a (K, C_out, C_in / groups, k, k) stack: each kernel with its own conv's fans
            (scheme,) = args
            assert scheme in DECLARED[owner][0], (owner, pattern, scheme)
            for what, m, _ in members:
                assert getattr(m, "init_scheme", None) == scheme, (owner, what, getattr(m, "init_scheme", None))
            check_weights([SimpleNamespace(weight=w, bias=None, groups=getattr(m, "groups", 1))
                           for _, m, p in members for w in p], scheme)
            continue
        x = torch.cat([p.flatten() for _, _, p in members]).double()
        if kind == "normal":
            mean, std = args
            z, tail, bounded = (x - mean) / std, normal_tail(math.inf), False
        elif kind == "trunc_normal":
            std, bound = args
            assert x.abs().max().item() <= bound * (1 + 1e-6), (owner, pattern, "beyond", bound, x.abs().max().item())
            z, tail, bounded = x / (std * truncated_std(bound / std)), normal_tail(bound / std), True
        elif kind == "uniform":
            a, b = args
            assert a <= x.min().item() and x.max().item() <= b, (owner, pattern, "outside", (a, b))
            z, tail, bounded = (x - (a + b) / 2) / ((b - a) / math.sqrt(12)), 0.0, True
        else:
            raise AssertionError(f"{owner}: {pattern}: unknown law {found!r}")
        what = (owner, pattern, found, [w for w, _, _ in members])
        if z.numel() >= SMALL:
            check_standardized(z, tail, what)
        else:
            assert abs(z.mean().item()) < 5 / math.sqrt(z.numel()), (what, "mean", z.mean().item())
            spread = z.numel() == 1 or z.std().item() > 0
            assert spread and (bounded or z.abs().max().item() <= 6), (what, "spread", z.tolist())


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


# The free-parameter tests build each operator 32 -> 64 at stride 2 and 64 -> 64 at stride 1 (the parts that exist
# only with a residual or only when downsampling both appear), and again with fresh draws while a drawn pool holds
# fewer than FREE_POOL values (per-head scalars: quadratic attention's 4 to 9 centers and spreads, halo's small
# tables), up to FREE_MAX_BUILDS builds; at FREE_POOL values the std test sees a 31% error, at 676 (a Swin table
# over the two builds) 14%.
FREE_BUILDS = [(32, 64, 2), (64, 64, 1)]
FREE_POOL, FREE_MAX_BUILDS = 128, 32


def free_builds(name: str, kw: dict, round_: int = 0) -> list[tuple[str, nn.Module, SimpleNamespace]]:
    return [(f"{i}->{o}/{s}" + (f" #{round_}" if round_ else ""), operators.create_op(name, i, o, s, **kw),
             SimpleNamespace(kw=kw, out_chs=o)) for i, o, s in FREE_BUILDS]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_free_parameters_follow_their_declared_law(name, kw):
    """Relative-position tables, layer scales, learned queries, rates, ghost heads, kernel stacks: every parameter
    outside a conv, linear or norm follows the law FREE_PARAMS declares for it, and one without a rule fails."""
    torch.manual_seed(0)
    builds = free_builds(name, kw)
    rounds = min(-(-FREE_POOL // min(drawn_sizes(free_pools(name, builds)), default=FREE_POOL)),
                 FREE_MAX_BUILDS // len(FREE_BUILDS))
    for round_ in range(1, rounds):
        builds += free_builds(name, kw, round_)
    check_free_parameters(name, builds)


def owner_modules(owner: str) -> list[nn.Module]:
    """What the tests build for a FREE_PARAMS key: every variant of an operator, a stem, a downsampler, a head."""
    kind = owner.partition(":")[2]
    if owner.startswith("stem:") and kind in operators.list_stems():
        return [operators.get_stem(kind).factory(3, 96)]
    if owner.startswith("downsampler:") and kind in operators.list_downsamplers():
        return [operators.get_downsampler(kind).factory(64, 128, 2)]
    if owner.startswith("head:") and kind in HEAD_TYPES:
        return [Head(kind, 256, 100, hidden) for hidden in (0, 192)]
    assert owner in operators.list_ops(), f"FREE_PARAMS[{owner!r}]: no such operator, stem, downsampler or head"
    return [module for kw in operators.get_spec(owner).variants for _, module, _ in free_builds(owner, kw)]


def test_every_free_parameter_rule_applies():
    """No stale rule: each FREE_PARAMS pattern covers a parameter of one of its owner's variants."""
    for owner, rules in FREE_PARAMS.items():
        used = {free_rule(owner, m, key, p, qual) for module in owner_modules(owner)
                for qual, m, key, p in free_parameters(module)}
        assert set(rules) <= used, f"{owner}: FREE_PARAMS rules {sorted(set(rules) - used)} cover no parameter"


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


@pytest.mark.parametrize("kind", operators.list_stems())
def test_stems(kind):
    assert set(operators.list_stems()) == set(STEM_DECLARED), "declare the init of every stem in STEM_DECLARED"
    torch.manual_seed(0)
    stem = operators.get_stem(kind).factory(3, 96)
    check_module(stem, {STEM_DECLARED[kind]})
    check_free_parameters(f"stem:{kind}", [("3->96", stem, SimpleNamespace(kw={}, out_chs=96))])
    weights = norm_weights(stem)
    assert sum(1 for w in weights if not w.any()) == (kind in STEM_ZERO_LAST)
    assert all(torch.equal(w, torch.ones_like(w)) for w in weights if w.any())


@pytest.mark.parametrize("kind", operators.list_downsamplers())
def test_downsamplers(kind):
    assert set(operators.list_downsamplers()) == set(DOWNSAMPLER_DECLARED), "declare the init of every downsampler"
    torch.manual_seed(0)
    layer = operators.get_downsampler(kind).factory(64, 128, 2)
    check_module(layer, {DOWNSAMPLER_DECLARED[kind]})
    check_free_parameters(f"downsampler:{kind}", [("64->128/2", layer, SimpleNamespace(kw={}, out_chs=128))])
    assert all(torch.equal(w, torch.ones_like(w)) for w in norm_weights(layer))


@pytest.mark.parametrize("hidden", [0, 192])
@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_heads(kind, hidden):
    assert set(HEAD_TYPES) == set(HEAD_DECLARED), "declare the init of every head type in HEAD_DECLARED"
    torch.manual_seed(0)
    head = Head(kind, 256, 100, hidden)
    check_module(head, {HEAD_DECLARED[kind]})
    check_free_parameters(f"head:{kind}", [(f"256->100 hidden {hidden}", head, SimpleNamespace(kw={}, out_chs=100))])
    assert all(torch.equal(w, torch.ones_like(w)) for w in norm_weights(head))


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_operators_build_on_the_meta_device(name, kw):
    """``build_uninitialized`` builds under torch.device("meta"): the init code must run there too."""
    with torch.device("meta"):
        op = operators.create_op(name, 16, 32, 2, **kw)
    assert all(p.is_meta for p in op.parameters())
