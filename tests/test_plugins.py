"""Plug-in operators (``nas.plugins``): a module outside the package, named by ``--import``, reaches the whole
pipeline: the space, the FLOP count, the search on Ray workers, pareto, the export and its standalone import.
Also the ``opmix`` console script, which runs the same commands."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nas.rundir import RunDir
from search_helpers import clean_env, write_tiny_fashion

# The plug-in: a depthwise-separable residual block, defined only here (never imported into the test process,
# so the catalog the other tests see is unchanged).
PLUGIN = '''
"""A plug-in operator of the tests: depthwise 3x3 (or k x k) conv, BN, ReLU, pointwise conv, plus a shortcut."""

import torch
from torch import nn

import operators


class SepBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, kernel: int = 3):
        super().__init__()
        self.dw = nn.Conv2d(in_chs, in_chs, kernel, stride, kernel // 2, groups=in_chs, bias=False)
        self.bn = nn.BatchNorm2d(in_chs)
        self.pw = nn.Conv2d(in_chs, out_chs, 1)
        self.short = nn.Conv2d(in_chs, out_chs, 1, stride) if stride != 1 or in_chs != out_chs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(torch.relu(self.bn(self.dw(x)))) + self.short(x)


def sep_block(in_chs: int, out_chs: int, stride: int = 1, kernel: int = 3) -> nn.Module:
    return SepBlock(in_chs, out_chs, stride, kernel)


operators.register_op("sep_block", sep_block, paper="the tests' own", family="conv")
'''

SPACE = """
name: plugin
input: {channels: 3, size: 224, classes: 1000}
stem: {type: patch4, width: 16}
stages:
- output_stride: 4
  ops: [{op: sep_block, kernel: [3, 5]}, convnext]
  width: [16, 32]
  depth: [1, 2]
- output_stride: 8
  ops: [sep_block]
  width: [32, 64]
  depth: 1
