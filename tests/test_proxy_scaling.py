"""One rule for every proxy's maps: each stage runs at half its target's output stride, whatever the stem.

A stage at output stride R at the target (the stem's registered stride times the stage strides so far) has a
map of ceil(T / R) at the target's T px and of ceil(2 P / R) at the proxy's P px: LeViT's stride-16 stem
included, whose proxy used to keep the target's own 14x14 map (issue 18). The maps are measured on the built
proxy (a forward pass), not taken from ``stage_maps``, which must agree.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import operators
from nas.network import build
from nas.proxy import stage_maps
from nas.space import list_references, load_reference, load_space

SIZES = (28, 32, 33)  # the proxies' inputs: Fashion-MNIST, CIFAR, and an odd side (strided layers round up)


def target_strides(arch) -> list[int]:
    """Each stage's output stride at the target: the Arch's own stem's stride times the stage strides."""
    total, out = operators.get_stem(arch.stem.type).stride, []
    for stage in arch.stages:
        total *= stage.stride
        out.append(total)
    return out


def measured_maps(arch, sizes=SIZES) -> dict[int, list[int]]:
    """Per input side, the side of each stage's output in the proxy (width 0.25, 10 classes): one build,
    since every side here is <= 64 px and gets the same small-image stem."""
    torch.manual_seed(0)
    net = build(arch, width_mult=0.25, num_classes=10, input_size=min(sizes)).eval()
    maps = {}
    with torch.no_grad():
        for size in sizes:
            x, maps[size] = net.stem(torch.randn(1, 3, size, size)), []
            for stage in net.stages:
                x = stage(x)
                maps[size].append(x.shape[-1])
    return maps


def check_the_rule(arch, name: str) -> None:
    strides = target_strides(arch)
    assert stage_maps(arch, arch.input_size) == [math.ceil(arch.input_size / r) for r in strides], name
    measured = measured_maps(arch)
    for size in SIZES:
        expected = [math.ceil(2 * size / r) for r in strides]
        assert measured[size] == expected, f"{name} at {size} px"
        assert stage_maps(arch, size) == expected, f"{name} at {size} px"


@pytest.mark.parametrize("name", list_references())
def test_every_reference_proxy_stage_runs_at_half_its_target_stride(name):
    check_the_rule(load_reference(name), name)


def test_default_space_samples_follow_the_same_rule():
    space = load_space("hybrid")  # loading it takes most of this test's time: one load for all samples
    rng = random.Random(18)
    for i in range(6):
        check_the_rule(space.random(rng), f"hybrid sample {i}")


def test_levit_proxy_is_as_small_against_its_target_as_resnets():
    """LeViT's first stage (stride 16) and ResNet-50's third (stride 16) have the same map at the target and
    at the proxy: the stem no longer decides how much of the target's map a proxy keeps."""
    levit, resnet = load_reference("levit_384"), load_reference("resnet50")
    assert target_strides(levit)[0] == target_strides(resnet)[2] == 16
    levit_maps, resnet_maps = measured_maps(levit), measured_maps(resnet)
    for size in SIZES:
        assert levit_maps[size][0] == resnet_maps[size][2] == math.ceil(2 * size / 16)


@pytest.mark.parametrize("kind,stride", [("small4", 4), ("small8", 8)])
def test_the_small_stems_that_halve_repeatedly(kind, stride):
    """small4 / small8 map any side H to ceil(H / stride), as the 3x3 stride-2 convs they chain do."""
    stem = operators.get_stem(kind)
    assert stem.stride == stride
    net = stem.factory(3, 16)
    for side in (1, 7, 28, 33):
        assert net(torch.randn(2, 3, side, side)).shape == (2, 16, math.ceil(side / stride), math.ceil(side / stride))
