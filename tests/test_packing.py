"""``--gpus-per-trial auto``: the packing rule, what the command chooses on a faked CUDA machine and on a CPU one,
and its bad values as one line with exit 2 (issue 22). No GPU is needed: torch.cuda's answers are faked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import nas.cluster
from nas.cluster import (MAX_TRIALS_PER_GPU, TRIAL_GPU_MEMORY, parse_gpus_per_trial, resolve_gpus_per_trial,
                         trials_per_gpu)
from nas.errors import OpmixError

GIB = 2**30


@pytest.mark.parametrize("gpus,memory,cpus,per_trial,expected,bound", [
    (1, 80 * GIB, 16, 1, 16, "the CPU cores"),          # an H100 machine: 16 cores feed 16 trials
    (1, 80 * GIB, 2, 1, 2, "the CPU cores"),            # this project's 2 cores
    (2, 80 * GIB, 16, 1, 8, "the CPU cores"),           # two GPUs share the cores
    (1, 80 * GIB, 16, 2, 8, "the CPU cores"),           # 2 CPUs per trial
    (1, 80 * GIB, 128, 1, MAX_TRIALS_PER_GPU, "the packing cap"),
    (1, 5 * TRIAL_GPU_MEMORY, 64, 1, 5, "the GPU memory"),
    (1, TRIAL_GPU_MEMORY // 2, 16, 1, 1, "the GPU memory"),  # never fewer than one
    (1, 80 * GIB, 2, 4, 1, "the CPU cores"),            # one trial asks more CPUs than there are: still 1
])
def test_the_packing_rule(gpus, memory, cpus, per_trial, expected, bound):
    k, why = trials_per_gpu(gpus, memory, cpus, per_trial)
    assert k == expected and why.startswith(bound)
    if expected > 1:
        assert k * gpus * per_trial <= cpus  # never more trials than the cores can feed


@pytest.mark.parametrize("text,expected", [(None, None), ("auto", "auto"), ("0", 0.0), ("0.25", 0.25), ("1", 1.0),
                                           ("2", 2.0), (".5", 0.5)])
def test_parse_gpus_per_trial(text, expected):
    assert parse_gpus_per_trial(text) == expected


@pytest.mark.parametrize("text,needle", [("many", "not understood"), ("-1", "not understood"),
                                         ("1.5", "fraction of one GPU or whole GPUs"), ("Auto ", "not understood")])
def test_a_bad_value_is_one_line(text, needle):
    with pytest.raises(OpmixError) as err:
        parse_gpus_per_trial(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


def fake_cuda(monkeypatch, count: int, memory: int = 80 * GIB, name: str = "NVIDIA H100 80GB HBM3") -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name=name, total_memory=memory))


def test_auto_on_a_cuda_machine_packs_and_says_so_in_one_line(monkeypatch):
    fake_cuda(monkeypatch, 1)
    lines = []
    assert resolve_gpus_per_trial("auto", 1.0, 16, log=lines.append) == 1 / 16
    assert resolve_gpus_per_trial(None, 1.0, 6, log=lines.append) == pytest.approx(0.1666)  # no flag: auto too
    assert 6 * 0.1666 <= 1  # six shares fit in one GPU as Ray counts them
    assert len(lines) == 2 and "16 trials per GPU (0.0625 GPU and 1 CPU each)" in lines[0]
    assert "NVIDIA H100" in lines[0] and "the CPU cores (16 CPUs)" in lines[0]
    assert resolve_gpus_per_trial(0.5, 1.0, 16, log=lines.append) == 0.5 and len(lines) == 2  # a number is kept


def test_auto_without_cuda_is_the_cpu_with_a_line_and_no_flag_is_silent(monkeypatch):
    fake_cuda(monkeypatch, 0)
    lines = []
    assert resolve_gpus_per_trial("auto", 2.0, 16, log=lines.append) == 0.0
    assert lines == ["--gpus-per-trial auto: no CUDA device here, so 0 GPUs: trials train on the CPU, 2 CPU each"]
    assert resolve_gpus_per_trial(None, 1.0, 16, log=lines.append) == 0.0 and len(lines) == 1


# ------------------------------------------------------------------------------------------- the command line
@pytest.fixture
def fake_search(monkeypatch, tmp_path):
    """``nas.search._main`` with Ray and the search loop replaced; each call's GPUs per trial, time budget and
    resources checked are kept."""
    import nas.search
    import nas.space
    from search_helpers import write_tiny_fashion

    calls = []
    monkeypatch.setattr(nas.cluster, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(nas.cluster, "ray_cpus", lambda: 16.0)
    monkeypatch.setattr(nas.cluster, "check_resources", lambda cpus, gpus: calls.append({"checked": gpus}))
    monkeypatch.setattr(nas.search, "search", lambda config, **kw: calls.append(kw) or {"by_status": {"completed": 1}})
    monkeypatch.setattr(nas.search, "print_summary", lambda *a, **k: None)
    monkeypatch.setattr(nas.space, "load_space", lambda *a, **k: None)
    data = write_tiny_fashion(tmp_path / "data", n=40)

    def main(*argv: str) -> int:
        return nas.search._main(["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data), *argv])

    main.calls = calls
    return main


def test_the_bare_command_on_a_cuda_machine_packs_the_gpu(fake_search, monkeypatch, capsys):
    from nas.search import BARE_TIME_BUDGET_S

    fake_cuda(monkeypatch, 1)
    assert fake_search("--budget", "4.5G", "--name", "bare") == 0
    checked, run = fake_search.calls
    assert checked == {"checked": 1 / 16} and run["gpus_per_trial"] == 1 / 16
    assert run["time_budget_s"] == BARE_TIME_BUDGET_S  # still the bare command
    out = capsys.readouterr().out
    assert out.count("--gpus-per-trial auto: 16 trials per GPU") == 1


@pytest.mark.parametrize("flag,expected", [("0", 0.0), ("0.5", 0.5), ("auto", 0.0)])
def test_the_flag_on_a_cpu_machine(fake_search, monkeypatch, capsys, flag, expected):
    fake_cuda(monkeypatch, 0)
    fake_search("--budget", "4.5G", "--name", "x", "--gpus-per-trial", flag)
    assert fake_search.calls[-1]["gpus_per_trial"] == expected
    assert ("no CUDA device here" in capsys.readouterr().out) == (flag == "auto")


def test_a_bad_flag_is_one_line_exit_2_and_writes_nothing(tmp_path):
    from search_helpers import search_cli

    result = search_cli("--budget", "1G", "--gpus-per-trial", "lots", "--runs-dir", str(tmp_path / "runs"),
                        cwd=tmp_path)
    assert result.returncode == 2 and "--gpus-per-trial 'lots'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
