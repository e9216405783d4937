"""The Pareto front: the pure functions, the analysis of a run's records, and ``python -m nas.pareto``."""

from __future__ import annotations

import csv
import json
import math
import subprocess

import numpy as np
import pytest
from search_helpers import run_cli

import nas.pareto
from nas.rundir import RunDir
from nas.pareto import analyze, hypervolume, pareto_mask

NAN = float("nan")


def brute_front(points, maximize=(True, False)):
    """Definition, pair by pair: i is on the front unless some j is no worse everywhere and better somewhere."""
    def better_or_equal(a, b, k):
        return a[k] >= b[k] if maximize[k] else a[k] <= b[k]
    def strictly(a, b, k):
        return a[k] > b[k] if maximize[k] else a[k] < b[k]
    out = []
    for i, p in enumerate(points):
        if any(math.isnan(v) for v in p):
            out.append(False)
            continue
        dominated = any(all(better_or_equal(q, p, k) for k in range(len(p))) and
                        any(strictly(q, p, k) for k in range(len(p)))
                        for j, q in enumerate(points) if j != i and not any(math.isnan(v) for v in q))
        out.append(not dominated)
    return out


@pytest.mark.parametrize("points,expected", [
    ([[0.8, 2.0]], [True]),  # one trial
    ([[0.8, 2.0], [0.8, 2.0]], [True, True]),  # duplicates stay together
    ([[0.8, 2.0], [0.8, 3.0]], [True, False]),  # tie in accuracy: the cheaper wins
    ([[0.8, 2.0], [0.9, 2.0]], [False, True]),  # tie in FLOPs: the more accurate wins
    ([[0.8, 2.0], [0.9, 3.0], [0.7, 1.0]], [True, True, True]),  # a real trade-off
    ([[0.8, 2.0], [NAN, 1.0], [0.9, NAN]], [True, False, False]),  # NaN is never on the front
    ([[NAN, 1.0]], [False]),
    ([[0.5, 2.0], [0.6, 1.0], [0.6, 1.0], [0.4, 3.0]], [False, True, True, False]),
])
def test_pareto_mask_cases(points, expected):
    assert pareto_mask(np.array(points)).tolist() == expected


def test_pareto_mask_agrees_with_the_definition_on_random_points():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 30):
        pts = np.round(rng.random((n, 2)), 1)  # rounding makes ties and duplicates common
        pts[rng.random(n) < 0.1, 0] = np.nan
        assert pareto_mask(pts).tolist() == brute_front(pts.tolist())
        assert pareto_mask(pts, (False, False)).tolist() == brute_front(pts.tolist(), (False, False))


def test_pareto_mask_empty_and_bad_shape():
    assert pareto_mask(np.zeros((0, 2))).tolist() == []
    with pytest.raises(ValueError, match="objectives"):
        pareto_mask(np.zeros((3, 3)))


def test_hypervolume_formula():
    # one point at accuracy a and FLOPs f * budget dominates the rectangle a x (1 - f)
    assert hypervolume([0.8], [1e9], 4e9) == pytest.approx(0.8 * 0.75)
    # a staircase of two points: 0.6 x (1 - 0.25) + (0.9 - 0.6) x (1 - 0.5)
    assert hypervolume([0.6, 0.9], [1e9, 2e9], 4e9) == pytest.approx(0.6 * 0.75 + 0.3 * 0.5)
    # a dominated point, a point over the budget and a NaN add nothing
    staircase = 0.6 * 0.75 + 0.3 * 0.5
    assert hypervolume([0.6, 0.9, 0.5, 0.99, NAN], [1e9, 2e9, 3e9, 5e9, 1e8], 4e9) == pytest.approx(staircase)
    assert hypervolume([], [], 4e9) == 0.0


def record(trial_id, status, accuracy, flops, reference=None, params=1_000_000):
    arch = {"input": {"channels": 3, "size": 224, "classes": 1000}, "stem": {"type": "patch4", "width": 32},
            "stages": [{"op": "convnext", "width": 64, "depth": 2, "stride": 1}], "head": {"type": "pool_linear"}}
    return {"trial_id": trial_id, "status": status, "flops": flops, "params": params, "accuracy": accuracy,
            "epochs": 2, "accuracies": [accuracy] if accuracy is not None else [], "arch": arch,
            "reference": reference, "error": None}


