"""nas.latency: targets and their fingerprints, the timing rule, the per-layer table (keying, reuse, refusal of
another fingerprint's table), the fitted correction, the command's errors; and a search under
``--latency-budget`` end to end, with the layer measurements replaced by a formula so that what the
constraint refuses is known in advance (timings themselves are never asserted: benchmarks/bench_latency.py
measures them)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import nas.latency as latency
from nas.arch import Arch
from nas.errors import OpmixError
from nas.flops import arch_layers
from nas.latency import Correction, LatencyTable, Target, Timing, predict, time_runs
from nas.space import load_reference

from search_helpers import run_cli, search_cli, small_args, write_space, write_tiny_fashion


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test keeps its tables in its own folder, never in the user's ~/.cache."""
    monkeypatch.setenv("OPMIX_CACHE", str(tmp_path / "cache"))


def fake_ms(module: nn.Module, input_shape) -> float:
    """A stand-in latency: 10 ms per million parameters of the module (in its deploy form, as measured), so
    that a whole network's figure is exactly the sum of its layers' and the prediction is the truth."""
    return sum(p.numel() for p in module.parameters()) / 1e5


def layer_ms(layer) -> float:
    """``fake_ms`` of a layer as the table measures it: in its deploy form (BatchNorms folded)."""
    return fake_ms(latency._deploy(layer.build()), layer.input_shape)


@pytest.fixture
def fake_measure(monkeypatch):
    """``measure_module`` replaced by ``fake_ms`` (as a Timing), its calls counted."""
    calls = []

    def measure(module, input_shape, target, *, onnx_path=None, **timing):
        calls.append(tuple(input_shape))
        ms = fake_ms(module, input_shape)
        return Timing(ms, ms, ms, ms, (ms,), 1)

    monkeypatch.setattr(latency, "measure_module", measure)
    return calls


# ------------------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("kwargs,needle", [
    ({"name": "tflite"}, "ort-cpu, torch-cpu, cuda"),
    ({"name": "ort-cpu", "threads": 0}, "threads 0"),
    ({"name": "torch-cpu", "batch": -1}, "batch -1"),
    ({"name": "torch-cpu", "dtype": "float16"}, "float32"),
    ({"name": "cuda", "dtype": "int8"}, "float16, bfloat16"),
])
def test_a_bad_target_says_what_is_allowed(kwargs, needle):
    with pytest.raises(OpmixError, match=needle):
        Target(**kwargs)


def test_the_fingerprint_holds_what_a_figure_depends_on_and_names_the_table():
    one, two = Target("torch-cpu", threads=1), Target("torch-cpu", threads=2)
    fp = one.fingerprint()
    assert {"target", "threads", "batch", "cores", "cpu", "torch"} <= set(fp)
    assert fp["threads"] == 1 and two.fingerprint()["threads"] == 2
    assert one.key() != two.key() and one.key() != Target("torch-cpu", batch=8).key()
    assert one.key() == Target("torch-cpu", threads=1).key()  # the same target, the same table
    assert LatencyTable(one).path != LatencyTable(two).path


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_refused():
    with pytest.raises(OpmixError, match="no CUDA device"):
        Target("cuda").check()


def test_ort_cpu_without_onnxruntime_names_the_extra(monkeypatch):
    import nas.export

    monkeypatch.setattr(nas.export, "onnx_available", lambda: False)
    with pytest.raises(OpmixError, match=r"opmix\[export\]"):
        Target("ort-cpu").check()


@pytest.mark.parametrize("text,ms", [("12ms", 12.0), ("800us", 0.8), ("0.5s", 500.0), ("7", 7.0)])
def test_latency_budgets_parse_to_milliseconds(text, ms):
    assert latency.parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["12 fps", "-3ms", "0", "fast"])
def test_a_bad_latency_budget_says_how_to_write_one(text):
    with pytest.raises(OpmixError, match="12ms"):
        latency.parse_latency(text)


