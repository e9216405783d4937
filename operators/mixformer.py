"""MixFormer block (Chen, Wu, Luo, Wang, Sun and Wang, "MixFormer: Mixing Features across Windows and
Dimensions", CVPR 2022), with MixFormer's convolutional stem.

One op is one mixing block: x <- x + Mix(LN(x)); x <- x + MLP(LN(x)) on channels-last maps, GELU MLP of ratio 4.
The mixer runs two branches side by side on its input of C channels:

- attention: Linear C -> C/2, LayerNorm, then multi-head self-attention inside non-overlapping, *non-shifted*
  M x M windows (M = 7) on those C/2 channels, with Swin's relative position bias table of (2M - 1)^2 entries
  per head; head dim 8 on the C/2 attention channels (MixFormer-B4: 4/8/16/32 heads at 64/128/256/512);
- convolution: Linear C -> C, LayerNorm, depthwise 3x3 conv (with bias) + BN + GELU on the whole map (it sees
  across window borders), then a 1x1 conv C -> C/2 (the "projection").

Two interactions join them:

- channel interaction: the conv branch *after the depthwise conv, before the projection* is averaged over the
  map and mapped by 1x1 (C -> C/8) + BN + GELU + 1x1 (C/8 -> C/2); its sigmoid scales the attention's values
  v channel by channel (per image, the same in every window), before the softmax-weighted sum;
- spatial interaction: the attention output (C/2) is mapped by 1x1 (C/2 -> C/16) + BN + GELU + 1x1 (C/16 -> 1);
  its sigmoid (one map) gates the projected conv branch pixel by pixel, which is then batch-normalized.

The attention output is layer-normalized, concatenated with the conv branch ([attention, conv], C channels) and
mapped by a final Linear C -> C.

When the stride or width changes the block starts with MixFormer's ConvMerging: BatchNorm, then a 2x2
stride-2 conv (with bias) to out_chs (at stride 1, a width change uses a 1x1 conv). The official network puts
it at the end of each stage; here it is the start of the next stage's first block (the same layers in the
same order).

Stem ("mixformer", stride 4): MixFormer's ConvEmbed: 3x3 stride-2 conv to width / 2, then two 3x3 convs at
width / 2, each with bias + BN + GELU, then a 2x2 stride-2 conv (with bias) to width and LayerNorm; the input
is zero-padded at the bottom/right to a multiple of 4 first, as the official code does.

Head (not part of this file): the official head is LayerNorm -> Linear C -> 1280 *per pixel* -> GELU ->
global average pool -> Linear 1280 -> classes.

Re-parameterization: the BNs after the depthwise conv and after the first 1x1 of each interaction fold into
those convs; the BN after the spatial gate folds into the columns of the final Linear that read the conv
branch; the ConvMerging BN folds into the unpadded 2x2 conv after it. All exact.

Departures:
- Any H, W: the attention pads the map at the bottom/right to a multiple of the window and masks the padded
  keys out of the softmax (``window_attention``); a window larger than the map shrinks to it on that axis
  (Swin's rule at low resolution; the proxy's last stages are 2x2 to 4x4). The official block pads the
  *normed input* with zeros before everything and lets the padded tokens (the projections' biases after
  LayerNorm) take part in the attention, the depthwise conv and the channel pooling. Here the conv branch,
  the pooling and both gates see only the real map (the conv pads with zeros). At 224 px every MixFormer
  map (56, 28, 14, 7) is a multiple of 7, so nothing changes there.
- ConvMerging on an odd map (the official code asserts even sizes): the input is zero-padded to even before
  the BN, so that the BN still folds exactly into the conv.
- A BatchNorm that sees one value per channel in training (the channel interaction's BN, which acts on the
  pooled vector, at batch size 1) normalizes with its running statistics instead and leaves them unchanged.
  PyTorch refuses such a batch; Paddle, which the official code runs on, outputs the BN's bias there.
- The interactions' reductions are max(1, C // 8) and max(1, C // 16) channels, so widths below 16 (the
  proxy's) still build; the official code has no such widths.
- Drop-path and dropout are left to the trainer (off, as for a proxy).

Init as the official code (PaddleClas ``MixFormer._init_weights`` and Paddle's defaults): every Linear
N(0, 0.02^2) truncated to [-2, 2], biases 0 ("trunc_normal"); LayerNorm weight 1, bias 0; the relative bias
table trunc normal 0.02; ``_init_weights`` touches no conv, so every Conv2d (block, stem, merging) keeps
Paddle's default, He normal over the *whole* input channel count, N(0, 2 / (in_channels x kernel area)),
groups not divided out (a depthwise 3x3 on C channels gets std sqrt(2 / 9C)), bias 0 ("paddle_default");
BN weight 1, bias 0, epsilon 1e-5 (Paddle's defaults, PyTorch's too).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import RelPosBias, window_attention
from ._layers import ConvNormAct, LayerNorm2d, Mlp, check_int, check_positive, fuse_bn, init_weights
from ._registry import register_op, register_stem

MIXFORMER_PAPER = "Chen et al., MixFormer: Mixing Features across Windows and Dimensions, CVPR 2022"


@torch.no_grad()
def mixformer_paddle_init(module: nn.Module) -> nn.Module:
    """Paddle's default ``Conv2D`` init on every Conv2d under ``module`` that has no scheme yet: weight
    N(0, 2 / (in_channels x kernel area)) with in_channels of the whole conv (Paddle does not divide by the
    groups), bias 0; the scheme is recorded as ``init_scheme = "paddle_default"``."""
    for m in module.modules():
        if not isinstance(m, nn.Conv2d) or getattr(m, "init_scheme", None):
            continue
        fan_in = m.in_channels * math.prod(m.kernel_size)
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
        m.init_scheme = "paddle_default"
    return module


class MixFormerBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in training, falls back to its running statistics (without updating them) when it
    sees a single value per channel (a pooled vector at batch size 1), where PyTorch would raise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        return super().forward(x)


def mixformer_conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                      act: type[nn.Module] | None = nn.GELU) -> ConvNormAct:
    """Conv with bias (Paddle's default) -> BN -> GELU, as MixFormer writes its conv layers."""
    layer = ConvNormAct(in_chs, out_chs, kernel_size, stride, groups, act=act, bias=True)
    layer.bn = MixFormerBatchNorm(out_chs)
    return layer


@torch.no_grad()
def mixformer_fold_bn_before(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """Fold an eval-mode BN that precedes an *unpadded* dense conv of any kernel into that conv, in place."""
    t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * t
    bias = torch.einsum("oikl,i->o", conv.weight, shift)
    if conv.bias is not None:
        bias = bias + conv.bias
    conv.weight.mul_(t[None, :, None, None])
    conv.bias = nn.Parameter(bias)


class MixFormerMerging(nn.Module):
    """MixFormer's ConvMerging: BN, then a stride x stride conv of stride ``stride`` (2x2 / 2, or 1x1) to out_chs.
    Odd maps are zero-padded to even before the BN."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        self.norm: nn.BatchNorm2d | None = MixFormerBatchNorm(in_chs)
        self.reduction = nn.Conv2d(in_chs, out_chs, stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            h, w = x.shape[-2:]
            x = F.pad(x, (0, w % 2, 0, h % 2))
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x)

    def reparameterize(self) -> None:
        if self.norm is not None:
            mixformer_fold_bn_before(self.norm, self.reduction)
            self.norm = None


class MixFormerMixer(nn.Module):
    """MixFormer's mixing attention on (B, H, W, C): window attention on C/2 channels and a depthwise conv
    branch side by side, joined by the channel and spatial interactions (see the module docstring)."""

    def __init__(self, dim: int, heads: int, window: int = 7, dw_kernel: int = 3):
        super().__init__()
        half = dim // 2
        self.heads, self.window = heads, window
        # the two branches' input projections
        self.proj_attn = nn.Linear(dim, half)
        self.proj_attn_norm = nn.LayerNorm(half)
        self.proj_cnn = nn.Linear(dim, dim)
        self.proj_cnn_norm = nn.LayerNorm(dim)
        # conv branch and the channel interaction it drives
        self.dwconv = mixformer_conv_bn(dim, dim, dw_kernel, groups=dim)
        self.channel_interaction = nn.Sequential(mixformer_conv_bn(dim, max(1, dim // 8)),
                                                 nn.Conv2d(max(1, dim // 8), half, 1))
        self.projection = nn.Conv2d(dim, half, 1)
        self.conv_norm: nn.BatchNorm2d | None = MixFormerBatchNorm(half)
        # attention branch and the spatial interaction it drives
        self.qkv = nn.Linear(half, 3 * half)
        self.rel = RelPosBias(heads, window)
        self.spatial_interaction = nn.Sequential(mixformer_conv_bn(half, max(1, dim // 16)),
                                                 nn.Conv2d(max(1, dim // 16), 1, 1))
        self.attn_norm = nn.LayerNorm(half)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.proj_attn_norm(self.proj_attn(x))
        c = self.dwconv(self.proj_cnn_norm(self.proj_cnn(x)).permute(0, 3, 1, 2))  # (B, C, H, W)
        channel_gate = torch.sigmoid(self.channel_interaction(c.mean((2, 3), keepdim=True)))  # (B, C/2, 1, 1)
        c = self.projection(c)
        q, k, v = self.qkv(a).chunk(3, dim=-1)
        v = v * channel_gate.permute(0, 2, 3, 1)  # channel interaction: scales the values, head-major channels
        a = window_attention(q, k, v, self.heads, self.window, False, self.rel)  # (B, H, W, C/2)
        spatial_gate = torch.sigmoid(self.spatial_interaction(a.permute(0, 3, 1, 2)))  # (B, 1, H, W)
        c = spatial_gate * c  # spatial interaction: gates the conv branch
        if self.conv_norm is not None:
            c = self.conv_norm(c)
        return self.proj(torch.cat([self.attn_norm(a), c.permute(0, 2, 3, 1)], dim=-1))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the BN after the spatial gate into the final Linear's columns that read the conv branch."""
        if self.conv_norm is None:
            return
        half = self.proj.in_features // 2
        w, b = self.proj.weight, self.proj.bias
        t, shift = fuse_bn(torch.ones_like(self.conv_norm.weight), None, self.conv_norm)  # BN(c) = c * t + shift
        b.add_(w[:, half:] @ shift)
        w[:, half:].mul_(t)
        self.conv_norm = None


class MixFormerBlock(nn.Module):
    """x <- x + Mix(LN(x)); x <- x + MLP(LN(x)), after ConvMerging when the stride or the width changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, window: int, mlp_ratio: float,
                 dw_kernel: int):
        super().__init__()
        self.down = (MixFormerMerging(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs
                     else nn.Identity())
        self.norm1 = nn.LayerNorm(out_chs)
        self.mixer = MixFormerMixer(out_chs, heads, window, dw_kernel)
        self.norm2 = nn.LayerNorm(out_chs)
        self.mlp = Mlp(out_chs, max(1, int(out_chs * mlp_ratio)))
        mixformer_paddle_init(self)  # convs: Paddle's default
        init_weights(self, "trunc_normal")  # linears: the official _init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x).permute(0, 2, 3, 1)
        x = x + self.mixer(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


def mixformer(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 8,
              window: int = 7, mlp_ratio: float = 4.0, dw_kernel: int = 3) -> nn.Module:
    """MixFormer block; ``heads`` and ``head_dim`` count the attention branch's out_chs / 2 channels."""
    if out_chs % 2:
        raise ValueError(f"mixformer: width {out_chs} is odd; half the channels go to attention, so pass an "
                         f"even width")
    half = out_chs // 2
    check_int("mixformer", "head_dim", head_dim, 1, "the paper uses 8")
    heads = heads or max(1, half // head_dim)
    if heads < 1 or half % heads:
        raise ValueError(f"mixformer: heads={heads} must be a positive divisor of the attention width {half} "
                         f"(half of {out_chs}); pass heads= a divisor of {half}, or leave it to the default")
    check_int("mixformer", "window", window, 1, "the paper uses 7")
    check_int("mixformer", "dw_kernel", dw_kernel, 1, "the paper uses 3", odd=True)
    check_positive("mixformer", "mlp_ratio", mlp_ratio, "the paper uses 4")
    return MixFormerBlock(in_chs, out_chs, stride, heads, window, mlp_ratio, dw_kernel)


class MixFormerConvEmbed(nn.Module):
    """MixFormer's stem: 3x3 / 2 conv, two 3x3 convs (each + BN + GELU, at width / 2), 2x2 / 2 conv, LayerNorm."""

    def __init__(self, in_chs: int, width: int):
        super().__init__()
        mid = max(1, width // 2)
        self.stem = nn.Sequential(mixformer_conv_bn(in_chs, mid, 3, 2), mixformer_conv_bn(mid, mid, 3),
                                  mixformer_conv_bn(mid, mid, 3))
        self.proj = nn.Conv2d(mid, width, 2, 2)
        self.norm = LayerNorm2d(width)
        mixformer_paddle_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % 4, 0, -h % 4))
        return self.norm(self.proj(self.stem(x)))


def stem_mixformer(in_chs: int, width: int) -> nn.Module:
    """MixFormer: three 3x3 convs (the first of stride 2) at width / 2, a 2x2 stride-2 conv, LayerNorm."""
    return MixFormerConvEmbed(in_chs, width)


register_op("mixformer", mixformer, family="local", extents=("window",), paper=MIXFORMER_PAPER)
register_stem("mixformer", stem_mixformer, stride=4, paper=MIXFORMER_PAPER)
