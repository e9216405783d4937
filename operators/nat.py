"""Neighborhood Attention Transformer block (Hassani, Walton, Li, Li and Shi, "Neighborhood Attention
Transformer", CVPR 2023), with NAT's convolutional stem and downsampler.

x <- x + NA(LN(x)); x <- x + MLP(LN(x)) on channels-last maps, GELU MLP of ratio 3 (NAT-M/T; NAT-S/B use 2
with a layer scale of 1e-5, the ``layer_scale`` keyword), head dim 32 (NAT-T: 2/4/8/16 heads at
64/128/256/512). Neighborhood attention (NA): every query attends to a k x k neighbourhood of keys (k = 7).
Near a border the window is not cut but *shifted inward*: along an axis of L pixels the window of query i
starts at clamp(i - k // 2, 0, L - k), so every query sees exactly k^2 keys (zero padding or masking
instead would give SASA). A learned per-head table (heads, 2k - 1, 2k - 1) adds a bias indexed by the offset
*of the key inside that shifted window*, key position - query position + k - 1 per axis (NATTEN's kernel
convention, so a NATTEN checkpoint's ``rpb`` loads unchanged); near a border the offsets run past k // 2.

Computation: ``neighborhood_attention`` gathers each query's k^2 keys and values with index tensors computed
from H and W and forms q k^T and attention x V as matmuls, so fvcore counts
2 x B x heads x H x W x k^2 x head_dim multiply-adds for them (as NAT's own counter does, less its k^2 bias
additions). With the optional ``natten`` package installed, a CUDA map at least k x k goes through NATTEN's
kernels instead (same numbers; ``tests/test_nat.py`` checks so when it is installed); tracing, export and the
CPU always take the pure-torch path. The gathered keys and values hold k^2 copies of K and V (49x at k = 7):
cheap at the proxy's maps, but training NAT-T at 224 px on the pure path needs NATTEN or small batches.

Stem ("nat", stride 4): NAT's ConvTokenizer: 3x3 stride-2 conv to width / 2, 3x3 stride-2 conv to width
(both with bias, nothing between them), LayerNorm. Downsampler ("nat"): NAT's ConvDownsampler, 3x3 stride-2
conv without bias, LayerNorm (NAT doubles the width there; here it maps in_chs to out_chs). When the block
itself is asked for stride 2 or a width change (``downsample: op``), it starts with that same conv + LayerNorm
(3x3, stride 1 or 2); NAT-T's stages use the separate downsampler and run their blocks at stride 1.

Departures:
- A map smaller than k on an axis (the proxy's 2x2 to 8x8 maps): the window shrinks to the map on that axis
  (min(k, L) keys, all of them), bias offsets still key - query + k - 1. The official module instead
  zero-pads the *input* of the qkv projection on the bottom/right to k x k and lets the padded tokens (whose
  keys are the qkv bias) take part in the softmax; a shrunken window sees only real pixels and does not
  depend on how much padding a size needs.
- The block's own downsampling (stride or width change without a separate downsampler) is NAT's
  ConvDownsampler put in front of the block; the official NAT never asks a block to downsample.
- Drop-path and dropout are left to the trainer (off, as for a proxy).

Init as the official NAT (``NAT._init_weights`` and the NATTEN module): every Linear N(0, 0.02^2) truncated to
[-2, 2] (timm's ``trunc_normal_``), biases 0 ("trunc_normal"); LayerNorm weight 1, bias 0; the bias table
trunc normal 0.02. ``_init_weights`` touches no Conv2d, so the stem's and the downsamplers' convs keep
PyTorch's default ("torch_default"). Layer scale, when on, starts at ``layer_scale``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ._attention import merge_heads
from ._layers import (
    LayerNorm2d,
    Mlp,
    check_int,
    check_positive,
    init_weights,
    resolve_heads,
    trunc_normal_,
)
from ._registry import register_downsampler, register_op, register_stem

NAT_PAPER = "Hassani et al., Neighborhood Attention Transformer, CVPR 2023"


def neighborhood_windows(size: int, kernel: int, device: torch.device | None = None):
    """Along one axis of ``size`` pixels: the key positions each query sees, (size, n) with n = min(kernel,
    size), the window clamped inside the axis; and the bias-table index of each, key - query + kernel - 1."""
    n = min(kernel, size)
    pos = torch.arange(size, device=device)
    start = (pos - kernel // 2).clamp(0, size - n)
    keys = start[:, None] + torch.arange(n, device=device)
    return keys, keys - pos[:, None] + kernel - 1


@functools.cache
def _natten_kernels():
    """NATTEN's (qk + bias, av) functions on (B, heads, H, W, d) tensors if the package is installed, else None.

    NATTEN 0.14-0.17 name them ``natten2dqkrpb`` / ``natten2dav``; later releases ``na2d_qk(..., rpb=)`` /
    ``na2d_av`` (0.20 drops the bias table: None, and the pure path is used)."""
    try:
        import natten.functional as nf
    except (ImportError, OSError, RuntimeError):  # not installed, or built for another torch / CUDA
        return None
    if hasattr(nf, "natten2dqkrpb") and hasattr(nf, "natten2dav"):
        return (lambda q, k, rpb, ks: nf.natten2dqkrpb(q, k, rpb, ks, 1),
                lambda a, v, ks: nf.natten2dav(a, v, ks, 1))
    qk, av = getattr(nf, "na2d_qk", None), getattr(nf, "na2d_av", None)
    if av is not None and "rpb" in getattr(getattr(qk, "__code__", None), "co_varnames", ()):
        return lambda q, k, rpb, ks: qk(q, k, ks, 1, rpb=rpb), lambda a, v, ks: av(a, v, ks, 1)
    return None


def _natten_usable(q: torch.Tensor, h: int, w: int, kernel: int) -> bool:
    if not q.is_cuda or h < kernel or w < kernel or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return _natten_kernels() is not None


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor, h: int, w: int,
                           kernel: int, backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T + bias) V over each query's clamped kernel x kernel neighbourhood (module docstring).

    q (already scaled), k, v: (B, heads, h * w, d), row-major over the h x w map; rpb: (heads, 2 kernel - 1,
    2 kernel - 1). Returns (B, heads, h * w, d). ``backend``: "torch" (gather + matmul), "natten", or "auto"
    (NATTEN where ``_natten_usable``)."""
    b, n, _, d = q.shape
    if backend not in ("auto", "torch", "natten"):
        raise ValueError(f"neighborhood_attention: backend={backend!r} is not one of 'auto', 'torch', 'natten'")
    if backend == "natten" and _natten_kernels() is None:
        raise ImportError("backend='natten' needs NATTEN with 2D kernels that take a bias table (0.14-0.17): "
                          "pip install natten (see shi-labs.com/natten), or use backend='torch'")
    if backend == "natten" or (backend == "auto" and _natten_usable(q, h, w, kernel)):
        qk, av = _natten_kernels()
        grid = (b, n, h, w, d)
        attn = qk(q.reshape(grid), k.reshape(grid), rpb, kernel).softmax(dim=-1)
        return av(attn, v.reshape(grid), kernel).reshape(b, n, h * w, d)
    ky, by = neighborhood_windows(h, kernel, q.device)
    kx, bx = neighborhood_windows(w, kernel, q.device)
    kk = ky.shape[1] * kx.shape[1]
    idx = (ky[:, None, :, None] * w + kx[None, :, None, :]).reshape(h * w, kk)  # flat key index per query
    bias = rpb[:, by[:, None, :, None], bx[None, :, None, :]].reshape(n, h * w, 1, kk)
    keys = k[:, :, idx]  # (B, heads, h * w, kk, d)
    logits = q.unsqueeze(-2) @ keys.transpose(-1, -2) + bias  # (B, heads, h * w, 1, kk)
    out = logits.softmax(dim=-1) @ v[:, :, idx]  # (B, heads, h * w, 1, d)
    return out.squeeze(-2)


