"""GLMix block of GLNet (Zhu, Ke, Li, Lau and Wang, "Revisiting the Integration of Convolution and Attention
for Vision Backbone", NeurIPS 2024), with GLNet's convolutional stem and downsampler.

The block (GLNet's ``GLMixBlock``), on an (N, C, H, W) map:
  x <- x + CPE(x)                      CPE: depthwise 3x3 conv with bias (GLNet-4G/9G/16G, ``cpe_kernel``)
  x <- x + Global(BN(x)) + Local(BN(x))
  x <- x + MLP(BN(x))                  1x1 (C -> 3C) -> h + DW3x3(h) -> GELU -> 1x1 (3C -> C)
Local: 1x1 -> depthwise 5x5 -> 1x1 (each with bias, no activation). Global, with S = 64 slots and the N = H W
pixels p_n of the normalized map:
  1. initial slots s_i: 8x8 adaptive average pooling of the map;
  2. logits L[i, n] = tau * cos(s_i, p_n), tau a learned scalar that starts at C^-1/2;
  3. soft clustering: slot_i = sum_n softmax_n(L[i, :]) p_n, the softmax OVER PIXELS (each slot a convex
     combination of pixels);
  4. multi-head self-attention among the S slots (qkv and output projections with bias, head dim 32);
  5. soft dispatching: out_n = sum_i softmax_i(L[:, n]) slot_i, the softmax OVER SLOTS, with the same logits L
     (those of the initial slots, as the official code: the slots are not compared again after step 4).
Every product is a matmul, so the cost is linear in H W (S N C for each of steps 2, 3 and 5): family "hybrid".

``mixer`` chooses the token mixer as GLNet's ``mixing_modes`` do: "glmix" (above), "mhsa" (GLNet's
``MHSA_NCHW_Block``: the same CPE, BN and MLP around x <- x + MHSA(LN(x)) over all H W pixels, LayerNorm eps
1e-6) or "glmix_mhsa" (GLNet's "glmix.mha_nchw": GLMix in even blocks and MHSA in odd ones; the network
builder passes ``odd_block`` = False, True, False, ... through the registry's ``alternate``; with the other
two mixers ``odd_block`` changes nothing). Heads: width / ``head_dim`` (32). GLNet-4G: widths 64/128/256/512,
depths 4/4/18/4, heads 2/4/8/16, stages glmix, glmix, glmix_mhsa, mhsa, MLP ratio 3.

Stem ("glnet", stride 4): GLNet's overlapped patch embedding, 3x3 stride-2 conv to width / 2, BN, GELU, 3x3
stride-2 conv to width, BN (convs with bias). Downsampler ("glnet"): 3x3 stride-2 conv with bias, BN (GLNet's
"proj.norm" transition). When the block itself is asked for a stride or width change (``downsample: op``), it
starts with that same conv + BN (3x3 at stride 1 or 2); GLNet runs its blocks at stride 1 behind the transition.

Departures:
- Maps with fewer than 8 pixels on an axis (the proxy's 2x2 to 7x7): the slot grid shrinks to the map on that
  axis, min(8, H) x min(8, W) slots, so each pixel seeds its own slot and a 1x1 map has one slot. The official
  ``adaptive_avg_pool2d(x, 8)`` would seed 64 slots from overlapping bins that repeat pixels, and the repeated
  slots would count several times in the slot attention and in the dispatching softmax; the paper never runs
  GLMix below 8x8 (GLNet-4G's last stage, 7x7 at 224 px, is MHSA). At 8 px and more nothing changes. ``slots``
  must be a square (8 x 8 = 64 by default), as the official code asserts.
- The slot attention is a Linear qkv, ``scaled_dot_product_attention`` and a Linear output projection instead of
  ``nn.MultiheadAttention``: the same parameters, arithmetic and init, and fvcore counts it.
- Cosine similarity: x * rsqrt(max(|x|^2, 1e-24)) instead of ``F.normalize``'s x / max(|x|, 1e-12) (the same
  except for vectors shorter than 1e-12, which both send to about 0); fvcore knows every op of it.
- Not offered: drop path (left to the trainer), GLNet-16G's layer scale, learned initial slots (``slot_init``
  "param", an ablation) and the block without slot attention (an ablation).

Deploy form (``reparameterize``): the BN before the MLP folds into its first 1x1 conv; the BN before the mixers
becomes a depthwise 1x1 conv (the per-channel affine of BN in eval mode: the global branch needs the normalized
map itself, for the pooling and the cosine, so it cannot fold into a following linear map); the identity
shortcuts around the CPE and the MLP's depthwise conv fold into those convs' centre taps; the downsampling
conv + BN folds. All exact.

Init as the official GLNet (``GLNet._init_weights`` over ``nn.MultiheadAttention``'s own reset): the slot
attention's (and MHSA's) output projection N(0, 0.02^2) truncated to [-2, 2], bias 0 ("trunc_normal", the only
Linear layers ``_init_weights`` meets); its qkv projection Glorot uniform over the whole (3C, C) matrix, bias 0
(``nn.MultiheadAttention._reset_parameters``: "xavier"); every conv, the stem's and downsamplers' included,
PyTorch's default ("torch_default"; ``_init_weights`` touches no Conv2d); BN and LayerNorm weight 1, bias 0;
the slot temperature tau = C^-1/2 (``slot_scale``, learnable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import attend, merge_heads, split_heads
from ._layers import (
    ConvNormAct,
    check_int,
    check_positive,
    conv_with,
    fold_bn_into_next_conv,
    fuse_bn,
    identity_kernel,
    init_weights,
    resolve_heads,
)
from ._registry import register_downsampler, register_op, register_stem

GLMIX_PAPER = ("Zhu et al., Revisiting the Integration of Convolution and Attention for Vision Backbone, "
               "NeurIPS 2024")
GLMIX_MIXERS = ("glmix", "mhsa", "glmix_mhsa")


def glmix_cosine(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled to unit L2 norm along its last axis (a zero vector stays zero)."""
    return t * torch.rsqrt((t * t).sum(-1, keepdim=True).clamp(min=1e-24))


