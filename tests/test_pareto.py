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
    assert "6 completed, 1 stopped early, 1 rejected for the budget, 1 failed" in result.stdout
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