class NeighborhoodAttention(nn.Module):
    """NA on (B, H, W, C): qkv projection, neighbourhood attention with relative bias, output projection."""

    def __init__(self, dim: int, heads: int, kernel: int = 7):
        super().__init__()
        self.heads, self.kernel = heads, kernel
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(trunc_normal_(torch.empty(heads, 2 * kernel - 1, 2 * kernel - 1)))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = neighborhood_attention(qkv[0] * self.scale, qkv[1], qkv[2], self.rpb, h, w, self.kernel)
        return self.proj(merge_heads(out)).view(b, h, w, c)


class NATDownsample(nn.Module):
    """NAT's ConvDownsampler: 3x3 conv of stride ``stride`` (padding 1, so ceil(H / stride)), no bias, then
    LayerNorm; (N, in, H, W) -> (N, out, ceil(H/stride), ceil(W/stride))."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 2):
        super().__init__()
        self.reduction = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.norm = LayerNorm2d(out_chs)
        init_weights(self, "torch_default")  # the official init touches no conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x))


class NATConvTokenizer(nn.Module):
    """NAT's stem: 3x3 stride-2 conv to width / 2, 3x3 stride-2 conv to width, LayerNorm (nothing between)."""

    def __init__(self, in_chs: int, width: int):
        super().__init__()
        mid = max(1, width // 2)
        self.proj = nn.Sequential(nn.Conv2d(in_chs, mid, 3, 2, 1), nn.Conv2d(mid, width, 3, 2, 1))
        self.norm = LayerNorm2d(width)
        init_weights(self, "torch_default")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class NATBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, heads: int, kernel: int, mlp_ratio: float,
                 layer_scale: float):
        super().__init__()
        self.down = NATDownsample(in_chs, out_chs, stride) if stride > 1 or in_chs != out_chs else None
        self.norm1 = nn.LayerNorm(out_chs)
        self.attn = NeighborhoodAttention(out_chs, heads, kernel)
        self.norm2 = nn.LayerNorm(out_chs)
        self.mlp = Mlp(out_chs, max(1, int(out_chs * mlp_ratio)))
        self.gamma1 = self.gamma2 = None
        if layer_scale > 0:
            self.gamma1 = nn.Parameter(torch.full((out_chs,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((out_chs,), float(layer_scale)))
        init_weights(self, "trunc_normal")  # the downsampler's conv was tagged torch_default first and keeps it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            x = self.down(x)
        x = x.permute(0, 2, 3, 1)
        y = self.attn(self.norm1(x))
        x = x + (y * self.gamma1 if self.gamma1 is not None else y)
        y = self.mlp(self.norm2(x))
        x = x + (y * self.gamma2 if self.gamma2 is not None else y)
        return x.permute(0, 3, 1, 2)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the layer scales into the attention's output projection and the MLP's last linear."""
        for gamma, linear in ((self.gamma1, self.attn.proj), (self.gamma2, self.mlp.fc2)):
            if gamma is not None:
                linear.weight.mul_(gamma[:, None])
                linear.bias.mul_(gamma)
        self.gamma1 = self.gamma2 = None


def nat(in_chs: int, out_chs: int, stride: int = 1, heads: int | None = None, head_dim: int = 32,
        kernel: int = 7, mlp_ratio: float = 3.0, layer_scale: float = 0.0) -> nn.Module:
    heads = resolve_heads("nat", out_chs, heads, head_dim, "NAT uses 32")
    check_int("nat", "kernel", kernel, 3, "NAT uses 7", odd=True)
    check_positive("nat", "mlp_ratio", mlp_ratio, "NAT-T uses 3, NAT-S/B 2")
    check_positive("nat", "layer_scale", layer_scale, "0 turns it off; NAT-S/B use 1e-5", zero_ok=True)
    return NATBlock(in_chs, out_chs, stride, heads, kernel, mlp_ratio, layer_scale)


def stem_nat(in_chs: int, width: int) -> nn.Module:
    """NAT: two 3x3 stride-2 convs, LayerNorm."""
    return NATConvTokenizer(in_chs, width)


def nat_down(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    """NAT: 3x3 conv of stride ``stride``, no bias, LayerNorm."""
    return NATDownsample(in_chs, out_chs, stride)


register_op("nat", nat, family="local", extents=("kernel",), variants=({}, {"layer_scale": 1e-5}), paper=NAT_PAPER)
register_stem("nat", stem_nat, stride=4, paper=NAT_PAPER)
register_downsampler("nat", nat_down, paper=NAT_PAPER)