class GLMixResDW(nn.Module):
    """x + depthwise k x k conv(x) (GLNet's CPE and the MLP's ``ResDWConvNCHW``); the identity folds into the
    conv's centre tap at deploy."""

    def __init__(self, chs: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(chs, chs, kernel_size, padding=kernel_size // 2, groups=chs)
        self.residual = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.residual:
            c, k = self.conv.out_channels, self.conv.kernel_size[0]
            self.conv.weight.add_(identity_kernel(c, c, k, self.conv.weight))
            self.residual = False


class GLMixAttention(nn.Module):
    """Multi-head self-attention over (B, L, C) tokens, ``nn.MultiheadAttention``'s arithmetic and init."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = init_weights(nn.Linear(dim, 3 * dim), "xavier")
        self.proj = init_weights(nn.Linear(dim, dim), "trunc_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(attend(q, k, v)))


class GLMixMixer(nn.Module):
    """The GLMix token mixer on a normalized (B, C, H, W) map: soft-clustered slot attention + local convs."""

    def __init__(self, dim: int, heads: int, slots: int = 64, kernel_size: int = 5):
        super().__init__()
        self.grid = math.isqrt(slots)
        self.slot_scale = nn.Parameter(torch.tensor(dim ** -0.5))
        self.attn = GLMixAttention(dim, heads)
        self.local = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim),
            nn.Conv2d(dim, dim, 1),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, H W) scaled cosine similarities of the initial slots and the pixels (row-major)."""
        h, w = x.shape[-2:]
        init = F.adaptive_avg_pool2d(x, (min(self.grid, h), min(self.grid, w))).flatten(2).transpose(1, 2)
        pixels = x.flatten(2)  # (B, C, N)
        return glmix_cosine(init) @ (self.slot_scale * glmix_cosine(pixels.transpose(1, 2)).transpose(1, 2))

    def assignments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clustering (B, S, N): each row sums to 1 over the pixels; dispatching (B, N, S): each row sums to 1
        over the slots)."""
        logits = self.logits(x)
        return logits.softmax(dim=-1), logits.transpose(1, 2).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        cluster, dispatch = self.assignments(x)
        slots = self.attn(cluster @ x.flatten(2).transpose(1, 2))  # (B, S, C)
        out = (dispatch @ slots).transpose(1, 2).reshape(b, c, h, w)
        return out + self.local(x)


class GLMixMHSA(nn.Module):
    """GLNet's MHSA mixer on an (B, C, H, W) map: LayerNorm (eps 1e-6) and attention over all H W pixels."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = GLMixAttention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x.permute(0, 2, 3, 1).reshape(b, h * w, c))
        return self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)


class GLMixMlp(nn.Module):
    """1x1 -> (h + DW3x3(h) when ``dw``) -> GELU -> 1x1 on (B, C, H, W)."""

    def __init__(self, dim: int, hidden: int, dw: bool = True):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = GLMixResDW(hidden, 3) if dw else nn.Identity()
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(x))))


