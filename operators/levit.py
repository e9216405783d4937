"""LeViT residual units and stem (Graham et al., "LeViT: a Vision Transformer in ConvNet's Clothing for Faster
Inference", ICCV 2021).

One op is one pair of LeViT residual units on a (B, H, W, C) token grid, every projection a Linear followed by
a BatchNorm over the channels ("Linear+BN"), Hardswish as the only non-linearity:

- stride 1, same width: x <- x + Attention(x); x <- x + MLP(x). The attention projects q, k, v with one
  Linear+BN (key dim ``key_dim``, value dim ``attn_ratio`` x key dim per head, so value width 2 x key width at
  the default), adds a learned per-head bias indexed by the ABSOLUTE offsets (|dy|, |dx|) between query and
  key to the logits, and applies Hardswish to the attention output BEFORE the output Linear+BN. The MLP is
  Linear+BN (ratio 2), Hardswish, Linear+BN. No norm precedes either unit: the BNs inside them are the norms.
- stride 2 (LeViT's shrink attention, ``AttentionSubsample``): queries are projected from the grid taken every
  second pixel (rows and columns 0, 2, 4, ...; ceil(H/2) x ceil(W/2)), keys and values from the full grid,
  ``in_chs // key_dim`` heads with value dim 4 x key dim, Hardswish, output Linear+BN to ``out_chs``; no
  residual around it (the shapes differ); then the MLP with its residual at ``out_chs``. The bias of query
  (i, j) and key (y, x) is indexed by (|2i - y|, |2j - x|), the query's offset in full-grid pixels.

At deploy every Linear+BN folds into one Linear with a bias (``reparameterize``, as the official ``fuse``), so
the deploy form holds no BatchNorm at all; the stem's conv+BN fold the same way.

LeViT-384: widths 384/512/768, heads 6/9/12, 4 blocks per stage, key dim 32, two shrink blocks between the
stages (12 and 16 heads): 39 M parameters, 2.35 GFLOPs.

Departures from the paper and the official code (facebookresearch/LeViT ``levit.py``):
- The bias table has a fixed extent E (``bias_extent``, default 14, the stage-1 map of LeViT at 224 px): table
  (heads, E, E) read at (min(|dy|, E - 1), min(|dx|, E - 1)), so the same parameters serve every resolution
  (a 2x2 proxy map and a 14x14 target). The official table holds one entry per offset that occurs at the
  training resolution (14 x 14, 7 x 7, 4 x 4 in the three stages); inside a map of side <= E the values are
  the same, and LeViT-384 carries about 16 k more table entries here (0.04 %).
- A LeViT stage is "shrink block, then N blocks"; here the shrink block is the strided first op of a stage, so
  a stage of N LeViT blocks after a shrink is an opmix stage of depth N + 1 (the LeViT-384 reference has depths
  4/5/5).
- A width change at stride 1 (which LeViT never has) uses the shrink attention without subsampling: q, k and v
  all from the full grid, no residual around the attention.
- Default heads: round(out_chs / (attn_ratio * key_dim)), the value width equal to the block width, which gives
  every official LeViT's stage heads except LeViT-384's stage 2 (9 at width 512: pass heads=9) and
  LeViT-128S's last two stages; ``heads`` need not divide the width (the output Linear maps heads x value dim
  back to it), as in LeViT.
- No stochastic depth (LeViT-384 trains with drop path 0.1): the catalog's blocks carry none.
- LeViT's head (BN + Linear, plus a distillation head averaged at test time) is not a head type of opmix;
  the reference uses ``pool_linear`` (see ``search_spaces/references/levit_384.yaml``).

Init as the official code: it sets nothing on its Linear and conv layers, so they keep PyTorch's default
("torch_default"; the Linears before a BN have no bias); every BN has bias 0 and weight 1, except the BN after
the attention output projection of the residual attention and the BN after the MLP's second Linear, whose
weight starts at 0 (``bn_weight_init=0``), so that both residual units start as the identity; the shrink
attention's output BN starts at 1. The bias tables start at 0. The stem: PyTorch's default convs, BN weight 1.
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import attend, merge_heads
from ._layers import ConvNormAct, fuse_bn, init_weights
from ._registry import register_op, register_stem

LEVIT_SHRINK_ATTN_RATIO = 4  # value dim / key dim of the shrink attention (official ``down_ops``)


def levit_linear_with(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    """A Linear holding the given (fused) weight and bias, built on the meta device (no wasted init)."""
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight = nn.Parameter(weight.detach())
    linear.bias = nn.Parameter(bias.detach())
    return linear


class LeViTLinearBN(nn.Module):
    """Linear without bias, then BatchNorm over the channels of channels-last tokens (..., C).

    ``reparameterize()`` folds the BN into the Linear (one Linear with a bias) and removes it.
    """

    def __init__(self, in_features: int, out_features: int, bn_weight_init: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn: nn.BatchNorm1d | None = nn.BatchNorm1d(out_features)
        nn.init.constant_(self.bn.weight, bn_weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        if self.bn is None:
            return x
        return self.bn(x.reshape(-1, x.shape[-1])).view(x.shape)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.bn is None:
            return
        w, b = fuse_bn(self.linear.weight, self.linear.bias, self.bn)
        self.linear, self.bn = levit_linear_with(w, b), None


def levit_abs_offsets(n_q: int, n_k: int, stride: int, extent: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_q, n_k) table rows |stride * i - j| of query i (on the grid taken every ``stride`` pixels) and key j,
    clamped to extent - 1."""
    q = torch.arange(n_q, device=device) * stride
    k = torch.arange(n_k, device=device)
    d = q[:, None] - k[None, :]
    # where(d < 0, -d, d) rather than abs(): the same values, and ops that nas.flops knows to be free
    return torch.where(d < 0, -d, d).clamp(max=extent - 1)