# ------------------------------------------------------------------------------------------------ timing
def test_the_figure_is_the_lowest_round_median_and_the_quartiles_are_of_every_run():
    # rounds of 3 calls: round medians 2, 4, 2, 3, 2 ms (the 2nd and 4th hit by a burst of other work); they
    # spread by 100 %, so five more rounds follow, at 3 ms each
    times = [0.001, 0.001] + [0.002, 0.002, 0.003, 0.004, 0.004, 0.009, 0.002, 0.002, 0.002,
                              0.003, 0.003, 0.003, 0.001, 0.002, 0.002] + [0.003] * 15
    t = time_runs(iter(times).__next__, rounds=5, repeats=3, warmup_s=0.0)
    flat = [1e3 * x for x in times[2:]]
    assert t.runs == 30 and t.round_ms == pytest.approx((2, 4, 2, 3, 2, 3, 3, 3, 3, 3))
    assert t.ms == pytest.approx(2.0) and t.median_ms == pytest.approx(statistics.median(flat))
    assert t.q25_ms == pytest.approx(statistics.quantiles(flat, n=4, method="inclusive")[0])
    assert t.q75_ms == pytest.approx(statistics.quantiles(flat, n=4, method="inclusive")[2])
    assert t.spread == pytest.approx(1.0)


def test_rounds_that_disagree_earn_a_second_set_and_steady_ones_do_not():
    steady = time_runs(lambda: 0.002, rounds=4, repeats=3, warmup_s=0.0)
    assert steady.runs == 12
    calls = iter([0.001] * 2 + [0.001] * 3 + [0.005] * 3 + [0.001] * 6)
    wide = time_runs(lambda: next(calls), rounds=2, repeats=3, warmup_s=0.0)
    assert wide.runs == 12 and len(wide.round_ms) == 4 and wide.ms == pytest.approx(1.0)


def test_a_real_module_is_timed_on_both_cpu_runtimes():
    conv = nn.Conv2d(3, 8, 3, padding=1).eval()
    for name in ("torch-cpu",) + (("ort-cpu",) if _has_ort() else ()):
        t = latency.measure_module(conv, (1, 3, 16, 16), Target(name), rounds=2, repeats=3, warmup_s=0.0)
        assert t.runs == 3 * len(t.round_ms) and len(t.round_ms) in (2, 4)  # a second set when they disagree
        assert 0 < t.ms == min(t.round_ms) and t.q25_ms <= t.median_ms <= t.q75_ms


def _has_ort() -> bool:
    from nas.export import onnx_available

    return onnx_available()


