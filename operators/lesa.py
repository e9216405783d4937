"""LESA bottleneck (Yang, Qiao, Kortylewski and Yuille, "Locally Enhanced Self-Attention: Combining
Self-Attention and Convolution as Local and Context Terms", arXiv 2107.05637, 2021; LESA-ResNet).

The ResNet bottleneck with its 3x3 conv replaced by LESA: 1x1 reduce + BN + ReLU, LESA, ReLU, 1x1 expand + BN,
plus the shortcut (1x1 conv + BN when stride or width changes). LESA sums two terms of the same width C:

- unary (the local term, "enhanced" by a convolution): grouped 3x3 conv (``heads`` groups) -> 1x1 conv -> BN;
  with a single group the official code drops the 1x1 conv, and so do we.
- binary (the context term): global self-attention over all H x W positions, ``heads`` heads (8), 1x1 qkv
  projection + BN, q and k of half the head's value width. No 1/sqrt(d) temperature: each logit term has its
  own BN instead. With p_i the (y, x) of query i and p_j of key j, and r_q, r_k, r_v learned embeddings of
  the relative offset (one table, split by role as axial-deeplab's, which the official code builds on):
  ``logit_ij = BN(q_i . k_j) + BN(q_i . r_q(p_i - p_j)) + BN(k_j . r_k(p_j - p_i))`` (one BN channel per term
  and head), ``a = softmax_j(logit)``, ``binary_i = BN(sum_j a_ij v_j) + BN(sum_j a_ij r_v(p_i - p_j))``.
- the fusion ("dynamic fusion" in the official code): an input-dependent gate
  ``g = sigmoid(BN(conv1x1(ReLU(BN(conv1x1(ReLU([unary; binary])))))))``, 2C -> C -> C channels, and
  ``out = unary + g * binary``, the gate weighting the context term per channel and pixel.

Checked against the official code (Chenglin-Yang/LESA_classification, ``lib/models/LESA.py`` and
``config/lesa_resnet.py``): the binary term is full 2D global attention over the flattened map, not axial
(attention along H then W); only its position terms come from axial-deeplab. At stride 2 the official layer
computes both terms at full resolution and average pools the fused output (``AvgPool2d(stride)`` after the
sum); we do the same, with ceil pooling (``pool_ceil``) so odd maps give ceil(H / 2). In LESA-ResNet-50 the
stride never reaches a LESA layer (stage 3 starts with a conv bottleneck, stage 4 has stride 1).

Departures:
- Position: the official classification embedding is one table of 2 HW - 1 entries indexed by the offset of
  the *flattened* positions (i - j in a row-major 14 x 14 map), which fixes the map size at construction and
  gives (0, +1) and (+1, 1 - W) the same entry. We index by the 2D offset (dy, dx), each clamped to
  +-(``rel_extent`` - 1), a table of (2 E - 1)^2 entries; E = 14 (the official map size of LESA's stages at
  224 px) leaves every offset of a 14 x 14 map distinct. The q/k/v roles, signs and shapes are the official ones.
- Widths: q and k take max(1, floor(d_v / 2)) channels per head, the official d_v / 2 wherever that is an
  integer (the official code breaks otherwise). Default heads: the largest divisor of the width up to the
  official 8, and up to round(width / 2) below width 16, so that a head keeps >= 2 value channels where it can.
- The official stacked BNs (similarity: 3 x heads channels; output: 2C channels over [sv; sve]) are written
  as one BN per term; per-channel statistics make them the same function. The qkv projection is a 1x1 Conv2d
  (the official one is a Conv1d over the flattened map, the same map); its channels are ordered q | k | v.
- No BN after LESA: the official bottleneck applies only the ReLU to LESA's output (its own BNs end each term).

Re-parameterization (eval-mode BNs are per-channel affine maps): the qkv BN folds into the projection; the BN
of sum_j a_ij v_j folds into the v rows, and so does the shift of the BN of sum_j a_ij r_v (softmax rows sum
to 1 and pooling keeps constants); that BN's scale stays as a per-channel multiplier. The three similarity BNs
become per-head scales of q (for q . k and q . r_q) and k (for k . r_k); their shifts are constant along every
softmax row and drop out. The unary and gate BNs fold into the convs before them.

Init as the official code (``lib/models/resnet.py`` runs torchvision's loop after ``LESA.reset_parameters``):
He normal with fan-out on every conv ("fan_out"), BN weight 1 and bias 0, no zero-initialized last BN
(``zero_init_residual`` is left False); the qkv projection N(0, 1 / C_in), which is what "fan_out" gives it
(fan-out 2C = 2 C_in wherever d_v is even); the relative table N(0, 1 / d_v). One difference: torchvision's ``kaiming_normal_`` counts
the grouped 3x3 conv's fan-out without dividing by the groups, our "fan_out" scheme divides (as timm does), so
that conv starts sqrt(heads) times larger; a 1x1 conv and a BN follow it, so the training-mode output is the same.
"""

