"""The operator contract, checked for every registered operator and each of its test variants."""

from __future__ import annotations

import ast
import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import operators
from nas.flops import count_flops, unsupported_ops

CASES = [(name, kw) for name in operators.list_ops() for kw in operators.get_spec(name).variants]
IDS = [name + "".join(f"-{k}={v}" for k, v in kw.items()) for name, kw in CASES]
SIZES = [(1, 1), (7, 9), (15, 15), (56, 56)]


def _out(size: int, stride: int) -> int:
    return math.ceil(size / stride)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_output_shape_at_any_size(name, kw, stride):
    in_chs, out_chs = 16, 32
    op = operators.create_op(name, in_chs, out_chs, stride, **kw)
    for h, w in SIZES:
        y = op(torch.randn(2, in_chs, h, w))
        assert y.shape == (2, out_chs, _out(h, stride), _out(w, stride)), (h, w)
        assert torch.isfinite(y).all(), (h, w)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_same_width_stride_one_keeps_shape(name, kw):
    op = operators.create_op(name, 32, 32, 1, **kw)
    assert op(torch.randn(1, 32, 7, 9)).shape == (1, 32, 7, 9)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_gradients_reach_every_parameter(name, kw):
    op = operators.create_op(name, 16, 32, 2, **kw)
    _jitter(op)  # a zero-initialized last BN (ResNet's zero_init_last) stops the branch's gradients at init only
    op(torch.randn(2, 16, 15, 15)).square().mean().backward()
    for pname, p in op.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def _train_a_little(op: nn.Module, in_chs: int, steps: int = 4) -> None:
    """A few SGD steps so that BN running statistics and weights are no longer at their initial values."""
    opt = torch.optim.SGD(op.parameters(), lr=0.05, momentum=0.9)
    op.train()
    for _ in range(steps):
        x = torch.randn(4, in_chs, 12, 12)
        loss = (op(x) - 1.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _jitter(op)


@torch.no_grad()
def _jitter(op: nn.Module) -> None:
    """Move every parameter off its init (layer scales, zeroed BN weights, BN affines, rates, ...)."""
    for p in op.parameters():
        p.add_(torch.randn_like(p) * 0.05)


def _num_modules(m: nn.Module) -> int:
    return sum(1 for _ in m.modules())


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
@pytest.mark.parametrize("stride,in_chs,out_chs", [(1, 32, 32), (2, 16, 32)])
def test_deploy_form_is_equivalent(name, kw, stride, in_chs, out_chs):
    op = operators.create_op(name, in_chs, out_chs, stride, **kw)
    _train_a_little(op, in_chs)
    op.eval()
    deploy = operators.reparameterize_model(op)
    assert deploy is not op
    for h, w in [(1, 1), (7, 9), (16, 16)]:
        x = torch.randn(2, in_chs, h, w)
        with torch.no_grad():
            torch.testing.assert_close(deploy(x), op(x), rtol=1e-4, atol=1e-5)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in op.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules()), "a BatchNorm survived"
    if has_bn:
        assert _num_modules(deploy) < _num_modules(op)
    else:
        assert _num_modules(deploy) <= _num_modules(op)
    # Re-parameterizing twice is harmless, and inplace=False left the trained model in training form.
    again = operators.reparameterize_model(deploy)
    with torch.no_grad():
        x = torch.randn(1, in_chs, 9, 9)
        torch.testing.assert_close(again(x), deploy(x))
    assert any(isinstance(m, nn.BatchNorm2d) for m in op.modules()) == has_bn


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_flops_are_counted_without_unknown_ops(name, kw):
    op = operators.create_op(name, 32, 64, 2, **kw)
    for deploy in (True, False):
        assert not unsupported_ops(op, (1, 32, 28, 28), deploy=deploy)
    before = copy.deepcopy(op.state_dict())
    flops = count_flops(op, (1, 32, 28, 28))
    assert flops > 0
    for key, value in op.state_dict().items():  # counting never modifies the model
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_unknown_operator_lists_the_known_ones():
    with pytest.raises(KeyError, match="resnet_basic"):
        operators.create_op("resnet_basik", 8, 8)


@pytest.mark.parametrize("bad", [dict(stride=3), dict(in_chs=0), dict(out_chs=-4)])
def test_bad_arguments_are_refused(bad):
    args = dict(in_chs=8, out_chs=8, stride=1) | bad
    with pytest.raises(ValueError, match="operator 'repvgg'"):
        operators.create_op("repvgg", **args)


