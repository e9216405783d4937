"""The GPU session's scripts on a CPU at a tiny setting (issue 22): ``benchmarks/bench_gpu.py`` (eager and the
compile path, traced by the ``aot_eager`` backend: inductor's C++ build would take tens of seconds here) and
``benchmarks/gpu_session.py`` (every phase, its time limit, and a second call that skips what the first
finished), and the report that ranks the whole-catalog calibration against a full-width rung."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from search_helpers import clean_env, write_tiny_fashion

ROOT = Path(__file__).resolve().parents[1]
TINY = {"input": {"channels": 3, "size": 224, "classes": 1000}, "stem": {"type": "patch4", "width": 16},
        "stages": [{"op": "resnet_basic", "width": 16, "depth": 1, "stride": 1},
                   {"op": "mbconv", "width": 32, "depth": 1, "stride": 2}], "head": {"type": "pool_linear"}}


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-session")
    write_tiny_fashion(root / "data", n=80)
    other = json.loads(json.dumps(TINY))
    other["stages"][1]["op"] = "convnext"
    (root / "cal").mkdir()
    (root / "cal" / "archs.jsonl").write_text("".join(json.dumps({"index": i, "arch": a}) + "\n"
                                                     for i, a in enumerate([TINY, other])))
    return root


def test_bench_gpu_times_eager_and_compile_on_a_cpu(tiny):
    bench = _module("bench_gpu")
    out = tiny / "steps.jsonl"
    assert bench.main(["--device", "cpu", "--variants", "eager,compile,graphs", "--backend", "aot_eager",
                       "--archs", str(tiny / "cal" / "archs.jsonl"), "--arch", "0", "--images", "16",
                       "--batch-size", "8", "--steps", "2", "--warmup", "1", "--blocks", "1", "--macs", "1000000",
                       "--peak", "100", "--threads", "1", "--jsonl", str(out), "--tag", '{"phase": "step"}']) == 0
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["graphs"]["skipped"] == "CUDA only"
    for variant in ("eager", "compile"):
        r = rows[variant]
        assert r["phase"] == "step" and r["step_ms"] > 0 and r["setup_s"] > 0 and r["device"] == "cpu"
        # each figure is rounded to 1e-3 (s or ms): the sum holds to the rounding, not to a relative 1e-3
        assert r["proxy_s"] == pytest.approx(r["setup_s"] + (96 - 1) * r["step_ms"] / 1000, abs=2e-3)
        # the share of the peak: 3 x forward multiply-adds x batch per step, over 100 G/s
        assert r["share_of_peak"] == pytest.approx(3 * 1e6 * 8 / (r["step_ms"] / 1000) / 1e9 / 100, rel=1e-3)


def test_a_packing_level_counts_each_workers_epochs_up_to_its_last():
    session = _module("gpu_session")
    events = {0: [{"t": 102.0, "macs": 10, "memory": 2**30}, {"t": 104.0, "macs": 10, "memory": 2**29}],
              1: [{"t": 105.0, "macs": 30, "memory": 0}], 2: []}
    row = session.packing_row(3, events, 100.0, 6.0, {"device": "x", "peak_gmacs": 1e-9})
    assert row["epochs"] == 3 and row["idle_workers"] == 1
    assert row["proxies_per_hour"] == pytest.approx((2 / 4 + 1 / 5) / 4 * 3600)  # 4 epochs a proxy
    assert row["gmacs_per_s"] == pytest.approx((20 / 4 + 30 / 5) / 1e9)
    assert row["share_of_peak"] == pytest.approx(11.0) and row["max_reserved_gib"] == 1.0


def run_session(tiny: Path, limit: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "run", "--out", str(tiny / "out"),
           "--time-limit", str(limit), "--dataset", "fashion-mnist", "--data-dir", str(tiny / "data"),
           "--scratch", str(tiny / "scratch"), "--calibration", str(tiny / "cal"), "--macs", str(tiny / "none"),
           "--step-arch", "0", "--variants", "eager,graphs", "--step-steps", "2", "--levels", "1,2", "--window", "1",
           "--fw-workers", "2", "--max-epochs", "1", "--probe-steps", "1", "--seeds", "1", "--start-timeout", "15",
           "--tests", "tests/test_packing.py::test_parse_gpus_per_trial"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=clean_env(OMP_NUM_THREADS="1"))


def units(rows: list[dict]) -> list[tuple]:
    """What each line finished: a unit of work, named by its phase and key (env lines: one per call)."""
    key = {"step": "variant", "packing": "trials_per_gpu", "full_width": ("arch", "seed")}
    return [(r["phase"], *(tuple(r[k] for k in key[r["phase"]]) if isinstance(key.get(r["phase"]), tuple)
                           else (r.get(key.get(r["phase"], ""), None),)))
            for r in rows if r["phase"] != "env"]


def test_the_session_stops_within_its_limit_and_a_second_call_does_only_what_is_left(tiny):
    """A first call with a 20-second limit stops in time; a second call with room enough finishes every phase
    without doing anything the first one finished (on an idle machine the first finishes all of it, and the
    second only reads the data and adds its ``env`` line)."""
    import time

    t0 = time.perf_counter()
    first = run_session(tiny, 20)
    wall = time.perf_counter() - t0
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert wall < 20 + 8, first.stdout  # the limit, and the interpreter's start and end
    path = tiny / "out" / "results.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    second = run_session(tiny, 60)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    again = [json.loads(x) for x in path.read_text().splitlines()]
    assert again[:len(rows)] == rows and [r["phase"] for r in again].count("env") == 2
    done = units(again)
    assert len(done) == len(set(done))  # nothing ran twice
    (plan,) = [r for r in again if r["phase"] == "plan"]
    assert set(done) == {("step", "eager"), ("step", "graphs"), ("packing", 1), ("packing", 2), ("plan", None),
                         ("tests", None), *((("full_width", i, 0) for i in (0, 1)) if plan["epochs"] >= 1 else ())}
    assert all(r["epochs"] == plan["epochs"] and r["width_mult"] == 1.0 for r in again if r["phase"] == "full_width")
    assert [r["returncode"] for r in again if r["phase"] == "tests"] == [0]
    if len(again) == len(rows) + 1:  # the first call finished everything: the second started no worker
        assert "workers ready" not in second.stdout


def test_the_report_ranks_the_calibration_against_the_full_width_rung():
    """Full-width accuracies that order the architectures exactly as the calibration's own (10x) reference:
    that rung's tau-b is 1, and the default proxy's tau-b against it is the stored one against the 10x."""
    session = _module("gpu_session")
    from nas.calibrate import analyze
    from nas.rundir import read_jsonl

    catalog = ROOT / "benchmarks" / "results" / "calibration" / "cifar10-catalog"
    old = {r["arch"]: r["accuracy"] for r in read_jsonl(catalog / "results.jsonl")
           if r["setting"] == "reference" and r["seed"] == 0}
    rows = [{"phase": "plan", "width_mult": 1.0, "epochs": 6},
            *({"phase": "full_width", "arch": i, "seed": 0, "accuracy": a + 0.2} for i, a in old.items())]
    setup, archs, results = session.full_width_calibration(catalog, rows)
    assert setup.reference["width_mult"] == 1.0 and setup.reference["epochs"] == 6
    assert setup.reference["max_train"] is None
    report = analyze(setup, archs, results, resamples=50)
    by = {r["rung"]: r for r in report["rows"]}
    assert by["reference_10x"]["tau"] == pytest.approx(1.0) and by["reference_10x"]["n"] == 20
    assert by["default"]["tau"] == pytest.approx(0.72, abs=0.005)  # the table's against the 10x reference
    assert {"flops", "params", "reference_10x x2"} <= set(by)
    lines = []
    session.print_summary(rows, out=lines.append, archs=20)
    assert any("full width: 20 trained of 20" in line for line in lines)
