"""UniFormer block: a local relation aggregator (convolution) or a global one (self-attention), each after a
dynamic position embedding; and UniFormer's patch embedding (stem and stage downsampler).

Paper: Li et al., "UniFormer: Unifying Convolution and Self-attention for Visual Recognition", ICLR 2022 /
TPAMI 2023; official code Sense-X/UniFormer (``image_classification/models/uniformer.py``: ``CBlock``,
``SABlock``, ``PatchEmbed``, ``uniformer_small``).

Block, ``mixer="local"`` (the paper's CBlock, UniFormer's stages 1-2):
    x <- x + DWConv3x3(x)                            dynamic position embedding (DPE), with bias
    x <- x + Conv1x1(DWConv5x5(Conv1x1(BN(x))))      local MHRA: a learned, static 5x5 depthwise affinity
    x <- x + Conv1x1(GELU(Conv1x1(BN(x))))           FFN, MLP ratio 4, on the map
``mixer="global"`` (SABlock, stages 3-4):
    x <- x + DWConv3x3(x)                            the same DPE
    x <- x + MHSA(LN(x))                             softmax attention over all H x W tokens, head dim 64,
                                                     qkv with bias (UniFormer-S's qkv_bias), scale d ** -0.5
    x <- x + MLP(LN(x))                              Linear -> GELU -> Linear, ratio 4, LN eps 1e-6
The global mixer's cost grows with (H W)^2: the paper uses it only in the stride-16 and stride-32 stages.

Patch embedding (``register_stem("uniformer")``, ``register_downsampler("uniformer")``): a p x p conv of stride
p, then LayerNorm over the channels (eps 1e-5, PyTorch's default, as the official ``PatchEmbed``): p = 4 for
the stem, 2 between stages. It differs from the catalog's ``patch4`` stem (LN eps 1e-6, conv initialized
N(0, 0.02^2)) in its init and eps only, and from the ``patch`` downsampler (ConvNeXt's LN *then* conv) in its
order. A block built with a stride of 2 or a width change (a stage without a separate downsampler) starts
with the same embedding itself: 2x2 stride 2 + LN, or 1x1 + LN when only the width changes.

Re-parameterization (local mixer): each BatchNorm sits right before a dense, unpadded 1x1 conv and folds into
it exactly (``fold_bn_into_next_conv``); the DPE and the depthwise 5x5 are already static convs. The global
mixer has nothing to fold (its norms are LayerNorms).

Departures:
- The patch embedding zero-pads its input on the bottom/right to a multiple of its stride, so that any map
  gives ceil(H/p) (the official code asserts the input size); at 224 px nothing is padded.
- Heads default to the divisor of the width nearest width / 64 (``default_heads``); the official code takes
  width // 64, which is the same for UniFormer's widths and 0 below 64.
- The in-block embedding at stride 1 (width change only) has no counterpart in UniFormer.
- The head of the reference (``search_spaces/references/uniformer_s.yaml``) is ``norm_pool_linear``
  (LayerNorm, pool, linear): UniFormer's is BatchNorm2d, pool, linear, with the same number of parameters.
- Drop-path and layer scale (off in UniFormer-S) are left out.

Init as the official code (``UniFormer._init_weights``): every Linear N(0, 0.02^2) truncated to [-2, 2]
(timm's ``trunc_normal_``), biases 0 ("trunc_normal"), LayerNorm weight 1 and bias 0; it touches no conv, so
every conv (DPE, 1x1s, depthwise 5x5, conv MLP, patch embedding) keeps PyTorch's default ("torch_default"),
and BatchNorms keep weight 1 and bias 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import attend, merge_heads, split_heads
from ._layers import (
    Mlp,
    check_positive,
    fold_bn_into_next_conv,
    init_weights,
    resolve_heads,
)
from ._registry import register_downsampler, register_op, register_stem
from .stems import PatchEmbed

UNIFORMER_PAPER = ("Li et al., UniFormer: Unifying Convolution and Self-attention for Visual Recognition, "
                   "ICLR 2022 / TPAMI 2023")
UNIFORMER_MIXERS = ("local", "global")


def uniformer_embed(in_chs: int, out_chs: int, patch: int) -> nn.Module:
    """UniFormer's patch embedding: a p x p conv of stride p, then LayerNorm (eps 1e-5), the input zero-padded
    on the bottom/right to a multiple of p; PyTorch's default init (the official one is for Linear only)."""
    return init_weights(PatchEmbed(in_chs, out_chs, patch, eps=1e-5), "torch_default")


