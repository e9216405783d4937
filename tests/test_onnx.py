"""ONNX: every operator of the catalog, in deploy form, converts with ``nas.export``'s own ``torch.onnx.export``
call (dynamic batch dimension) and gives PyTorch's outputs in ONNX Runtime, at the shapes a search produces; the
failing pick of a default search exports through ``nas.export._export_programs``; and ``PatchDown`` at strides
other than 2. By default each operator's default variant runs at the ragged shape; every variant, and the tiled
shape, run under ``-m slow``.

Shapes: the attention and hybrid operators run at widths 96 and 160, 3 and 5 heads (head dim 32), and their
bottleneck mixers at 24 and 40 channels (3 and 5 heads in attention_augmented); the convolutions at 16 to 48
channels. "tiled" runs 7x7 windows on a 14x14 map (4 windows), then stride 2 onto a 7x7 map (one window); "ragged"
runs an 11x11 map (padded to 14x14, 4 windows, the padding masked) with a width change at stride 1, then stride 2
on the odd map onto 6x6 (smaller than the window, which shrinks to it; 4x4 windows of Swin's window-4 variant pad
11 to 12 and 6 to 8). The failing pick has 10 heads and 16 windows (width 320 at 28x28). ``-m slow`` (and only an
explicit ``-m`` with "slow": the sweep is minutes long) runs a sweep of single blocks at more sizes (10x10, 12x12,
13x13 at stride 2, ...).
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import operators
from nas.arch import Arch
from nas.export import _export_programs, _onnx_export, _onnx_run, _randomize_bn, onnx_available
from nas.network import build
from operators.convnext import PatchDown

MISSING = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(bool(MISSING) or not onnx_available(),
                                reason=f"{', '.join(MISSING) or 'onnx'} not importable: pip install 'opmix[export]'")
RTOL = ATOL = 1e-4  # nas.export's check of deploy/model.onnx

# (case name, input side, blocks as (stride, in_chs, out_chs))
ATTENTION_WIDTHS = {
    "tiled": (14, [(1, 96, 96), (2, 96, 160)]),
    "ragged": (11, [(1, 64, 96), (2, 96, 160)]),
}
CONV_WIDTHS = {"ragged": (11, [(1, 16, 32), (2, 32, 48)])}


def _windowed(name: str, kw: dict) -> bool:
    """Whether the block attends inside windows (the tiled case is about them): Swin, ACmix's window layout."""
    spec = operators.get_spec(name)
    params = inspect.signature(spec.factory).parameters
    layout = kw.get("layout", params["layout"].default if "layout" in params else "window")
    return "window" in spec.extents and layout == "window"


def _cases() -> list:
    """Every operator's default at the ragged shape; the tiled shape (windowed operators) and the other
    variants are part of the ``slow`` sweep (``-m slow``), which also runs them at seven more shapes. Swin's
    tiled windows are the failing pick's below."""
    cases = []
    for name in operators.list_ops():
        for i, kw in enumerate(operators.get_spec(name).variants):
            shapes = ["ragged", "tiled"] if _windowed(name, kw) else ["ragged"]
            cases += [pytest.param(name, kw, shape, marks=(pytest.mark.slow,) if i or shape == "tiled" else (),
                                   id=_case_id(name, kw, shape)) for shape in shapes]
    return cases


def _case_id(name: str, kw: dict, shape: str) -> str:
    return "-".join([name, *(f"{k}={v}" for k, v in kw.items()), shape])


