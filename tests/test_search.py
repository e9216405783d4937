"""python -m nas.search: bad input, a tiny real search, resume, failures, the confirmation rung.

The commands run in this process (``run_cli``) and their searches in the session's one Ray (``local_ray``);
a fresh ``python -m nas.search`` only where a test needs a real process: the console's exit code, and a
driver killed with the Ray it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

import nas.export
import nas.pareto
from nas.errors import OpmixError
from nas.rundir import RunDir
from nas.storage import storage_to_resume, storage_to_store
from search_helpers import (clean_env, run_cli, run_search, search_cli, small_args, write_space,
                            write_tiny_fashion)

REQUIRED = {"trial_id", "status", "flops", "params", "accuracy", "epochs", "arch", "error", "timings"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    write_tiny_fashion(root / "data")
    write_space(root)
    return root


@pytest.mark.parametrize("args,needle", [
    (["--budget", "4.5GB"], "4.5GFLOPs"),
    (["--budget", "1G", "--sampler", "cmaes"], "random, tpe, nsga2, evolution"),
    (["--budget", "1G", "--dataset", "mnist"], "fashion-mnist"),
    (["--budget", "1G", "--space", "hybird"], "built-in spaces"),
    (["--budget", "1G", "--trials", "-3"], "--trials -3"),
    (["--budget", "1G", "--resume"], "--resume needs --name"),
    (["--budget", "1G", "--resume", "--name", "nope"], "no run 'nope'"),
    (["--budget", "1G", "--time-budget", "soon"], "--time-budget"),
    (["--budget", "1G", "--name", "../escape"], "--name"),
    (["--budget", "1G", "--confirm", "-1"], "--confirm -1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    result = search_cli(*args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_console_command_says_bad_input_in_one_line_and_exits_2(tmp_path):
    """The same, through a real ``python -m nas.search``: its exit code and stderr as a shell sees them."""
    result = run_search("--budget", "4.5GB", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "4.5GFLOPs" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()


def test_runs_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = search_cli("--budget", "1G", "--runs-dir", str(blocker / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and "cannot be written" in result.stderr


@pytest.fixture(scope="module")
def finished_run(workdir, local_ray):
    result = search_cli(*small_args(workdir, "--trials", "3", "--name", "tiny", "--seed", "1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "runs" / "tiny", result


def records(run: Path) -> list[dict]:
    return RunDir(run).read_trials()


def study_name(run: Path) -> str:
    return RunDir(run).read_config()["study_name"]


def test_tiny_search_records_every_candidate(finished_run):
    run, result = finished_run
    recs = records(run)
    trained = [r for r in recs if r["status"] != "infeasible"]
    assert len(trained) == 3
    for r in recs:
        assert REQUIRED <= set(r) and r["status"] in ("completed", "stopped", "infeasible", "failed")
    for r in recs:
        if r["status"] == "infeasible":  # never trained; a broken constraint of the space is not even counted
            assert r["accuracy"] is None and r["epochs"] == 0 and r["ray_trial_id"] is None
            assert (r["flops"] is None and "decrease" in r["note"]) or r["flops"] > 80e6, r
        else:
            assert r["flops"] <= 80e6
    assert any(r["status"] == "completed" for r in recs)
    for r in recs:
        if r["status"] == "completed":
            assert r["epochs"] == 2 and r["accuracy"] == r["accuracies"][-1] and 0 <= r["accuracy"] <= 1
        if r["status"] == "stopped":
            assert r["epochs"] < 2
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["budget"] == 80_000_000 and config["trials"] == 3
    assert "python -m nas.pareto" in result.stdout and "python -m nas.export" in result.stdout
    assert "rejected for the budget" in result.stdout
    assert "0 confirmation trainings" in result.stdout and not list((run / "ray").glob("*-confirm"))  # --confirm 0


def test_study_agrees_with_the_records(finished_run):
    run, _ = finished_run
    study = optuna.load_study(study_name=study_name(run), storage=f"sqlite:///{run / 'study.db'}")
    by_number = {t.number: t for t in study.trials}
    for r in records(run):
        t = by_number[r["trial_id"]]
        if r["status"] == "completed":
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [r["accuracy"], r["flops"]]
        elif r["status"] == "stopped":
            assert t.state == optuna.trial.TrialState.PRUNED  # never a COMPLETE with partial accuracy
        elif r["status"] == "infeasible":
            assert t.state == optuna.trial.TrialState.COMPLETE and max(t.constraints.values()) > 0
            assert r["flops"] is None or t.values[1] == r["flops"] > 80e6


def _retrain_in_process(workdir: Path, run: Path, recs: list[dict]) -> dict:
    """Each record's arch trained again here, from its own seed and settings (the run's proxy, or for a
    confirmation the run's confirmation settings and its seed), one thread as in a trial."""
    import torch

    from nas.arch import Arch
    from nas.data import load_dataset
    from nas.search import SearchConfig
    from nas.proxy import train_arch

    config = yaml.safe_load((run / "config.yaml").read_text())
    search_config = SearchConfig.from_dict(config)
    settings = {False: search_config.proxy, True: search_config.confirmation}
    data = load_dataset("fashion-mnist", workdir / "data", seed=config["seed"])
    threads = torch.get_num_threads()
    try:
        return {r["trial_id"]: train_arch(Arch.from_dict(r["arch"]), data, settings["confirms" in r],
                                          seed=r.get("seed", config["seed"]), threads=1).accuracies[:r["epochs"]]
                for r in recs}
    finally:
        torch.set_num_threads(threads)


