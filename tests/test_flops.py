"""FLOP counting against formulas written here, and budget parsing."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import operators
from nas.flops import count_flops, count_params, parse_budget


@pytest.mark.parametrize("cin,cout,k,stride,h,w", [(3, 8, 3, 1, 32, 32), (16, 32, 3, 2, 15, 9), (8, 8, 1, 2, 7, 7),
                                                   (4, 6, 7, 2, 56, 56)])
def test_conv_counts_one_flop_per_multiply_add(cin, cout, k, stride, h, w):
    conv = nn.Conv2d(cin, cout, k, stride, k // 2)
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    assert count_flops(conv, (1, cin, h, w)) == ho * wo * cout * cin * k * k
    assert count_flops(conv, (4, cin, h, w)) == 4 * ho * wo * cout * cin * k * k


def test_repvgg_deploy_form_is_one_3x3_conv():
    block = operators.create_op("repvgg", 32, 32)
    h = w = 14
    assert count_flops(block, (1, 32, h, w)) == h * w * 32 * 32 * 9
    # the training form adds the 1x1 branch and three BatchNorms (fvcore: 2 per element in eval mode)
    train = h * w * 32 * 32 * (9 + 1) + 3 * 2 * h * w * 32
    assert count_flops(block, (1, 32, h, w), deploy=False) == train


def test_bottleneck_deploy_counts_its_three_convs():
    c, m, h, w = 256, 64, 14, 14
    block = operators.create_op("resnet_bottleneck", c, c)
    assert count_flops(block, (1, c, h, w)) == h * w * (c * m + m * m * 9 + m * c)


class _SDPA(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("b,heads,nq,nk,d,dv", [(1, 4, 49, 49, 32, 32), (2, 3, 10, 20, 8, 16)])
def test_scaled_dot_product_attention_is_counted(b, heads, nq, nk, d, dv):
    from nas.flops import flop_analysis

    q, k, v = torch.randn(b, heads, nq, d), torch.randn(b, heads, nk, d), torch.randn(b, heads, nk, dv)
    flops = flop_analysis(_SDPA(), (q, k, v)).total()
    assert flops == b * heads * nq * nk * (d + dv)  # q k^T, then attention x V


def _transformer_flops(c: int, n: int) -> int:
    """Pre-norm transformer block, C channels, N tokens, MLP ratio 4 (fvcore: LayerNorm = 5 per element)."""
    norms = 2 * 5 * n * c
    projections = n * c * 3 * c + n * c * c  # qkv, output projection
    attention = 2 * n * n * c  # q k^T and attention x V over all heads (heads x head_dim = C)
    mlp = 2 * n * c * 4 * c
    return norms + projections + attention + mlp


def test_global_attention_block_grows_quadratically_with_tokens():
    c = 64
    block = operators.create_op("transformer", c, c)
    counts = {}
    for side in (4, 7, 14):
        n = side * side
        counts[n] = count_flops(block, (1, c, side, side))
        assert counts[n] == _transformer_flops(c, n)
    # flops / N is linear in N with slope 2C: the attention term 2 N^2 C is quadratic in the tokens
    slopes = [(counts[b] / b - counts[a] / a) / (b - a) for a, b in ((16, 49), (49, 196))]
    assert slopes == pytest.approx([2 * c, 2 * c])


def test_counting_leaves_the_model_in_training_form():
    block = operators.create_op("repvgg", 8, 8)
    before = sum(1 for _ in block.modules())
    count_flops(block, (1, 8, 8, 8))
    count_params(block)
    assert sum(1 for _ in block.modules()) == before and block.training


def test_params_of_deploy_form():
    block = operators.create_op("repvgg", 8, 16)
    assert count_params(block) == 16 * 8 * 9 + 16  # one 3x3 conv with bias
    assert count_params(block, deploy=False) == sum(p.numel() for p in block.parameters())


class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return self.conv(x).cumsum(-1).cumsum(-2)


def test_an_uncounted_op_is_reported_once_per_call():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flops = count_flops(_Cumsum(), (1, 2, 4, 4))
    messages = [str(w.message) for w in caught if "not counted" in str(w.message)]
    assert len(messages) == 1 and "aten::cumsum x2" in messages[0]
    assert flops == 4 * 4 * 2 * 2


@pytest.mark.parametrize("text,expected", [
    ("4.5GFLOPs", 4_500_000_000), ("4.5G", 4_500_000_000), ("4500MFLOPs", 4_500_000_000),
    ("600M", 600_000_000), ("4.5e9", 4_500_000_000), ("4.5 gflops", 4_500_000_000), (" 600 m ", 600_000_000),
    ("1.2T", 1_200_000_000_000), ("750kflop", 750_000), ("2e3M", 2_000_000_000), ("100", 100),
])
def test_parse_budget_accepts(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "0", "0G", "-4.5G", "nan", "inf", "4.5X", "4.5 GB", "G", "4.5GG",
                                  "1e400", "four"])
def test_parse_budget_rejects_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"4\.5GFLOPs, 4\.5G, 4500MFLOPs, 600M or 4\.5e9"):
        parse_budget(text)