RECORDS = [
    record(0, "completed", 0.70, 1.0e9),
    record(1, "completed", 0.80, 2.0e9),
    record(2, "completed", 0.75, 2.5e9),  # dominated by 1
    record(3, "stopped", 0.95, 0.5e9),  # partial training: never on the front
    record(4, "infeasible", None, 6.0e9),
    record(5, "failed", None, 1.5e9),
    record(6, "completed", 0.90, 5.0e9),  # on the front, but over the 4 G budget: not the pick
    record("ref-resnet50", "completed", 0.80, 3.0e9, reference="resnet50"),  # dominated by 1
    record(7, "completed", 0.80, 2.0e9),  # the same values as 1: both on the front
]


def test_analyze_keeps_stopped_infeasible_failed_off_the_front():
    a = analyze(RECORDS, 4e9)
    assert [r["trial_id"] for r in a["front"]] == [0, 1, 7, 6]
    assert a["best"]["trial_id"] == 1  # 0.80 at 2 G; 7 ties it exactly and comes later
    assert a["by_status"] == {"completed": 6, "stopped": 1, "infeasible": 1, "failed": 1, "interrupted": 0,
                             "confirmed": 0}
    assert a["hypervolume"] == pytest.approx(0.70 * 0.75 + 0.10 * 0.5)


def test_analyze_best_prefers_the_cheaper_on_equal_accuracy():
    recs = [record(0, "completed", 0.8, 3e9), record(1, "completed", 0.8, 2e9)]
    assert analyze(recs, 4e9)["best"]["trial_id"] == 1


def test_analyze_nothing_completed():
    a = analyze([record(0, "stopped", 0.5, 1e9), record(1, "infeasible", None, 9e9)], 4e9)
    assert a["front"] == [] and a["best"] is None and a["hypervolume"] == 0.0


def make_run(path, records, budget=4e9, cut_last_line=False):
    run = RunDir(path)
    run.write_config({"budget": int(budget), "space": "hybrid", "dataset": "fashion-mnist"})
    for r in records:
        run.append_trial(r)
    if cut_last_line:
        with open(run.trials, "a") as f:
            f.write('{"trial_id": 99, "status": "comp')
    return run


