"""ACmix (Pan et al., "On the Integration of Self-Attention and Convolution", CVPR 2022).

Three shared 1x1 projections give q, k, v. Two paths read them:
- attention: local k_att x k_att (7) attention with a relative positional term from a 1x1 conv of the
  normalised pixel coordinates (``layout="bottleneck"``, ACmix-ResNet), or Swin's (shifted) window
  attention with a relative bias table (``layout="window"``, ACmix-Swin);
- convolution: a light 1x1 "fc" maps the 3 x heads feature groups to k_conv^2 (9) maps per head-dim
  channel, then a grouped k_conv x k_conv conv (groups = head dim) initialised as one-hot shift kernels.
Output = rate1 * attention + rate2 * convolution, both scalars learned and initialised to 0.5 as in the
official code.

``layout="bottleneck"`` is the ResNet bottleneck with ACmix (4 heads) in place of the 3x3 conv, BN + ReLU
after it; ``layout="window"`` is Swin's block (patch merging, LN, MLP) with ACmix as the token mixer,
head dim 32, window 7, ``shift`` in alternate blocks. As in the official Swin version
(``swin_transformer_acmix.py``), a shifted block rolls the map by half a window before BOTH paths and rolls
their sum back: the convolution path runs on the rolled map, so its zero padding lies on the roll's seam
(between rows/columns shift - 1 and shift of the map) and the map's last and first rows/columns are
neighbours; and the fc has a bias there (not in the ResNet version).

Departures: neighbours of the local attention that fall outside the map are masked out, where the official
code reflection-pads (reflection is undefined on maps smaller than the kernel, which proxies meet). On maps
that are not multiples of the window, which the official code never meets (56/28/14/7 at 224 px), the
attention pads the map then rolls it, as Swin for detection does, and the convolution path rolls the
unpadded H x W map by the same amount. At deploy the BN after the bottleneck mixer folds: its scale into
rate1 (which becomes per-channel) and into the shift conv, its shift into the shift conv's bias.

Computation: the local attention reads each query's 7 x 7 neighbours from ``neighbourhoods`` (49 shifted slices
of the padded map stacked into one copy, as fast in ONNX Runtime as in PyTorch), where the official code unfolds
(``F.unfold``, a second transposing copy, and a slow gather once exported). That copy does no multiply-adds and
is counted as none; a one-hot 7 x 7 depthwise conv would do the same copy with 49 multiply-adds per value, so the
paper's shift-as-convolution trick is kept where the paper puts it, the conv path's 3 x 3 ``dep_conv``, whose
multiply-adds are counted because that kernel is learned after its one-hot init and the deploy network runs it.

Init as the official code (LeapLabTHU/ACmix): the shift conv one-hot ("shift"), rate1 = rate2 = 0.5; in
``layout="bottleneck"`` every other conv, the fc included, He normal fan-out with BN weight 1 and bias 0 and no
zeroed last BN (``ResNet_ImageNet.py``, torchvision's init with ``zero_init_residual=False``); in
``layout="window"`` Swin's (``swin_transformer_acmix.py``): Linear N(0, 0.02^2) truncated to [-2, 2], biases 0,
and the fc (a conv there), its bias included, at PyTorch's default. Two departures: the official ResNet loop
also re-draws the shift conv (He normal) after the module set its shift kernels, against the paper's stated
shift init, which we keep; and it leaves the q, k, v and position conv biases at PyTorch's default, where ours
start at 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import local_attention, window_sizes
from ._layers import NormActMixer, check_heads, default_heads, fuse_bn, init_weights, resolve_heads
from ._registry import register_op
from .resnet import Bottleneck
from .swin import SwinBlock, WindowAttention


class ShiftConvPath(nn.Module):
    """ACmix's convolution path on channels-last (B, H, W, C) q, k, v -> (B, C, ceil(H/s), ceil(W/s)).

    The fc is a Linear over the 3 x heads groups (the official 1x1 conv, applied where the groups are the
    last axis), and its output is laid out channels-last for the shift conv: both are about twice as fast on
    a CPU as the channels-first form, with the same arithmetic.
    """

    def __init__(self, dim: int, heads: int, kernel: int = 3, stride: int = 1, fc_bias: bool = False):
        super().__init__()
        self.heads, self.kk = heads, kernel * kernel
        head_dim = dim // heads
        self.fc = nn.Linear(3 * heads, self.kk, bias=fc_bias)
        self.dep_conv = nn.Conv2d(self.kk * head_dim, dim, kernel, stride, kernel // 2, groups=head_dim)
        init_weights(self.dep_conv, "shift")  # output channel o of a group sees input map i only at cell i

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, w, c = q.shape
        groups = torch.cat([q, k, v], dim=-1).view(b, h, w, 3 * self.heads, c // self.heads)
        f = self.fc(groups.transpose(-1, -2))  # (B, H, W, head_dim, kk): kk maps per head-dim channel
        return self.dep_conv(f.reshape(b, h, w, -1).permute(0, 3, 1, 2))


def _rate() -> nn.Parameter:
    return nn.Parameter(torch.tensor(0.5))


class ACmixLocal(NormActMixer):
    """The bottleneck mixer: ACmix with local attention, then BN + ReLU."""

    def __init__(self, dim: int, stride: int = 1, heads: int = 4, kernel_att: int = 7, kernel_conv: int = 3):
        super().__init__()
        self.heads, self.kernel_att, self.stride = heads, kernel_att, stride
        self.q, self.k, self.v = (nn.Conv2d(dim, dim, 1) for _ in range(3))
        self.pos = nn.Conv2d(2, dim // heads, 1)
        self.conv_path = ShiftConvPath(dim, heads, kernel_conv, stride)
        self.rate1, self.rate2 = _rate(), _rate()
        self.add_norm_act(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = self.q(x), self.k(x), self.v(x)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).unsqueeze(0)  # (1, 2, H, W)
        att = local_attention(q, k, v, self.pos(grid), self.heads, self.kernel_att, self.stride)
        rate1 = self.rate1 if self.rate1.dim() == 0 else self.rate1.view(1, -1, 1, 1)
        return self.finish(rate1 * att + self.rate2 * self.conv_path(*(t.permute(0, 2, 3, 1) for t in (q, k, v))))

    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        """The BN's scale goes into rate1 (per channel) for the attention path; scale and shift go into the
        conv path's last conv, with rate2 folded in there and set to 1."""
        conv = self.conv_path.dep_conv
        t = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w, b = fuse_bn(conv.weight * self.rate2, conv.bias * self.rate2, bn)
        conv.weight.copy_(w)
        conv.bias.copy_(b)
        self.rate1 = nn.Parameter(self.rate1 * t)
        self.rate2 = nn.Parameter(torch.ones_like(self.rate2))


