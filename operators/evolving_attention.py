"""Evolving attention (Wang et al., "Evolving Attention with Residual Convolutions", ICML 2021; official
TensorFlow code ``pkuyym/EvolvingAttention``, ``EAResnet50/official/resnet/resnet_model.py``).

The attention-augmented bottleneck (Bello et al.; the catalog's ``attention_augmented``) whose attention logits
evolve from the previous block's. With L = q k^T / sqrt(d_kh) + the 2D relative logits (B x heads x N x N) and
A_prev the previous block's *evolved, pre-softmax* logits:

    A_in = (1 - beta) L + beta A_prev
    A    = alpha ReLU(Conv3x3(A_in)) + (1 - alpha) A_in

The convolution maps heads to heads channels over the N x N attention map (same padding, bias), not over the
H x W feature map. A is handed on to the next block (``operators._layers.Chain``), then softmax over the keys
weights v. alpha = 1 and beta = 0.5, as the code. Logits are mixed, never probabilities, and what goes on is
the evolved A, not L.

The rest is the code's ``asconv2d_fixed_padding`` inside ``_bottleneck_asblock_v1``: a 3x3 conv (no bias) gives
F - d_v of the bottleneck's F mid channels and the attention the other d_v, with d_k = 0.25 F, d_v = 0.125 F and
8 heads; one biased 1x1 conv gives k, q, v (in that channel order), a biased 1x1 conv projects the attention
output; then BN and ReLU. At stride 2 the attention's input is 3x3 stride-2 average pooled (padding not
averaged). ``pool=True`` is the code's ``do_downsample``, set where the output width is 512 (conv3): another
3x3 stride-2 average pooling before the attention, whose output is resized back bilinearly, so conv3's 28 x 28
maps attend at 14 x 14 (N = 196) as conv4's do, and the chain runs on into conv4. A chain continues wherever
the incoming logits have this block's shape (heads and N) and starts anew where they do not (conv5, N = 49).

Init as the code: every conv of the block, the ResNet's included, TensorFlow's
``variance_scaling_initializer()`` (truncated normal of variance 1 / fan_in: "lecun_normal"), biases 0, every
BN at weight 1 (the code zero-initializes no last BN); the relative embeddings
``tf.random_normal_initializer(d_kh ** -0.5)``, whose first argument is the *mean*: N(d_kh^-1/2, 1).

Departures, and why:
- The evolution runs in every block. Where a chain starts (the network's first attention block; conv5's first)
  the code skips the conv; here the block's own logits stand in for the previous ones (A_in = L, as
  (1 - beta) L + beta L = L) and go through it. A block then computes one function and owns one set of
  parameters wherever it sits: every parameter trains, and a block alone (the catalog's tests, the per-layer
  FLOP and latency tables) costs what it costs in the network. The price is one 584-parameter conv per chain
  start (two in EA-AA-ResNet-50, at N = 196 and 49: 1,168 of its 24.97 M parameters and 23.5 M of its 4.24 G
  multiply-adds).
- Padding: PyTorch's symmetric padding for the pooling (TensorFlow's SAME pads the bottom-right only on even
  maps, shifting its windows half a pixel) and half-pixel centres for the bilinear resize (TensorFlow 1's
  ``resize_images`` uses neither): the ONNX Resize and AveragePool the export meets.
- Relative embeddings have a fixed extent (``rel_extent``; longer offsets share the edge entries), as in
  ``attention_augmented``, so the block runs at any size; the code sizes them 2H - 1 and 2W - 1 to its map.
  The reference sets each stage's extent to its map.
- Heads: 8, fewer at widths below 64 (a proxy's), with d_k and d_v rounded up to multiples of the heads.

Deploy: the BN folds into the 3x3 conv and the output projection (``attention_augmented``'s fold); the
evolution conv acts on input-dependent logits and stays. FLOPs count the evolution conv, heads^2 x 9 x N^2
multiply-adds an image (22.1 M at N = 196 with 8 heads), and the bilinear resize as fvcore does (4 per output
value); the mixing and the ReLU are elementwise, free by the convention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._attention import RelPosLogits, merge_heads, split_heads
from ._layers import Chain, NormActMixer, init_weights
from ._registry import register_op
from .attention_augmented import AugmentedConv, _round_up
from .resnet import Bottleneck


def _avg_pool_stride2() -> nn.Module:
    """3x3 stride-2 average pooling to ceil(H / 2), the padding left out of each average (TensorFlow's SAME)."""
    return nn.AvgPool2d(3, 2, 1, count_include_pad=False)


class EvolvingAugmentedConv(NormActMixer):
    def __init__(self, dim: int, stride: int = 1, heads: int | None = None, kappa: float = 0.25,
                 upsilon: float = 0.125, alpha: float = 1.0, beta: float = 0.5, pool: bool = False,
                 rel_extent: int = 14):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"evolving_attention: stride {stride} is not 1 or 2 (the code's average pooling "
                             f"halves the map); downsample further with a separate layer")
        for key, value in (("alpha", alpha), ("beta", beta)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"evolving_attention: {key}={value} is outside [0, 1]; the paper uses "
                                 f"alpha 1 and beta 0.5")
        heads = heads or max(1, min(8, dim // 8))
        dk, dv = _round_up(kappa * dim, heads), _round_up(upsilon * dim, heads)
        if dv >= dim:
            raise ValueError(f"evolving_attention: width {dim} leaves no conv channels with d_v={dv} "
                             f"({heads} heads); use a wider stage, fewer heads or a smaller upsilon")
        self.heads, self.dk, self.dv, self.alpha, self.beta = heads, dk, dv, alpha, beta
        self.conv = nn.Conv2d(dim, dim - dv, 3, stride, 1, bias=False)
        self.pool = _avg_pool_stride2() if stride == 2 else nn.Identity()
        self.shrink = _avg_pool_stride2() if pool else None
        self.kqv = nn.Conv2d(dim, 2 * dk + dv, 1)
        self.rel = RelPosLogits(dk // heads, rel_extent)
        self.evolve = nn.Conv2d(heads, heads, 3, padding=1)
        self.proj = nn.Conv2d(dv, dv, 1)
        self.add_norm_act(dim)
        init_weights(self, "lecun_normal")
        with torch.no_grad():
            for table in (self.rel.rel_h, self.rel.rel_w):
                table.normal_((dk // heads) ** -0.5, 1.0)

    def evolved(self, logits: torch.Tensor, chain: Chain | None) -> torch.Tensor:
        """A from L (module docstring), handed on through ``chain``; a chain of another shape starts anew."""
        prev = chain.value if chain is not None else None
        if prev is not None and prev.shape == logits.shape:
            logits = (1 - self.beta) * logits + self.beta * prev
        out = F.relu(self.evolve(logits))  # (B, heads, N, N): an N x N image with heads channels
        if self.alpha != 1.0:
            out = self.alpha * out + (1 - self.alpha) * logits
        if chain is not None:
            chain.value = out
        return out

    def forward(self, x: torch.Tensor, chain: Chain | None = None) -> torch.Tensor:
        conv = self.conv(x)
        xa = self.pool(x)
        size = xa.shape[-2:]
        if self.shrink is not None:
            xa = self.shrink(xa)
        b, _, h, w = xa.shape
        kqv = self.kqv(xa).flatten(2).transpose(1, 2)
        k, q, v = (split_heads(t, self.heads) for t in kqv.split([self.dk, self.dk, self.dv], dim=-1))
        q = q * (self.dk // self.heads) ** -0.5
        logits = self.evolved(self.rel.add_to(q @ k.transpose(-1, -2), q, h, w), chain)
        att = self.proj(merge_heads(logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, -1, h, w))
        if self.shrink is not None:
            att = F.interpolate(att, size=size, mode="bilinear", align_corners=False)
        return self.finish(torch.cat([conv, att], dim=1))

    fold_bn = AugmentedConv.fold_bn  # the same split of the BN: the 3x3 conv's channels, then the projection's


class EvolvingBottleneck(Bottleneck):
    """The ResNet bottleneck around an ``EvolvingAugmentedConv``, passing the network's chain to it."""

    takes_chain = True

    def forward(self, x: torch.Tensor, chain: Chain | None = None) -> torch.Tensor:
        return self.act(self.expand(self.mixer(self.reduce(x), chain)) + self.shortcut(x))


def evolving_attention(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None,
                       kappa: float = 0.25, upsilon: float = 0.125, alpha: float = 1.0, beta: float = 0.5,
                       pool: bool = False, expansion: int = 4, rel_extent: int = 14) -> nn.Module:
    return EvolvingBottleneck(
        in_chs, out_chs, stride,
        lambda mid, s: EvolvingAugmentedConv(mid, s, heads, kappa, upsilon, alpha, beta, pool, rel_extent),
        expansion=expansion, zero_init_last=False, init="lecun_normal")


register_op("evolving_attention", evolving_attention, family="global", variants=({}, {"pool": True}),
            paper="Wang et al., Evolving Attention with Residual Convolutions, ICML 2021")