@pytest.mark.parametrize("name", ["swin", "transformer"])
def test_heads_that_do_not_divide_the_width_are_refused(name):
    with pytest.raises(ValueError, match="divisor of 96"):
        operators.create_op(name, 96, 96, heads=5)


HEAD_DIM_OPS = ["acmix", "cvt", "elsa", "glmix", "maxvit", "mixformer", "mvit", "nat", "qna", "swin",
                "transformer", "uniformer"]
ODD_SIZES = [("cvt", "kernel_size"), ("elsa", "kernel"), ("glmix", "kernel_size"), ("gnconv", "kernel_size"),
             ("maxvit", "kernel_size"), ("mbconv", "kernel_size"), ("mixformer", "dw_kernel"), ("mvit", "pool_kernel"),
             ("nat", "kernel"), ("qna", "window"), ("sasa", "kernel"), ("xvolution", "kernel_size")]


@pytest.mark.parametrize("name", HEAD_DIM_OPS)
def test_a_head_dim_below_one_is_refused_in_one_line(name):
    """Not a division by zero deep in the default head count: the op, the keyword and the paper's value."""
    kw = {"layout": "window"} if name == "acmix" else {}
    with pytest.raises(ValueError, match=rf"^{name}: head_dim=0 must be (an integer )?>= 1 \(.+\)$"):
        operators.create_op(name, 32, 32, head_dim=0, **kw)


@pytest.mark.parametrize("value", [4, True, 3.0])
@pytest.mark.parametrize("name,key", ODD_SIZES)
def test_a_kernel_or_window_must_be_an_odd_integer(name, key, value):
    """A centred kernel or window has an odd integer size: an even one, a bool or a float is refused."""
    pattern = rf"^{name}: {key}={re.escape(repr(value))} must be an odd integer >= \d+ \(.+\)$"
    with pytest.raises(ValueError, match=pattern):
        operators.create_op(name, 32, 32, **{key: value})


@pytest.mark.parametrize("name,key,value", [("nat", "mlp_ratio", 0.0), ("qna", "mlp_ratio", -1.0),
                                            ("gnconv", "layer_scale", -1e-6), ("nat", "layer_scale", float("nan")),
                                            ("mvit", "mlp_ratio", float("nan")), ("maxvit", "expansion", 0)])
def test_a_ratio_or_scale_out_of_range_is_refused(name, key, value):
    with pytest.raises(ValueError, match=rf"^{name}: {key}={re.escape(repr(value))} must be >=? ?0 \(.+\)$"):
        operators.create_op(name, 32, 32, **{key: value})


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        operators.register_op("repvgg", operators.get_spec("repvgg").factory, paper="x", family="conv")


def test_the_catalog_imports_without_the_framework():
    """The catalog is the ground floor: a fresh interpreter that imports it loads no module of ``nas``."""
    code = "import sys, operators; assert not [m for m in sys.modules if m == 'nas' or m.startswith('nas.')]"
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def _catalog_imports() -> dict[str, set[str]]:
    """Each module of the catalog -> the catalog modules it imports, at the top or inside a function."""
    folder = Path(operators.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("operators."):
                found.add(node.module.split(".")[1])
        graph[path.stem] = found - {path.stem}
    return graph


def test_the_catalog_has_no_import_circle():
    """Two modules that import each other are one module or three: the catalog's imports point one way."""
    graph = _catalog_imports()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != "open", f"import circle: {' -> '.join(path + [name, dep])}"
            if dep not in state:
                visit(dep, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


@pytest.mark.parametrize("bad,message", [
    (lambda: operators.create_op("resnet_basik", 8, 8), "unknown operator 'resnet_basik'; known operators: "),
    (lambda: operators.create_op("repvgg", 8, 8, stride=3), "operator 'repvgg': stride 3 is not allowed"),
])
def test_a_catalog_error_is_one_line_on_the_command_line(bad, message, capsys):
    """The framework builds on the catalog's errors: a command turns one into one line and exit code 2."""
    from nas import _cli

    with pytest.raises(SystemExit) as exit_:
        _cli.run("python -m nas.example", lambda argv: bad())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m nas.example: error: {message}") and err.count("\n") == 1
