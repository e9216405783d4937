"""Faults found by review of the search's later paths (issue 18): references on --resume, the time budget of a
resumed run, one Ctrl-C, exporting a reference by name, failures recorded once, --seed-references on --resume,
and the run folder's writers. Each test failed on the code before its fix."""

from __future__ import annotations

import optuna
import pytest
from test_search_runtime import FEASIBLE, THIRD, arch_of, fake_flops, make_searcher, train

from nas._searcher import BudgetSearcher

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_reference_on_resume_never_trains_under_a_cut_off_candidates_trial(tmp_path):
    s = make_searcher(tmp_path)
    s.study.enqueue_trial(FEASIBLE)
    s.searcher.suggest("t1")
    train(s, "t1", [0.3])  # one epoch of two: cut off, put back into the study to train first on --resume
    assert [r["status"] for r in s.run.read_trials()] == ["interrupted"]

    reference = arch_of(s, THIRD)  # a reference that lies in the space
    resumed = BudgetSearcher(study=s.study, space=s.space, budget=s.searcher.budget, epochs=2, run=s.run,
                             measure=lambda a: (fake_flops(a), 1234), references=[("myref", reference)],
                             log=s.logs.append)
    s.searcher = resumed
    config = resumed.suggest("t2")
    assert config["reference"] == "myref"
    train(s, "t2", [0.5, 0.6])

    complete = [t for t in s.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [(t.params, t.values) for t in complete] == [(THIRD, [0.6, fake_flops(reference)])]
    assert complete[0].user_attrs["reference"] == "myref"
    assert complete[0].constraints["flops_over_budget"] == fake_flops(reference) - s.searcher.budget
    assert complete[0].system_attrs["constraints"] == [fake_flops(reference) - s.searcher.budget]  # the dashboard's
    resumed.suggest("t3")  # the cut-off candidate is still waiting, and trains now
    assert resumed.live["t3"]["arch"] == arch_of(s, FEASIBLE)
    (ref_record,) = [r for r in s.run.read_trials() if r.get("reference")]
    assert ref_record["trial_id"] == "ref-myref" and ref_record["accuracy"] == 0.6


# ------------------------------------------------------------------------------ the command line, in process
@pytest.fixture
def fake_search(monkeypatch, tmp_path):
    """``nas.search._main`` with Ray and the search loop replaced: each call's SearchConfig and time budget are
    kept in the returned list, and the run folder is written as the real command writes it."""
    import nas.cluster
    import nas.search
    import nas.space
    from search_helpers import write_tiny_fashion

    calls = []

    def search(config, *, run, resume, time_budget_s, **kwargs):
        calls.append({"config": config, "resume": resume, "time_budget_s": time_budget_s})
        return {"by_status": {"completed": 1}}

    monkeypatch.setattr(nas.cluster, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(nas.cluster, "check_resources", lambda *a, **k: None)
    monkeypatch.setattr(nas.search, "search", search)
    monkeypatch.setattr(nas.search, "print_summary", lambda *a, **k: None)
    monkeypatch.setattr(nas.space, "load_space", lambda *a, **k: None)  # checks every operator: slow, not tested here
    data = write_tiny_fashion(tmp_path / "data", n=40)

    def main(*argv: str) -> int:
        return nas.search._main(["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(data), *argv])

    main.calls = calls
    main.runs = tmp_path / "runs"
    return main


def test_resume_keeps_the_runs_time_budget_or_its_absence(fake_search):
    from nas.rundir import RunDir
    from nas.search import BARE_TIME_BUDGET_S

    assert fake_search("--budget", "4.5G", "--trials", "8", "--epochs", "2", "--max-train", "256", "--name", "a") == 0
    assert fake_search("--budget", "4.5G", "--resume", "--name", "a") == 0
    assert [c["time_budget_s"] for c in fake_search.calls] == [None, None]  # not the bare command's cap
    assert RunDir(fake_search.runs / "a").read_config()["time_budget_s"] is None

    fake_search("--budget", "4.5G", "--name", "bare")  # the bare command: capped, and its resume too
    fake_search("--budget", "4.5G", "--resume", "--name", "bare")
    fake_search("--budget", "4.5G", "--time-budget", "30m", "--name", "timed")
    fake_search("--budget", "4.5G", "--resume", "--name", "timed")
    assert [c["time_budget_s"] for c in fake_search.calls[2:]] == [BARE_TIME_BUDGET_S] * 2 + [1800.0] * 2


@pytest.mark.parametrize("flags", [("--address", "10.0.0.1:6379"), ("--gpus-per-trial", "1"),
                                   ("--seed-references", "--confirm", "5"), ("--confirm", "5")])
def test_only_the_bare_command_on_this_machine_gets_the_cap(fake_search, flags):
    fake_search("--budget", "4.5G", "--name", "x", *flags)
    assert fake_search.calls[0]["time_budget_s"] is None


def test_seed_references_given_on_resume_is_applied_and_kept(fake_search):
    from nas.rundir import RunDir

    fake_search("--budget", "4.5G", "--trials", "2", "--name", "r")
    fake_search("--budget", "4.5G", "--resume", "--name", "r", "--seed-references")
    fake_search("--budget", "4.5G", "--resume", "--name", "r")
    assert [c["config"].seed_references for c in fake_search.calls] == [False, True, True]
    assert RunDir(fake_search.runs / "r").read_config()["seed_references"] is True


# --------------------------------------------------------------------------------- a real search, a real SIGINT
def test_one_ctrl_c_stops_the_search_records_the_running_trials_and_says_how_to_continue(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from search_helpers import clean_env, write_space, write_tiny_fashion

    from nas.rundir import RunDir

    data, space = write_tiny_fashion(tmp_path / "data"), write_space(tmp_path)
    run = RunDir(tmp_path / "runs" / "cc")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.search", "--budget", "80M", "--space", str(space), "--trials", "12",
         "--epochs", "3", "--max-train", "256", "--no-early-stop", "--data-dir", str(data), "--runs-dir",
         str(tmp_path / "runs"), "--name", "cc"],  # confirmation on (the default): it must not start
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.time() + 240
        while not any(r["status"] == "completed" for r in run.read_trials()):
            assert proc.poll() is None and time.time() < deadline, "the search ended before a trial completed"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole process group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "--resume --name cc" in err, err[-2000:]
    records = run.read_trials()
    assert not [r for r in records if "confirms" in r]
    assert "confirming" not in (run.path / "search.log").read_text()
    assert "interrupted" in [r["status"] for r in records], [r["status"] for r in records]


# ------------------------------------------------------------------------------------------- export --trial NAME
@pytest.mark.parametrize("asked", ["resnet50", "ref-resnet50"])
def test_export_finds_a_reference_by_name_whatever_id_its_record_has(asked):
    from nas.export import pick_trial
    from nas.rundir import trial_record
    from nas.space import load_reference

    ref = load_reference("resnet50")
    other = load_reference("convnext_t")
    # as a search before issue 18 recorded a reference that lies in the space: under its Optuna trial number
    records = [trial_record(0, other, "completed", 4_470_000_000, 28_000_000, error=None, accuracies=[0.5, 0.6]),
               trial_record(1, ref, "completed", 4_090_000_000, 25_500_000, error=None, accuracies=[0.4, 0.5],
                            reference="resnet50"),
               trial_record("1-c0", ref, "confirmed", 4_090_000_000, 25_500_000, error=None, accuracies=[0.55],
                            reference="resnet50", confirms=1, seed=0)]
    picked = pick_trial(records, 4.5e9, asked)
    assert picked["trial_id"] == 1 and picked["reference"] == "resnet50"
    assert pick_trial(records, 4.5e9, "0")["trial_id"] == 0


# ------------------------------------------------------------------------------------ failures recorded once
def test_a_failed_confirmation_is_recorded_once_and_retried_only_when_asked(tmp_path, monkeypatch):
    import nas._confirm
    import nas._loop
    from nas._loop import SearchConfig, _confirm_phase
    from nas._summary import summarize
    from nas.rundir import RunDir, trial_record
    from nas.space import load_reference

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.append_trial(trial_record(0, load_reference("resnet50"), "completed", 4_090_000_000, 25_500_000,
                                  error=None, accuracies=[0.3, 0.4]))
    trained = []

    def confirm(jobs, *, run, **kwargs):  # every job fails as a deterministic failure would, every time
        trained.append(len(jobs))
        for j in jobs:
            run.append_trial(trial_record(f"{j['confirms']}-c{j['seed']}", load_reference("resnet50"), "failed",
                                          j["flops"], j["params"], error="RuntimeError: boom",
                                          confirms=j["confirms"], seed=j["seed"]))
        return 0

    monkeypatch.setattr(nas._confirm, "confirm", confirm)
    monkeypatch.setattr(nas._loop, "start_ray", lambda *a, **k: None)
    monkeypatch.setattr(nas._loop, "slots", lambda *a, **k: 1)
    config = SearchConfig(budget=4_500_000_000, confirm=1)
    logs = []
    for _ in range(3):  # the first session, then two --resume
        _confirm_phase(config, run=run, data=None, session="s", address=None, resources={"cpu": 1, "gpu": 0},
                       deadline=None, log=logs.append)
    assert trained == [2]  # two seeds of one candidate, trained once
    assert len(summarize(run, config)["failures"]) == 2
    assert not [line for line in logs if "continue with --resume" in line]
    assert sum("2 confirmation training(s) failed" in line and "--resume --retry-failed --name run" in line
               for line in logs) == 3
    _confirm_phase(config, run=run, data=None, session="s", address=None, resources={"cpu": 1, "gpu": 0},
                   deadline=None, log=logs.append, retry_failed=True)
    assert trained == [2, 2]


def test_retry_failed_without_resume_is_one_line(capsys):
    from nas.search import main

    with pytest.raises(SystemExit) as exit_:
        main(["--budget", "4.5G", "--retry-failed"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--retry-failed goes with --resume" in err[0]


# ------------------------------------------------------------------------------------------- the writers
def test_atomic_write_takes_a_temporary_name_of_its_own(tmp_path):
    import threading

    from nas.rundir import atomic_write

    target = tmp_path / "config.yaml"
    (tmp_path / "config.yaml.tmp").mkdir()  # what a fixed temporary name would collide with
    atomic_write(target, "a: 1\n")
    assert target.read_text() == "a: 1\n"
    texts = [f"writer: {i}\n" + "x" * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(target, t)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in texts  # one writer's whole file, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "config.yaml.tmp"]  # no temporary left
    assert target.stat().st_mode & 0o777 == 0o644


def test_log_lines_and_figures_go_through_the_run_folders_writers(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nas._loop import _clock_log
    from nas.rundir import save_figure

    log_file = tmp_path / "search.log"
    log_file.write_text("[00:01] a line cut by a crash")  # no newline: torn
    log = _clock_log(0.0, log_file)
    log("next")
    lines = log_file.read_text().splitlines()
    assert lines[0] == "[00:01] a line cut by a crash" and lines[1].endswith("] next") and len(lines) == 2
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "front.png")
    plt.close(fig)
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.png", "search.log"]
