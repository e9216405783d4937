"""Building blocks shared by the operators, and structural re-parameterization.

Re-parameterization follows RepVGG (Ding et al., CVPR 2021): a BatchNorm in eval mode is the affine map
``y = (x - mean) * t + beta`` with ``t = gamma / sqrt(var + eps)``, so a conv followed by BN is one conv with
weight ``W * t`` and bias ``beta + (b - mean) * t``; parallel linear branches of the same stride sum into
one kernel once each is zero-padded to the largest kernel size.

Initialization: ``init_weights(module, scheme)`` holds the named schemes the operators' official code uses
(He fan-out, truncated normal 0.02, Glorot, ACmix's shift kernels, PyTorch's default); each operator applies
its own at the end of its constructor, so a build on the meta device runs the same code and skips the work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def default_heads(dim: int, head_dim: float = 32) -> int:
    """The head count for ``dim`` channels at about ``head_dim`` per head that divides ``dim`` exactly."""
    heads = max(1, round(dim / head_dim))
    while dim % heads:
        heads -= 1
    return heads


def check_heads(name: str, dim: int, heads: int) -> int:
    if heads < 1 or dim % heads:
        raise ValueError(f"{name}: heads={heads} must be a positive divisor of the width {dim}; "
                         f"pass heads= a divisor of {dim}, or leave it to the default")
    return heads


def resolve_heads(name: str, dim: int, heads: int | None, head_dim: float, usual: str) -> int:
    """``heads`` checked against the width ``dim``, or the default for about ``head_dim`` channels a head; a
    ``head_dim`` below 1 is refused, ``usual`` saying what the paper uses (e.g. "NAT uses 32")."""
    if not head_dim >= 1:
        raise ValueError(f"{name}: head_dim={head_dim!r} must be >= 1 ({usual})")
    return check_heads(name, dim, heads or default_heads(dim, head_dim))


def check_int(name: str, key: str, value: object, low: int, usual: str, odd: bool = False) -> None:
    """Refuse a keyword that is not an integer >= ``low`` (odd too with ``odd``: a kernel or window centred on
    its pixel); a bool is not an integer here. ``usual`` says what the paper uses."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (odd and value % 2 == 0):
        raise ValueError(f"{name}: {key}={value!r} must be {'an odd' if odd else 'an'} integer >= {low} ({usual})")


def check_positive(name: str, key: str, value: float, usual: str, zero_ok: bool = False) -> None:
    """Refuse a ratio or scale that is not > 0 (>= 0 with ``zero_ok``, where 0 turns a part off), NaN included."""
    if not (value >= 0 if zero_ok else value > 0):
        raise ValueError(f"{name}: {key}={value!r} must be {'>= 0' if zero_ok else '> 0'} ({usual})")


def fuse_bn(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d, rows: slice = slice(None)):
    """Fold an eval-mode BatchNorm that follows a linear map (weight, bias) into it; ``rows`` picks the BN
    channels that this map produces when it feeds only part of the BN (a concatenation)."""
    t = (bn.weight / torch.sqrt(bn.running_var + bn.eps))[rows]
    shape = (-1,) + (1,) * (weight.dim() - 1)
    fused_bias = bn.bias[rows] - bn.running_mean[rows] * t
    if bias is not None:
        fused_bias = fused_bias + bias * t
    return weight * t.reshape(shape), fused_bias


