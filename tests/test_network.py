"""The builder: full-size networks and proxies from the same Arch."""

from __future__ import annotations

import json
import random

import pytest
import torch

import operators
from nas.arch import Arch, HeadArch, StageArch, StemArch
from nas.flops import count_flops
from nas.network import build, build_uninitialized, scale_width
from nas.space import load_space


@pytest.mark.parametrize("seed", [0, 1, 2, pytest.param(3, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow),
                                  pytest.param(5, marks=pytest.mark.slow)])
def test_random_samples_build_run_as_proxies_and_count_at_full_size(seed):
    space = load_space("hybrid")
    arch = space.random(random.Random(seed))
    proxy = build(arch, width_mult=0.25, in_chans=1, num_classes=10, input_size=28)
    out = proxy(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert proxy.stem.conv.stride == (2, 2) and proxy.stem.conv.kernel_size == (3, 3)  # small-image stem
    flops = count_flops(build_uninitialized(arch))
    assert 1e7 < flops < 1e11
    # the proxy is the same Arch: same ops, depths and strides, narrower
    for stage, blocks in zip(arch.stages, proxy.stages):
        assert len(blocks) == stage.depth


def test_full_size_network_at_the_target_input():
    arch = load_space("hybrid").random(3)
    net = build(arch).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_proxy_widths_keep_fixed_heads_dividing():
    arch = Arch(StemArch("patch4", 96), (
        StageArch("swin", 96, 2, 1, (("heads", 3),)),
        StageArch("transformer", 192, 1, 2, (("heads", 6),)),
        StageArch("bot", 512, 1, 2, (("heads", 4),)),
    ))
    proxy = build(arch, width_mult=0.25, num_classes=10, input_size=32)
    widths = [blocks[0].mlp.fc2.out_features for blocks in proxy.stages[:2]]
    assert widths[0] % 3 == 0 and widths[1] % 6 == 0 and all(w % 8 == 0 for w in widths)
    assert proxy(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("width,mult,op,params,expected", [
    (96, 0.25, "swin", {"heads": 3}, 24),
    (96, 0.25, None, None, 24),
    (100, 0.5, None, None, 48),
    (192, 0.25, "transformer", {"heads": 6}, 48),
    (40, 0.1, None, None, 8),
    (64, 1.0, "swin", {"heads": 5}, 64),  # width_mult 1 never changes a width
])
def test_scale_width(width, mult, op, params, expected):
    assert scale_width(width, mult, op, params) == expected


def test_state_dict_keys_are_stable_across_builds():
    arch = load_space("hybrid").random(5)
    a, b = build(arch), build(arch)
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict())
    assert all(k.split(".")[0] in ("stem", "stages", "head") for k in a.state_dict())


@pytest.mark.parametrize("downsample", ["conv", "patch"])
def test_separate_downsampling_layers(downsample):
    arch = Arch(StemArch("patch4", 32), (StageArch("convnext", 32, 1, 1),
                                          StageArch("swin", 64, 2, 2, downsample=downsample)))
    net = build(arch)
    first = net.stages[1][0]
    assert not isinstance(first, type(operators.create_op("swin", 8, 8)))
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    # the swin blocks after it run at stride 1 on the stage width, alternating the shift
    assert [blk.mixer.shift for blk in net.stages[1][1:]] == [False, True]


def test_heads_and_stems_of_the_vocabulary():
    for stem in ("conv7_pool", "patch4", "conv3x2", "repvgg"):
        for head in ("pool_linear", "norm_pool_linear", "pool_norm_linear"):
            arch = Arch(StemArch(stem, 16), (StageArch("resnet_basic", 16, 1, 2),), HeadArch(head, 8),
                        num_classes=7, input_size=96)
            assert build(arch)(torch.randn(2, 3, 96, 96)).shape == (2, 7)


def test_bad_width_mult_is_refused():
    with pytest.raises(ValueError, match="width_mult"):
        build(load_space("hybrid").random(0), width_mult=0)


def test_an_arch_an_operator_refuses_is_a_one_line_arch_error(tmp_path, capsys):
    """An operator's own ValueError (heads that do not divide the width) becomes the arch's error, naming the
    stage, so that every command shows it as one line (exit 2) instead of a traceback."""
    from nas.arch import ArchError
    from nas.flops import main as flops_main
    from nas.network import build_error

    data = {"stem": {"type": "patch4", "width": 96},
            "stages": [{"op": "convnext", "width": 96, "depth": 1, "stride": 1},
                       {"op": "swin", "width": 96, "depth": 2, "stride": 2, "params": {"heads": 5}}]}
    assert build_error("swin", 96, {"heads": 5}) is not None and build_error("swin", 96, {"heads": 3}) is None
    with pytest.raises(ArchError, match=r"stages\[1\] \(swin x2, width 96\): cannot be built: .*heads=5"):
        build(Arch.from_dict(data))
    (tmp_path / "bad.yaml").write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_:
        flops_main([str(tmp_path / "bad.yaml")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "stages[1]" in err and "Traceback" not in err
