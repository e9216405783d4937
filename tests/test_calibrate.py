"""python -m nas.calibrate: a real small calibration, its report, resume, and refusals; the latency rung."""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.calibrate import (REFERENCE, ZERO_COST, CalibrationDir, Setup, _jobs, analyze, check_latency_target,
                           check_same_setup, measure_latencies, print_report, sample_archs)
from nas.errors import OpmixError
from nas.latency import Target, Timing
from nas.space import load_space
from nas.stats import kendall_tau_b
from search_helpers import clean_env, run_cli, write_space, write_tiny_fashion

SETTINGS = """
settings:
  default: {max_train: 128, epochs: 2}
  short: {max_train: 64, epochs: 1}
reference: {max_train: null, epochs: 3}
"""
ARCHS, SEEDS = 4, 2
# zero-cost once per arch, the cheapest setting ('short') over SEEDS seeds, 'default' once, the reference once
JOBS = ARCHS * (1 + SEEDS + 1 + 1)


def run_calibrate(*args, cwd: Path):
    """``python -m nas.calibrate ARGS`` in a fresh interpreter with its own Ray: the one calibration run through
    the command line."""
    return subprocess.run([sys.executable, "-m", "nas.calibrate", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=clean_env())


def calibrate_cli(*args, cwd: Path):
    """The same command run in this process; its jobs, if any, as Ray tasks in the session's Ray."""
    import nas.calibrate

    return run_cli(nas.calibrate.main, *args, cwd=cwd)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    write_tiny_fashion(root / "data")
    write_space(root)
    (root / "settings.yaml").write_text(SETTINGS)
    return root


def args(workdir: Path, out: str = "out", settings: str = "settings.yaml", *extra) -> list[str]:
    return ["--out", str(workdir / out), "--budget", "80M", "--space", "mini.yaml", "--archs", str(ARCHS),
            "--seeds", str(SEEDS), "--settings", settings, "--data-dir", "data", "--latency-target", "torch-cpu",
            *extra]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def calibrated(workdir):
    result = run_calibrate(*args(workdir), cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "out", result


def test_every_job_is_recorded_and_the_report_agrees_with_the_results(calibrated):
    out, result = calibrated
    results = lines(out / "results.jsonl")
    assert len(results) == JOBS and not [r for r in results if "error" in r]
    kinds = {(r["arch"], r["setting"], r["seed"]) for r in results}
    assert len(kinds) == JOBS  # no job twice
    assert {r["seed"] for r in results if r["setting"] == "short"} == set(range(SEEDS))
    report = json.loads((out / "report.json").read_text())
    rows = {r["rung"]: r for r in report["rows"]}
    assert {"default", "short", "flops", "params", "synflow", "snip", "naswot", "zico"} <= set(rows)
    ref = {r["arch"]: r["accuracy"] for r in results if r["setting"] == REFERENCE}
    idx = sorted(ref)
    # a setting's row scores the first seed, as a search sees it; 'short x2' scores the mean of its two seeds
    for row, setting, seeds in (("default", "default", [0]), ("short", "short", [0]), ("short x2", "short", [0, 1])):
        score = {i: np.mean([r["accuracy"] for r in results if r["setting"] == setting and r["arch"] == i
                             and r["seed"] in seeds]) for i in ref}
        assert rows[row]["n"] == ARCHS
        assert rows[row]["tau"] == pytest.approx(kendall_tau_b([score[i] for i in idx], [ref[i] for i in idx]),
                                                 nan_ok=True)
        lo, hi = rows[row]["tau_90"]
        assert np.isnan(lo) or -1 <= lo <= hi <= 1
    assert "default x2" not in rows and len(rows["short"]["tau_per_seed"]) == SEEDS
    short_sd = [np.std([r["accuracy"] for r in results if r["setting"] == "short" and r["arch"] == i], ddof=1)
                for i in ref]
    assert rows["short"]["seed_sd"] == pytest.approx(np.sqrt(np.mean(np.square(short_sd))))  # pooled
    archs = lines(out / "archs.jsonl")
    assert rows["flops"]["tau"] == pytest.approx(
        kendall_tau_b([a["flops"] for a in archs], [ref[a["index"]] for a in archs]), nan_ok=True)
    assert (out / "calibration.png").stat().st_size > 5000
    assert "tau-b" in result.stdout and "targets for 'default'" in result.stdout


def test_each_latency_is_stored_with_its_target_and_ranked_as_a_size_rung(calibrated):
    """The architectures were timed on torch-cpu (real measurements, before any training): each figure is in
    archs.jsonl with its IQR and the fingerprint, and the latency row ranks the stored figures, signed as FLOPs."""
    out, result = calibrated
    archs = lines(out / "archs.jsonl")
    fingerprint = Target("torch-cpu").fingerprint()
    for a in archs:
        lat = a["latency"]
        assert lat["target"] == fingerprint and lat["ms"] > 0 and lat["iqr_ms"] >= 0 and lat["runs"] >= 3
    report = json.loads((out / "report.json").read_text())
    row = {r["rung"]: r for r in report["rows"]}["latency"]
    ref = {r["arch"]: r["accuracy"] for r in lines(out / "results.jsonl") if r["setting"] == REFERENCE}
    assert row["kind"] == "size" and row["n"] == ARCHS
    assert row["tau"] == pytest.approx(kendall_tau_b([a["latency"]["ms"] for a in archs],
                                                     [ref[a["index"]] for a in archs]), nan_ok=True)
    assert report["latency"]["timed"] == ARCHS and report["latency"]["target"] == fingerprint
    assert report["latency"]["ms"] == [min(a["latency"]["ms"] for a in archs), max(a["latency"]["ms"] for a in archs)]
    assert "latency: torch-cpu, 1 thread, batch 1" in result.stdout
    timed = result.stdout.index("timing 4 architecture(s) on torch-cpu")
    assert timed < result.stdout.index(" seed 0: ")  # every latency before the first job's result


def test_a_rerun_continues_and_redoes_only_what_is_missing(calibrated, workdir, local_ray, monkeypatch):
    """Three finished jobs lost and a torn last line (a crash mid-write): the rerun trains exactly those three,
    and gets the same accuracies (a job is a function of arch, seed and settings)."""
    out, _ = calibrated
    path = out / "results.jsonl"
    original = path.read_text().splitlines()
    lost = [json.loads(x) for x in original[-3:]]
    path.write_text("\n".join(original[:-3]) + "\n" + original[-1][:25])
    archs_before = (out / "archs.jsonl").read_bytes()
    timed = []
    monkeypatch.setattr("nas.latency.measure_arch_latency", lambda *a, **k: timed.append(a))
    with pytest.warns(UserWarning, match="an unreadable line"):  # the torn line is skipped, and said so
        result = calibrate_cli(*args(workdir), cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert timed == [] and (out / "archs.jsonl").read_bytes() == archs_before  # the stored latencies kept
    assert f"{JOBS - 3} jobs done, 3 to run" in result.stdout
    again = lines_tolerant(path)
    assert len(again) == JOBS
    redone = {(r["arch"], r["setting"], r["seed"]): r for r in again[-3:]}
    for r in lost:
        twin = redone[(r["arch"], r["setting"], r["seed"])]
        assert twin.get("accuracies", twin.get("scores")) == r.get("accuracies", r.get("scores"))


def lines_tolerant(path: Path) -> list[dict]:
    out = []
    for x in path.read_text().splitlines():
        try:
            out.append(json.loads(x))
        except json.JSONDecodeError:
            pass
    return out


def test_a_changed_setup_is_refused_and_nothing_is_written(calibrated, workdir):
    out, _ = calibrated
    (workdir / "other.yaml").write_text(SETTINGS.replace("epochs: 3}", "epochs: 4}"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = calibrate_cli(*args(workdir, "out", "other.yaml"), cwd=workdir)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "reference" in result.stderr and "--out" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_latencies_of_another_target_are_refused_and_nothing_is_written(calibrated, workdir):
    """The folder's latencies are torch-cpu at 1 thread: at 2 threads the rerun stops with one line that says how
    to go on; with --latency-target none it goes on, ranking the stored figures and timing nothing."""
    out, _ = calibrated
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = calibrate_cli(*args(workdir), "--latency-threads", "2", cwd=workdir)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "another target (threads 1 here 2)" in result.stderr and "--latency-target none" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(OpmixError, match="another target"):  # the library refuses as well
        check_latency_target(lines(out / "archs.jsonl"), Target("torch-cpu", threads=2), out)
    check_latency_target(lines(out / "archs.jsonl"), None, out)  # none: nothing to compare


@pytest.mark.parametrize("flags,needle", [
    (["--latency-target", "tpu"], "latency target 'tpu' is not known"),
    (["--latency-target", "cuda"], "sees no CUDA device"),
    (["--latency-target", "ort-cpu"], "pip install 'opmix[export]'"),
    (["--latency-threads", "0"], "latency threads 0"),
])
def test_a_bad_latency_target_is_one_line_exit_2_and_writes_nothing(workdir, tmp_path, monkeypatch, flags, needle):
    import torch

    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.setattr("nas.export.onnx_available", lambda: False)  # as without the export extra
    result = calibrate_cli(*args(workdir, str(tmp_path / "o")), *flags, cwd=workdir)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_the_default_latency_target_is_ort_cpu_where_onnxruntime_is_installed(monkeypatch):
    from nas.calibrate import latency_target

    monkeypatch.setattr("nas.export.onnx_available", lambda: False)
    assert latency_target(None) == Target("torch-cpu") and latency_target("none") is None
    monkeypatch.setattr("nas.export.onnx_available", lambda: True)
    monkeypatch.setattr(Target, "check", lambda self: None)  # ort-cpu's packages need not be installed here
    assert latency_target(None, 2, 4) == Target("ort-cpu", threads=2, batch=4)


def _fake_timing(ms: float) -> Timing:
    return Timing(ms, ms * 1.1, ms, ms * 1.2, (ms, ms * 1.05), 10)


def test_an_interrupted_latency_measurement_continues_without_timing_anything_twice(tmp_path, monkeypatch):
    """Latencies are written as they come: interrupted at the third, the rerun times the other three only; a
    failed measurement is kept with its error (timed again only with retry_failed); a third call times nothing."""
    archs = [{"index": i, "arch": {"i": i}, "flops": 10 * i, "params": i} for i in range(5)]
    out = CalibrationDir(tmp_path)
    out.write_archs(archs)
    calls, interrupt = [], [True]

    def measure(arch, target):  # a formula instead of a clock: 1 ms + 2 ms per index; arch 3 cannot be timed
        calls.append(arch)
        if arch == 2 and interrupt.pop():  # Ctrl-C during the first timing of arch 2
            raise KeyboardInterrupt
        if arch == 3:
            raise RuntimeError("an operator the export cannot write")
        return {"total": _fake_timing(1.0 + 2 * arch)}

    monkeypatch.setattr("nas.latency.measure_arch_latency", measure)
    monkeypatch.setattr("nas.calibrate.Arch.from_dict", staticmethod(lambda d: d["i"]))
    target = Target("torch-cpu")
    with pytest.raises(KeyboardInterrupt):
        measure_latencies(out.read_archs(), target, out, log=lambda m: None)
    interrupt.append(False)
    stored = out.read_archs()
    assert [("latency" in a) for a in stored] == [True, True, False, False, False] and calls == [0, 1, 2]
    assert measure_latencies(stored, target, out, log=lambda m: None) == 3 and calls == [0, 1, 2, 2, 3, 4]
    stored = out.read_archs()
    assert [a["latency"].get("ms") for a in stored] == [1.0, 3.0, 5.0, None, 9.0]
    assert stored[1]["latency"]["iqr_ms"] == pytest.approx(0.6)
    assert stored[1]["latency"]["target"] == target.fingerprint()
    assert "RuntimeError: an operator the export cannot write" in stored[3]["latency"]["error"]
    assert measure_latencies(stored, target, out, log=lambda m: None) == 0 and len(calls) == 6
    assert measure_latencies(stored, target, out, log=lambda m: None, retry_failed=True) == 1 and calls[-1] == 3


def test_the_latency_rung_on_known_numbers_and_folders_without_it():
    """Latency orders the six architectures as the reference does except arch 5, whose measurement failed: NaN,
    left out and counted. Signed as FLOPs, the slower ranks higher: tau 1 over the five. Without any latency (a
    folder from before) the report has no such row and no latency line."""
    ref = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    fingerprint = Target("torch-cpu").fingerprint()
    archs = [{"index": i, "flops": 100 - i, "params": 10 + i,
              "latency": {**_fake_timing(2.0 + i).to_dict(), "seconds": 1.5, "target": fingerprint}} for i in range(5)]
    archs.append({"index": 5, "flops": 95, "params": 15,
                  "latency": {"error": "x", "seconds": 0.5, "target": fingerprint}})
    results = [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a} for i, a in enumerate(ref)]
    results += [{"arch": i, "setting": "p", "seed": 0, "accuracy": a - 0.3, "seconds": 2.0} for i, a in enumerate(ref)]
    report = analyze(_setup(seeds=1), archs, results, resamples=0)
    rows = {r["rung"]: r for r in report["rows"]}
    assert [r["rung"] for r in report["rows"]] == ["p", "flops", "params", "latency"]
    lat = rows["latency"]
    assert lat["kind"] == "size" and lat["tau"] == 1 and lat["n"] == 5 and lat["undefined"] == 1
    assert lat["seconds_per_candidate"] == pytest.approx((5 * 1.5 + 0.5) / 6)  # failed included
    assert rows["flops"]["seconds_per_candidate"] == 0.0
    assert report["latency"] == {"target": fingerprint, "timed": 5, "failed": 1, "ms": [2.0, 6.0], "max_iqr_ms": 1.2}
    printed = []
    print_report(report, out=printed.append)
    assert any(line.startswith("latency: torch-cpu, 1 thread, batch 1, ") and "2.00 to 6.00 ms (IQR at most 1.20)"
               in line and "5 of 6 architectures timed, 1 failed" in line for line in printed), printed
    for a in archs:
        del a["latency"]
    old = analyze(_setup(seeds=1), archs, results, resamples=0)
    assert "latency" not in {r["rung"] for r in old["rows"]} and "latency" not in old
    printed = []
    print_report(old, out=printed.append)
    assert not any("latency" in line for line in printed)


@pytest.mark.parametrize("text,needle", [
    ("settings: {}", "at least one named setting"),
    ("settings: {a: {epochs: 0}}", "settings.a: epochs=0"),
    ("settings: {a: {}}\nreference: {max_train: lots}", "reference.max_train"),
    ("settings: {reference: {}}", "reserved"),
    ("settings: {latency: {}}", "reserved"),
    ("proxies: {a: {}}", "'settings'"),
])
def test_bad_settings_file_is_one_line_and_exit_2(workdir, tmp_path, text, needle):
    (tmp_path / "s.yaml").write_text(text)
    result = calibrate_cli(*args(workdir, str(tmp_path / "o"), str(tmp_path / "s.yaml")), cwd=workdir)
    assert result.returncode == 2 and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_the_sample_is_distinct_within_budget_and_spread_over_flops():
    space = load_space("hybrid")
    # a stand-in cost, monotone in size, so the test needs no FLOP counting: sum of width^2 x depth
    def measure(arch):
        cost = sum(s.width ** 2 * s.depth for s in arch.stages)
        return cost, cost // 10

    costs = sorted(measure(space.random(random.Random(i)))[0] for i in range(400))
    budget = costs[len(costs) // 2]
    archs = sample_archs(space, budget, 10, seed=1, measure=measure)
    flops = [a["flops"] for a in archs]
    assert len({json.dumps(a["arch"], sort_keys=True) for a in archs}) == 10
    assert max(flops) <= budget and flops == sorted(flops)
    # one per FLOPs bin where bins are filled: the sample reaches both ends of the feasible range
    assert min(flops) < 0.25 * budget and max(flops) > 0.75 * budget
    ops = {s["op"] for a in archs for s in a["arch"]["stages"]}
    assert len(ops) >= 6  # operators least represented so far are preferred in each bin
    assert archs == sample_archs(space, budget, 10, seed=1, measure=measure)  # a function of the seed


def _setup(settings=("p",), seeds=2) -> Setup:
    knobs = {"max_train": 8, "epochs": 1, "width_mult": 0.25, "image_size": None, "batch_size": 8, "lr": 0.003,
             "grace_period": 2, "scale_windows": True}
    return Setup(space="s", space_sha256="x", budget=1, archs=6, seeds=seeds, seed=0, dataset="d", data_dir=None,
                 settings={n: knobs for n in settings}, reference=knobs)


def test_analyze_on_known_numbers():
    """A proxy that orders the six architectures exactly as the reference, with seed noise +-d."""
    ref = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    archs = [{"index": i, "flops": 100 - i, "params": 10 + i} for i in range(6)]
    d = 0.01
    results = [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a} for i, a in enumerate(ref)]
    results += [{"arch": i, "setting": "p", "seed": s, "accuracy": a - 0.3 + (d if s else -d), "seconds": 2.0}
                for i, a in enumerate(ref) for s in (0, 1)]
    results += [{"arch": i, "setting": ZERO_COST, "seed": 0, "scores": {"synflow": -i}, "seconds": 0.5}
                for i in range(6)]
    report = analyze(_setup(), archs, results, resamples=200)
    rows = {r["rung"]: r for r in report["rows"]}
    assert rows["p"]["tau"] == 1 and rows["p"]["rho"] == pytest.approx(1) and rows["p"]["top3"] == 3
    assert rows["p"]["seed_sd"] == pytest.approx(np.std([-d, d], ddof=1))  # = d * sqrt(2)
    assert rows["p"]["seconds_per_candidate"] == 2.0 and rows["synflow"]["seconds_per_candidate"] == 0.5
    assert rows["p x2"]["tau"] == 1 and rows["p x2"]["seconds_per_candidate"] == 4.0
    assert rows["p"]["tau_per_seed"] == [1, 1]
    assert rows["flops"]["tau"] == -1 and rows["params"]["tau"] == 1 and rows["synflow"]["tau"] == -1
    assert rows["p"]["pick"] == {"arch": 5, "reference": 0.9, "best_reference": 0.9}
    t = report["targets"]
    assert t["tau_at_least_0.6"] and t["top3_holds_2"] and t["pick_within_one_seed_sd"]
    assert not t["tau_interval_above_flops_and_params"]  # params order them perfectly too: no win over size


def test_a_second_reference_seed_measures_the_ceiling():
    """Seed 2 of the reference swaps the two best architectures: tau-b = 1 - 2 * 1 / C(6, 2) = 13/15 against
    seed 1, and the proxy (ordered as seed 1) is scored against seed 1 alone."""
    ref = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    ref2 = [0.5, 0.6, 0.7, 0.8, 0.9, 0.85]
    archs = [{"index": i, "flops": 100 - i, "params": 10 + i} for i in range(6)]
    results = [{"arch": i, "setting": REFERENCE, "seed": 1, "accuracy": a, "seconds": 9.0} for i, a in enumerate(ref2)]
    results += [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a, "seconds": 9.0} for i, a in enumerate(ref)]
    results += [{"arch": i, "setting": "p", "seed": 0, "accuracy": a - 0.3, "seconds": 2.0} for i, a in enumerate(ref)]
    setup = dataclasses.replace(_setup(seeds=1), reference_seeds=2)
    assert sum(j[1] == REFERENCE for j in _jobs(setup, archs)) == 12
    report = analyze(setup, archs, results, resamples=200)
    rows = {r["rung"]: r for r in report["rows"]}
    assert rows["p"]["tau"] == 1  # the run's own seed is the reference, whatever the order of the lines
    ceiling = rows["reference seed 2"]
    assert ceiling["kind"] == "reference" and ceiling["tau"] == pytest.approx(13 / 15) and ceiling["n"] == 6
    assert ceiling["seed_sd"] == pytest.approx(np.sqrt(2 / 6) * np.std([0.85, 0.9], ddof=1))  # pooled over 6
    assert report["targets"]["seed_sd"] is None  # the reference's noise is not the proxy's
    lines = []
    print_report(report, out=lines.append)
    assert any("+0.87" in line and "ceiling" in line for line in lines)


def test_a_folder_written_before_a_setup_field_existed_continues(tmp_path):
    """calibration.yaml files from before reference_seeds read it as its default, 1; any other value refuses."""
    stored = dataclasses.asdict(_setup())
    del stored["reference_seeds"]
    check_same_setup(stored, _setup(), tmp_path)
    with pytest.raises(OpmixError, match="reference_seeds 1, not 2"):
        check_same_setup(stored, dataclasses.replace(_setup(), reference_seeds=2), tmp_path)


def test_the_confirmed_pick_replays_the_search_top_3_then_the_second_setting():
    """'p' (two seeds, sd d * sqrt(2)) puts the reference's best, arch 5, third; 'q' re-ranks p's top 3 (archs 4,
    3, 5) and picks arch 5, with arch 4 within p's seed sd of it (a tie) and arch 3 clear of it."""
    ref = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9]
    p = [0.1, 0.2, 0.3, 0.55, 0.6, 0.5]
    q = {3: 0.7, 4: 0.795, 5: 0.8}
    archs = [{"index": i, "flops": 100 - i, "params": 10 + i} for i in range(6)]
    d = 0.01
    results = [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a} for i, a in enumerate(ref)]
    results += [{"arch": i, "setting": "p", "seed": s, "accuracy": a + (d if s else -d)}
                for i, a in enumerate(p) for s in (0, 1)]
    results += [{"arch": i, "setting": "q", "seed": 0, "accuracy": q.get(i, 0.0)} for i in range(6)]
    report = analyze(_setup(settings=("p", "q")), archs, results, resamples=0)
    (confirmed,) = report["confirmed_picks"]
    assert confirmed["top"] == [4, 3, 5] and confirmed["pick"] == 5 and confirmed["ties"] == [4]
    assert confirmed["reference"] == 0.9 and confirmed["rank"] == 1
    lines = []
    print_report(report, out=lines.append)
    assert any("re-ranked by 'q' pick arch 5" in line and "rank 1 of 6" in line and "arch 4, so a tie" in line
               for line in lines), lines


# ------------------------------------------------------------------------------ the full-width rung (issue 22)
TINY_ARCH = {"input": {"channels": 3, "size": 224, "classes": 1000}, "stem": {"type": "patch4", "width": 16},
             "stages": [{"op": "resnet_basic", "width": 16, "depth": 1, "stride": 1},
                        {"op": "mbconv", "width": 32, "depth": 1, "stride": 2}],
             "head": {"type": "pool_linear"}}


def test_the_full_width_reference_is_a_named_setting(tmp_path):
    from nas.calibrate import full_width_reference, load_settings

    (tmp_path / "s.yaml").write_text("settings: {default: {}}\nreference: {preset: full_width, epochs: 5}\n")
    _, reference = load_settings(tmp_path / "s.yaml")
    assert reference == full_width_reference(5)
    assert (reference.width_mult, reference.max_train, reference.image_size, reference.epochs) == (1.0, None, None, 5)
    assert full_width_reference(3, width_mult=0.5).width_mult == 0.5  # the fallback where 1.0 does not fit
    _, default = load_settings(None)
    assert (default.width_mult, default.max_train, default.epochs) == (0.25, None, 12)  # unchanged


@pytest.mark.parametrize("text,needle", [
    ("reference: full_width", "needs its epochs"),
    ("reference: {preset: full, epochs: 3}", "preset 'full' is not known"),
    ("reference: {preset: full_width, epochs: 3, width: 1}", "unknown knob(s) width"),
])
def test_a_bad_reference_preset_is_one_line(tmp_path, text, needle):
    from nas.calibrate import load_settings

    (tmp_path / "s.yaml").write_text("settings: {default: {}}\n" + text + "\n")
    with pytest.raises(OpmixError) as err:
        load_settings(tmp_path / "s.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_full_width_job_trains_the_whole_width_at_the_datas_resolution():
    """The calibration's own job (``_run_job``) at a tiny full-width setting: the network has the architecture's
    widths (not the proxy's quarter), the small-image stem at 32 px, and trains on every training image."""
    import torch

    from nas.arch import Arch
    from nas.calibrate import _run_job, full_width_reference
    from nas.network import build, stem_kind
    from nas.proxy import build_proxy
    from tests.train_helpers import square_task

    data = square_task(n_train=96, n_val=32, size=32)
    settings = full_width_reference(1)
    arch = Arch.from_dict(TINY_ARCH)
    model = build_proxy(arch, data, settings, seed=0)
    quarter = build(arch, width_mult=0.25, in_chans=1, num_classes=10, input_size=32)
    def head_width(net):  # the last stage's width, as the classifier reads it
        return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].in_features
    assert (head_width(model), head_width(quarter)) == (32, 8)
    assert stem_kind(arch, 32).startswith("small")
    result = _run_job(TINY_ARCH, REFERENCE, dataclasses.asdict(settings), 0, data, threads=1)
    assert 0.0 <= result["accuracy"] <= 1.0 and len(result["accuracies"]) == 1