def pad_kernel(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Zero-pad a (out, in, kh, kw) kernel to k x k around its centre (odd sizes)."""
    p = (k - weight.shape[-1]) // 2
    return F.pad(weight, (p, p, p, p)) if p else weight


def identity_kernel(channels: int, groups: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """A k x k grouped-conv kernel equal to the identity: 1 at the centre of channel i -> i."""
    per_group = channels // groups
    w = torch.zeros(channels, per_group, k, k, dtype=like.dtype, device=like.device)
    idx = torch.arange(channels, device=like.device)
    w[idx, idx % per_group, k // 2, k // 2] = 1.0
    return w


def conv_with(weight: torch.Tensor, bias: torch.Tensor, stride, padding, groups: int = 1) -> nn.Conv2d:
    """A Conv2d holding the given (fused) weight and bias; built on the meta device so that no time goes
    into a random init that would be overwritten."""
    out_chs, in_per_group, kh, kw = weight.shape
    with torch.device("meta"):
        conv = nn.Conv2d(in_per_group * groups, out_chs, (kh, kw), stride, padding, groups=groups)
    conv.weight = nn.Parameter(weight.detach())
    conv.bias = nn.Parameter(bias.detach())
    return conv


class ConvNormAct(nn.Module):
    """Conv (padding k // 2, so the output is ceil(H / stride)) -> BatchNorm -> optional activation.

    ``reparameterize()`` folds the BN into the conv and removes it.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, norm: bool = True, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=bias or not norm)
        self.bn = nn.BatchNorm2d(out_chs) if norm else None
        self.act = act() if act is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x

    def fused_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (weight, bias) of the conv with its BN folded in; valid before and after re-parameterizing."""
        w, b = self.conv.weight, self.conv.bias
        if self.bn is not None:
            return fuse_bn(w, b, self.bn)
        return w, b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        w, b = self.fused_weight_bias()
        self.conv, self.bn = conv_with(w, b, self.conv.stride, self.conv.padding, self.conv.groups), None


class RepConv(nn.Module):
    """Parallel conv + BN branches summed, re-parameterizable into one k x k conv (RepVGG / MobileOne).

    Training form: ``num_branches`` k x k conv+BN branches, an optional 1x1 conv+BN "scale" branch, and a
    BN-only identity branch when the shapes allow it (stride 1, in == out). Deploy form: one k x k conv with bias.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 num_branches: int = 1, scale_branch: bool = True, identity: bool = True):
        super().__init__()
        self.in_chs, self.out_chs, self.k, self.stride, self.groups = in_chs, out_chs, kernel_size, stride, groups
        self.branches = nn.ModuleList(
            ConvNormAct(in_chs, out_chs, kernel_size, stride, groups, act=None) for _ in range(num_branches))
        self.scale = (ConvNormAct(in_chs, out_chs, 1, stride, groups, act=None)
                      if scale_branch and kernel_size > 1 else None)
        self.identity = nn.BatchNorm2d(out_chs) if identity and stride == 1 and in_chs == out_chs else None
        self.reparam: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam is not None:
            return self.reparam(x)
        out = self.identity(x) if self.identity is not None else 0
        if self.scale is not None:
            out = out + self.scale(x)
        for branch in self.branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam is not None:
            return
        k = self.k
        ref = self.branches[0].conv.weight
        weight = torch.zeros(self.out_chs, self.in_chs // self.groups, k, k, dtype=ref.dtype, device=ref.device)
        bias = torch.zeros(self.out_chs, dtype=ref.dtype, device=ref.device)
        convs = list(self.branches) + ([self.scale] if self.scale is not None else [])
        for branch in convs:
            w, b = branch.fused_weight_bias()
            weight += pad_kernel(w, k)
            bias += b
        if self.identity is not None:
            w, b = fuse_bn(identity_kernel(self.out_chs, self.groups, k, ref), None, self.identity)
            weight += w
            bias += b
        self.reparam = conv_with(weight, bias, self.stride, k // 2, self.groups)
        del self.branches, self.scale, self.identity
        self.branches, self.scale, self.identity = nn.ModuleList(), None, None


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """Transformer feed-forward on channels-last input: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): global average pool -> 1x1 -> act -> 1x1 -> sigmoid gate."""

    def __init__(self, chs: int, rd_chs: int, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.reduce = nn.Conv2d(chs, rd_chs, 1)
        self.act = act()
        self.expand = nn.Conv2d(rd_chs, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class NormActMixer(nn.Module):
    """A bottleneck's spatial mixer that ends in BN then ReLU, as the 3x3 conv it replaces does (BoT, HaloNet,
    SASA, ACmix, attention-augmented conv): ``add_norm_act`` builds the tail, ``finish`` applies it. At deploy
    ``reparameterize`` hands the BN to the mixer's ``fold_bn``, which folds it into the mixer's own layers, and
    drops it; the ReLU stays."""

    def add_norm_act(self, dim: int) -> None:
        """The tail on the mixer's ``dim`` output channels; called last in ``__init__``, so that the state_dict
        lists the BN after the mixer's own layers."""
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.ReLU()

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            out = self.bn(out)
        return self.act(out)

    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        """Make the mixer's layers compute what the BN applied to their output computed."""
        raise NotImplementedError(f"{type(self).__name__} must say how its BN folds (fold_bn)")

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        self.fold_bn(self.bn)
        self.bn = None


class Chain:
    """State that a block hands on to the next block of the network: evolving attention's logits, for one.

    A block that reads and writes one declares ``takes_chain = True`` and the signature
    ``forward(x, chain=None)``; it returns its output tensor as any block does, reads ``chain.value`` (the
    previous chained block's state, None where a chain starts) and leaves its own in ``chain.value``. Whether
    what it reads continues its chain is the block's decision (evolving attention continues where the shapes
    match and starts anew where they do not). The network (``nas.network.Stage``) passes one Chain through
    all its stages, so a chain crosses a stage boundary; any block that does not take it ends the chain. A
    block called on its own (``block(x)``) gets no Chain: it starts a chain of one.

    A plain object rather than a tensor argument and a tuple result, so that a chained block is called, traced,
    counted, timed and exported as every other block is, and a chain costs nothing where no block takes it.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


def takes_chain(module: nn.Module) -> bool:
    """Whether ``module`` reads and writes a ``Chain`` (see there)."""
    return bool(getattr(module, "takes_chain", False))


def pool_ceil(stride: int) -> nn.Module:
    """2x2 average pooling whose output is ceil(H / 2) at any size (a partial last window averages what it
    covers); identity at stride 1."""
    return nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Apply ``reparameterize()`` to every module that has it (children before parents) and return the model.

    With ``inplace=False`` the model passed in is left untouched and a re-parameterized deep copy is returned.
    """
    import copy

    if not inplace:
        model = copy.deepcopy(model)
    for module in reversed(list(model.modules())):
        fn = getattr(module, "reparameterize", None)
        if callable(fn):
            fn()
    return model


def trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """N(0, std^2) truncated to [-2, 2], the defaults of timm's ``trunc_normal_`` that the official Swin and
    ConvNeXt call: the bounds are absolute, so at std 0.02 they sit 100 std out and cut nothing that matters."""
    return nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)


# Named weight-initialization schemes, one piece of code each (see ``init_weights``).
INIT_SCHEMES = ("fan_out", "trunc_normal", "xavier", "shift", "torch_default", "lecun_normal")


@torch.no_grad()
def init_weights(module: nn.Module, scheme: str) -> nn.Module:
    """Initialize with ``scheme`` every Conv2d and Linear under ``module`` that has no scheme yet, record the
    scheme on each as ``init_scheme``, and return ``module``.

    Operators call it at the end of their constructors. A part built inside them that chose its own scheme was
    built (so initialized) first and keeps it: the innermost scheme wins (ACmix's shift conv inside a Swin block
    or a ResNet bottleneck, for instance). Norms keep PyTorch's weight 1 and bias 0, which is also what every
    official code below sets.

    - "fan_out": weight ~ N(0, 2 / fan_out), fan_out = out channels x kernel area / groups (a Linear counts as
      a 1x1 conv), bias 0. He et al.'s init as torchvision's and timm's ``resnet.py`` write it
      (``kaiming_normal_``, mode fan_out, relu: the same at groups 1), and timm's EfficientNet
      (``_init_weight_goog``), CoAtNet conv (``maxxvit._init_conv``) and ``byobnet`` write it with groups.
    - "trunc_normal": weight ~ N(0, 0.02^2) truncated to [-2, 2] (``trunc_normal_``), bias 0: the official Swin
      and ConvNeXt ``_init_weights``.
    - "xavier": Glorot uniform weight, bias 0: ViT's JAX code and timm's ``maxxvit._init_transformer``.
    - "shift": one-hot kernels, input map i of each group read at kernel cell i only, bias 0: ACmix's shift
      initialization of its grouped conv (the conv needs kernel area input channels per group).
    - "torch_default": PyTorch's own init kept (``kaiming_uniform_`` with a = sqrt(5), bias uniform in
      +-1 / sqrt(fan_in)): the official RepVGG and MobileOne code sets nothing else.
    - "lecun_normal": flax's ``lecun_normal``: N(0, s^2) truncated to [-2 s, 2 s] with s = sqrt(1 / fan_in) / 0.8796
      (0.8796 is the std of N(0, 1) truncated to [-2, 2], so the variance is 1 / fan_in), bias 0: the official
      QnA code (moabarar/qna, flax).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme {scheme!r} is not one of {', '.join(INIT_SCHEMES)}")
    for m in module.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or getattr(m, "init_scheme", None):
            continue
        w = m.weight
        if scheme == "fan_out":
            fan_out = w.shape[0] * math.prod(w.shape[2:]) // getattr(m, "groups", 1)
            nn.init.normal_(w, 0.0, math.sqrt(2.0 / fan_out))
        elif scheme == "trunc_normal":
            trunc_normal_(w)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(w)
        elif scheme == "shift":
            k = w.shape[-1]
            if w.shape[1] != k * k:
                raise ValueError(f"a shift init needs {k * k} input channels per group, got {w.shape[1]}")
            cells = torch.arange(k * k, device=w.device)
            kernel = torch.zeros(k * k, k, k, dtype=w.dtype, device=w.device)
            kernel[cells, cells // k, cells % k] = 1.0
            w.copy_(kernel.expand_as(w))
        elif scheme == "lecun_normal":
            fan_in = w.shape[1] * math.prod(w.shape[2:])
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(w, 0.0, std, -2.0 * std, 2.0 * std)
        if m.bias is not None and scheme != "torch_default":
            nn.init.zeros_(m.bias)
        m.init_scheme = scheme
    return module


@torch.no_grad()
def fold_bn_into_next_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """Fold an eval-mode BN that *precedes* an unpadded 1x1 conv into that conv, in place (exact)."""
    if conv.kernel_size != (1, 1) or conv.groups != 1:
        raise ValueError("only a dense 1x1 conv can absorb the BatchNorm before it")
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * t
    w = conv.weight[:, :, 0, 0]
    bias = w @ shift + (conv.bias if conv.bias is not None else 0)
    conv.weight.mul_(t[None, :, None, None])
    if conv.bias is None:
        conv.bias = nn.Parameter(bias)
    else:
        conv.bias.copy_(bias)