from __future__ import annotations

import torch
from torch import nn

from ._attention import relative_index
from ._layers import ConvNormAct, check_int, default_heads, fuse_bn, pool_ceil
from ._registry import register_op
from .bot import fold_bn_into_values
from .resnet import Bottleneck

LESA_PAPER = ("Yang et al., Locally Enhanced Self-Attention: Combining Self-Attention and Convolution as Local "
              "and Context Terms, arXiv 2107.05637, 2021")


def lesa_offsets(h: int, w: int, extent: int, device: torch.device | None = None) -> torch.Tensor:
    """(h w, h w) table rows of the clamped 2D offset p_i - p_j between row-major positions i and j."""
    ry, rx = relative_index(h, extent, device), relative_index(w, extent, device)
    return (ry[:, None, :, None] * (2 * extent - 1) + rx[None, :, None, :]).reshape(h * w, h * w)


def lesa_position_logits(t: torch.Tensor, emb: torch.Tensor, keys: bool = False) -> torch.Tensor:
    """(B, heads, n, n) logits from t (B, heads, d, n) and emb (n, n, d): out[b, g, a, c] = t[b, g, :, a] . emb[a, c]
    (a matmul batched over a), or with ``keys`` the transpose, out[b, g, c, a]: the logit of query c and key a.
    The result is made contiguous: the BNs and sums that follow are many times slower on the permuted view."""
    b, g, d, n = t.shape
    out = (t.permute(3, 0, 1, 2).reshape(n, b * g, d) @ emb.transpose(1, 2)).reshape(n, b, g, n)
    return (out.permute(1, 2, 3, 0) if keys else out.permute(1, 2, 0, 3)).contiguous()