def test_a_trial_through_ray_equals_the_same_training_in_process(finished_run, workdir):
    """A trial's accuracies are a function of (arch, seed, settings): Ray's worker and this process agree."""
    run, _ = finished_run
    done = [r for r in records(run) if r["status"] in ("completed", "stopped")]
    assert done
    again = _retrain_in_process(workdir, run, done)
    assert {r["trial_id"]: r["accuracies"] for r in done} == again


def test_existing_name_without_resume_is_refused_and_untouched(finished_run, workdir):
    run, _ = finished_run
    before = (run / "trials.jsonl").read_text(), (run / "config.yaml").read_text()
    result = search_cli(*small_args(workdir, "--trials", "3", "--name", "tiny"))
    assert result.returncode == 2 and "--resume --name tiny" in result.stderr
    assert ((run / "trials.jsonl").read_text(), (run / "config.yaml").read_text()) == before


def test_resume_refuses_a_contradicting_flag(finished_run, workdir):
    result = search_cli(*small_args(workdir, "--name", "tiny", "--resume", "--sampler", "tpe"))
    assert result.returncode == 2 and "sampler was 'random'" in result.stderr


def test_a_storage_password_stays_out_of_the_run_folder():
    """config.yaml keeps the URL with its password as ***; a resume takes the full URL again, or says so."""
    url = "postgresql+psycopg2://bob:s%40cret@db.example:5432/optuna?sslmode=require"
    stored = storage_to_store(url)
    assert stored == "postgresql+psycopg2://bob:***@db.example:5432/optuna?sslmode=require"
    for plain in ("postgresql://bob@db.example/optuna", "sqlite:////tmp/study.db", "not a url", None):
        assert storage_to_store(plain) == plain
    assert storage_to_resume(stored, url) == url
    with pytest.raises(OpmixError, match=r"study is in postgresql\+psycopg2://bob:\*\*\*@db.* pass --storage"):
        storage_to_resume(stored, None)
    with pytest.raises(OpmixError, match=r"not --storage postgresql://bob:\*\*\*@elsewhere/optuna; drop"):
        storage_to_resume(stored, "postgresql://bob:s%40cret@elsewhere/optuna")
    assert storage_to_resume("sqlite:////tmp/study.db", None) == "sqlite:////tmp/study.db"
    assert storage_to_resume(None, None) is None
    with pytest.raises(OpmixError, match="its own study.db"):
        storage_to_resume(None, "sqlite:////tmp/other.db")