class LeViTAbsPosBias(nn.Module):
    """LeViT's attention bias: a learned per-head scalar indexed by (|dy|, |dx|), table (heads, E, E)."""

    def __init__(self, heads: int, extent: int):
        super().__init__()
        self.heads, self.extent = heads, extent
        self.table = nn.Parameter(torch.zeros(heads, extent, extent))

    def forward(self, hq: int, wq: int, hk: int, wk: int, stride: int) -> torch.Tensor:
        """(heads, hq * wq, hk * wk) bias for row-major query and key grids."""
        e, dev = self.extent, self.table.device
        oy, ox = levit_abs_offsets(hq, hk, stride, e, dev), levit_abs_offsets(wq, wk, stride, e, dev)
        idx = oy[:, None, :, None] * e + ox[None, :, None, :]  # (hq, wq, hk, wk)
        return self.table.flatten(1)[:, idx.reshape(-1)].view(self.heads, hq * wq, hk * wk)


class LeViTAttention(nn.Module):
    """Multi-head attention on (B, H, W, in_dim) -> (B, ceil(H/s), ceil(W/s), out_dim).

    ``shrink=False``: LeViT's ``Attention`` (one qkv Linear+BN; stride 1, in_dim == out_dim). ``shrink=True``:
    its ``AttentionSubsample``: q from the grid taken every ``stride`` pixels, k and v from the full grid.
    """

    def __init__(self, in_dim: int, out_dim: int, key_dim: int, heads: int, attn_ratio: float, stride: int,
                 shrink: bool, bias_extent: int):
        super().__init__()
        self.heads, self.key_dim, self.stride = heads, key_dim, stride
        self.val_dim = int(attn_ratio * key_dim)
        qk_w, v_w = heads * key_dim, heads * self.val_dim
        if shrink:
            self.qkv = None
            self.q = LeViTLinearBN(in_dim, qk_w)
            self.kv = LeViTLinearBN(in_dim, qk_w + v_w)
        else:
            self.qkv = LeViTLinearBN(in_dim, 2 * qk_w + v_w)
        self.bias = LeViTAbsPosBias(heads, bias_extent)
        self.act = nn.Hardswish()  # before the output projection, as in LeViT
        # The residual attention's output BN starts at 0 (its branch starts as zero); the shrink one's at 1.
        self.proj = LeViTLinearBN(v_w, out_dim, bn_weight_init=1.0 if shrink else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        kd, vd, n = self.key_dim, self.val_dim, self.heads
        if self.qkv is not None:
            hq, wq = h, w
            q, k, v = self.qkv(x).view(b, h * w, n, 2 * kd + vd).split([kd, kd, vd], dim=-1)
        else:
            xq = x[:, ::self.stride, ::self.stride]
            hq, wq = xq.shape[1], xq.shape[2]
            q = self.q(xq).view(b, hq * wq, n, kd)
            k, v = self.kv(x).view(b, h * w, n, kd + vd).split([kd, vd], dim=-1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, N, d)
        bias = self.bias(hq, wq, h, w, self.stride).unsqueeze(0)
        out = merge_heads(attend(q, k, v, bias, scale=kd ** -0.5)).view(b, hq, wq, n * vd)
        return self.proj(self.act(out))


class LeViTMlp(nn.Module):
    """Linear+BN, Hardswish, Linear+BN (the last BN's weight starts at 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = LeViTLinearBN(dim, hidden)
        self.act = nn.Hardswish()
        self.fc2 = LeViTLinearBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LeViTBlock(nn.Module):
    """Attention unit (residual unless the block strides or widens), then the MLP unit with its residual."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, key_dim: int, heads: int, attn_ratio: float,
                 mlp_ratio: float, shrink_heads: int, bias_extent: int):
        super().__init__()
        self.residual = stride == 1 and in_chs == out_chs
        if self.residual:
            self.attn = LeViTAttention(in_chs, out_chs, key_dim, heads, attn_ratio, 1, False, bias_extent)
        else:
            self.attn = LeViTAttention(in_chs, out_chs, key_dim, shrink_heads, LEVIT_SHRINK_ATTN_RATIO, stride, True,
                                       bias_extent)
        self.mlp = LeViTMlp(out_chs, int(out_chs * mlp_ratio))
        init_weights(self, "torch_default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        y = self.attn(x)
        x = x + y if self.residual else y
        x = x + self.mlp(x)
        return x.permute(0, 3, 1, 2)


def _levit_positive(name: str, value, what: str) -> None:
    if not value > 0:
        raise ValueError(f"levit: {name}={value!r} must be {what}; pass a positive value or leave the default")


def levit(in_chs: int, out_chs: int, stride: int = 1, key_dim: int = 32, heads: int | None = None,
          attn_ratio: float = 2.0, mlp_ratio: float = 2.0, shrink_heads: int | None = None,
          bias_extent: int = 14) -> nn.Module:
    """``heads`` (default round(out_chs / (attn_ratio * key_dim))) sets the residual attention; the shrink
    attention of a strided or widening block has ``shrink_heads`` (default in_chs // key_dim, LeViT's rule)."""
    _levit_positive("key_dim", key_dim, "a positive integer (LeViT: 16 or 32)")
    _levit_positive("attn_ratio", attn_ratio, "positive (LeViT: 2)")
    if int(attn_ratio * key_dim) < 1:
        raise ValueError(f"levit: attn_ratio={attn_ratio} x key_dim={key_dim} gives a value dim below 1; "
                         f"raise either")
    _levit_positive("mlp_ratio", mlp_ratio, "positive (LeViT: 2)")
    if int(out_chs * mlp_ratio) < 1:
        raise ValueError(f"levit: mlp_ratio={mlp_ratio} gives an MLP of width 0 at width {out_chs}; raise it")
    _levit_positive("bias_extent", bias_extent, "a positive integer (default 14, the stage-1 map at 224 px)")
    if heads is None:
        heads = max(1, int(out_chs / (attn_ratio * key_dim) + 0.5))
    _levit_positive("heads", heads, "a positive integer")
    if shrink_heads is None:
        shrink_heads = max(1, in_chs // key_dim)
    _levit_positive("shrink_heads", shrink_heads, "a positive integer")
    return LeViTBlock(in_chs, out_chs, stride, key_dim, heads, attn_ratio, mlp_ratio, shrink_heads, bias_extent)


def stem_levit(in_chs: int, width: int) -> nn.Module:
    """LeViT's stem: four 3x3 stride-2 conv+BN, widths D/8, D/4, D/2, D, Hardswish between (none after the last)."""
    widths = [max(1, width // 8), max(1, width // 4), max(1, width // 2), width]
    layers, cin = [], in_chs
    for i, w in enumerate(widths):
        layers.append(ConvNormAct(cin, w, 3, 2, act=nn.Hardswish if i < 3 else None))
        cin = w
    return init_weights(nn.Sequential(*layers), "torch_default")


LEVIT_PAPER = "Graham et al., LeViT: a Vision Transformer in ConvNet's Clothing for Faster Inference, ICCV 2021"
register_op("levit", levit, family="global", variants=({}, {"key_dim": 8, "heads": 3}), paper=LEVIT_PAPER)
register_stem("levit", stem_levit, stride=16, paper=LEVIT_PAPER)
