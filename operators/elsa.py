"""Enhanced local self-attention block (Zhou, Wang, Wang, Liu, Li and Jin, "ELSA: Enhanced Local Self-Attention
for Vision Transformer", arXiv 2112.12786, 2021; official code damo-cv/ELSA).

The block is the paper's drop-in for the first stages of Swin (ELSA-Swin: stages 1-3) and VOLO (the outlooker
stage): x <- x + ELSA(LN(x)); x <- x + MLP(LN(x)) on channels-last maps, GELU MLP of ratio 4 (ELSA-Swin; VOLO
uses 3, the ``mlp_ratio`` keyword), head dim 32 (ELSA-Swin-T: 3/6/12 heads at 96/192/384).

ELSA mixer, as the official ``ELSA`` module computes it on a C-channel map:
- a 1x1 conv with bias projects to q, k (d_qk channels each) and v (C channels); d_qk = 2/3 C (``C // 3 * 2``)
  rounded up to a multiple of the group width g (8; ELSA-Swin-T passes 4);
- Hadamard attention: q * k elementwise (scale 1, the classification default ``qk_scale=1``), a k x k conv in
  groups of g channels (bias, zero padding), GELU, a 1x1 conv (bias) to heads x k^2 logits, a softmax over the
  k^2 neighbourhood of each pixel and head (the k^2 logits of head h are channels h k^2 .. (h + 1) k^2 - 1,
  row-major offsets as ``F.unfold`` orders them);
- ghost head: static per-channel k x k kernels G_mul, G_add turn the heads' attention into C per-channel
  filters F[c] = G_mul[c] * A[head(c)] + G_add[c] (``ghost``: "add" is the official ELSA-Swin default,
  lambda = 0 and gamma = 1; "both" the ``ELSA`` module's own default, lambda = gamma = 1; "mul"; "none");
- the filters applied to the values' k x k neighbourhood, zero-padded outside the map as the official CPU
  path (``F.unfold`` with padding k // 2; the outside neighbours keep their softmax weight and add 0), then a
  Linear projection (``post_proj``).
The neighbourhood products are an einsum over the unfolded values (C x k^2 multiply-adds per pixel), so fvcore
counts them; the filter construction (one multiply and one add per element) is elementwise, free by the
counting convention of ``nas.flops``.

Re-parameterization (``reparameterize()``), exact by linearity in the filter: sum_j v_j (G_mul,j A_j + G_add,j)
= sum_j v_j G_mul,j A_j + sum_j G_add,j v_j, and the second sum over the zero-padded neighbourhood is a
depthwise k x k conv of v with kernel G_add (zero padding k // 2, no bias). The deploy form applies the heads'
attention (times G_mul where there is one) to the unfolded values and adds that static depthwise conv, held as
the parameter ``ghost_dw`` (C, 1, k, k) and applied with ``F.conv2d``; the per-channel filter tensor
(B, C, k^2, H W) is no longer built. What folds is G_add alone (G_mul multiplies the input-dependent attention
and stays). The fold changes neither the parameter count (the C k^2 numbers move from an offset of the filters
to a conv kernel) nor the module count, and moves C k^2 H W multiply-adds into the count (the depthwise conv,
where the training form's add was free by convention). The depthwise conv has no static conv to merge with:
v is a slice of the shared qkv projection, and composing it with that 1x1 or with ``post_proj`` would give a
dense k x k conv, C k^2 times larger.

So the deploy form counts C k^2 H W multiply-adds more than the training form (+3.25 % for a 96-wide block, 3
heads, k = 7, at 56 x 56), and it is kept on purpose: no fold is both exact and no dearer (G_add is the only
static piece, the softmax keeps it out of the logits, and the fused filter's add is free only by the counting
convention), while the split runs faster. It never builds the filter tensor, as large as the unfolded values,
that the einsum copies into its batched-matmul layout: that 96-wide block at 56 x 56 ran in about 130 ms against
about 210 ms for the training form (eager PyTorch, one CPU thread, ghost "add", issue 21's check). A user pays
in latency, not in the convention's multiply-adds; ``nas.flops`` counts the deploy form as it is.

Stride 2 or a width change: Swin's patch merging in front of the block (``swin.PatchMerging``: 2x2 neighbours
concatenated, LayerNorm, linear to out_chs; a LayerNorm + linear at stride 1), as ELSA-Swin's stages change
resolution. The official ``ELSA`` also has a stride (average pooling of q * k, strided unfold); ELSA-Swin never
uses it and ``ELSABlock`` asserts stride 1.

Departures:
- The official CUDA kernel is replaced by the unfold + einsum path its own CPU fallback uses (same numbers);
  the unfolded values hold k^2 copies of v (49x at k = 7): cheap at proxy sizes, memory-hungry at 224 px.
- G_mul and G_add are stored as two (C, k, k) parameters instead of one stacked ``ghost_head`` (2, 1, C, k, k);
  lambda (exponent of G_mul) and gamma (scale of G_add) are the official defaults 1, so not keywords.
- Widths below 3 would give d_qk = 0; d_qk is at least the group width.
- A map smaller than the kernel (the proxy's) needs nothing special: the neighbourhood is zero-padded there as
  everywhere, as the official code does. The ``kernel`` is an extent a proxy scales (``extents``; it stays odd).
- Drop-path and dropout are left to the trainer (off, as for a proxy).

Init as the official ELSA-Swin (``self.apply(_init_vit_weights)`` of timm 0.4.9, which touches Linear and
LayerNorm only): every Linear (``post_proj``, the MLP, patch merging) N(0, 0.02^2) truncated to [-2, 2], bias 0
("trunc_normal"); the convs (qkv projection, the grouped k x k and the 1x1 logits conv) keep PyTorch's default
("torch_default"); LayerNorm weight 1, bias 0; G_mul ~ N(0, 1) (``torch.randn``), G_add trunc normal 0.02.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import check_int, check_positive, init_weights, resolve_heads, trunc_normal_
from ._registry import register_op
from .swin import SwinBlock

ELSA_PAPER = "Zhou et al., ELSA: Enhanced Local Self-Attention for Vision Transformer, arXiv 2112.12786, 2021"
ELSA_GHOST_MODES = ("add", "mul", "both", "none")


def elsa_qk_dim(dim: int, group_width: int) -> int:
    """Width of q and k: 2/3 of ``dim`` (official ``dim // 3 * 2``) rounded up to a multiple of the group width."""
    return max(group_width, math.ceil((dim // 3 * 2) / group_width) * group_width)


class ElsaAttention(nn.Module):
    """ELSA on (B, H, W, dim): Hadamard attention over each pixel's k x k neighbourhood plus the ghost head."""

    def __init__(self, dim: int, heads: int, kernel: int = 7, ghost: str = "add", group_width: int = 8):
        super().__init__()
        self.heads, self.kernel = heads, kernel
        self.dim_qk = elsa_qk_dim(dim, group_width)
        self.pre_proj = nn.Conv2d(dim, 2 * self.dim_qk + dim, 1)
        self.attn = nn.Sequential(
            nn.Conv2d(self.dim_qk, self.dim_qk, kernel, padding=kernel // 2, groups=self.dim_qk // group_width),
            nn.GELU(),
            nn.Conv2d(self.dim_qk, kernel * kernel * heads, 1))
        # The official network init (timm's _init_vit_weights) leaves every Conv2d at PyTorch's default.
        init_weights(self.pre_proj, "torch_default")
        init_weights(self.attn, "torch_default")
        mul, add = ghost in ("mul", "both"), ghost in ("add", "both")
        self.ghost_mul = nn.Parameter(torch.randn(dim, kernel, kernel)) if mul else None
        self.ghost_add = nn.Parameter(trunc_normal_(torch.zeros(dim, kernel, kernel))) if add else None
        self.ghost_dw: nn.Parameter | None = None  # the deploy form's depthwise kernel (G_add folded)
        self.post_proj = nn.Linear(dim, dim)  # trunc_normal, from the enclosing block's init_weights

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, dim, H, W) -> (softmax weights (B, heads, k^2, H W) before the ghost head, v (B, dim, H, W))."""
        b, c, h, w = x.shape
        q, k, v = self.pre_proj(x).split([self.dim_qk, self.dim_qk, c], dim=1)
        logits = self.attn(q * k).view(b, self.heads, self.kernel * self.kernel, h * w)
        return logits.softmax(dim=2), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        attn, v = self.attention(x.permute(0, 3, 1, 2))
        kk, n, d = self.kernel * self.kernel, h * w, c // self.heads
        vals = F.unfold(v, self.kernel, padding=self.kernel // 2).view(b, self.heads, d, kk, n)
        if self.ghost_mul is None and self.ghost_add is None:
            out = torch.einsum("bhjn,bhdjn->bhdn", attn, vals)
        else:  # the ghost head's per-channel filters, (B, heads, d, k^2, H W)
            filters = attn.unsqueeze(2)
            if self.ghost_mul is not None:
                filters = filters * self.ghost_mul.view(1, self.heads, d, kk, 1)
            if self.ghost_add is not None:
                filters = filters + self.ghost_add.view(1, self.heads, d, kk, 1)
            out = torch.einsum("bhdjn,bhdjn->bhdn", vals, filters)
        out = out.reshape(b, c, h, w)
        if self.ghost_dw is not None:
            out = out + F.conv2d(v, self.ghost_dw, padding=self.kernel // 2, groups=c)
        return self.post_proj(out.permute(0, 2, 3, 1))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Move G_add out of the filters into a static depthwise conv of v (module docstring); idempotent."""
        if self.ghost_add is None:
            return
        self.ghost_dw = nn.Parameter(self.ghost_add.detach().unsqueeze(1).clone())  # (C, 1, k, k)
        self.ghost_add = None


def elsa(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 32,
         kernel: int = 7, ghost: str = "add", group_width: int = 8, mlp_ratio: float = 4.0) -> nn.Module:
    heads = resolve_heads("elsa", out_chs, heads, head_dim, "ELSA-Swin uses 32")
    check_int("elsa", "kernel", kernel, 1, "the paper uses 7, VOLO 5", odd=True)
    if ghost not in ELSA_GHOST_MODES:
        raise ValueError(f"elsa: ghost={ghost!r} is not one of {', '.join(ELSA_GHOST_MODES)} "
                         f"(ELSA-Swin uses 'add', the ELSA module 'both')")
    check_int("elsa", "group_width", group_width, 1, "the paper uses 8")
    check_positive("elsa", "mlp_ratio", mlp_ratio, "ELSA-Swin uses 4, VOLO 3")
    return SwinBlock(in_chs, out_chs, stride,
                     lambda d: ElsaAttention(d, heads, kernel, ghost, group_width), mlp_ratio)


register_op("elsa", elsa, family="local", extents=("kernel",), variants=({}, {"ghost": "both", "kernel": 5}),
            paper=ELSA_PAPER)