def test_resume_trains_only_new_candidates(finished_run, workdir):
    run, _ = finished_run
    before = records(run)
    result = search_cli(*small_args(workdir, "--name", "tiny", "--resume", "--trials", "5"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = records(run)
    assert after[:len(before)] == before  # nothing finished is lost or rewritten
    ids = [r["trial_id"] for r in after]
    assert len(ids) == len(set(ids))  # no candidate repeated
    assert sum(r["status"] != "infeasible" for r in after) == 5
    assert len(list((run / "ray").iterdir())) == 2  # one Tune session per invocation
    resumed = [r for r in after[len(before):] if r["status"] in ("completed", "stopped")]
    assert resumed and {r["trial_id"]: r["accuracies"] for r in resumed} == _retrain_in_process(workdir, run,
                                                                                              resumed)


def test_a_trial_that_raises_is_recorded_failed_and_the_search_goes_on(tmp_path, workdir, local_ray):
    """'boom' exists only in this process: the Ray workers cannot build it, a real build error there."""
    import operators
    from nas.rundir import RunDir
    from nas.search import SearchConfig, search

    if "boom" not in operators.list_ops():
        operators.register_op("boom", operators.get_spec("resnet_basic").factory, paper="test", family="conv")
    space = write_space(tmp_path, """
        stem: {type: patch4, width: 16}
        stages:
        - {output_stride: 4, ops: [boom, convnext], width: [16], depth: [1, 2]}
        """)
    config = SearchConfig(budget=10**9, space=str(space), trials=4, epochs=1, data_dir=str(workdir / "data"),
                          max_train=64, sampler="random", seed=3, confirm=0)
    run = RunDir(tmp_path / "run")
    run.write_config({})
    summary = search(config, run=run, log=lambda message: None)
    recs = run.read_trials()
    failed = [r for r in recs if r["status"] == "failed"]
    brief = [(r["status"], r["arch"]["stages"][0]["op"], r["error"]) for r in recs]
    assert failed and all(r["arch"]["stages"][0]["op"] == "boom" for r in failed), brief
    assert all("'boom'" in r["error"] and "operator" in r["error"] for r in failed), brief
    assert any(r["status"] == "completed" for r in recs), brief
    assert sum(r["status"] != "infeasible" for r in recs) == 4, brief
    assert summary["failures"] == failed


@pytest.mark.slow  # two `ray start` nodes and a search of its own: a minute or more on 2 cores
def test_search_across_two_ray_nodes(tmp_path, workdir):
    """A Ray head and a second worker node on 127.0.0.1, one CPU each: trials run on both.

    ``ray stop --force`` ends every Ray on the machine, the session's too: run it alone (``-m slow``)."""
    import socket

    ray_cli = str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    # A fresh HOME: an ~/.ray/auth_token left by an earlier local Ray makes `ray start` nodes disagree on
    # authentication (seen with ray 2.60); the cluster's nodes and the driver share this one.
    env = clean_env(HOME=str(tmp_path))
    subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)
    try:
        for extra in (["--head", f"--port={port}", "--include-dashboard=false"], [f"--address=127.0.0.1:{port}"]):
            started = subprocess.run([ray_cli, "start", *extra, *common], capture_output=True, text=True,
                                     timeout=180, env=env)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        result = run_search(*small_args(workdir, "--trials", "4", "--name", "cluster", "--no-early-stop",
                                        "--address", f"127.0.0.1:{port}"), cwd=workdir,
                            env_extra={"HOME": str(tmp_path)})
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env)
    trained = [r for r in records(workdir / "runs" / "cluster") if r["status"] != "infeasible"]
    assert len(trained) == 4 and all(r["status"] == "completed" for r in trained)
    assert len({r["node"] for r in trained}) == 2, [r["node"] for r in trained]
    assert "2 at a time" in result.stdout