def pareto_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m nas.pareto ARGS``, run in this process."""
    return run_cli(nas.pareto.main, *args, cwd=cwd)


def test_cli_table_files_and_json(tmp_path):
    run = make_run(tmp_path / "run", RECORDS, cut_last_line=True)  # a run cut off mid-write still reads
    with pytest.warns(UserWarning, match="an unreadable line"):
        result = pareto_cli(run.path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line for line in lines if "convnext x2 64" in line]
    assert [row.split()[2 if row.startswith("*") else 1] for row in rows] == ["0", "1", "7", "6"]
    assert sum(row.startswith("*") for row in rows) == 1 and rows[1].startswith("*")
    assert ("6 completed, 1 stopped early, 1 rejected for the budget or the space's constraints, 1 failed"
            in result.stdout)
    assert f"hypervolume {0.70 * 0.75 + 0.10 * 0.5:.4f}" in result.stdout
    with open(run.path / "pareto.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["trial_id"] for row in table] == ["0", "1", "7", "6"]
    assert [row["recommended"] for row in table] == ["0", "1", "0", "0"]
    saved = json.loads((run.path / "pareto.json").read_text())
    assert [e["trial_id"] for e in saved["front"]] == [0, 1, 7, 6] and saved["recommended"] == 1
    png = (run.path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    with pytest.warns(UserWarning, match="an unreadable line"):
        result = pareto_cli(run.path, "--json", "--plot", tmp_path / "elsewhere" / "front.png")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == saved
    for entry in data["front"]:
        assert {"trial_id", "accuracy", "flops", "params", "arch"} <= set(entry)
    assert (tmp_path / "elsewhere" / "front.png").is_file()


def test_cli_marks_references(tmp_path):
    recs = [record(0, "completed", 0.7, 1e9), record("ref-resnet50", "completed", 0.85, 3e9, reference="resnet50")]
    result = pareto_cli(make_run(tmp_path / "run", recs).path)
    assert result.returncode == 0, result.stderr
    ref_rows = [line for line in result.stdout.splitlines() if "ref resnet50" in line]
    assert len(ref_rows) == 1 and ref_rows[0].startswith("*")


def test_cli_run_without_trials(tmp_path):
    result = pareto_cli(make_run(tmp_path / "run", []).path)
    assert result.returncode == 0, result.stderr
    assert "no completed trial yet" in result.stdout
    assert json.loads((tmp_path / "run" / "pareto.json").read_text())["front"] == []


@pytest.mark.parametrize("what,needle", [("missing", "no such run folder"), ("empty", "not a run folder"),
                                         ("nobudget", "budget")])
def test_cli_bad_run_is_one_line_exit_2(tmp_path, what, needle):
    path = tmp_path / "run"
    if what != "missing":
        path.mkdir()
    if what == "nobudget":
        (path / "config.yaml").write_text("space: hybrid\n")
    result = pareto_cli(path)
    assert result.returncode == 2
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_compares_several_runs(tmp_path):
    a = make_run(tmp_path / "runs" / "a", RECORDS)
    b = make_run(tmp_path / "runs" / "b", [record(0, "completed", 0.6, 0.5e9), record(1, "completed", 0.65, 3e9)],
                 budget=2e9)
    result = pareto_cli(a.path, b.path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["a"], ["b"])}
    assert rows["a"][1:] == ["4G", "6", "4", "0.8000", "2.000", f"{0.70 * 0.75 + 0.10 * 0.5:.4f}"]
    # b: 1 is over b's own 2 G budget, so the pick is 0; its front still holds both
    assert rows["b"][1:] == ["2G", "2", "2", "0.6000", "0.500", f"{0.6 * 0.75:.4f}"]
    compare = tmp_path / "runs" / "pareto-compare.png"
    assert compare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in (a, b):  # each run still gets its own files
        assert (run.path / "pareto.png").is_file() and (run.path / "pareto.json").is_file()
    data = json.loads(pareto_cli(a.path, b.path, "--json").stdout)
    assert [r["recommended"] for r in data["runs"]] == [1, 0]


def test_cli_several_runs_one_bad_writes_nothing(tmp_path):
    a = make_run(tmp_path / "a", RECORDS)
    result = pareto_cli(a.path, tmp_path / "missing")
    assert result.returncode == 2 and "no such run folder" in result.stderr
    assert not (a.path / "pareto.json").exists()


# ---------------------------------------------------------------------------------------- the confirmation rung
def confirmation(orig, seed, accuracy, flops, reference=None, val_images=1000):
    """A confirmation record as nas._confirm writes it (the fields analyze reads)."""
    return {**record(f"{orig}-c{seed}", "confirmed", accuracy, flops, reference=reference), "confirms": orig,
            "seed": seed, "fidelity": {"max_train": 3072, "epochs": 2, "train_images": 3072,
                                       "val_images": val_images}}


CONFIRMED = [
    record(0, "completed", 0.80, 1.0e9),  # the proxy's best ...
    record(1, "completed", 0.78, 2.0e9),
    record(2, "completed", 0.76, 1.5e9),  # dominated by 0 on the proxy front
    record(6, "completed", 0.70, 5.0e9),  # over the 4 G budget
    record("ref-resnet50", "completed", 0.70, 3.0e9, reference="resnet50"),
    confirmation(0, 0, 0.70, 1.0e9), confirmation(0, 1, 0.72, 1.0e9),  # ... confirms at a mean of 0.71
    confirmation(1, 0, 0.80, 2.0e9), confirmation(1, 1, 0.82, 2.0e9),  # mean 0.81: the pick
    confirmation(2, 0, 0.79, 1.5e9), confirmation(2, 1, 0.80, 1.5e9),  # mean 0.795: within noise of 1
    confirmation(6, 0, 0.99, 5.0e9), confirmation(6, 1, 0.99, 5.0e9),  # over the budget: never the pick
    confirmation("ref-resnet50", 0, 0.60, 3.0e9, "resnet50"), confirmation("ref-resnet50", 1, 0.64, 3.0e9, "resnet50"),
]


def test_the_pick_is_the_best_mean_confirmed_accuracy_within_the_budget():
    a = analyze(CONFIRMED, 4e9)
    assert a["proxy_best"]["trial_id"] == 0
    assert a["best"]["trial_id"] == 1 and a["best"]["status"] == "completed"  # the candidate's proxy record
    assert a["pick"]["mean"] == pytest.approx(0.81) and a["pick"]["sd"] == pytest.approx(0.01 * math.sqrt(2))
    assert a["pick"]["seeds"] == [0, 1] and a["pick"]["accuracies"] == [0.80, 0.82]
    assert [e["trial_id"] for e in a["confirmed"]] == [1, 2, 0, "ref-resnet50"]  # 6 is over the budget
    assert [e["recommended"] for e in a["confirmed"]] == [True, False, False, False]
    # confirmations stay off the proxy front, and are counted on their own
    assert [r["trial_id"] for r in a["front"]] == [0]  # 6-c0 (0.99 at 5 G) would be on it
    assert a["by_status"]["confirmed"] == 10 and a["by_status"]["completed"] == 5


def test_within_noise_of_the_pick():
    a = analyze(CONFIRMED, 4e9)
    noise = {e["trial_id"]: e["within_noise"] for e in a["confirmed"]}
    # 2: 0.81 - 0.795 = 0.015 < the binomial SE sqrt((.81 .19 + .795 .205) / 1000) = 0.0179 alone
    assert 0.015 < math.sqrt((0.81 * 0.19 + 0.795 * 0.205) / 1000) and noise[2] is True
    # 0: 0.81 - 0.71 = 0.10, far beyond either; the reference likewise (tests/test_noise.py: the rule's numbers)
    assert 0.10 > 2 * math.sqrt((0.81 * 0.19 + 0.71 * 0.29) / 1000)
    assert noise[0] is False and noise["ref-resnet50"] is False and noise[1] is None


def test_confirmed_ties_go_to_fewer_flops_and_one_seed_counts():
    recs = [record(0, "completed", 0.7, 3e9), record(1, "completed", 0.7, 2e9),
            confirmation(0, 0, 0.8, 3e9), confirmation(1, 0, 0.8, 2e9)]  # the other seeds were cut off
    a = analyze(recs, 4e9)
    assert a["best"]["trial_id"] == 1 and a["pick"]["sd"] is None
    assert a["confirmed"][1]["within_noise"] is True  # equal means are within noise


def test_noise_statement_names_the_close_ones_and_the_beaten_references():
    from nas.pareto import noise_statement

    text = noise_statement(analyze(CONFIRMED, 4e9))
    assert text.startswith("the pick cannot be told apart from trial 2 at this fidelity")
    assert "the search beat ref resnet50 beyond noise" in text and "2 seeds" in text
    far = [r for r in CONFIRMED if r.get("confirms") != 2]
    assert noise_statement(analyze(far, 4e9)).startswith("the pick beats every other confirmed candidate beyond noise")
    assert noise_statement(analyze(RECORDS, 4e9)) is None


def test_cli_shows_confirmed_means_and_marks(tmp_path):
    run = make_run(tmp_path / "run", CONFIRMED)
    result = pareto_cli(run.path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[2 if line[0] in "*~" else 1]: line for line in result.stdout.splitlines()
            if "±" in line and "convnext" in line}
    assert rows["1"].startswith("*") and "0.8100 ± 0.0141" in rows["1"]
    assert rows["2"].startswith("~") and "0.7950 ± 0.0071" in rows["2"]
    assert rows["0"].startswith(" ") and "0.7100 ± 0.0141" in rows["0"]
    assert "3072 images x 2 epochs" in result.stdout
    assert "the pick cannot be told apart from trial 2 at this fidelity" in result.stdout
    assert "10 confirmation trainings" in result.stdout
    saved = json.loads((run.path / "pareto.json").read_text())
    assert saved["recommended"] == 1 and saved["noise"].startswith("the pick cannot be told apart")
    entries = {e["trial_id"]: e for e in saved["confirmed"]}
    assert entries[1]["mean"] == pytest.approx(0.81) and entries[1]["sd"] == pytest.approx(0.01 * math.sqrt(2))
    assert entries[1]["seeds"] == [0, 1] and entries[1]["recommended"] and entries[1]["within_noise"] is None
    assert entries[2]["within_noise"] is True and entries["ref-resnet50"]["within_noise"] is False
    assert [e["trial_id"] for e in saved["front"]] == [0]  # the proxy front, without confirmations


# --------------------------------------------------------------------------------- objectives and latency (issue 19)
TARGET = "ort-cpu, 1 thread, batch 1"
LATENCY = {"target": "ort-cpu", "threads": 1, "batch": 1, "dtype": "float32", "budget_ms": 20.0, "table": None}


def timed(rec, ms, measured=None, iqr=None, predicted=None):
    """``rec`` with the latency fields a run with a latency target writes: ``latency_ms`` is the measurement
    where there is one, else the prediction."""
    predicted = ms if predicted is None else predicted
    return {**rec, "latency_ms": ms if measured is None else measured,
            "latency": {"predicted_ms": predicted, "measured_ms": measured, "iqr_ms": iqr, "target": TARGET}}


TIMED = [
    timed(record(0, "completed", 0.70, 1.0e9), 30.0),  # cheap in FLOPs, slow
    timed(record(1, "completed", 0.80, 2.0e9), 10.0, measured=12.0, iqr=0.5),  # judged by its measurement
    timed(record(2, "completed", 0.75, 3.0e9), 8.0),  # fast, but FLOP-dominated by 1
    timed(record(3, "completed", 0.90, 3.5e9), 25.0, measured=24.0, iqr=1.0),  # most accurate, over 20 ms
    record(4, "completed", 0.95, 0.5e9),  # no latency figure: off any latency front
    timed(record(5, "completed", 0.60, 1.5e9), 40.0),  # dominated in every plane
    timed(record(6, "infeasible", None, 2.0e9), 50.0),
]


def test_front_over_accuracy_and_latency():
    a = analyze(TIMED, 4e9, ("accuracy", "latency"), 20.0)
    # (accuracy, latency_ms) of the placed completed trials:
    # 0 (.70, 30), 1 (.80, 12), 2 (.75, 8), 3 (.90, 24), 5 (.60, 40)
    placed = [r for r in TIMED if r["status"] == "completed" and "latency_ms" in r]
    on = brute_front([[r["accuracy"], r["latency_ms"]] for r in placed])
    assert [r["trial_id"] for r in a["front"]] == [2, 1, 3]  # fastest first
    assert {r["trial_id"] for r, f in zip(placed, on) if f} == {2, 1, 3}
    assert [r["trial_id"] for r in a["unplaced"]] == [4]  # counted, not silently dropped
    # reference: accuracy 0, latency = the 20 ms budget; 3 (24 ms) lies beyond it and adds nothing:
    # 2 covers [0, .75] x [8/20, 1], 1 adds (.80 - .75) x (1 - 12/20)
    assert a["hypervolume"] == pytest.approx(0.75 * (1 - 8 / 20) + 0.05 * (1 - 12 / 20))
    assert a["reference"] == {"latency_ms": 20.0}
    # the pick: 4 (0.95) has no latency figure and 3 (0.90) is over 20 ms: neither is within both budgets
    assert a["best"]["trial_id"] == 1 and a["latency"] and a["latency_target"] == TARGET


def test_the_flop_front_ignores_latency_but_the_pick_respects_its_budget():
    a = analyze(TIMED, 4e9, ("accuracy", "flops"), 20.0)
    assert [r["trial_id"] for r in a["front"]] == [4]  # 0.95 at 0.5 G dominates every other trial on FLOPs
    assert a["unplaced"] == [] and a["hypervolume"] == pytest.approx(0.95 * (1 - 0.5 / 4))
    assert a["best"]["trial_id"] == 1  # 4 lacks a latency figure, 3 is over 20 ms
    assert analyze(TIMED, 4e9)["best"]["trial_id"] == 4  # without a latency budget: the most accurate


def test_three_objective_front():
    # 0 is the cheapest in FLOPs and 2 the fastest: both stay on a 3-D front that neither 2-D front holds whole
    recs = [timed(record(0, "completed", 0.8, 1e9), 30.0), timed(record(1, "completed", 0.8, 2e9), 20.0),
            timed(record(2, "completed", 0.7, 3e9), 10.0), timed(record(3, "completed", 0.7, 3e9), 30.0)]
    ids = lambda objectives: [r["trial_id"] for r in analyze(recs, 4e9, objectives)["front"]]
    assert ids(("accuracy", "flops")) == [0]
    assert ids(("accuracy", "latency")) == [2, 1]
    assert ids(("accuracy", "flops", "latency")) == [0, 1, 2]  # 3 is dominated by 2 (and by 1 and 0)
    rng = np.random.default_rng(1)
    pts = np.round(rng.random((40, 3)), 1)  # ties and duplicates
    many = [timed(record(i, "completed", float(p[0]), float(p[1]) * 1e9), float(p[2]) * 50) for i, p in enumerate(pts)]
    expected = [i for i, on in enumerate(brute_front([[r["accuracy"], r["flops"], r["latency_ms"]] for r in many],
                                                       (True, False, False))) if on]
    assert sorted(r["trial_id"] for r in analyze(many, None, ("accuracy", "flops", "latency"))["front"]) == expected


def union_of_boxes(points):
    """Inclusion-exclusion: the volume of the union of the boxes [0, a] x [f, 1] x [l, 1], each intersection
    being the box at (min a, max f, max l)."""
    import itertools

    total = 0.0
    for k in range(1, len(points) + 1):
        for subset in itertools.combinations(points, k):
            a = min(p[0] for p in subset)
            rest = [1 - max(p[i] for p in subset) for i in range(1, len(subset[0]))]
            total += (-1) ** (k + 1) * a * math.prod(rest)
    return total


def grid_count(points, n=8):
    """The union's volume by counting the cells of an n x n x n grid whose centres some box holds: exact when
    every coordinate is a multiple of 1/n."""
    centres = (np.arange(n) + 0.5) / n
    a, f, l = np.meshgrid(centres, centres, centres, indexing="ij")
    inside = np.zeros(a.shape, dtype=bool)
    for p in points:
        inside |= (a <= p[0]) & (f >= p[1]) & (l >= p[2])
    return inside.sum() / n ** 3


def test_hypervolume_in_three_dimensions_by_hand():
    # A (.8, .5, .5), B (.6, .25, .75), C (.4, .75, .25), costs in units of their references (1 G, 10 ms):
    # |A| = .8 .5 .5 = .2, |B| = .6 .75 .25 = .1125, |C| = .4 .25 .75 = .075; A^B = .6 .5 .25 = .075,
    # A^C = .4 .25 .5 = .05, B^C = A^B^C = .4 .25 .25 = .025
    by_hand = 0.2 + 0.1125 + 0.075 - 0.075 - 0.05 - 0.025 + 0.025
    pts = [(0.8, 0.5, 0.5), (0.6, 0.25, 0.75), (0.4, 0.75, 0.25)]
    assert union_of_boxes(pts) == pytest.approx(by_hand) and grid_count(pts, 40) == pytest.approx(by_hand)
    acc = [p[0] for p in pts]
    costs = [[p[1] * 1e9, p[2] * 10] for p in pts]
    assert hypervolume(acc, costs, [1e9, 10]) == pytest.approx(0.2625)
    # a dominated point, one beyond a reference and a NaN add nothing
    more = [0.3, 0.99, NAN]
    extra = [[0.9e9, 9.0], [0.1e9, 11.0], [0.1e9, 1.0]]
    assert hypervolume(acc + more, costs + extra, [1e9, 10]) == pytest.approx(0.2625)
    with pytest.raises(ValueError, match="reference"):
        hypervolume(acc, costs, [1e9])


def test_hypervolume_in_three_dimensions_against_a_grid_count():
    rng = np.random.default_rng(2)
    for n in (1, 2, 4, 7):
        pts = rng.integers(0, 9, size=(n, 3)) / 8  # multiples of 1/8, with ties
        expected = grid_count([p for p in pts if p[0] > 0])
        assert hypervolume(pts[:, 0], pts[:, 1:], [1.0, 1.0]) == pytest.approx(expected)
        assert union_of_boxes([p for p in pts if p[0] > 0] or [(0, 0, 0)]) == pytest.approx(expected)


def test_reference_without_a_budget_is_the_largest_completed_trial():
    recs = [timed(record(0, "completed", 0.6, 1e9), 10.0), timed(record(1, "completed", 0.8, 2e9), 40.0),
            timed(record(2, "stopped", 0.9, 3e9), 80.0)]  # a stopped trial does not set the reference
    a = analyze(recs, None, ("accuracy", "flops", "latency"))
    assert a["reference"] == {"flops": 2e9, "latency_ms": 40.0}
    # 1 sits on the reference in both costs and adds nothing: 0 covers .6 x (1 - 1/2) x (1 - 10/40)
    assert a["hypervolume"] == pytest.approx(0.6 * 0.5 * 0.75)
    from nas.pareto import reference_text

    text = reference_text(a)
    assert text.startswith("accuracy 0, FLOPs = 2 G, the largest among the completed trials (no FLOPs budget)")
    assert "latency = 40 ms, the largest among the completed trials (no latency budget)" in text
    assert analyze(recs, 4e9)["hypervolume"] == pytest.approx(0.6 * 0.75 + 0.2 * 0.5)  # two arguments, as before


def test_objectives_of_config():
    from nas.pareto import objectives_of

    assert objectives_of({"budget": 1}) == (("accuracy", "flops"), None)  # a run of old
    assert objectives_of({"objectives": ["accuracy", "latency"], "latency": LATENCY}) == (("accuracy", "latency"), 20.0)
    assert objectives_of({"objectives": ["accuracy", "flops"], "latency": {**LATENCY, "budget_ms": None}})[1] is None
    with pytest.raises(ValueError, match="objectives 'flops,accuracy' are not one of accuracy,flops, accuracy,latency"):
        objectives_of({"objectives": ["flops", "accuracy"]})
    with pytest.raises(ValueError, match="'latency' .* is null"):
        objectives_of({"objectives": ["accuracy", "latency"], "latency": None})
    with pytest.raises(ValueError, match="budget_ms -3"):
        objectives_of({"latency": {**LATENCY, "budget_ms": -3}})
    with pytest.raises(ValueError, match="not one of"):
        analyze(TIMED, 4e9, ("accuracy", "params"))


def test_within_budgets():
    from nas.pareto import within_budgets

    r = timed(record(0, "completed", 0.5, 2e9), 15.0)
    assert within_budgets(r, 4e9) and within_budgets(r, None, 15.0) and within_budgets(r, None)
    assert not within_budgets(r, 1e9, 20.0) and not within_budgets(r, 4e9, 14.9)
    assert not within_budgets(record(1, "completed", 0.5, 2e9), 4e9, 20.0)  # no latency figure


LATENCY_CONFIRMED = [
    timed(record(0, "completed", 0.80, 1.0e9), 30.0),  # the best confirmed mean, but over 20 ms
    timed(record(1, "completed", 0.78, 2.0e9), 15.0, measured=16.0, iqr=0.4),
    *({**confirmation(0, s, acc, 1.0e9), "latency_ms": 30.0} for s, acc in ((0, 0.85), (1, 0.86))),
    *({**confirmation(1, s, acc, 2.0e9), "latency_ms": 16.0} for s, acc in ((0, 0.80), (1, 0.82))),
]  # confirmations copy their candidate's latency_ms


def test_the_latency_budget_excludes_a_confirmed_pick():
    assert analyze(LATENCY_CONFIRMED, 4e9)["best"]["trial_id"] == 0  # FLOPs alone: the best mean
    a = analyze(LATENCY_CONFIRMED, 4e9, ("accuracy", "flops"), 20.0)
    assert a["best"]["trial_id"] == 1 and [e["trial_id"] for e in a["confirmed"]] == [1]
    assert a["pick"]["mean"] == pytest.approx(0.81)
    lines = "\n".join(nas.pareto.confirmed_lines(a))
    row = next(line for line in lines.splitlines() if line.startswith("*"))
    # proxy accuracy, GFLOPs, then the latency judged by, predicted and measured
    assert row.split()[7:12] == ["0.7800", "2.000", "16.00", "15.00", "16.00"]


OLD_CSV = ["trial_id", "reference", "accuracy", "flops", "gflops", "params", "recommended", "arch"]
OLD_FRONT_KEYS = ["trial_id", "reference", "accuracy", "flops", "params", "epochs", "recommended", "arch"]


def make_latency_run(path, records, objectives, budget=4e9, budget_ms=20.0):
    run = RunDir(path)
    run.write_config({"budget": None if budget is None else int(budget), "space": "hybrid",
                      "dataset": "fashion-mnist", "objectives": list(objectives),
                      "latency": {**LATENCY, "budget_ms": budget_ms}})
    for r in records:
        run.append_trial(r)
    return run


def png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_cli_with_latency_writes_latency_columns_and_a_second_panel(tmp_path):
    run = make_latency_run(tmp_path / "run", TIMED, ("accuracy", "latency"))
    result = pareto_cli(run.path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"budget 4 GFLOPs and 20 ms ({TARGET})" in out
    assert "Pareto front (proxy accuracy up, latency down; * the recommended pick):" in out
    rows = {line.split()[2 if line.startswith("*") else 1]: line.split() for line in out.splitlines()
            if "convnext x2 64" in line}
    assert list(rows) == ["2", "1", "3"]
    assert rows["1"][0] == "*" and rows["1"][5:8] == ["12.00", "10.00", "12.00"]  # judged, predicted, measured
    assert rows["2"][4:7] == ["8.00", "8.00", "-"]  # predicted only
    hv = 0.75 * (1 - 8 / 20) + 0.05 * (1 - 12 / 20)
    assert (f"hypervolume {hv:.4f} over accuracy x latency (reference: accuracy 0, latency = budget 20 ms)"
            in out)
    assert "1 completed trial without a latency figure (latency_ms) left off the front: trial 4" in out
    with open(run.path / "pareto.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == OLD_CSV[:5] + ["latency_ms", "predicted_ms", "measured_ms", "iqr_ms"] + OLD_CSV[5:]
    assert [(r["trial_id"], r["latency_ms"], r["measured_ms"], r["iqr_ms"]) for r in table] == [
        ("2", "8.0000", "", ""), ("1", "12.0000", "12.0000", "0.5000"), ("3", "24.0000", "24.0000", "1.0000")]
    saved = json.loads((run.path / "pareto.json").read_text())
    assert saved["objectives"] == ["accuracy", "latency"] and saved["latency_budget_ms"] == 20.0
    assert saved["latency_target"] == TARGET and saved["unplaced"] == [4]
    assert saved["hypervolume_reference"] == {"latency_ms": 20.0} and saved["hypervolume"] == pytest.approx(hv)
    entry = saved["front"][1]
    assert list(entry) == OLD_FRONT_KEYS[:-1] + ["latency_ms", "predicted_ms", "measured_ms", "iqr_ms", "arch"]
    assert (entry["latency_ms"], entry["predicted_ms"], entry["measured_ms"]) == (12.0, 10.0, 12.0)
    old = make_run(tmp_path / "old", RECORDS)
    assert pareto_cli(old.path).returncode == 0
    assert png_width(run.path / "pareto.png") == 2 * png_width(old.path / "pareto.png")  # two panels side by side


def test_cli_an_old_style_run_is_unchanged(tmp_path):
    run = make_run(tmp_path / "run", CONFIRMED)
    result = pareto_cli(run.path)
    assert result.returncode == 0, result.stderr
    assert f"  hypervolume {0.80 * 0.75:.4f} (reference: accuracy 0, FLOPs = budget)\n" in result.stdout
    assert f"{run.path}: budget 4 GFLOPs; 5 completed" in result.stdout
    assert "pred ms" not in result.stdout and "latency" not in result.stdout  # no latency column anywhere
    with open(run.path / "pareto.csv", newline="") as f:
        assert next(csv.reader(f)) == OLD_CSV
    saved = json.loads((run.path / "pareto.json").read_text())
    assert list(saved) == ["run", "budget", "hypervolume", "trials", "recommended", "front", "confirmed", "noise"]
    assert [list(e) for e in saved["front"]] == [OLD_FRONT_KEYS]
    assert not any("latency" in key for e in saved["confirmed"] for key in e)


def test_cli_three_objectives_and_no_flop_budget(tmp_path):
    recs = [timed(record(0, "completed", 0.8, 1e9), 30.0), timed(record(1, "completed", 0.8, 2e9), 20.0),
            timed(record(2, "completed", 0.7, 3e9), 10.0)]
    run = make_latency_run(tmp_path / "run", recs, ("accuracy", "flops", "latency"), budget=5e9, budget_ms=None)
    result = pareto_cli(run.path, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [e["trial_id"] for e in data["front"]] == [0, 1, 2] and data["latency_budget_ms"] is None
    # reference (0, 5 G, 30 ms, the slowest): slabs of accuracy (0, .7] x area of all three, (.7, .8] x of 0 and 1
    area3 = union_of_boxes([(1, 0.2, 1.0), (1, 0.4, 2 / 3), (1, 0.6, 1 / 3)])
    area2 = union_of_boxes([(1, 0.2, 1.0), (1, 0.4, 2 / 3)])
    assert data["hypervolume"] == pytest.approx(0.7 * area3 + 0.1 * area2)
    assert data["hypervolume_reference"] == {"flops": 5e9, "latency_ms": 30.0}


def test_cli_bad_objectives_is_one_line_exit_2(tmp_path):
    run = make_latency_run(tmp_path / "run", TIMED, ("accuracy", "params"))
    result = pareto_cli(run.path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "objectives 'accuracy,params' are not one of" in result.stderr and "Traceback" not in result.stderr


def test_summary_names_the_objectives_and_the_picks_latency(tmp_path, capsys):
    from nas._summary import print_summary, summarize

    run = make_latency_run(tmp_path / "run", TIMED, ("accuracy", "latency"))
    summary = summarize(run, run.read_config())
    print_summary(summary, 4_000_000_000)
    out = capsys.readouterr().out
    hv = 0.75 * (1 - 8 / 20) + 0.05 * (1 - 12 / 20)
    assert f"hypervolume {hv:.4f} over accuracy x latency (reference: accuracy 0, latency = budget 20 ms)" in out
    assert (f"best within the budgets (*): trial 1, accuracy 0.8000, 2.00 GFLOPs, 12.00 ms measured "
            f"(IQR 0.50 ms; {TARGET}), 1.00 M params") in out
    assert f"rejected for the budget 4 GFLOPs and 20 ms ({TARGET}) or the space's constraints" in out
    old = make_run(tmp_path / "old", RECORDS)
    print_summary(summarize(old, old.read_config()), 4_000_000_000)
    out = capsys.readouterr().out
    assert "over accuracy x FLOPs (reference: accuracy 0, FLOPs = budget)" in out and " ms" not in out


def test_cli_latency_alone_as_the_budget(tmp_path):
    run = make_latency_run(tmp_path / "run", TIMED, ("accuracy", "latency"), budget=None)
    result = pareto_cli(run.path)
    assert result.returncode == 0, result.stderr
    assert f"{run.path}: budget 20 ms ({TARGET}); 6 completed" in result.stdout
    saved = json.loads((run.path / "pareto.json").read_text())
    assert saved["budget"] is None and saved["recommended"] == 1  # 4 lacks a latency figure, 3 is over 20 ms
