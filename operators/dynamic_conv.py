"""Dynamic convolution: K kernels aggregated per sample by a softmax attention, in ResNet and MobileNetV2 units.

Paper: Chen, Dai, Liu, Chen, Yuan & Liu, "Dynamic Convolution: Attention over Convolution Kernels", CVPR 2020.
The authors released no code; the facts below are the paper's. A dynamic conv holds K = 4 kernels W_k (and
biases b_k); pi = softmax(FC2(ReLU(FC1(GAP x))) / tau), FC1 reducing the channels by 4; the sample's kernel is
W~ = sum_k pi_k W_k, its bias b~ = sum_k pi_k b_k, then BN and the activation. In training the B samples' kernels
run as one conv with B x groups groups. tau starts at 30 and falls linearly to 1 over the first 10 epochs (of
DY-ResNet's 100): the trainer calls ``on_train_epoch(epoch, epochs)`` before each epoch, and tau falls over the
first ``anneal`` fraction of whatever the training's epochs are (0.1 by default; a 3-epoch proxy trains its first
epoch at 30, then at 1). The paper makes every conv but the network's first dynamic (its DY-MobileNetV2's
published 11.1 M counts the last 1x1 conv static: docs/spaces.md, note 7).

Units (``unit``): "basic" and "bottleneck" are the catalog's ResNet units (``resnet.py``) with every conv + BN
swapped for its dynamic twin, the projection shortcut's included; "inverted" is MobileNetV2's inverted residual
(1x1 expand to ``expansion`` x in_chs unless it is 1, depthwise 3x3 carrying the stride, 1x1 project, BN after
each, ReLU6 after the first two, x + that when the shape allows), not the catalog's ``mbconv`` (CoAtNet's
pre-norm, SE and GELU). CondConv (Yang et al., NeurIPS 2019: sigmoid routing, no softmax, no temperature) is the
variant left out: its weights do not sum to 1, so the BN's shift would not fold into the K biases as here.

Cost: the attention (two Linear layers on the pooled map) and the aggregation (matmuls of the (B, K) attention
with the kernels, K x kernel numel and K x C_out multiply-adds per sample) are ops fvcore counts; so is the conv.
Deploy: no static kernel exists, but the eval BN folds into every W_k and b_k (exact, because sum pi = 1) and
1 / tau into FC2; at batch 1 the grouped conv is one ordinary conv. An exported program (torch.export, ONNX)
computes the per-sample conv as a batched matmul over k x k neighbourhoods instead (the same values and
multiply-adds), because ONNX's Conv takes its group count as a fixed attribute and the batch must stay dynamic.

Init (no official code): each kernel W_k He normal with its own conv's fan-out, C_out k^2 / groups (the
catalog's "fan_out"; He over the (K, C_out, C_in / groups, k, k) tensor would take its fans from the wrong axes),
the attention's Linear layers "fan_out" too, biases 0, every BN at weight 1 (as ODConv's DY/OD-ResNet and
MobileNetV2 code, Li et al., ICLR 2022; the catalog's ResNet units zero their last BN, which the swap replaces).
Departures: the convs followed by BN have no bias (a BN cancels it; the deploy form gets biases from the BN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import neighbourhoods
from ._layers import ConvNormAct, check_int, check_positive, init_weights
from ._registry import register_op
from .resnet import BasicBlock, Bottleneck

DY_CONV_PAPER = "Chen et al., Dynamic Convolution: Attention over Convolution Kernels, CVPR 2020"
DY_UNITS = ("basic", "bottleneck", "inverted")


def per_sample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                    groups: int) -> torch.Tensor:
    """Sample i of ``x`` (B, C_in, H, W) convolved with its own kernel ``weight[i]`` (B, C_out, C_in / groups, k,
    k) and bias ``bias[i]`` (B, C_out), padding k // 2: (B, C_out, ceil(H / s), ceil(W / s)). One conv of
    B x groups groups on the samples stacked as channels (an ordinary conv at batch 1); an exported program takes
    ``per_sample_matmul``, whose batch stays dynamic."""
    if torch.compiler.is_exporting():
        return per_sample_matmul(x, weight, bias, stride, groups)
    b, c, h, w = x.shape
    out, k = weight.shape[1], weight.shape[-1]
    y = F.conv2d(x.reshape(1, b * c, h, w), weight.reshape(b * out, c // groups, k, k),
                 None if bias is None else bias.reshape(b * out), stride, k // 2, groups=b * groups)
    return y.reshape(b, out, y.shape[-2], y.shape[-1])  # reshape: a channels-last output (CUDA) is no view


def per_sample_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                      groups: int) -> torch.Tensor:
    """``per_sample_conv`` as a batched matmul: each group's k x k neighbourhoods (taps row-major, then channels)
    times the sample's kernel laid out the same way; no shape depends on the batch size."""
    b, _, h, w = x.shape
    out, cin_g, k = weight.shape[1], weight.shape[2], weight.shape[-1]
    ho, wo = -(-h // stride), -(-w // stride)
    cols = neighbourhoods(x, groups, k, stride).flatten(3)  # (B, g, ho wo, k^2 cin_g)
    kernel = weight.reshape(b, groups, out // groups, cin_g, k * k).permute(0, 1, 4, 3, 2)
    y = torch.matmul(cols, kernel.reshape(b, groups, k * k * cin_g, out // groups))  # (B, g, ho wo, out / g)
    y = y.permute(0, 1, 3, 2).reshape(b, out, ho, wo)
    return y if bias is None else y + bias.reshape(b, out, 1, 1)


class DynamicConv2d(nn.Module):
    """K kernels of a k x k conv (padding k // 2) mixed per sample by pi = softmax(FC2(ReLU(FC1(GAP x))) / tau).

    ``tau`` is a buffer (it travels with the weights) that ``on_train_epoch`` anneals from ``temperature`` to 1;
    ``reparameterize`` folds it into FC2 and sets it to None; ``fold_bn`` folds a following eval BN into the
    kernels and biases."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 bias: bool = False, kernels: int = 4, reduction: int = 4, temperature: float = 30.0,
                 anneal: float = 0.1):
        super().__init__()
        self.stride, self.groups, self.temperature, self.anneal = stride, groups, temperature, anneal
        self.weight = nn.Parameter(torch.empty(kernels, out_chs, in_chs // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(kernels, out_chs)) if bias else None
        hidden = max(1, in_chs // reduction)
        self.fc1 = nn.Linear(in_chs, hidden)
        self.fc2 = nn.Linear(hidden, kernels)
        self.register_buffer("tau", torch.full((), float(temperature)))
        # He fan-out of ONE kernel, as init_weights' "fan_out" counts a conv: C_out k^2 / groups
        fan_out = out_chs * kernel_size * kernel_size // groups
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))
        self.init_scheme = "fan_out"
        init_weights(self, "fan_out")  # the attention's Linear layers

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """pi, (B, K): each row sums to 1."""
        logits = self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))
        if self.tau is not None:
            logits = logits / self.tau
        return torch.softmax(logits, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pi = self.attention(x)
        k = self.weight.shape[0]
        weight = torch.matmul(pi, self.weight.reshape(k, -1)).reshape(-1, *self.weight.shape[1:])
        bias = torch.matmul(pi, self.bias) if self.bias is not None else None
        return per_sample_conv(x, weight, bias, self.stride, self.groups)

    @torch.no_grad()
    def on_train_epoch(self, epoch: int, epochs: int) -> None:
        """tau for epoch ``epoch`` (from 1) of ``epochs``: ``temperature`` at the start, linearly down to 1 at the
        end of the first ``anneal`` fraction of the epochs, 1 after: 30, 27.1, ..., 3.9, then 1 from epoch 11 of
        100 (the paper's schedule); 30, 1, 1 over 3 epochs. A deploy form (tau folded) is not trained: no-op."""
        if self.tau is None:
            return
        done = (epoch - 1) / (self.anneal * epochs) if self.anneal > 0 else 1.0
        self.tau.fill_(1.0 + (self.temperature - 1.0) * max(0.0, 1.0 - done))

    @torch.no_grad()
    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        """BN(sum_k pi_k (W_k * x + b_k)) = sum_k pi_k ((t W_k) * x + t (b_k - mean) + beta), since sum pi = 1."""
        t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.weight.mul_(t.reshape(1, -1, 1, 1, 1))
        bias = self.bias if self.bias is not None else torch.zeros_like(self.weight[:, :, 0, 0, 0])
        self.bias = nn.Parameter((bias - bn.running_mean) * t + bn.bias)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.tau is None:
            return
        self.fc2.weight.div_(self.tau)
        self.fc2.bias.div_(self.tau)
        self.tau = None


class DynamicConvNormAct(ConvNormAct):
    """``ConvNormAct`` with a ``DynamicConv2d``: its forward (conv -> BN -> optional activation); ``reparameterize``
    folds the BN into the K kernels and biases instead of one static kernel."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU, **dynamic):
        nn.Module.__init__(self)  # ConvNormAct's layers, with the dynamic conv in place of nn.Conv2d
        self.conv = DynamicConv2d(in_chs, out_chs, kernel_size, stride, groups, **dynamic)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act() if act is not None else None

    def fused_weight_bias(self):
        raise TypeError("a dynamic conv has no static kernel: its K kernels fold the BN (reparameterize)")

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        self.conv.fold_bn(self.bn)
        self.bn = None


def make_dynamic(module: nn.Module, **dynamic) -> nn.Module:
    """Swap every ``ConvNormAct`` under ``module`` for a ``DynamicConvNormAct`` of the same geometry and
    activation (a new BN, at weight 1); returns ``module``. The catalog's units stay the one copy of their
    layout and forward."""
    for name, child in module.named_children():
        if type(child) is ConvNormAct:  # a static one (a DynamicConvNormAct is one too, already swapped)
            conv = child.conv
            act = type(child.act) if child.act is not None else None
            setattr(module, name, DynamicConvNormAct(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                                                     conv.stride[0], conv.groups, act, **dynamic))
        else:
            make_dynamic(child, **dynamic)
    return module


class DyInvertedResidual(nn.Module):
    """MobileNetV2's inverted residual, every conv dynamic: [1x1 expand + BN + ReLU6] -> depthwise 3x3 (the
    stride) + BN + ReLU6 -> 1x1 project + BN; plus x at stride 1 and in == out."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: float, **dynamic):
        super().__init__()
        mid = max(1, round(in_chs * expansion))
        self.expand = DynamicConvNormAct(in_chs, mid, 1, act=nn.ReLU6, **dynamic) if expansion != 1 else None
        self.dw = DynamicConvNormAct(mid, mid, 3, stride, groups=mid, act=nn.ReLU6, **dynamic)
        self.project = DynamicConvNormAct(mid, out_chs, 1, act=None, **dynamic)
        self.residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.dw(y))
        return x + y if self.residual else y


def dynamic_conv(in_chs: int, out_chs: int, stride: int = 1, unit: str = "basic", kernels: int = 4,
                 reduction: int = 4, expansion: float | None = None, temperature: float = 30.0,
                 anneal: float = 0.1) -> nn.Module:
    """``unit``: "basic", "bottleneck" (``expansion`` 4: mid = out / 4) or "inverted" (``expansion`` 6: mid =
    6 in); ``kernels`` K; ``reduction``: FC1's; ``temperature``: tau at the start, annealed to 1 over the first
    ``anneal`` fraction of the training's epochs."""
    name = "dynamic_conv"
    if unit not in DY_UNITS:
        raise ValueError(f"{name}: unit={unit!r} must be one of {', '.join(DY_UNITS)} (the paper's ResNet-18 "
                         f"uses basic, its MobileNetV2 inverted)")
    check_int(name, "kernels", kernels, 1, "the paper uses 4")
    check_int(name, "reduction", reduction, 1, "the paper uses 4")
    check_positive(name, "temperature", temperature, "the paper starts at 30")
    check_positive(name, "anneal", anneal, "the paper anneals over 10 of 100 epochs: 0.1", zero_ok=True)
    if unit == "basic" and expansion is not None:
        raise ValueError(f"{name}: expansion={expansion!r} applies to the bottleneck and inverted units only")
    if unit == "bottleneck" and expansion is not None:
        check_int(name, "expansion", expansion, 1, "ResNet uses 4: mid = out / 4")
    if unit == "inverted" and expansion is not None:
        check_positive(name, "expansion", expansion, "MobileNetV2 uses 6, and 1 in its first block")
    dynamic = dict(kernels=kernels, reduction=reduction, temperature=temperature, anneal=anneal)
    if unit == "inverted":
        return DyInvertedResidual(in_chs, out_chs, stride, 6 if expansion is None else expansion, **dynamic)
    if unit == "basic":
        return make_dynamic(BasicBlock(in_chs, out_chs, stride), **dynamic)
    return make_dynamic(Bottleneck(in_chs, out_chs, stride, expansion=4 if expansion is None else expansion),
                        **dynamic)


register_op("dynamic_conv", dynamic_conv, paper=DY_CONV_PAPER, family="conv",
            variants=({}, {"unit": "bottleneck"}, {"unit": "inverted"}))