class UniFormerLocalAggregator(nn.Module):
    """The local MHRA on an already normalized map: 1x1 -> depthwise 5x5 -> 1x1, all with bias."""

    def __init__(self, dim: int, kernel_size: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.dw(self.conv1(x)))


class UniFormerConvMlp(nn.Module):
    """UniFormer's FFN on the map (``CMlp``): 1x1 -> GELU -> 1x1."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class UniFormerAttention(nn.Module):
    """Multi-head self-attention over all tokens of a (B, N, C) sequence: qkv linear, softmax, projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(attend(q, k, v)))


class UniFormerBlock(nn.Module):
    """One UniFormer block (see the module docstring); ``mixer`` is "local" (CBlock) or "global" (SABlock)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, mixer: str, heads: int, mlp_ratio: float):
        super().__init__()
        self.mixer = mixer
        if stride > 1 or in_chs != out_chs:  # no separate downsampler: the block embeds the patches itself
            self.embed: nn.Module = uniformer_embed(in_chs, out_chs, stride)
        else:
            self.embed = nn.Identity()
        self.pos_embed = nn.Conv2d(out_chs, out_chs, 3, padding=1, groups=out_chs)
        hidden = max(1, int(out_chs * mlp_ratio))
        self.norm1: nn.Module | None
        self.norm2: nn.Module | None
        if mixer == "local":
            self.norm1, self.attn = nn.BatchNorm2d(out_chs), UniFormerLocalAggregator(out_chs)
            self.norm2, self.mlp = nn.BatchNorm2d(out_chs), UniFormerConvMlp(out_chs, hidden)
        else:
            self.norm1, self.attn = nn.LayerNorm(out_chs, eps=1e-6), UniFormerAttention(out_chs, heads)
            self.norm2, self.mlp = nn.LayerNorm(out_chs, eps=1e-6), Mlp(out_chs, hidden)
            init_weights(self.attn, "trunc_normal")
            init_weights(self.mlp, "trunc_normal")
        init_weights(self, "torch_default")  # the convs; the Linears above already carry "trunc_normal"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.pos_embed(x)
        if self.mixer == "local":
            x = x + self.attn(self.norm1(x) if self.norm1 is not None else x)
            return x + self.mlp(self.norm2(x) if self.norm2 is not None else x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, H * W, C)
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each BatchNorm of the local mixer into the 1x1 conv that follows it."""
        if self.mixer != "local" or self.norm1 is None:
            return
        fold_bn_into_next_conv(self.norm1, self.attn.conv1)
        fold_bn_into_next_conv(self.norm2, self.mlp.fc1)
        self.norm1, self.norm2 = None, None


def uniformer(in_chs: int, out_chs: int, stride: int = 1, mixer: str = "local", heads: int | None = None,
              head_dim: int = 64, mlp_ratio: float = 4.0) -> nn.Module:
    if mixer not in UNIFORMER_MIXERS:
        raise ValueError(f"uniformer: mixer={mixer!r} is not one of {', '.join(UNIFORMER_MIXERS)}; use 'local' "
                         f"(depthwise 5x5 aggregator) or 'global' (self-attention)")
    heads = resolve_heads("uniformer", out_chs, heads, head_dim, "UniFormer uses 64")
    check_positive("uniformer", "mlp_ratio", mlp_ratio, "UniFormer uses 4")
    return UniFormerBlock(in_chs, out_chs, stride, mixer, heads, mlp_ratio)


def uniformer_stem(in_chs: int, width: int) -> nn.Module:
    """UniFormer's stem: 4x4 conv stride 4, LayerNorm."""
    return uniformer_embed(in_chs, width, 4)


def uniformer_down(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """UniFormer's downsampler between stages: stride x stride conv of stride ``stride``, LayerNorm."""
    return uniformer_embed(in_chs, out_chs, stride)


register_op("uniformer", uniformer, family="hybrid", variants=({}, {"mixer": "global"}), paper=UNIFORMER_PAPER)
register_stem("uniformer", uniformer_stem, stride=4, paper=UNIFORMER_PAPER)
register_downsampler("uniformer", uniformer_down, paper=UNIFORMER_PAPER)