def lesa_position_values(attn: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """out[b, g, :, i] = sum_j attn[b, g, i, j] emb[i, j] for attn (B, heads, n, n) and emb (n, n, d)."""
    b, g, n, _ = attn.shape
    out = attn.permute(2, 0, 1, 3).reshape(n, b * g, n) @ emb  # (n, B heads, d)
    return out.reshape(n, b, g, -1).permute(1, 2, 3, 0)


class LesaBinary(nn.Module):
    """The context term: global attention with q, k and v relative-position terms, each with its BN."""

    def __init__(self, dim: int, heads: int, extent: int = 14):
        super().__init__()
        self.heads, self.extent = heads, extent
        self.dv = dim // heads
        self.dqk = max(1, self.dv // 2)
        self.qkv = ConvNormAct(dim, 2 * heads * self.dqk + dim, 1, act=None)  # q | k | v
        self.rel = nn.Parameter(torch.randn((2 * extent - 1) ** 2, 2 * self.dqk + self.dv) * self.dv ** -0.5)
        self.bn_qk, self.bn_qr, self.bn_kr = nn.BatchNorm2d(heads), nn.BatchNorm2d(heads), nn.BatchNorm2d(heads)
        self.bn_sv, self.bn_sve = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        # deploy form: the similarity BNs' scales (3, heads) and the r_v BN's scale (dim,)
        self.register_buffer("sim_scale", None)
        self.register_buffer("sve_scale", None)

    def attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(softmax weights (B, heads, n, n), values (B, heads, d_v, n), the r_v embedding (n, n, d_v))."""
        b, _, h, w = x.shape
        g, n = self.heads, h * w
        q, k, v = self.qkv(x).reshape(b, -1, n).split([g * self.dqk, g * self.dqk, g * self.dv], dim=1)
        q, k, v = q.reshape(b, g, self.dqk, n), k.reshape(b, g, self.dqk, n), v.reshape(b, g, self.dv, n)
        idx = lesa_offsets(h, w, self.extent, x.device)
        eq, ek, ev = (t[idx] for t in self.rel.split([self.dqk, self.dqk, self.dv], dim=-1))  # (n, n, d) each
        if self.sim_scale is None:
            qk = self.bn_qk(q.transpose(-1, -2) @ k)
            qr = self.bn_qr(lesa_position_logits(q, eq))
            kr = self.bn_kr(lesa_position_logits(k, ek, keys=True))  # k_j . r_k(p_j - p_i)
        else:
            s = self.sim_scale.reshape(3, 1, g, 1, 1)
            qk = (q * s[0]).transpose(-1, -2) @ k
            qr = lesa_position_logits(q * s[1], eq)
            kr = lesa_position_logits(k * s[2], ek, keys=True)
        return (qk + qr + kr).softmax(dim=-1), v, ev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn, v, ev = self.attention(x)
        sv = (v @ attn.transpose(-1, -2)).reshape(b, c, h, w)
        sve = lesa_position_values(attn, ev).reshape(b, c, h, w)
        if self.sve_scale is None:
            return self.bn_sv(sv) + self.bn_sve(sve)
        return sv + sve * self.sve_scale.reshape(1, c, 1, 1)

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.sim_scale is not None:
            return
        self.qkv.reparameterize()
        conv = fold_bn_into_values(self.qkv.conv, self.bn_sv)
        scale, shift = _lesa_bn_affine(self.bn_sve)
        conv.bias[-self.bn_sve.num_features:] += shift  # a constant passes through the softmax-weighted sum
        self.qkv.conv = conv
        self.sve_scale = scale
        self.sim_scale = torch.stack([_lesa_bn_affine(bn)[0] for bn in (self.bn_qk, self.bn_qr, self.bn_kr)])
        self.bn_qk = self.bn_qr = self.bn_kr = self.bn_sv = self.bn_sve = None


def _lesa_bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode BN: y = scale * x + shift per channel."""
    return fuse_bn(torch.ones_like(bn.weight), None, bn)


class LesaLayer(nn.Module):
    """The bottleneck mixer: unary + sigmoid gate x binary, average pooled at stride 2, then ReLU."""

    def __init__(self, dim: int, stride: int = 1, heads: int = 8, extent: int = 14):
        super().__init__()
        if heads > 1:
            self.unary = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=heads, bias=False),
                                       ConvNormAct(dim, dim, 1, act=None))
        else:  # the official code has no 1x1 conv after an ungrouped 3x3
            self.unary = ConvNormAct(dim, dim, 3, act=None)
        self.binary = LesaBinary(dim, heads, extent)
        self.gate = nn.Sequential(nn.ReLU(), ConvNormAct(2 * dim, dim, 1), ConvNormAct(dim, dim, 1, act=None),
                                  nn.Sigmoid())
        self.pool = pool_ceil(stride)
        self.act = nn.ReLU()

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unary, binary, gate), each (B, C, H, W) at the input's resolution."""
        unary, binary = self.unary(x), self.binary(x)
        return unary, binary, self.gate(torch.cat([unary, binary], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unary, binary, gate = self.terms(x)
        return self.act(self.pool(unary + gate * binary))


def _lesa_heads(mid: int, heads: int | None) -> int:
    if heads is None:  # 8 as the official config, keeping >= 2 value channels per head where the width allows
        return default_heads(mid, max(2.0, mid / 8))
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or mid % heads:
        raise ValueError(f"lesa: heads={heads!r} must be a positive divisor of the bottleneck width {mid}; "
                         f"pass heads= a divisor of {mid}, or leave it to the default")
    return heads


def lesa(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, expansion: int = 4,
         rel_extent: int = 14) -> nn.Module:
    for name, value, hint in (("expansion", expansion, "ResNet's bottleneck uses 4"),
                              ("rel_extent", rel_extent, "14, the official map size at 224 px")):
        check_int("lesa", name, value, 1, hint)

    def mixer(mid: int, s: int) -> nn.Module:
        return LesaLayer(mid, s, _lesa_heads(mid, heads), rel_extent)
    return Bottleneck(in_chs, out_chs, stride, mixer, expansion=expansion, zero_init_last=False)


register_op("lesa", lesa, family="global", paper=LESA_PAPER)
