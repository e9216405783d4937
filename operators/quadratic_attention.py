"""Self-attention with a quadratic relative encoding, the attention that is a convolution (Cordonnier et al.).

Paper: Cordonnier, Loukas & Jaggi, "On the Relationship between Self-Attention and Convolutional Layers",
ICLR 2020 (official code epfml/attention-cnn, ``models/bert.py``: ``GaussianSelfAttention``, isotropic).

Each of N_h heads scores every key by a Gaussian around its own learned offset mu_h:
score(q, k) = -alpha_h / 2 * ||(k - q) - mu_h||^2, alpha_h = spread_h^2, softmax over the keys; with
``content=True`` the logits also get q.k / sqrt(d) (the paper's mixed model; q, k from one Linear, d =
``key_dim``). Each head averages the full-width x (not a C / N_h slice); the N_h averages, concatenated
(N_h x C_in), go through the value Linear to C_out, then BERT's output dense. The paper's theorem: with
N_h = K^2 heads, mu_h on the K x K grid and alpha large, the layer is a K x K convolution whose kernel at
offset mu_h is the block W_h of the value map (``equivalent_conv``; tests/test_quadratic_attention.py).

The block is the official BERT layer, post-norm: x <- LN(x + Attention(x)); x <- LN(x + FFN(x)), FFN Linear,
GELU, Linear (ratio 1.28: the paper's 400 -> 512), LN eps 1e-12. A strided or widening block pools x first
(2x2 average, ceil) and adds a Linear shortcut (in -> out), as the catalog's ``transformer`` does; the paper
never downsamples.

``window=K`` (odd) is the official code's "blur trick": each head's weights truncated to the K x K window
around the query, softmax inside the window, renormalised at the borders over the cells inside the map; it is
a depthwise K x K convolution (one kernel per head) divided by that convolution of a map of ones. Costs, in
multiply-adds per image: global N_h N^2 C_in + N N_h C_in C_out (+ N C_out^2 for the dense, folded at deploy);
windowed N N_h K^2 C_in + N N_h C_in C_out (+ N N_h K^2 for the border normaliser). Without content the
attention depends on the resolution only: in eval mode without autograd its probabilities (or window
normaliser) are cached per resolution (and per parameter version, so a changed mu or spread is seen).

Deploy form (``reparameterize``): the dense folds into the value Linear, and a windowed layer's kernels become
fixed weights. It stays the per-head depthwise convolution, renormalised at the borders, then one 1x1 map:
exact everywhere. The single K x K convolution of the theorem (``equivalent_conv``) is exact in the interior
only: near a border the renormalisation scales each head by its own position-dependent factor, which no single
kernel holds, and restoring it costs more than the per-head form; the single convolution also costs
K^2 C_in C_out a pixel against N_h K^2 C_in + N_h C_in C_out, dearer at K = 7 and barely cheaper at K = 3,
N_h = 9 (by K^4 C_in against K^2 C_in C_out). So it is a check and an analysis tool, not the deploy form.

Init as the official code: mu_h ~ N(0, 2^2), spread_h ~ 1 + N(0, 0.01^2); Linear layers BERT's N(0, 0.02^2),
written as the catalog's "trunc_normal" (truncated at +-2, 100 standard deviations out), biases 0, LayerNorm
weight 1 and bias 0. Departures: the learned full covariance (the paper's general form) is left out (the
isotropic one is the theorem's); ``content=True`` is global only (a window with content would be another
operator); where every window cell inside the map underflows (a huge alpha with mu far outside the window),
the normaliser is clamped at 1e-30 and the head reads 0 there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import Mlp, check_int, check_positive, init_weights, pool_ceil
from ._registry import register_op
from .levit import levit_linear_with

QUADRATIC_PAPER = ("Cordonnier, Loukas & Jaggi, On the Relationship between Self-Attention and Convolutional "
                   "Layers, ICLR 2020")
QUADRATIC_CACHE_SIZE = 8  # resolutions a layer remembers (a network sees one or two)


def axis_offsets(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n, n) offsets k - q between query q and key k along one axis, as floats."""
    i = torch.arange(n, device=like.device, dtype=like.dtype)
    return i[None, :] - i[:, None]


