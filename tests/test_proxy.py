"""nas.proxy: settings, windows scaled to the proxy's maps, and trials that depend on (arch, seed, settings) only."""

from __future__ import annotations

import math
import random

import pytest
import torch

import operators
from nas.data import resize_data
from nas.proxy import ProxySettings, build_proxy, proxy_arch, stage_maps, train_arch
from nas.space import list_references, load_reference, load_space
from search_helpers import write_tiny_fashion


def _extent_stages(arch):
    for i, stage in enumerate(arch.stages):
        for name in operators.get_spec(stage.op).extents:
            yield i, name


def _extent(stage, name):
    import inspect

    default = inspect.signature(operators.get_spec(stage.op).factory).parameters[name].default
    return stage.kwargs.get(name, default)


def _archs_with_windows():
    space = load_space("hybrid")
    rng = random.Random(0)
    archs = [load_reference(n) for n in list_references()]
    archs += [space.random(rng) for _ in range(200)]
    return [a for a in archs if any(True for _ in _extent_stages(a))]


@pytest.mark.parametrize("size", [28, 32, 56])
def test_local_operators_stay_local_at_the_proxy(size):
    """Wherever a window sees less than the whole map at the target, it does at the proxy, and where it sees the
    whole map at the target, it does at the proxy."""
    archs = _archs_with_windows()
    assert len(archs) > 20
    for arch in archs:
        target, proxy = stage_maps(arch, arch.input_size), stage_maps(arch, size)
        scaled = proxy_arch(arch, size)
        for i, name in _extent_stages(arch):
            e_t, e_p = _extent(arch.stages[i], name), _extent(scaled.stages[i], name)
            assert e_p <= e_t and e_p >= 2 and (e_p % 2 == 1 or e_t % 2 == 0)  # an odd extent stays odd
            if e_t < target[i] and proxy[i] > 3:
                assert e_p < proxy[i], (arch.stages[i], target[i], proxy[i], e_p)
            if e_t >= target[i]:
                assert e_p >= proxy[i], (arch.stages[i], target[i], proxy[i], e_p)


def test_stage_maps_follow_the_strides():
    arch = load_reference("swin_t")
    assert stage_maps(arch, 224) == [56, 28, 14, 7]  # patch4 stem, then 2x per stage
    assert stage_maps(arch, 28) == [14, 7, 4, 2]  # the small-image stem strides 2; strided layers round up
    assert stage_maps(arch, 33) == [math.ceil(33 / 2), 9, 5, 3]


def test_without_window_scaling_the_proxy_keeps_the_arch():
    data = _data()
    arch = load_reference("swin_t")
    a = build_proxy(arch, data, ProxySettings(scale_windows=False), seed=0)
    b = build_proxy(arch, data, ProxySettings(scale_windows=True), seed=0)
    assert a.stages[0][0].mixer.window == 7 and b.stages[0][0].mixer.window == 3


@pytest.mark.parametrize("data,needle", [
    ({"epochs": 0}, "epochs=0"),
    ({"grace_period": 1}, "warm-up"),
    ({"max_train": "all"}, "max_train"),
    ({"width": 0.5}, "unknown knob(s) width"),
    ({"lr": True}, "lr"),
    ([1, 2], "mapping"),
])
def test_bad_settings_are_one_line(data, needle):
    with pytest.raises(ValueError, match=None) as info:
        ProxySettings.from_mapping(data, "settings.short")
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("settings.short")


def test_a_knob_left_out_takes_the_default():
    s = ProxySettings.from_mapping({"max_train": None, "epochs": 12, "width_mult": 1})
    assert s == ProxySettings(max_train=None, epochs=12, width_mult=1.0)
    assert s.image_epochs(5000) == 12 * 5000 and ProxySettings().image_epochs(5000) == 4 * 1536


def _data(size=None):
    import tempfile
    from pathlib import Path

    from nas.data import load_dataset

    folder = write_tiny_fashion(Path(tempfile.mkdtemp()) / "data", n=200)
    return resize_data(load_dataset("fashion-mnist", folder, seed=0), size)


def test_resize_data_changes_only_the_resolution():
    data = _data()
    big = resize_data(data, 40)
    assert big.train_x.shape[1:] == (1, 40, 40) and big.train_x.dtype == torch.uint8
    assert torch.equal(big.train_y, data.train_y) and len(big.val_x) == len(data.val_x)
    assert abs(big.train_x.float().mean() - data.train_x.float().mean()) < 2  # same images, same brightness


def test_a_trial_depends_on_arch_seed_and_settings_only():
    """The same (arch, seed, settings) twice gives identical accuracies, whatever the global RNG did in between;
    another seed gives other initial weights."""
    data = _data()
    arch = load_space("hybrid").random(3)
    settings = ProxySettings(max_train=64, epochs=2, batch_size=32)
    threads = torch.get_num_threads()
    try:
        first = train_arch(arch, data, settings, seed=5, threads=1).accuracies
        torch.manual_seed(1234)
        torch.rand(100)
        second = train_arch(arch, data, settings, seed=5, threads=1).accuracies
    finally:
        torch.set_num_threads(threads)
    assert first == second
    w5 = build_proxy(arch, data, settings, seed=5).state_dict()
    w6 = build_proxy(arch, data, settings, seed=6).state_dict()
    assert any(not torch.equal(w5[k], w6[k]) for k in w5 if w5[k].is_floating_point())


def test_data_at_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="resize_data"):
        train_arch(load_reference("resnet50"), _data(), ProxySettings(image_size=32, max_train=8, epochs=1))
