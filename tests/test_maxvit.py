"""MaxViT: which pixels share a block window and a grid window (the classic mix-up), the windowed attention
against a dense masked reference built with loops, the MBConv's strided depthwise conv and its shortcut, and
one block's parameter count from its formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import operators
from operators._attention import RelPosBias, window_partition
from operators.maxvit import PartitionAttention, grid_partition, partition_attention


def coordinate_map(h: int, w: int) -> torch.Tensor:
    """(1, h, w, 2) whose value at (i, j) is (i, j)."""
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([ii, jj], dim=-1)[None].float()


def windows_as_sets(windows: torch.Tensor) -> list[set[tuple[int, int]]]:
    return [{(int(i), int(j)) for i, j in win.tolist()} for win in windows]


def test_block_and_grid_partitions_of_a_14x14_map():
    # P = G = 7 on 14 x 14: block windows are 7 x 7 adjacent pixels; grid windows hold pixels H/G = 2 apart.
    x = coordinate_map(14, 14)
    block = windows_as_sets(window_partition(x, 7, 7))
    grid = windows_as_sets(grid_partition(x, 7, 7))
    assert len(block) == len(grid) == 4 and all(len(s) == 49 for s in block + grid)
    want_block = [{(7 * a + i, 7 * b + j) for i in range(7) for j in range(7)} for a in range(2) for b in range(2)]
    want_grid = [{(r + 2 * i, c + 2 * j) for i in range(7) for j in range(7)} for r in range(2) for c in range(2)]
    assert block == want_block
    assert grid == want_grid
    # (i, j) shares its grid window with (i + H/G, j) and (i, j + W/G), never with its neighbour (i + 1, j).
    home = next(s for s in grid if (3, 5) in s)
    assert {(5, 5), (3, 7), (13, 13), (1, 1)} <= home and not {(4, 5), (3, 6)} & home
    home = next(s for s in block if (3, 5) in s)
    assert {(4, 5), (3, 6), (0, 0)} <= home and (5, 7) not in home


def test_grid_partition_of_a_non_square_map():
    # 6 x 12 with a 3 x 4 grid: cells of 2 x 3 pixels, window (cy, cx) = pixels (2 gy + cy, 3 gx + cx).
    windows = windows_as_sets(grid_partition(coordinate_map(6, 12), 3, 4))
    want = [{(2 * gy + cy, 3 * gx + cx) for gy in range(3) for gx in range(4)} for cy in range(2) for cx in range(3)]
    assert windows == want


def _who_attends_whom(h: int, w: int, size: int, grid: bool) -> torch.Tensor:
    """(h w, h w) attention weights of each pixel over every pixel with q = 0 and a zero bias table: uniform over
    the real keys its window holds. The values are one-hot pixel indices, so the output row is the weights."""
    rel = RelPosBias(1, size)
    with torch.no_grad():
        rel.table.zero_()
        n = h * w
        v = torch.eye(n).view(1, h, w, n)
        out = partition_attention(torch.zeros(1, h, w, n), torch.randn(1, h, w, n), v, 1, size, rel, grid)
    return out.reshape(n, n)


@pytest.mark.parametrize("h,w", [(14, 14), (10, 12), (5, 12)])
@pytest.mark.parametrize("grid", [False, True], ids=["block", "grid"])
def test_padded_maps_group_the_right_pixels_and_mask_the_padding(h, w, grid):
    size = 7
    weights = _who_attends_whom(h, w, size, grid)
    sh, sw = min(size, h), min(size, w)  # a map smaller than the window shrinks it
    hp, wp = math.ceil(h / sh) * sh, math.ceil(w / sw) * sw
    step_h, step_w = hp // sh, wp // sw  # the grid's stride: pixels this far apart share a grid window

    def window_of(i: int, j: int) -> tuple[int, int]:
        return (i % step_h, j % step_w) if grid else (i // sh, j // sw)

    pixels = list(itertools.product(range(h), range(w)))
    for p, (i, j) in enumerate(pixels):
        mates = [q for q, (a, b) in enumerate(pixels) if window_of(a, b) == window_of(i, j)]
        want = torch.zeros(h * w)
        want[mates] = 1.0 / len(mates)  # every real key of the window, equally; the padded ones not at all
        torch.testing.assert_close(weights[p], want, rtol=0, atol=1e-6)
    if (h, w) == (10, 12) and grid:  # rows 10..13 are padding: stride 2, so a grid window has 5 x 6 pixels
        assert (weights[0] > 0).sum() == 30 and weights[0, 2 * w + 2] > 0 and weights[0, w + 1] == 0


def dense_reference(attn: PartitionAttention, x: torch.Tensor) -> torch.Tensor:
    """The same attention over all h w tokens at once: pairs in different windows masked, the bias looked up
    pair by pair from the table by the offset of the tokens' positions inside their window."""
    _, h, w, c = x.shape
    heads, size, d = attn.heads, attn.size, c // attn.heads
    sh, sw = min(size, h), min(size, w)
    step_h, step_w = math.ceil(h / sh), math.ceil(w / sw)
    pixels = list(itertools.product(range(h), range(w)))

    def window_and_position(i: int, j: int):
        if attn.grid:
            return (i % step_h, j % step_w), (i // step_h, j // step_w)
        return (i // sh, j // sw), (i % sh, j % sw)

    n = h * w
    bias = torch.full((heads, n, n), float("-inf"))
    for p, q in itertools.product(range(n), range(n)):
        (wp, (yp, xp)), (wq, (yq, xq)) = window_and_position(*pixels[p]), window_and_position(*pixels[q])
        if wp == wq:
            row = (yp - yq + size - 1) * (2 * size - 1) + (xp - xq + size - 1)
            bias[:, p, q] = attn.rel.table[row]
    qkv = attn.qkv(x.reshape(1, n, c))
    q, k, v = (t.reshape(n, heads, d).transpose(0, 1) for t in qkv.chunk(3, dim=-1))
    probs = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5 + bias, dim=-1)
    out = (probs @ v).transpose(0, 1).reshape(1, h, w, c)
    return attn.proj(out)


@pytest.mark.parametrize("h,w", [(6, 6), (5, 7), (2, 4)])
@pytest.mark.parametrize("grid", [False, True], ids=["block", "grid"])
def test_attention_matches_a_dense_masked_reference(h, w, grid):
    torch.manual_seed(0)
    attn = PartitionAttention(8, heads=2, size=3, grid=grid)
    with torch.no_grad():
        attn.rel.table.normal_()  # a bias big enough to matter
        x = torch.randn(1, h, w, 8)
        torch.testing.assert_close(attn(x), dense_reference(attn, x), rtol=1e-5, atol=1e-5)


def test_the_depthwise_conv_carries_the_stride_and_the_shortcut_pools_then_projects():
    torch.manual_seed(0)
    op = operators.create_op("maxvit", 8, 16, 2).eval()
    mb = op.conv
    assert mb.dw.conv.stride == (2, 2) and mb.dw.conv.groups == mb.dw.conv.in_channels == 64
    assert mb.expand.conv.stride == (1, 1) and mb.project.stride == (1, 1)
    shapes = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:
            shapes[name] = tuple(output.shape)
        return hook

    mb.expand.register_forward_hook(record("expand"))
    mb.dw.register_forward_hook(record("dw"))
    x = torch.randn(2, 8, 9, 10)
    with torch.no_grad():
        mb(x)
        assert shapes == {"expand": (2, 64, 9, 10), "dw": (2, 64, 5, 5)}  # full resolution until the dw conv
        # With the residual branch silenced the unit is its shortcut: 2x2 average pooling (ceil), then 1x1.
        mb.project.weight.zero_()
        mb.project.bias.zero_()
        proj = mb.shortcut[1]
        want = F.conv2d(F.avg_pool2d(x, 2, 2, ceil_mode=True), proj.weight, proj.bias)
        torch.testing.assert_close(mb(x), want)
    # Same width at stride 2 (MaxViT-T's first stage): the shortcut only pools.
    same = operators.create_op("maxvit", 16, 16, 2).conv.shortcut
    assert not any(isinstance(m, torch.nn.Conv2d) for m in same.modules())


def test_one_block_has_the_parameters_of_its_formula():
    c, p, heads = 64, 7, 2  # head dim 32
    mid, rd = 4 * c, c // 4  # expansion 4 of the output width; SE reduction to 0.25 x the output width
    mbconv = (2 * c + c * mid + 2 * mid + 9 * mid + 2 * mid + (mid * rd + rd) + (rd * mid + mid)
              + (mid * c + c))
    layer = 2 * c + (c * 3 * c + 3 * c) + (2 * p - 1) ** 2 * heads + (c * c + c) + 2 * c + (c * 4 * c + 4 * c) \
        + (4 * c * c + c)
    op = operators.create_op("maxvit", c, c)
    assert op.block_attn.attn.heads == op.grid_attn.attn.heads == heads
    assert sum(t.numel() for t in op.parameters()) == mbconv + 2 * layer


def test_bad_keywords_are_refused():
    for kw, match in [({"window": 0}, "window=0"), ({"grid": 0}, "grid=0"), ({"kernel_size": 4}, "odd"),
                      ({"se_ratio": 1.5}, "se_ratio"), ({"heads": 5}, "divisor of 64")]:
        with pytest.raises(ValueError, match=match):
            operators.create_op("maxvit", 64, 64, **kw)