class ACmixWindow(WindowAttention):
    """The Swin-block mixer on (B, H, W, C): ACmix with (shifted) window attention: Swin's ``WindowAttention``
    plus a convolution path on the same q, k, v projections, mixed by two learned rates.

    With ``shift`` both paths see the map rolled by half a window (the official block rolls its input before
    the mixer and rolls the mixer's output back), so the convolution path's zero padding falls on the roll's
    seam and the map's last and first rows (columns) are neighbours there.
    """

    def __init__(self, dim: int, heads: int, window: int = 7, shift: bool = False, kernel_conv: int = 3):
        super().__init__(dim, heads, window, shift)
        self.conv_path = ShiftConvPath(dim, heads, kernel_conv, 1, fc_bias=True)
        self.rate1, self.rate2 = _rate(), _rate()
        init_weights(self.conv_path.fc, "torch_default")  # a conv in the official code, which Swin's init skips

    def roll_sizes(self, h: int, w: int) -> tuple[int, int]:
        """The cyclic shift (rows, columns) of a shifted block on an h x w map, as window_attention rolls it."""
        wh, ww = window_sizes(h, w, self.window)
        return (wh // 2 if self.shift and h > wh else 0), (ww // 2 if self.shift and w > ww else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        att = self.attend(qkv)
        sy, sx = self.roll_sizes(x.shape[1], x.shape[2])
        if sy or sx:
            qkv = torch.roll(qkv, (-sy, -sx), (1, 2))
        conv = self.conv_path(*qkv.chunk(3, dim=-1)).permute(0, 2, 3, 1)
        if sy or sx:
            conv = torch.roll(conv, (sy, sx), (1, 2))
        return self.rate1 * att + self.rate2 * conv


def acmix(in_chs: int, out_chs: int, stride: int = 1, layout: str = "bottleneck", heads: int | None = None,
          head_dim: int = 32, kernel_att: int = 7, kernel_conv: int = 3, window: int = 7, shift: bool = False,
          expansion: int = 4, mlp_ratio: float = 4.0) -> nn.Module:
    if kernel_att % 2 == 0 or kernel_conv % 2 == 0:
        raise ValueError(f"acmix: kernel_att={kernel_att} and kernel_conv={kernel_conv} must be odd (7 and 3)")
    if layout == "bottleneck":
        def mixer(mid: int, s: int) -> nn.Module:
            h = check_heads("acmix", mid, heads or default_heads(mid, mid / 4))  # 4 heads as in ACmix-ResNet
            return ACmixLocal(mid, s, h, kernel_att, kernel_conv)
        return Bottleneck(in_chs, out_chs, stride, mixer, expansion=expansion, zero_init_last=False)
    if layout == "window":
        h = resolve_heads("acmix", out_chs, heads, head_dim, "ACmix-Swin uses 32")
        return SwinBlock(in_chs, out_chs, stride, lambda d: ACmixWindow(d, h, window, shift, kernel_conv),
                         mlp_ratio)
    raise ValueError(f"acmix: layout={layout!r} is not allowed; use 'bottleneck' (ACmix-ResNet) or "
                     f"'window' (ACmix-Swin)")


register_op("acmix", acmix, family="hybrid", alternate=("shift",), extents=("window", "kernel_att"),
            variants=({}, {"layout": "window"}, {"layout": "window", "shift": True}),
            paper="Pan et al., On the Integration of Self-Attention and Convolution, CVPR 2022")