head: {type: pool_linear}
"""

ARCH = """
stem: {type: patch4, width: 16}
stages:
- {op: sep_block, depth: 2, width: 32, stride: 1, params: {kernel: 5}}
- {op: sep_block, depth: 1, width: 64, stride: 2}
"""


def cli(*args, cwd: Path, console: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """A command run from ``cwd`` (where my_ops.py lies), as ``python -m nas.X`` or as the ``opmix`` script."""
    if console:
        cmd = [str(Path(sys.executable).parent / "opmix"), *args]
    else:
        cmd = [sys.executable, "-m", f"nas.{args[0]}", *args[1:]]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(drop=("PYTHONPATH",)))


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    (root / "my_ops.py").write_text(PLUGIN.lstrip())
    (root / "plugin.yaml").write_text(textwrap.dedent(SPACE))
    (root / "arch.yaml").write_text(textwrap.dedent(ARCH))
    write_tiny_fashion(root / "data")
    return root


def test_without_the_import_the_operator_is_unknown(plugin_dir):
    result = cli("space", "plugin.yaml", cwd=plugin_dir)
    assert result.returncode == 2 and "sep_block" in result.stderr and "Traceback" not in result.stderr
    missing = cli("space", "plugin.yaml", "--import", "no_such_ops", cwd=plugin_dir)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "--import no_such_ops" in missing.stderr


def test_space_and_flops_see_the_plugin(plugin_dir):
    """Counted as the catalog's operators are: a 5x5 depthwise conv and its neighbours, by formula."""
    result = cli("space", "plugin.yaml", "--import", "my_ops", "--json", cwd=plugin_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["architectures"] == 3 * 2 * 2 * 2  # (sep k3, k5, convnext) x width x depth, x width
    flops = cli("flops", "arch.yaml", "--import", "my_ops", "--json", cwd=plugin_dir)
    assert flops.returncode == 0, flops.stderr
    got = json.loads(flops.stdout)
    h = 56  # patch4 stem at 224 px; stage 2 halves the map to 28. BatchNorm in eval with its affine: 2 per
    # element (fvcore's norm rule: normalize, then scale and shift)
    block1 = h * h * (16 * 25 + 2 * 16 + 16 * 32) + h * h * 16 * 32  # dw 5x5, BN, pw 16->32, shortcut 16->32
    block2 = h * h * (32 * 25 + 2 * 32 + 32 * 32)  # identity shortcut
    stage2 = 28 * 28 * (32 * 9 + 2 * 32 + 32 * 64 + 32 * 64)  # dw 3x3 stride 2, BN, pw 32->64, shortcut
    assert got["stages"]["stages.0"] == block1 + block2
    assert got["stages"]["stages.1"] == stage2
    assert got["flops"] == sum(got["stages"].values())


@pytest.fixture(scope="module")
def plugin_run(plugin_dir):
    """A search of the plug-in space with two trials at a time (two Ray worker processes)."""
    result = cli("search", "--budget", "120M", "--space", "plugin.yaml", "--import", "my_ops", "--trials", "4",
                 "--epochs", "1", "--max-train", "128", "--data-dir", "data", "--runs-dir", "runs", "--name", "p",
                 "--confirm", "0", "--cpus-per-trial", "1", cwd=plugin_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return plugin_dir / "runs" / "p"


def test_search_trains_the_plugin_on_ray_workers(plugin_run):
    run = RunDir(plugin_run)
    assert run.read_config()["imports"] == ["my_ops"]
    trained = [r for r in run.read_trials() if r["status"] != "infeasible"]
    assert len(trained) == 4 and all(r["status"] == "completed" for r in trained), trained
    assert any(s["op"] == "sep_block" for r in trained for s in r["arch"]["stages"])
    pids = {json.loads(line)["pid"] for f in (plugin_run / "ray").glob("session-1/*/result.json")
            for line in f.read_text().splitlines() if line.strip()}
    assert len(pids) >= 2, pids  # the workers imported the plug-in themselves


def test_pareto_export_and_standalone_import(plugin_run, tmp_path):
    from nas.pareto import analyze

    pareto = cli("pareto", str(plugin_run), "--json", console=True, cwd=plugin_run.parent.parent)
    assert pareto.returncode == 0, pareto.stderr
    front = json.loads(pareto.stdout)["front"]
    pick = [r for r in RunDir(plugin_run).read_trials() if r["trial_id"] == front[0]["trial_id"]]
    assert front and pick
    best = analyze(RunDir(plugin_run).read_trials(), 120e6)["best"]
    if not any(s["op"] == "sep_block" for s in best["arch"]["stages"]):
        best = next(r for r in RunDir(plugin_run).read_trials() if r["status"] == "completed"
                    and any(s["op"] == "sep_block" for s in r["arch"]["stages"]))
    out = tmp_path / "export"
    # the run's config names my_ops: the export imports it without --import
    result = cli("export", str(plugin_run), "--trial", str(best["trial_id"]), "--out", str(out), "--no-onnx",
                 cwd=plugin_run.parent.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    source = (out / "model.py").read_text()
    assert "class SepBlock" in source and "import operators" not in source and "import my_ops" not in source
    assert "register_op" not in source  # the definitions only, not the registration
    spec = importlib.util.spec_from_file_location("exported_plugin_model", out / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # torch only: the plug-in's source travelled with it
    net = module.build().eval()
    assert module.ARCH == best["arch"]  # (sep_block is not registered in this process: compare the mappings)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_console_script_runs_the_same_commands(plugin_dir):
    usage = cli("--help", console=True, cwd=plugin_dir)
    assert usage.returncode == 0 and all(c in usage.stdout for c in ("search", "pareto", "export", "calibrate"))
    wrong = cli("serch", console=True, cwd=plugin_dir)
    assert wrong.returncode == 2 and "unknown command 'serch'" in wrong.stderr
    same = cli("space", "plugin.yaml", "--import", "my_ops", "--json", console=True, cwd=plugin_dir)
    assert same.returncode == 0 and same.stdout == cli("space", "plugin.yaml", "--import", "my_ops", "--json",
                                                       cwd=plugin_dir).stdout
    bad = cli("search", "--budget", "4.5GB", console=True, cwd=plugin_dir)
    assert bad.returncode == 2 and bad.stderr.startswith("opmix search: error:")