def test_resume_after_the_driver_is_killed(workdir, local_ray):
    """SIGKILL to the driver (and the Ray it started) mid-search; --resume keeps and never repeats a trial."""
    args = small_args(workdir, "--trials", "4", "--name", "killed", "--no-early-stop", "--epochs", "3")
    proc = subprocess.Popen([sys.executable, "-m", "nas.search", *args], cwd=workdir, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    run = workdir / "runs" / "killed"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run / "trials.jsonl").exists() and any(r["status"] != "infeasible" for r in records(run)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the search ended before it could be killed"
    finally:
        kill_group(proc)
    before = records(run)
    result = search_cli(*small_args(workdir, "--name", "killed", "--resume", "--epochs", "3"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = records(run)
    assert after[:len(before)] == before
    ids = [r["trial_id"] for r in after]
    assert len(ids) == len(set(ids))
    assert sum(r["status"] != "infeasible" for r in after) == 4
    study = optuna.load_study(study_name=study_name(run), storage=f"sqlite:///{run / 'study.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to ``proc``'s process group, the driver and the Ray it started (Ray's processes stay in the
    driver's group), and wait until none of them is left: only this search's Ray, never the session's or
    another's (as ``ray stop`` would)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def test_asha_stops_trailing_candidates_but_never_a_reference():
    """Six trials reach the first rung (epoch 2 of 4) in falling order of accuracy: ASHA (reduction 2) stops
    those below the rung's top half; a reference among them trains on, so it completes and can be confirmed."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from nas._searcher import CandidateASHA

    def decisions(reference: set[int]) -> list[str]:
        asha = CandidateASHA(time_attr="epoch", max_t=4, grace_period=2, reduction_factor=2, metric="accuracy",
                             mode="max")
        trials = [SimpleNamespace(trial_id=f"t{i}", config={"reference": "ref" if i in reference else None})
                  for i in range(6)]
        for t in trials:
            asha.on_trial_add(None, t)
        return [asha.on_trial_result(None, t, {"epoch": 2, "accuracy": 0.9 - 0.1 * i}) for i, t in enumerate(trials)]

    plain = decisions(set())
    assert plain[0] == TrialScheduler.CONTINUE and TrialScheduler.STOP in plain[1:]
    with_refs = decisions({i for i, d in enumerate(plain) if d == TrialScheduler.STOP})
    assert with_refs == [TrialScheduler.CONTINUE] * 6


def test_seed_references_trains_those_within_the_budget_first_and_confirms_them(tmp_path, workdir, local_ray):
    result = search_cli("--budget", "2GFLOPs", "--space", str(workdir / "mini.yaml"), "--epochs", "1",
                        "--max-train", "64", "--data-dir", str(workdir / "data"), "--runs-dir", str(tmp_path),
                        "--trials", "1", "--name", "refs", "--seed-references", "--no-early-stop", "--confirm", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recs = records(tmp_path / "refs")
    proxies = [r for r in recs if r["status"] != "confirmed"]
    refs = [r["reference"] for r in proxies if r["reference"]]
    # the references whose stored counts fit 2 G (dy_resnet18 1.86 G, dy_mobilenetv2_100 0.29 G), and no other
    # (levit_384's 2.35 G and the 4 G networks lie over it)
    stored = json.loads((Path(__file__).parent / "data" / "reference_counts.json").read_text())
    within = sorted(name for name, counts in stored.items() if counts["flops"] <= 2e9)
    assert sorted(refs) == within and len(within) == 2
    trained = [r for r in proxies if r["status"] != "infeasible"]
    assert trained[0]["reference"] is not None and sum(r["reference"] is None for r in trained) == 1
    # every reference that completed is confirmed under the same training as the top of the front, 2 seeds each
    confirmed = [r for r in recs if r["status"] == "confirmed"]
    completed_refs = {r["trial_id"] for r in proxies if r["reference"] and r["status"] == "completed"}
    assert completed_refs and completed_refs <= {r["confirms"] for r in confirmed}
    assert len({json.dumps(r["fidelity"], sort_keys=True) for r in confirmed}) == 1
    assert sorted(r["seed"] for r in confirmed) == sorted([0, 1] * (len(confirmed) // 2))
    if any(r["reference"] for r in confirmed):
        assert "ref " in result.stdout.split("Confirmed (")[1]


def test_pareto_of_a_real_run_agrees_with_optuna(finished_run):
    """The study loads with optuna.load_study, and its own Pareto front (Optuna ranks feasible COMPLETE trials;
    stopped trials are PRUNED, infeasible ones carry a positive constraint) is ours."""
    import optuna

    from nas.pareto import analyze

    run, _ = finished_run
    result = run_cli(nas.pareto.main, run, "--json")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    recs = records(run)
    assert [e["trial_id"] for e in ours["front"]] == [r["trial_id"] for r in analyze(recs, 80e6)["front"]]
    assert ours["front"], "the tiny run should have completed trials"
    study = optuna.load_study(study_name=study_name(run), storage=f"sqlite:///{run / 'study.db'}")
    feasible = [t for t in study.best_trials
                if t.state == optuna.trial.TrialState.COMPLETE and all(v <= 0 for v in (t.constraints or {}).values())]
    theirs = {(round(t.values[0], 9), int(t.values[1])) for t in feasible}
    assert theirs == {(round(e["accuracy"], 9), e["flops"]) for e in ours["front"]}
    for e in ours["front"]:  # each of our front's trials is the Optuna trial of the same number
        t = study.trials[e["trial_id"]]
        assert t.values == [e["accuracy"], e["flops"]]


def test_export_of_a_real_run(finished_run, tmp_path):
    from nas.arch import Arch, load_arch
    from nas.pareto import analyze

    run, _ = finished_run
    best = analyze(records(run), 80e6)["best"]
    result = run_cli(nas.export.main, run, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    assert load_arch(tmp_path / "export" / "arch.yaml") == Arch.from_dict(best["arch"])
    assert f"{best['flops'] / 1e9:.3f} G" in (tmp_path / "export" / "README.md").read_text()


# ------------------------------------------------------------------------------------------ the confirmation rung
@pytest.fixture(scope="module")
def confirmed_run(workdir, local_ray):
    # the front can vary a little from run to run (with another sampler, proposals depend on which trial ends
    # first); the tests derive the candidates from the records (two or three on the front, as seen here)
    # a time budget far above what it takes: the confirmation's reserve is estimated, never reached
    result = search_cli(*small_args(workdir, "--trials", "4", "--name", "confirmed", "--no-early-stop",
                                    "--time-budget", "30m", confirm=2))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "runs" / "confirmed", result


def _means(recs: list[dict]) -> dict:
    by = {}
    for r in recs:
        if r["status"] == "confirmed":
            by.setdefault(r["confirms"], []).append(r["accuracy"])
    return {k: sum(v) / len(v) for k, v in by.items()}


def test_confirm_retrains_the_top_of_the_front_with_two_seeds(confirmed_run, workdir):
    from nas.data import load_dataset
    from nas.pareto import analyze

    run, result = confirmed_run
    recs = records(run)
    proxies = [r for r in recs if r["status"] != "confirmed"]
    front = analyze(proxies, 80e6)["front"]
    top = [r["trial_id"] for r in sorted(front, key=lambda r: (-r["accuracy"], r["flops"]))[:2]]
    assert len(top) == min(2, len(front)) >= 1
    confirmed = [r for r in recs if r["status"] == "confirmed"]
    assert sorted((r["confirms"], r["seed"]) for r in confirmed) == sorted((t, s) for t in top for s in (0, 1))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["confirm"] == 2 and config["confirm_max_train"] == 256  # 2 x --max-train 128
    by_id = {r["trial_id"]: r for r in proxies}
    val_images = min(1000, len(load_dataset("fashion-mnist", workdir / "data", seed=0).val_x))
    for r in confirmed:
        assert REQUIRED <= set(r) and r["trial_id"] == f"{r['confirms']}-c{r['seed']}"
        assert r["arch"] == by_id[r["confirms"]]["arch"] and r["flops"] == by_id[r["confirms"]]["flops"]
        assert r["fidelity"]["max_train"] == 256 and r["fidelity"]["epochs"] == 2
        assert r["fidelity"]["train_images"] == 256 and r["fidelity"]["val_images"] == val_images
        assert r["epochs"] == 2 and r["accuracy"] == r["accuracies"][-1] and r["error"] is None
    assert (run / "ray" / "session-1-confirm").is_dir()
    assert "Confirmed (256 images x 2 epochs" in result.stdout and "recommended pick (*)" in result.stdout


def test_under_a_time_budget_the_confirmation_is_estimated_from_the_top_candidates(confirmed_run):
    """The proxy phase keeps CONFIRM_SHARE of the 30 minutes until a candidate completes, then the estimate
    over the candidates' records (``confirmation_estimate_s``: the top 2, twice the images, the run's slots)."""
    from nas._confirm import CONFIRM_SHARE, confirmation_estimate_s

    run, _ = confirmed_run
    completed = [r for r in records(run) if r["status"] == "completed"]
    log = (run / "search.log").read_text()
    n_slots = int(re.search(r"\((\d+) at a time", log).group(1))
    assert f"; {CONFIRM_SHARE * 30:.1f} min of the time budget kept for the confirmation until a candidate" in log
    want = confirmation_estimate_s(completed, 80e6, 2, references=False, seed=0, slots=n_slots, data_factor=2.0)
    assert f"confirmation estimated at {want:.0f} s from the top candidates' training times" in log


def test_confirmed_pick_is_the_best_mean(confirmed_run):
    from nas.pareto import analyze

    run, result = confirmed_run
    recs = records(run)
    means = _means(recs)
    flops = {r["trial_id"]: r["flops"] for r in recs}
    want = min(means, key=lambda k: (-means[k], flops[k]))
    a = analyze(recs, 80e6)
    assert a["best"]["trial_id"] == want and a["pick"]["mean"] == pytest.approx(means[want])
    assert f"recommended pick (*): trial {want}, confirmed accuracy {means[want]:.4f}" in result.stdout


def test_a_confirmation_is_the_same_training_in_process(confirmed_run, workdir):
    run, _ = confirmed_run
    one = [r for r in records(run) if r["status"] == "confirmed"][-1:]
    assert _retrain_in_process(workdir, run, one) == {one[0]["trial_id"]: one[0]["accuracies"]}


def test_pareto_and_export_of_a_confirmed_run(confirmed_run, tmp_path):
    run, _ = confirmed_run
    means = _means(records(run))
    result = run_cli(nas.pareto.main, run)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.split("Confirmed (")[1].splitlines()
            if "±" in line and "mean ± sd" not in line]
    assert len(rows) == len(means) and sum(row.startswith("*") for row in rows) == 1
    assert all(row[0] in "*~ " for row in rows)
    statement = " ".join(result.stdout.split())  # the noise statement wraps at 118 columns
    assert "the pick " in statement and "2 seeds per candidate; seed sd" in statement  # what "noise" rests on
    data = json.loads((run / "pareto.json").read_text())
    assert {e["trial_id"]: e["mean"] for e in data["confirmed"]} == pytest.approx(means)
    pick = next(e for e in data["confirmed"] if e["recommended"])
    assert data["recommended"] == pick["trial_id"] and pick["seeds"] == [0, 1]
    result = run_cli(nas.export.main, run, "--out", tmp_path / "export")
    assert result.returncode == 0, result.stderr
    from nas.arch import Arch, load_arch

    assert load_arch(tmp_path / "export" / "arch.yaml") == Arch.from_dict(pick["arch"])
    readme = (tmp_path / "export" / "README.md").read_text()
    assert f"confirmed accuracy {pick['mean']:.4f} ± {pick['sd']:.4f} over 2 seed(s)" in readme


def test_resume_reruns_only_a_confirmation_cut_off(confirmed_run, workdir):
    """A confirmation cut off mid-way leaves no line: dropping one from trials.jsonl is that state."""
    run, _ = confirmed_run
    lines = (run / "trials.jsonl").read_text().splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if '"confirmed"' in line)
    lost = json.loads(lines[cut])
    (run / "trials.jsonl").write_text("".join(lines[:cut] + lines[cut + 1:]))
    before = records(run)
    result = search_cli(*small_args(workdir, "--name", "confirmed", "--resume", confirm=None))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = records(run)
    assert after[:len(before)] == before and len(after) == len(before) + 1
    again = after[-1]
    assert (again["trial_id"], again["confirms"], again["seed"]) == (lost["trial_id"], lost["confirms"], lost["seed"])
    assert again["accuracies"] == lost["accuracies"]  # the same training: (arch, seed, settings)
    assert sorted(p.name for p in (run / "ray").iterdir()) == ["session-1", "session-1-confirm", "session-2-confirm"]
    # and once every confirmation has its record, a resume trains nothing
    result = search_cli(*small_args(workdir, "--name", "confirmed", "--resume", confirm=None))
    assert result.returncode == 0 and records(run) == after and "nothing left to confirm" in result.stdout