CASES = _cases()


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, and noise on every parameter that starts constant
    (zero biases, a 1e-6 layer scale, ACmix's rates, zero-initialized last BNs), so that no branch of the block
    is the identity or zero when the deploy form is compared."""
    _randomize_bn(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():
        if p.numel() and bool(p.min() == p.max()):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _deploy_chain(name: str, kw: dict, blocks: list[tuple[int, int, int]]) -> nn.Module:
    chain = nn.Sequential(*(operators.create_op(name, cin, cout, stride, **kw) for stride, cin, cout in blocks))
    return operators.reparameterize_model(_perturb(chain).eval())


def _onnx_matches(model: nn.Module, example: torch.Tensor, path: Path, batches: tuple[int, ...] = (3,)) -> float:
    """Export ``model`` with a dynamic batch (``nas.export``'s call) and compare ONNX Runtime with PyTorch at the
    example and at other batch sizes; returns the largest difference."""
    _onnx_export(model, example, path, dynamic=True)
    worst = 0.0
    gen = torch.Generator().manual_seed(2)
    for x in [example, *(torch.randn((b, *example.shape[1:]), generator=gen) for b in batches)]:
        with torch.no_grad():
            want = model(x)
        got = _onnx_run(path, x)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
        worst = max(worst, (got - want).abs().max().item())
    return worst


@needs_onnx
@pytest.mark.parametrize("name,kw,shape", CASES)
def test_operator_converts_to_onnx_and_matches(name, kw, shape, tmp_path):
    widths = ATTENTION_WIDTHS if operators.get_spec(name).family != "conv" else CONV_WIDTHS
    side, blocks = widths[shape]
    model = _deploy_chain(name, kw, blocks)
    example = torch.randn(2, blocks[0][1], side, side)
    _onnx_matches(model, example, tmp_path / "block.onnx")


# The pick of a default search whose export failed in Swin's window attention (10 heads, 16 windows, dynamic batch).
FAILING_PICK = {"input": {"channels": 3, "size": 224, "classes": 1000}, "stem": {"type": "patch4", "width": 64},
                "stages": [{"op": "mobileone", "width": 112, "depth": 1, "stride": 1},
                           {"op": "swin", "width": 320, "depth": 3, "stride": 2},
                           {"op": "convnext", "width": 320, "depth": 3, "stride": 2},
                           {"op": "mobileone", "width": 640, "depth": 2, "stride": 2}],
                "head": {"type": "norm_pool_linear"}}


@needs_onnx
def test_failing_pick_exports_through_nas_export(tmp_path):
    """The stage that failed, exported alone through ``nas.export``'s own programs (pt2 and ONNX, dynamic batch):
    the rest of the 224-px network converts with the operators' own tests and costs a minute more here."""
    arch = Arch.from_dict(FAILING_PICK)
    net = _perturb(build(arch)).eval()
    example = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stage_input = net.stages[0](net.stem(example))  # what the Swin stage sees in the whole network
    stage = net.stages[1]
    seen = []
    hook = stage[0].mixer.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        stage(stage_input)
    hook.remove()
    _, h, w, c = seen[0]
    window = stage[0].mixer.window
    assert (h, w, c) == (28, 28, 320) and stage[0].mixer.heads == 10
    assert (h // window) * (w // window) == 16 and h % window == 0  # 16 windows of 7x7
    deploy = operators.reparameterize_model(stage)
    lines: list[str] = []
    report = _export_programs(deploy, stage_input, tmp_path / "deploy", lines.append, stage_ops=["swin"])
    assert report["onnx_dynamic_batch"] and report["onnx_err"] <= 1e-4, report
    assert (tmp_path / "deploy" / "model.onnx").is_file() and any("model.onnx" in line for line in lines)
    x = torch.randn(3, *stage_input.shape[1:])  # the batch is dynamic: another size than the example's
    with torch.no_grad():
        want = deploy(x)
    torch.testing.assert_close(_onnx_run(tmp_path / "deploy" / "model.onnx", x), want, rtol=RTOL, atol=ATOL)


# A sweep of single blocks: heads 3, 5 and 10; maps that tile the window, that do not, smaller than it; stride 2
# on even and odd maps.
SLOW_SHAPES = [(1, 96, 96, 12), (1, 160, 160, 10), (1, 160, 160, 7), (2, 96, 160, 13), (2, 160, 320, 28),
               (1, 320, 320, 14), (1, 96, 96, 4)]
SLOW_CASES = [(name, kw, shape) for name in operators.list_ops() for kw in operators.get_spec(name).variants
              for shape in SLOW_SHAPES]


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("name,kw,shape", SLOW_CASES,
                         ids=[_case_id(n, kw, "s{}-{}-{}-{}px".format(*s)) for n, kw, s in SLOW_CASES])
def test_operator_converts_to_onnx_at_more_shapes(name, kw, shape, tmp_path):
    stride, cin, cout, side = shape
    model = _deploy_chain(name, kw, [(stride, cin, cout)])
    _onnx_matches(model, torch.randn(2, cin, side, side), tmp_path / "block.onnx", batches=(1, 3))


# PatchDown pads (-H) % stride and (-W) % stride on the bottom/right: ceil(H/s) x ceil(W/s) at any stride.
@pytest.mark.parametrize("stride,hw", [(4, (9, 9)), (4, (13, 11)), (4, (8, 12)), (3, (7, 5)), (2, (9, 6))])
def test_patch_down_pads_to_a_multiple_of_the_stride(stride, hw):
    h, w = hw
    down = PatchDown(8, 12, stride).eval()
    with torch.no_grad():
        down.norm.bias.copy_(torch.randn(8))  # a padded border before the norm would not be zero after it
        x = torch.randn(2, 8, h, w)
        out = down(x)
        assert out.shape == (2, 12, -(-h // stride), -(-w // stride))
        ph, pw = -h % stride, -w % stride
        normed = down.norm(x)
        padded = torch.zeros(2, 8, h + ph, w + pw)
        padded[:, :, :h, :w] = normed  # zeros after the norm, bottom and right only
        torch.testing.assert_close(out, F.conv2d(padded, down.conv.weight, down.conv.bias, stride), rtol=0, atol=0)
