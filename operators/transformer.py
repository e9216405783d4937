"""Pre-norm transformer block with global relative attention (CoAtNet's T stages; a ViT block otherwise).

Paper: Dai et al., "CoAtNet: Marrying Convolution and Attention for All Data Sizes", NeurIPS 2021.
x <- x + Attention(Norm(x)); x <- x + MLP(Norm(x)), MLP ratio 4, GELU, head dim 32. The attention adds a
learned per-head bias indexed by the 2D relative offset to the logits before the softmax.

When the stride or width changes the block follows CoAtNet's downsampling rule
x <- Proj(Pool(x)) + Attention(Pool(Norm(x))): Pool is 2x2 average pooling (ceil for odd maps; the paper's
"pool"), Proj a 1x1 conv, and the attention maps in_chs to out_chs.

Departure: the bias table has a fixed extent (``rel_extent``, default 14, the 14x14 map of stride 16 at
224 px) and offsets beyond it share the table's edge entries, so the same parameters serve any resolution;
CoAtNet sizes the table to the training resolution and interpolates it when the resolution changes.

Init as timm's CoAtNet T blocks (``maxxvit._init_transformer``, its default "vit_eff" scheme) and ViT's
official JAX code: every Linear and conv Glorot uniform, biases 0, LayerNorm weight 1 and bias 0, the relative
bias table N(0, 0.02^2) ("xavier"). Departure: both draw the MLP biases from N(0, 1e-6^2); here they are 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import RelPosBias, attend, merge_heads, split_heads
from ._layers import LayerNorm2d, Mlp, init_weights, pool_ceil, resolve_heads
from ._registry import register_op


class GlobalRelAttention(nn.Module):
    """Multi-head self-attention over all positions of an (B, H, W, C) map, with a relative position bias."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, rel_extent: int = 14):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        self.rel = RelPosBias(heads, rel_extent)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x.reshape(b, h * w, -1)).chunk(3, dim=-1))
        out = merge_heads(attend(q, k, v, self.rel(h, w).unsqueeze(0)))
        return self.proj(out).view(b, h, w, -1)


class TransformerBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None,
                 head_dim: int = 32, mlp_ratio: float = 4.0, rel_extent: int = 14):
        super().__init__()
        heads = resolve_heads("transformer", out_chs, heads, head_dim, "the default is 32")
        self.norm1 = LayerNorm2d(in_chs)
        self.pool = pool_ceil(stride)
        self.attn = GlobalRelAttention(in_chs, out_chs, heads, rel_extent)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(pool_ceil(stride), nn.Conv2d(in_chs, out_chs, 1))
        self.norm2 = nn.LayerNorm(out_chs)
        self.mlp = Mlp(out_chs, max(1, round(out_chs * mlp_ratio)))
        init_weights(self, "xavier")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.pool(self.norm1(x)).permute(0, 2, 3, 1))
        x = self.shortcut(x).permute(0, 2, 3, 1) + y
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


def transformer(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 32,
                mlp_ratio: float = 4.0, rel_extent: int = 14) -> nn.Module:
    return TransformerBlock(in_chs, out_chs, stride, heads, head_dim, mlp_ratio, rel_extent)


register_op("transformer", transformer, family="global",
            paper="Dai et al., CoAtNet: Marrying Convolution and Attention for All Data Sizes, NeurIPS 2021; "
                  "Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021")
