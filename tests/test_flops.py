"""FLOP counting against formulas written here, ``count_arch`` against whole networks, and budget parsing."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nas.flops
import operators
from nas.arch import Arch, HeadArch, StageArch, StemArch
from nas.flops import (
    clear_layer_cache,
    count_arch,
    count_flops,
    count_params,
    layer_cache_info,
    parse_budget,
)
from nas.network import build_uninitialized
from nas.space import list_references, list_spaces, load_reference, load_space

STORED_COUNTS = json.loads((Path(__file__).parent / "data" / "reference_counts.json").read_text())


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


# ------------------------------------------------------------------------------------------- count_arch
def _whole_network(arch: Arch, input_shape: tuple[int, ...] | None = None) -> tuple[int, int]:
    """The counts ``count_arch`` must equal: ``count_flops`` and ``count_params`` of the whole network."""
    net = build_uninitialized(arch)
    return count_flops(net, input_shape or (1, arch.in_chans, arch.input_size, arch.input_size)), count_params(net)


def _space_samples(per_space: int, start: int = 0) -> list[tuple[str, int]]:
    return [(name, seed) for name in list_spaces() for seed in range(start, per_space)]


def _tiny(*stages: tuple[str, int, int, dict], input_size: int = 64, downsample: str = "op",
          head: HeadArch | None = None) -> Arch:
    """A small Arch, fast to count: stem patch4 of width 16 (the small-image stem at <= 64 px), then
    (op, width, depth, params) stages of stride 2."""
    return Arch(StemArch("patch4", 16),
                tuple(StageArch(op, width, depth, 2, tuple(sorted(params.items())), downsample)
                      for op, width, depth, params in stages),
                head or HeadArch("norm_pool_linear"), num_classes=10, input_size=input_size)


def _cached_blocks(op: str) -> int:
    """How many cached layers ``op``'s factory built."""
    return sum(1 for key in nas.flops._layer_cache if key[0] is operators.get_spec(op).factory)


@pytest.fixture
def one_thread():
    """Counting traces small layers: on 2 cores that other jobs share, one thread is 2-3x faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def empty_cache():
    clear_layer_cache()
    yield
    clear_layer_cache()


@pytest.mark.parametrize("name", list_references())
def test_count_arch_equals_the_stored_whole_network_counts_of_references(name, one_thread):
    # tests/test_references.py holds the stored counts equal to those of the whole network (and the slow
    # test below compares directly)
    stored = STORED_COUNTS[name]
    assert count_arch(load_reference(name)) == (stored["flops"], stored["params"])


@pytest.mark.parametrize("space_name,seed", _space_samples(4))
def test_count_arch_equals_the_whole_network_on_space_samples(space_name, seed, one_thread):
    arch = load_space(space_name).random(seed)
    assert count_arch(arch) == _whole_network(arch)


# four stems and downsamplers by default (ResNet's, Swin's, NAT's, LeViT's stride-16 one); the rest with -m slow
QUICK_REFERENCES = ("resnet50", "swin_t", "nat_t", "levit_384")


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in QUICK_REFERENCES else (pytest.mark.slow,))
                                  for n in list_references()])
def test_count_arch_equals_the_whole_network_on_references(name, one_thread):
    arch = load_reference(name)
    assert count_arch(arch) == _whole_network(arch)


@pytest.mark.slow
@pytest.mark.parametrize("space_name,seed", _space_samples(60, start=4))
def test_count_arch_equals_the_whole_network_on_more_space_samples(space_name, seed, one_thread):
    arch = load_space(space_name).random(seed)
    assert count_arch(arch) == _whole_network(arch)


@pytest.mark.parametrize("input_shape", [(2, 3, 80, 80), (1, 3, 72, 104)])
def test_count_arch_takes_the_input_shape_of_count_flops(input_shape):
    # a batch of 2; swin pads its 5x5 and 5x7 maps to the window and shifts in its second block; conv
    # downsamplers; a head with a pre-logits layer
    arch = _tiny(("swin", 32, 2, {}), ("resnet_bottleneck", 64, 2, {"expansion": 4}), input_size=96,
                 downsample="conv", head=HeadArch("pool_norm_linear", hidden=24))
    assert count_arch(arch, input_shape) == _whole_network(arch, input_shape)


def test_a_second_count_of_the_same_arch_is_served_from_the_cache(empty_cache):
    arch = _tiny(("convnext", 32, 3, {}), ("transformer", 64, 2, {}))
    first = count_arch(arch)
    before = layer_cache_info()
    assert before.misses == before.size == 1 + 2 + 2 + 1  # the stem, two distinct blocks per stage, the head
    assert count_arch(arch) == first
    after = layer_cache_info()
    assert (after.misses, after.size) == (before.misses, before.size)
    assert after.hits == before.hits + 1 + 3 + 2 + 1  # every layer: the stem, the blocks, the head


def test_stages_that_differ_only_in_depth_share_their_block_counts(empty_cache):
    # swin alternates shift: block 0 (stride 2, widening), then shift True, False, True, ...: three distinct
    # blocks at any depth >= 3; convnext two (block 0, then the rest)
    count_arch(_tiny(("swin", 32, 6, {}), ("convnext", 64, 5, {})))
    assert (_cached_blocks("swin"), _cached_blocks("convnext")) == (3, 2)
    assert layer_cache_info().size == 1 + 3 + 2 + 1  # with the stem and the head
    misses = layer_cache_info().misses
    for swin_depth, convnext_depth in ((3, 2), (4, 1), (2, 3)):
        shallower = _tiny(("swin", 32, swin_depth, {}), ("convnext", 64, convnext_depth, {}))
        assert count_arch(shallower) == _whole_network(shallower)
    assert layer_cache_info().misses == misses  # every block of the shallower stages was counted already


def test_the_layer_cache_is_bounded(empty_cache, monkeypatch):
    monkeypatch.setattr(nas.flops, "LAYER_CACHE_SIZE", 3)
    arch = _tiny(("resnet_bottleneck", 32, 3, {"expansion": 1}), ("mbconv", 48, 2, {}))  # 6 distinct layers
    expected = _whole_network(arch)
    for _ in range(2):  # the second time, the evicted layers are counted again, to the same totals
        assert count_arch(arch) == expected
        assert layer_cache_info()[2:] == (3, 3)
    assert layer_cache_info().misses == 2 * 6


def test_count_arch_reports_uncounted_ops_once_per_call(empty_cache, monkeypatch):
    # make additions uncounted: each convnext block's residual add then goes missing
    monkeypatch.setattr(nas.flops, "ZERO_OPS", tuple(op for op in nas.flops.ZERO_OPS if op != "aten::add"))
    arch = _tiny(("convnext", 32, 3, {}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = _whole_network(arch)
    [whole] = [str(w.message) for w in caught if "not counted" in str(w.message)]
    for _ in range(2):  # the second call is served from the cache and warns the same
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert count_arch(arch) == expected
        messages = [str(w.message) for w in caught if "not counted" in str(w.message)]
        assert len(messages) == 1 and "aten::add x" in messages[0]
        assert messages[0].split(": ", 1)[1] == whole.split(": ", 1)[1]  # the same ops, the same numbers
