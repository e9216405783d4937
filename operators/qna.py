"""QnA block (Arar, Shamir and Bermano, "Learned Queries for Efficient Local Attention", CVPR 2022).

x <- Shortcut(x) + QnA(LN(x)); x <- x + MLP(LN(x)): a pre-norm transformer block whose token mixer is
"Query and Attend". QnA's queries are LEARNED PARAMETERS, ``queries`` of them (2) per head, shared by every
window; keys and values are 1x1 projections of the input. Every output pixel attends over the k x k window
(k = ``window``, 3 in every QnA-ViT of the official code, 7 in its "7x7" variant) centred on it, windows
overlapping as a convolution's do (stride 1: H x W out; stride 2: centres on the even pixels, ceil(H/2) x
ceil(W/2) out). For query q of head h and a key j of the window centred at c:

    logit_j = q_hat . k_j / sqrt(d) + b_{q,h}(j - c)      (q_hat = q / |q|, the official ``normalize_q``)
    out_c   = sum_q sum_j a_{q,h}(j - c) softmax_j(logit)_j v_j

with b a learned relative position bias and a a learned per-cell weight that mixes the queries (the official
``attn_scale="normal"``; both are (queries x heads, k x k) tables). The output goes through a 1x1 projection;
key, value and output projections have no bias. MLP ratio 4 with flax's GELU (tanh approximation), LayerNorm
eps 1e-6 (flax's), head dim 8 (QnA-ViT: 8/16/32/64 heads at 64/128/256/512), no layer scale (None in every
released config).

Because the query is fixed, q_hat . k_j = (q_hat W_k) . x_j is one 1x1 convolution of the input (one logit
map per query and head), and the softmax over a window is a ratio of two depthwise k x k convolutions of
exp(logit) maps (the paper's efficient form, as the official code computes it):

    out_c = conv(exp(logit) * v, exp(b) * a)_c / conv(exp(logit), exp(b))_c

The convolutions zero-pad, and a padded pixel then contributes exp = 0 to both sums: keys outside the map are
masked, never padded in, at any H, W (a 1x1 map attends to its one pixel). fvcore counts the three
convolutions (and the tiny q_hat W_k product); exp, the products with v and the division are elementwise.

Shortcut: identity at stride 1 and equal widths; the official strided "QnA downsampling" block (the last
block of stages 1-3, doubling the width, QnA itself at stride 2 and in -> out) takes a 1x1 stride-2 conv
without bias on its shortcut, and so does this block whenever the stride or the width changes.

Departures:
- Numerical stability. The official code takes exp of the raw logits. Here each logit map has its maximum over
  the whole map subtracted first (one per sample, query and head): softmax is unchanged by a constant shift of
  all of a window's logits, and a shift common to every window is such a shift, so the ratio is exact, and no
  exp exceeds 1. A per-window maximum would be as exact but cannot be shared by overlapping windows (it would
  break the convolution form). A window's denominator vanishes only if all its logits sit about 87 below the
  map's maximum (float32 and bfloat16 underflow); |q_hat . k| / sqrt(d) <= |k_h| / sqrt(d) with a unit query,
  so that takes key norms far beyond those of LayerNorm-ed inputs. If it happens, the denominator is clamped
  to the smallest normal float and the window's output is 0 instead of NaN. The bias enters as softmax(b)
  over the k x k cells, exp(b) up to one factor per query and head that cancels in the ratio.
- Width change at stride 1 and stride 2 at equal widths (the official network has neither): the same 1x1
  shortcut conv as the downsampling block, at the block's stride.
- Deploy form (``reparameterize()``): q_hat W_k / sqrt(d) becomes one 1x1 kernel (queries x heads outputs)
  and the two window kernels are stored, so the keys' full projection and the query parameters are gone
  (fewer parameters, same multiply-adds); the outputs are equal.
- Stochastic depth is not part of the block (as for every operator of the catalog).

Init as the official code (moabarar/qna, flax): every conv and linear (keys, values, output, shortcut, MLP)
LeCun normal (flax ``lecun_normal``: N(0, 1 / fan_in) truncated at 2 standard deviations of the untruncated
law, scaled so that the variance is 1 / fan_in), biases 0, LayerNorm weight 1 and bias 0 (``init_weights``' "lecun_normal"); the queries
sqrt(1 / head_dim) x N(0, 1) truncated to [-2, 2]; the relative position bias 0 (the official stage passes
its zero bias init as ``pos_embedding_init``); the query-mixing weights a ~ N(0, 0.02^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import LayerNorm2d, Mlp, check_int, check_positive, init_weights, resolve_heads
from ._registry import register_op

class QnAttention(nn.Module):
    """Query-and-Attend on (B, in_dim, H, W) -> (B, out_dim, ceil(H/stride), ceil(W/stride))."""

    def __init__(self, in_dim: int, out_dim: int, heads: int, queries: int = 2, window: int = 3,
                 stride: int = 1):
        super().__init__()
        self.heads, self.queries, self.window, self.stride = heads, queries, window, stride
        self.head_dim = out_dim // heads
        self.query = nn.Parameter(torch.empty(queries, out_dim))
        nn.init.trunc_normal_(self.query, 0.0, self.head_dim ** -0.5, -2 * self.head_dim ** -0.5,
                              2 * self.head_dim ** -0.5)
        self.to_k = nn.Conv2d(in_dim, out_dim, 1, bias=False)  # used only through q_hat W_k
        self.to_v = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.rel_bias = nn.Parameter(torch.zeros(queries * heads, window * window))
        self.mix = nn.Parameter(torch.empty(queries * heads, window * window))
        nn.init.normal_(self.mix, 0.0, 0.02)
        self.proj = nn.Conv2d(out_dim, out_dim, 1, bias=False)
        # Deploy form (reparameterize): the fused logit kernel and the two window kernels.
        self.register_parameter("logit_kernel", None)
        self.register_parameter("num_kernel", None)
        self.register_parameter("den_kernel", None)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logit kernel (Q*h, in, 1, 1), numerator kernel (Q*h, 1, k, k), denominator kernel (Q*h, 1, k, k))."""
        if self.logit_kernel is not None:
            return self.logit_kernel, self.num_kernel, self.den_kernel
        q = self.query.view(self.queries, self.heads, self.head_dim)
        q = q / (torch.sqrt((q * q).sum(-1, keepdim=True)) + 1e-6) / math.sqrt(self.head_dim)
        wk = self.to_k.weight.view(self.heads, self.head_dim, -1)
        logit = torch.einsum("qhd,hdi->qhi", q, wk).reshape(self.queries * self.heads, -1, 1, 1)
        k = self.window
        den = self.rel_bias.softmax(dim=-1)  # exp(b) up to a factor per (query, head) that the ratio cancels
        return logit, (den * self.mix).view(-1, 1, k, k), den.view(-1, 1, k, k)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits q_hat . k / sqrt(d), (B, queries x heads, H, W): a 1x1 conv of the input."""
        return F.conv2d(x, self.fused()[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        nq, heads, d, k = self.queries, self.heads, self.head_dim, self.window
        logit_kernel, num_kernel, den_kernel = self.fused()
        logits = F.conv2d(x, logit_kernel)
        # A shift common to every window leaves each window's softmax unchanged (module docstring).
        e = torch.exp(logits - F.adaptive_max_pool2d(logits, 1).detach())
        v = self.to_v(x)
        ev = (e.view(-1, nq, heads, 1, h, w) * v.view(-1, 1, heads, d, h, w)).reshape(-1, nq * heads * d, h, w)
        num_kernel = num_kernel.view(nq * heads, 1, 1, k, k).expand(-1, d, -1, -1, -1).reshape(-1, 1, k, k)
        num = F.conv2d(ev, num_kernel, stride=self.stride, padding=k // 2, groups=nq * heads * d)
        den = F.conv2d(e, den_kernel, stride=self.stride, padding=k // 2, groups=nq * heads)
        ho, wo = num.shape[-2:]
        den = den.clamp(min=torch.finfo(den.dtype).tiny)
        out = (num.view(-1, nq, heads, d, ho, wo) / den.view(-1, nq, heads, 1, ho, wo)).sum(1)
        return self.proj(out.reshape(-1, heads * d, ho, wo))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.logit_kernel is not None:
            return
        logit, num, den = (nn.Parameter(t.detach().clone()) for t in self.fused())
        del self.query, self.to_k, self.rel_bias, self.mix
        self.logit_kernel, self.num_kernel, self.den_kernel = logit, num, den


class QnABlock(nn.Module):
    """The official BaseBlock around QnA (module docstring), on (B, C, H, W)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, queries: int, window: int,
                 mlp_ratio: float):
        super().__init__()
        self.norm1 = LayerNorm2d(in_chs, eps=1e-6)
        self.attn = QnAttention(in_chs, out_chs, heads, queries, window, stride)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride, bias=False)
        self.norm2 = nn.LayerNorm(out_chs, eps=1e-6)
        self.mlp = Mlp(out_chs, max(1, round(out_chs * mlp_ratio)))
        self.mlp.act = nn.GELU(approximate="tanh")  # flax's nn.gelu default
        init_weights(self, "lecun_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shortcut(x) + self.attn(self.norm1(x))
        x = x.permute(0, 2, 3, 1)
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


def qna(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 8,
        queries: int = 2, window: int = 3, mlp_ratio: float = 4.0) -> nn.Module:
    heads = resolve_heads("qna", out_chs, heads, head_dim, "QnA-ViT uses 8")
    check_int("qna", "window", window, 1, "QnA-ViT uses 3, its 7x7 variant 7", odd=True)
    check_int("qna", "queries", queries, 1, "the official code uses 2")
    check_positive("qna", "mlp_ratio", mlp_ratio, "the paper uses 4")
    return QnABlock(in_chs, out_chs, stride, heads, queries, window, mlp_ratio)


register_op("qna", qna, family="local", extents=("window",), variants=({}, {"window": 7}),
            paper="Arar, Shamir and Bermano, Learned Queries for Efficient Local Attention, CVPR 2022")