def glnet_down(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """GLNet's stage transition: 3x3 conv (with bias) of stride ``stride``, BN."""
    return init_weights(ConvNormAct(in_chs, out_chs, 3, stride, act=None, bias=True), "torch_default")


def glnet_stem(in_chs: int, width: int) -> nn.Module:
    """GLNet's overlapped patch embedding: 3x3 s2 conv to width / 2, BN, GELU, 3x3 s2 conv to width, BN."""
    mid = max(1, width // 2)
    stem = nn.Sequential(ConvNormAct(in_chs, mid, 3, 2, act=nn.GELU, bias=True),
                         ConvNormAct(mid, width, 3, 2, act=None, bias=True))
    return init_weights(stem, "torch_default")


class GLMixBlock(nn.Module):
    """One GLNet block (``GLMixBlock`` or, with ``use_mhsa``, ``MHSA_NCHW_Block``); see the module docstring."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, use_mhsa: bool = False,
                 slots: int = 64, kernel_size: int = 5, mlp_ratio: float = 3.0, cpe_kernel: int = 3,
                 mlp_dw: bool = True):
        super().__init__()
        dim = out_chs
        self.down = glnet_down(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else nn.Identity()
        self.cpe = GLMixResDW(dim, cpe_kernel) if cpe_kernel > 0 else nn.Identity()
        if use_mhsa:
            self.norm1: nn.Module = nn.Identity()  # the MHSA mixer normalizes with its own LayerNorm
            self.mixer: nn.Module = GLMixMHSA(dim, heads)
        else:
            self.norm1 = nn.BatchNorm2d(dim)
            self.mixer = GLMixMixer(dim, heads, slots, kernel_size)
        self.norm2: nn.BatchNorm2d | None = nn.BatchNorm2d(dim)
        self.mlp = GLMixMlp(dim, max(1, int(mlp_ratio * dim)), mlp_dw)
        init_weights(self, "torch_default")  # the attention's Linear layers chose their schemes already

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cpe(self.down(x))
        x = x + self.mixer(self.norm1(x))
        y = self.norm2(x) if self.norm2 is not None else x
        return x + self.mlp(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if isinstance(self.norm1, nn.BatchNorm2d):
            c = self.norm1.num_features
            ref = self.norm1.weight
            w, b = fuse_bn(torch.ones(c, 1, 1, 1, dtype=ref.dtype, device=ref.device), None, self.norm1)
            self.norm1 = conv_with(w, b, 1, 0, groups=c)
        if self.norm2 is not None:
            fold_bn_into_next_conv(self.norm2, self.mlp.fc1)
            self.norm2 = None


def glmix(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 32,
          slots: int = 64, kernel_size: int = 5, mlp_ratio: float = 3.0, cpe_kernel: int = 3, mlp_dw: bool = True,
          mixer: str = "glmix", odd_block: bool = False) -> nn.Module:
    if mixer not in GLMIX_MIXERS:
        raise ValueError(f"glmix: mixer={mixer!r} is not one of {', '.join(GLMIX_MIXERS)}; "
                         f"use 'glmix_mhsa' to alternate the two within a stage")
    if not isinstance(slots, int) or slots < 1 or math.isqrt(slots) ** 2 != slots:
        raise ValueError(f"glmix: slots={slots!r} must be a square number (an s x s grid: 64 = 8 x 8, 16, 49)")
    check_int("glmix", "kernel_size", kernel_size, 1, "the paper uses 5", odd=True)
    if cpe_kernel < 0 or (cpe_kernel and cpe_kernel % 2 == 0):
        raise ValueError(f"glmix: cpe_kernel={cpe_kernel} must be 0 (no CPE) or odd (GLNet uses 3)")
    check_positive("glmix", "mlp_ratio", mlp_ratio, "GLNet uses 3")
    heads = resolve_heads("glmix", out_chs, heads, head_dim, "GLNet uses 32")
    use_mhsa = mixer == "mhsa" or (mixer == "glmix_mhsa" and odd_block)
    return GLMixBlock(in_chs, out_chs, stride, heads, use_mhsa, slots, kernel_size, mlp_ratio, cpe_kernel, mlp_dw)


register_op("glmix", glmix, family="hybrid", alternate=("odd_block",), variants=({}, {"mixer": "mhsa"}),
            paper=GLMIX_PAPER)
register_stem("glnet", glnet_stem, stride=4, paper=GLMIX_PAPER)
register_downsampler("glnet", glnet_down, paper=GLMIX_PAPER)