# ------------------------------------------------------------------------------------------------ table
def test_each_layer_is_measured_once_and_the_table_persists(fake_measure):
    arch = load_reference("resnet50")
    target = Target("torch-cpu")
    table = LatencyTable(target)
    layers = arch_layers(arch, (1, 3, 224, 224))
    distinct = {latency.layer_key(layer) for layer in layers}
    first = predict(arch, table)
    assert first.measured == len(distinct) == len(fake_measure) < len(layers)  # blocks 2..depth share entries
    want = 0.0
    for layer in layers:
        want += layer_ms(layer)
    assert first.sum_ms == pytest.approx(want, abs=1e-4 * len(layers))  # entries keep 4 decimals
    assert set(first.parts) == {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"}
    assert sum(first.parts.values()) == pytest.approx(first.sum_ms)
    again = predict(arch, table)
    assert again.measured == 0 and again.sum_ms == first.sum_ms
    fresh = LatencyTable(target)  # another process: the file holds every entry
    assert predict(arch, fresh).measured == 0 and len(fake_measure) == len(distinct)
    stored = json.loads(table.path.read_text())
    assert stored["fingerprint"] == target.fingerprint() and set(stored["entries"]) == distinct


def test_a_layer_is_keyed_by_its_call_its_input_and_the_batch(fake_measure):
    arch = load_reference("resnet50")
    wider = Arch.from_dict({**arch.to_dict(), "input": {**arch.to_dict()["input"], "size": 192}})
    table1, table8 = LatencyTable(Target("torch-cpu")), LatencyTable(Target("torch-cpu", batch=8))
    n = predict(arch, table1).measured
    assert predict(wider, table1).measured == n  # every input shape differs: nothing shared
    assert predict(arch, table8).measured == n and table8.path != table1.path
    assert predict(arch, table1, measure=False).measured == 0
    with pytest.raises(KeyError, match="not in the table"):
        predict(load_reference("convnext_t"), table1, measure=False)


def test_a_layer_s_key_changes_with_its_code(monkeypatch):
    import hashlib
    import inspect

    import operators.resnet as module

    layer = next(layer for layer in arch_layers(load_reference("resnet50")) if layer.part == "stages.0")
    assert layer.factory.__module__ == "operators.resnet"
    h = hashlib.sha1()
    for name in ("operators.resnet", *latency.SHARED_CODE):
        h.update(inspect.getsource(__import__(name, fromlist=["_"])).encode())
    assert f"#{h.hexdigest()[:8]}" in latency.layer_key(layer)
    before = latency.layer_key(layer)
    monkeypatch.setattr(latency, "_DIGESTS", {})  # the module's code edited: its source reads otherwise
    monkeypatch.setattr(inspect, "getsource", lambda m: "# edited\n" + open(m.__file__).read())
    assert latency.layer_key(layer) != before and module is not None


def test_a_table_from_another_fingerprint_is_refused(tmp_path, fake_measure):
    path = tmp_path / "shared.json"
    predict(load_reference("resnet50"), LatencyTable(Target("torch-cpu", threads=2), path))
    with pytest.raises(OpmixError, match="threads 2 here 1"):
        LatencyTable(Target("torch-cpu", threads=1), path)


def test_the_correction_fits_what_whole_networks_say_and_knows_its_error():
    exact = [{"sum_ms": s, "ms": 2.0 + 1.5 * s} for s in (10, 20, 40, 80, 160)]
    c = Correction.fit(exact)
    assert (c.a, c.b, c.n) == (pytest.approx(2.0), pytest.approx(1.5), 5) and c.error < 1e-9
    assert c(100) == pytest.approx(152.0)
    few = Correction.fit(exact[:3])  # too few to fit: the plain sum, with the default error
    assert (few.a, few.b, few.error) == (0.0, 1.0, latency.DEFAULT_ERROR)
    assert c.form == "line"
    # sums already unbiased, one wild measurement (a burst of other work): the line would chase it; kept is a
    # form whose leave-one-out errors are small, close to the plain sum
    wobble = (1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 0.97, 3.0)
    robust = Correction.fit([{"sum_ms": s, "ms": s * f} for s, f in zip((5, 9, 14, 20, 33, 50, 80, 120), wobble)])
    assert robust.form in ("sum", "scale") and robust.a == 0.0 and abs(robust.b - 1) <= 0.02
    assert robust(100) == pytest.approx(100, rel=0.02)
    noisy = Correction.fit([{"sum_ms": s, "ms": (2.0 + 1.5 * s) * f}
                            for s, f in zip((10, 20, 40, 80, 160, 320), (1.1, 0.9, 1.1, 0.9, 1.1, 0.9))])
    assert 0.1 < noisy.error < 0.5


def test_networks_measured_end_to_end_refit_the_table_s_correction(fake_measure):
    table = LatencyTable(Target("torch-cpu"))
    for i, name in enumerate(("resnet50", "convnext_t", "swin_t", "repvgg_a2")):
        arch = load_reference(name)
        pred = predict(arch, table)
        measured = 1.0 + 2.0 * pred.sum_ms
        table.add_network(arch, pred.sum_ms, Timing(measured, measured, measured, measured, (measured,), 1))
    assert table.correction.n == 4 and table.correction.b == pytest.approx(2.0)
    pred = predict(load_reference("resnet50"), LatencyTable(Target("torch-cpu")))  # reloaded from the file
    assert pred.ms == pytest.approx(1.0 + 2.0 * pred.sum_ms)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("args,needle", [
    (["search_spaces/references/resnet50.yaml", "--target", "tpu"], "ort-cpu, torch-cpu, cuda"),
    (["search_spaces/references/resnet50.yaml", "--trial", "3"], "--trial goes with a run folder"),
    (["nowhere.yaml"], "nowhere.yaml"),
])
def test_the_command_s_bad_input_is_one_line_and_exit_2(args, needle):
    root = Path(__file__).resolve().parents[1]
    result = run_cli(latency.main, *args, cwd=root)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_command_prints_the_total_and_each_stage(tmp_path, fake_measure):
    root = Path(__file__).resolve().parents[1]
    result = run_cli(latency.main, str(root / "search_spaces/references/repvgg_a2.yaml"), "--target", "torch-cpu",
                     "--predict", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out["parts"]) == {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"}
    assert out["target"]["target"] == "torch-cpu" and out["total"]["ms"] > 0
    assert out["predicted_sum_ms"] > 0


# ------------------------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("latency-search")
    write_tiny_fashion(root / "data")
    write_space(root)
    return root


def _latencies_of_the_space(workdir: Path) -> list[float]:
    """The fake latency of every network of the mini space (within its 80 M FLOPs), from the formula."""
    from nas.flops import measure_arch
    from nas.space import load_space

    space = load_space(workdir / "mini.yaml")
    out, known = [], {}
    for arch in space_archs(space):
        if not space.constraint_violations(arch) and measure_arch(arch)[0] <= 80e6:
            total = 0.0
            for layer in arch_layers(arch):
                key = latency.layer_key(layer)
                if key not in known:
                    known[key] = layer_ms(layer)
                total += known[key]
            out.append(total)
    return sorted(out)


def space_archs(space):
    import random

    rng, seen = random.Random(0), set()
    for _ in range(400):
        arch = space.random(rng)
        if arch not in seen:
            seen.add(arch)
            yield arch


@pytest.fixture(scope="module")
def latency_run(workdir, local_ray):
    """A tiny search under a latency budget at the median of the space's (fake) latencies."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OPMIX_CACHE", str(workdir / "cache"))
    calls: list = []

    def measure(module, input_shape, target, *, onnx_path=None, **timing):
        calls.append(tuple(input_shape))
        ms = fake_ms(module, input_shape)
        return Timing(ms, ms, ms, ms, (ms,), 1)

    mp.setattr(latency, "measure_module", measure)
    try:
        values = _latencies_of_the_space(workdir)
        bound = statistics.median(values)
        result = search_cli(*small_args(workdir, "--trials", "3", "--name", "lat", "--latency-budget",
                                        f"{bound}ms", "--latency-target", "torch-cpu", "--objectives",
                                        "accuracy,flops,latency"))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        low = search_cli(*small_args(workdir, "--trials", "2", "--name", "too-fast", "--latency-budget",
                                     f"{values[0] / 2}ms", "--latency-target", "torch-cpu"))
    finally:
        mp.undo()
    return workdir / "runs" / "lat", bound, values, result, low


def test_the_latency_budget_refuses_what_lies_over_it(latency_run):
    from nas.rundir import RunDir

    run, bound, _, _, _ = latency_run
    records = RunDir(run).read_trials()
    trained = [r for r in records if r["status"] in ("completed", "stopped")]
    over = [r for r in records if r["status"] == "infeasible" and "latency budget" in (r["note"] or "")]
    assert trained and over
    for r in trained:  # the formula is exact, so the prediction is the truth: nothing over the bound trains
        assert r["latency_ms"] <= bound + 1e-6 and r["latency"]["target"] == "torch-cpu, 1 thread, batch 1"
    for r in over:
        assert r["latency_ms"] > bound and r["flops"] <= 80e6
    for r in records:
        if r["status"] != "infeasible" or r["flops"] is not None and r["flops"] <= 80e6:
            want = sum(layer_ms(layer) for layer in arch_layers(Arch.from_dict(r["arch"])))
            assert r["latency"]["predicted_ms"] == pytest.approx(want, rel=1e-3)


def test_the_study_names_its_objectives_and_holds_both_constraints(latency_run):
    import optuna

    run, bound, _, _, _ = latency_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["objectives"] == ["accuracy", "flops", "latency"]
    assert config["latency"]["target"] == "torch-cpu" and config["latency"]["budget_ms"] == pytest.approx(bound)
    study = optuna.load_study(study_name=config["study_name"], storage=f"sqlite:///{run / 'study.db'}")
    assert study.metric_names == ["accuracy", "FLOPs", "latency (ms)"]
    assert study.directions[2] == optuna.study.StudyDirection.MINIMIZE
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values[0] > 0]
    assert complete and all(len(t.values) == 3 for t in complete)
    for t in complete:
        assert t.values[2] <= bound + 1e-6
    # both budgets are constraints, also in the list optuna-dashboard reads: it greys out exactly the refused
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in told:
        named = [t.constraints["flops_over_budget"], t.constraints["latency_over_budget"]]
        assert t.system_attrs["constraints"] == named
        if max(named) > 0:  # refused, never trained: told at accuracy 0
            assert t.values[0] == 0.0
    assert any(max(t.system_attrs["constraints"]) > 0 for t in told)
    assert any(max(t.system_attrs["constraints"]) <= 0 for t in told)


def test_the_front_and_its_files_carry_latency(latency_run):
    import nas.pareto

    run, _, _, result, _ = latency_run
    out = run_cli(nas.pareto.main, str(run))
    assert out.returncode == 0, out.stderr
    header = (run / "pareto.csv").read_text().splitlines()[0]
    assert "latency_ms" in header
    data = json.loads((run / "pareto.json").read_text())
    assert all(e.get("latency_ms") is not None for e in data["front"])


def test_a_latency_budget_below_every_network_gives_up_naming_the_fastest(latency_run):
    _, _, values, _, low = latency_run
    assert low.returncode == 2, low.stderr
    assert len(low.stderr.strip().splitlines()) == 1, low.stderr
    assert "fastest network seen took" in low.stderr and "raise --latency-budget" in low.stderr
    fastest = float(low.stderr.split("fastest network seen took ")[1].split(" ms")[0])
    assert fastest >= values[0] - 0.01  # no network of the space is faster than the formula's fastest


@pytest.mark.parametrize("args,needle", [
    (["--latency-budget", "5ms", "--latency-target", "tflite"], "ort-cpu, torch-cpu, cuda"),
    (["--latency-budget", "fast"], "12ms"),
    (["--objectives", "accuracy,params"], "accuracy,flops | accuracy,latency"),
])
def test_bad_latency_flags_are_one_line_and_exit_2(tmp_path, args, needle):
    result = search_cli("--budget", "1G", *args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_no_budget_at_all_says_which_to_give(tmp_path):
    result = search_cli("--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and "--latency-budget" in result.stderr and "--budget" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_latency_target_without_a_device_is_refused_before_anything_is_written(tmp_path):
    result = search_cli("--budget", "1G", "--latency-target", "cuda", "--runs-dir", str(tmp_path / "runs"),
                        cwd=tmp_path)
    assert result.returncode == 2 and "no CUDA device" in result.stderr and not (tmp_path / "runs").exists()


def test_a_table_of_another_target_is_refused_by_the_search(tmp_path, fake_measure):
    path = tmp_path / "table.json"
    predict(load_reference("resnet50"), LatencyTable(Target("torch-cpu", threads=2), path))
    result = search_cli("--budget", "1G", "--latency-target", "torch-cpu", "--latency-table", str(path),
                        "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and "another target" in result.stderr and not (tmp_path / "runs").exists()


def test_a_latency_objective_alone_takes_the_default_target_and_the_flags_fill_the_config():
    from nas.search import _config_from_args, _parser

    config = _config_from_args(_parser().parse_args(["--budget", "1G", "--objectives", "accuracy,latency"]), None)
    assert config.objectives == ("accuracy", "latency")
    assert config.latency == {"target": "ort-cpu", "threads": 1, "batch": 1, "dtype": "float32", "budget_ms": None,
                              "table": None}
    only = _config_from_args(_parser().parse_args(["--latency-budget", "800us", "--latency-threads", "2"]), None)
    assert only.budget is None and only.objectives == ("accuracy", "flops")
    assert only.latency["budget_ms"] == pytest.approx(0.8) and only.latency["threads"] == 2
    assert _config_from_args(_parser().parse_args(["--budget", "1G"]), None).latency is None


def test_the_searcher_stops_proposing_at_the_deadline(tmp_path):
    """Tune's time budget cannot interrupt a suggest() that rejects candidate after candidate (each latency
    prediction may take seconds): past its deadline the searcher asks the study for nothing more."""
    import time

    from nas._searcher import BudgetSearcher
    from nas.rundir import RunDir
    from nas.space import load_space

    class Study:
        asked = 0

        def ask(self):
            Study.asked += 1
            raise AssertionError("asked past the deadline")

    late = BudgetSearcher(study=Study(), space=load_space("hybrid"), budget=10**9, epochs=2,
                          run=RunDir(tmp_path / "run"), measure=lambda arch: (0, 0), deadline=lambda: time.time() - 1)
    assert late.suggest("t1") is None and Study.asked == 0


def test_a_candidate_s_latency_is_judged_once(fake_measure, monkeypatch):
    """A reference is judged before it is launched and again when launched: the prediction and the end-to-end
    check near the bound happen once per network."""
    from nas._costs import Costs

    arch = load_reference("resnet50")
    predicted = predict(arch, LatencyTable(Target("torch-cpu"))).ms
    checks = []
    monkeypatch.setattr(latency, "measure_arch_latency",
                        lambda a, t: checks.append(a) or {"total": Timing(predicted, predicted, predicted,
                                                                          predicted, (predicted,), 1)})
    costs = Costs(None, ("accuracy", "flops"), {"target": "torch-cpu", "budget_ms": predicted * 1.01}, None)
    first, again = costs.latency_of(arch), costs.latency_of(arch)
    assert first == again and first["latency"]["measured_ms"] == pytest.approx(predicted, rel=1e-4)
    assert len(checks) == 1