class QuadraticAttention(nn.Module):
    """Multi-head attention with the quadratic (Gaussian) relative encoding on (B, H, W, C_in) -> C_out."""

    def __init__(self, in_chs: int, out_chs: int, heads: int = 9, content: bool = False, window: int = 0,
                 key_dim: int = 32):
        super().__init__()
        self.heads, self.window, self.key_dim = heads, window, key_dim
        self.centers = nn.Parameter(torch.empty(heads, 2))  # mu_h as (dy, dx), in pixels of the map
        self.spreads = nn.Parameter(torch.empty(heads))  # alpha_h = spread_h^2 (the official inverse std)
        self.register_parameter("kernel", None)  # deploy form of a windowed layer: (heads, K, K)
        self.qk = nn.Linear(in_chs, 2 * heads * key_dim) if content else None
        self.value = nn.Linear(heads * in_chs, out_chs)
        self.dense: nn.Linear | None = nn.Linear(out_chs, out_chs)  # BERT's output dense, folded at deploy
        self._cache: dict[tuple, object] = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.centers, 0.0, 2.0)
        nn.init.normal_(self.spreads, 1.0, 0.01)

    def global_logits(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """(heads, N, N) scores -alpha_h / 2 ||(k - q) - mu_h||^2, built from a row and a column part."""
        mu = self.centers.to(like.dtype)
        ry = axis_offsets(h, like)[None] - mu[:, 0, None, None]
        rx = axis_offsets(w, like)[None] - mu[:, 1, None, None]
        alpha = (self.spreads * self.spreads).to(like.dtype)
        dist = (ry * ry)[:, :, None, :, None] + (rx * rx)[:, None, :, None, :]  # (heads, h, w, h, w)
        return (-0.5 * alpha[:, None, None, None, None] * dist).reshape(self.heads, h * w, h * w)

    def window_kernel(self) -> torch.Tensor:
        """(heads, K, K) weights of the K x K window, a softmax over the window (its value in the interior)."""
        if self.kernel is not None:
            return self.kernel
        r = self.window // 2
        mu = self.centers
        cells = torch.arange(-r, r + 1, device=mu.device, dtype=mu.dtype)
        nearest = mu.clamp(-r, r)  # the window cell nearest to mu scores highest: subtract its score
        dy, dy0 = cells[None] - mu[:, 0:1], nearest[:, 0:1] - mu[:, 0:1]
        dx, dx0 = cells[None] - mu[:, 1:2], nearest[:, 1:2] - mu[:, 1:2]
        dist = (dy * dy - dy0 * dy0)[:, :, None] + (dx * dx - dx0 * dx0)[:, None, :]
        e = torch.exp(-0.5 * (self.spreads * self.spreads)[:, None, None] * dist)
        return e / e.sum((1, 2), keepdim=True)

    def _cached(self, key: tuple, like: torch.Tensor, compute):
        """``compute()``, remembered per key while no gradient, trace, export or compilation can need the ops
        (an export traces with tensor subclasses: those are never remembered)."""
        if (self.training or torch.is_grad_enabled() or type(like) is not torch.Tensor
                or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return compute()
        versions = tuple(p._version for p in self.parameters(recurse=False))
        key = key + (like.device, like.dtype, versions)
        if key not in self._cache:
            if len(self._cache) >= QUADRATIC_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = compute()
        return self._cache[key]

    def _global_average(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        if self.qk is None:
            probs = self._cached(("probs", h, w), x, lambda: self.global_logits(h, w, x).softmax(-1))
            probs = probs.unsqueeze(0).expand(b, -1, -1, -1)  # a view: the matmul below counts the batch
        else:
            pos = self._cached(("logits", h, w), x, lambda: self.global_logits(h, w, x))
            q, k = self.qk(x.reshape(b, n, c)).reshape(b, n, 2, self.heads, self.key_dim).permute(2, 0, 3, 1, 4)
            logits = torch.matmul(q, k.transpose(-1, -2)) * self.key_dim ** -0.5 + pos.unsqueeze(0)
            probs = logits.softmax(-1)
        out = torch.matmul(probs, x.reshape(b, 1, n, c))  # (B, heads, N, C): each head averages all of x
        return out.permute(0, 2, 1, 3).reshape(b, h, w, self.heads * c)

    def _window_parts(self, h: int, w: int, c: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = self.window_kernel().to(like.dtype)
        # the border renormalisation: each head's window weights summed over the cells inside the map
        norm = F.conv2d(like.new_ones((1, 1, h, w)), kernel.unsqueeze(1), padding=self.window // 2)
        weight = kernel.repeat(c, 1, 1).unsqueeze(1)  # (C x heads, 1, K, K): channel i, head j at i x heads + j
        return weight, norm.clamp(min=1e-30).reshape(1, 1, self.heads, h, w)

    def _window_average(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        weight, norm = self._cached(("window", h, w, c), x, lambda: self._window_parts(h, w, c, x))
        y = F.conv2d(x.permute(0, 3, 1, 2), weight, padding=self.window // 2, groups=c)
        y = y.reshape(b, c, self.heads, h, w) / norm
        return y.permute(0, 3, 4, 2, 1).reshape(b, h, w, self.heads * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.value(self._window_average(x) if self.window else self._global_average(x))
        return self.dense(y) if self.dense is not None else y

    def value_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The value map composed with the dense: (C_out, heads, C_in) blocks W_h and the (C_out,) bias."""
        w, b = self.value.weight, self.value.bias
        if self.dense is not None:
            w, b = self.dense.weight @ w, self.dense.weight @ b + self.dense.bias
        return w.reshape(w.shape[0], self.heads, -1), b

    @torch.no_grad()
    def equivalent_conv(self, kernel_size: int | None = None) -> nn.Conv2d:
        """The K x K convolution (zero padding) the content-free layer equals in the interior of the map: the
        kernel at offset delta is sum_h W_h p_h(delta), p_h the head's softmax over the K x K window (K: the
        window, or ``kernel_size`` for the global layer, which it approaches when alpha is large)."""
        if self.qk is not None:
            raise ValueError("quadratic_attention: a layer with content=True is no convolution")
        k = self.window or kernel_size
        if not k or k % 2 == 0:
            raise ValueError(f"quadratic_attention: equivalent_conv needs an odd kernel_size, got {kernel_size!r}")
        if self.window:
            probs = self.window_kernel()
        else:
            probs = self.global_logits(k, k, self.centers)[:, (k * k) // 2].softmax(-1).reshape(self.heads, k, k)
        blocks, bias = self.value_blocks()
        weight = torch.einsum("ohc,hij->ocij", blocks, probs.to(blocks.dtype))
        with torch.device("meta"):
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], k, padding=k // 2)
        conv.weight, conv.bias = nn.Parameter(weight), nn.Parameter(bias.clone())
        return conv

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.dense is not None:
            blocks, bias = self.value_blocks()
            self.value, self.dense = levit_linear_with(blocks.reshape(blocks.shape[0], -1), bias), None
        if self.window and self.kernel is None:
            self.kernel = nn.Parameter(self.window_kernel().detach().clone())
            self.centers, self.spreads = None, None
        self._cache.clear()


class QuadraticAttentionBlock(nn.Module):
    """BERT's post-norm layer around ``QuadraticAttention``, with pooling and a shortcut when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, content: bool, window: int,
                 key_dim: int, mlp_ratio: float):
        super().__init__()
        self.pool = pool_ceil(stride)
        self.attn = QuadraticAttention(in_chs, out_chs, heads, content, window, key_dim)
        self.shortcut = nn.Identity() if in_chs == out_chs else nn.Linear(in_chs, out_chs)
        self.norm1 = nn.LayerNorm(out_chs, eps=1e-12)
        self.mlp = Mlp(out_chs, max(1, round(out_chs * mlp_ratio)))
        self.norm2 = nn.LayerNorm(out_chs, eps=1e-12)
        init_weights(self, "trunc_normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).permute(0, 2, 3, 1)
        x = self.norm1(self.shortcut(x) + self.attn(x))
        x = self.norm2(x + self.mlp(x))
        return x.permute(0, 3, 1, 2)


def quadratic_attention(in_chs: int, out_chs: int, stride: int = 1, heads: int = 9, content: bool = False,
                        window: int = 0, key_dim: int = 32, mlp_ratio: float = 1.28) -> nn.Module:
    """``heads`` N_h (9: a 3x3 convolution's worth); ``window`` 0 (global) or an odd K; ``key_dim``: the q/k
    width per head of ``content=True``."""
    check_int("quadratic_attention", "heads", heads, 1, "the paper uses 9")
    check_int("quadratic_attention", "key_dim", key_dim, 1, "default 32")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0 or (window and window % 2 == 0):
        raise ValueError(f"quadratic_attention: window={window!r} must be 0 (global) or an odd integer >= 1 "
                         f"(the official blur trick uses 7)")
    if not isinstance(content, bool):
        raise ValueError(f"quadratic_attention: content={content!r} must be true or false")
    if content and window:
        raise ValueError(f"quadratic_attention: content=True needs the global attention, got window={window}; "
                         f"pass window=0, or content=False for the windowed layer")
    check_positive("quadratic_attention", "mlp_ratio", mlp_ratio, "the paper uses 512 / 400 = 1.28")
    return QuadraticAttentionBlock(in_chs, out_chs, stride, heads, content, window, key_dim, mlp_ratio)


register_op("quadratic_attention", quadratic_attention, family="global", paper=QUADRATIC_PAPER,
            extents=("window",), variants=({}, {"content": True, "heads": 4, "key_dim": 8}, {"window": 7}))
