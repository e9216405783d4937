"""The search's runtime rules: the budget searcher (constraints before FLOPs, no network trained twice, the
give-up counters and their messages), interrupted and failed trials, the TPE settings, the resources and
--resume checks of the command line, and the project's error base class.

The searcher is driven here as Ray Tune drives it (``suggest``, ``on_trial_result``, ``on_trial_complete``)
over an in-memory Optuna study and a fake ``measure`` that counts its calls; ``study.enqueue_trial`` makes the
sampler propose exactly the networks a test needs. A few tests run real (tiny) searches in this process, the
library's ``search`` or the command line's ``main``, in the session's one Ray.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from search_helpers import search_cli, write_space, write_tiny_fashion

import nas._searcher
from nas._searcher import BudgetSearcher, CandidateASHA
from nas._loop import make_sampler
from nas.rundir import RunDir
from nas.space import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
FINISHED = "FINISHED"  # ray.tune.search.Searcher.FINISHED
BUDGET = 100_000_000

# Two stages of one operator: 81 networks; widths must not decrease and the total depth is at most 4.
CONSTRAINED = """
name: constrained
stem: {type: patch4, width: 16}
stages:
- {output_stride: 4, ops: [resnet_basic], width: [16, 32, 64], depth: [1, 2, 3]}
- {output_stride: 8, ops: [resnet_basic], width: [16, 32, 64], depth: [1, 2, 3]}
constraints: {widths_non_decreasing: true, max_total_depth: 4}
"""

# A space with a single network in it.
SINGLE = """
name: single
stem: {type: patch4, width: 16}
stages:
- {output_stride: 4, ops: [resnet_basic], width: [16], depth: [1]}
"""


def fake_flops(arch) -> int:
    """A stand-in FLOP count: 1 M per unit of width x depth, summed over the stages."""
    return 1_000_000 * sum(s.width * s.depth for s in arch.stages)


def P(w1: int, d1: int, w2: int, d2: int) -> dict:
    """The Optuna parameters of a network of CONSTRAINED (fake FLOPs: (w1 d1 + w2 d2) M)."""
    return {"s1.width": w1, "s1.depth": d1, "s2.width": w2, "s2.depth": d2}


FEASIBLE, OTHER, THIRD = P(16, 1, 16, 1), P(16, 1, 32, 1), P(32, 1, 32, 1)  # 32 M, 48 M, 64 M
OVER_A, OVER_B = P(16, 2, 64, 2), P(64, 1, 64, 1)  # 160 M, 128 M: over the budget of 100 M
DECREASING, TOO_DEEP = P(64, 1, 32, 1), P(16, 3, 16, 2)  # against the space's constraints (96 M, 80 M)


def make_searcher(tmp_path: Path, space_text: str = CONSTRAINED, *, epochs: int = 2, budget: int = BUDGET,
                  sampler=None):
    """A BudgetSearcher over an in-memory study (random sampler unless given), a run folder and a counting fake
    measure."""
    space = load_space(write_space(tmp_path, space_text))
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    measured, logs = [], []

    def measure(arch):
        measured.append(arch)
        return fake_flops(arch), 1234

    searcher = BudgetSearcher(study=study, space=space, budget=budget, epochs=epochs, run=run, measure=measure,
                              log=logs.append)
    return SimpleNamespace(searcher=searcher, study=study, space=space, run=run, measured=measured, logs=logs)


def arch_of(s, params: dict):
    """The network of ``s.space`` with these Optuna parameters."""
    return s.space.sample(optuna.trial.FixedTrial(params))


def train(s, trial_id: str, accuracies: list[float], *, error: str | None = None, asha_stopped: bool = False):
    """What Ray Tune tells the searcher about one trial: a result per epoch, then the trial's end."""
    if asha_stopped:
        s.searcher.asha_stopped.add(trial_id)
    result = None
    for epoch, acc in enumerate(accuracies, start=1):
        result = {"epoch": epoch, "accuracy": acc, "train_seconds": 0.1 * epoch, "node": "n"}
        s.searcher.on_trial_result(trial_id, result)
    if error is not None:  # the trial function caught an exception: its last result carries it
        result = {"error": error, "epoch": 0, "accuracy": 0.0, "train_seconds": 0.2, "node": "n"}
        s.searcher.on_trial_result(trial_id, result)
    s.searcher.on_trial_complete(trial_id, result)


def statuses(s) -> list[tuple]:
    return [(r["trial_id"], r["status"]) for r in s.run.read_trials()]


# ---------------------------------------------------------------------------------------------- 1. constraints
@pytest.mark.parametrize("params,reason", [(DECREASING, "widths [64, 32] decrease"),
                                           (TOO_DEEP, "total depth 5 exceeds 4")])
def test_a_candidate_against_the_spaces_constraints_is_refused_before_its_flops_are_counted(tmp_path, params,
                                                                                             reason):
    s = make_searcher(tmp_path)
    s.study.enqueue_trial(params)
    s.study.enqueue_trial(FEASIBLE)
    config = s.searcher.suggest("t1")
    assert config["arch"] == arch_of(s, FEASIBLE).to_dict()
    assert s.measured == [arch_of(s, FEASIBLE)]  # the refused network's FLOPs were never counted
    refused = s.run.read_trials()
    assert len(refused) == 1
    r = refused[0]
    assert r["status"] == "infeasible" and r["flops"] is None and r["params"] is None and r["epochs"] == 0
    assert r["arch"] == arch_of(s, params).to_dict() and reason in r["note"]
    t = s.study.trials[r["trial_id"]]
    # told to Optuna as infeasible (a positive constraint), which TPE and NSGA-II learn from
    assert t.state == optuna.trial.TrialState.COMPLETE and t.constraints["flops_over_budget"] > 0
    assert any(reason in line and "infeasible" in line for line in s.logs)


# ---------------------------------------------------------------------------------- 2. never trained twice
@pytest.mark.parametrize("ending", ["completed", "stopped", "failed"])
def test_a_network_that_has_trained_is_not_trained_again(tmp_path, ending):
    s = make_searcher(tmp_path)
    s.study.enqueue_trial(FEASIBLE)
    first = s.searcher.suggest("t1")
    if ending == "completed":
        train(s, "t1", [0.5, 0.6])
    elif ending == "stopped":
        train(s, "t1", [0.3], asha_stopped=True)
    else:
        train(s, "t1", [], error="RuntimeError: boom")
    assert statuses(s) == [(first["candidate"], ending)]
    s.study.enqueue_trial(FEASIBLE)  # proposed again, then a new network
    s.study.enqueue_trial(OTHER)
    second = s.searcher.suggest("t2")
    assert second["arch"] == arch_of(s, OTHER).to_dict()
    assert s.measured == [arch_of(s, FEASIBLE), arch_of(s, OTHER)]  # the repeat was not even counted
    assert statuses(s) == [(first["candidate"], ending)]  # nor recorded
    again = next(t for t in s.study.trials if t.user_attrs.get("duplicate_of") is not None)
    assert again.user_attrs["duplicate_of"] == first["candidate"]
    state = optuna.trial.TrialState
    if ending == "completed":  # its result is told to Optuna again
        assert again.state == state.COMPLETE and again.values == [0.6, fake_flops(arch_of(s, FEASIBLE))]
        assert again.constraints["flops_over_budget"] <= 0
    else:
        assert again.state == {"stopped": state.PRUNED, "failed": state.FAIL}[ending]


def test_a_network_training_in_another_slot_is_not_launched_again(tmp_path):
    s = make_searcher(tmp_path)
    for params in (FEASIBLE, FEASIBLE, OTHER, FEASIBLE):
        s.study.enqueue_trial(params)
    first = s.searcher.suggest("t1")
    second = s.searcher.suggest("t2")  # the first is still training
    assert first["arch"] == arch_of(s, FEASIBLE).to_dict() and second["arch"] == arch_of(s, OTHER).to_dict()
    assert s.measured == [arch_of(s, FEASIBLE), arch_of(s, OTHER)]
    dup = s.study.trials[1]
    assert dup.user_attrs["duplicate_of"] == first["candidate"] and dup.state == optuna.trial.TrialState.FAIL
    train(s, "t1", [0.5, 0.7])
    s.study.enqueue_trial(THIRD)
    third = s.searcher.suggest("t3")  # the fourth proposal repeats the first, which has completed now
    assert third["arch"] == arch_of(s, THIRD).to_dict()
    assert [a for a in s.measured if a == arch_of(s, FEASIBLE)] == [arch_of(s, FEASIBLE)]
    assert statuses(s) == [(first["candidate"], "completed")]


def test_the_only_network_of_a_space_trains_once_however_many_slots_ask(tmp_path, monkeypatch):
    monkeypatch.setattr(nas._searcher, "MAX_DUPLICATES", 5)
    s = make_searcher(tmp_path, SINGLE)
    first = s.searcher.suggest("t1")
    assert first is not None and first != FINISHED
    assert s.searcher.suggest("t2") == FINISHED  # the same network trains in slot 1: nothing else to offer
    assert len(s.measured) == 1 and list(s.searcher.live) == ["t1"]
    train(s, "t1", [0.4, 0.5])
    assert s.searcher.suggest("t3") == FINISHED
    assert len(s.measured) == 1 and statuses(s) == [(first["candidate"], "completed")]


def test_a_rejected_network_proposed_again_is_neither_counted_nor_recorded_again(tmp_path, monkeypatch):
    monkeypatch.setattr(nas._searcher, "MAX_REJECTIONS", 3)
    s = make_searcher(tmp_path)
    for params in (OVER_A, OVER_A, DECREASING, OVER_A, DECREASING, FEASIBLE):
        s.study.enqueue_trial(params)
    config = s.searcher.suggest("t1")  # 2 distinct rejections (of 3 allowed) only: the repeats do not count
    assert config != FINISHED and config["arch"] == arch_of(s, FEASIBLE).to_dict()
    assert s.measured == [arch_of(s, OVER_A), arch_of(s, FEASIBLE)]
    assert [r["status"] for r in s.run.read_trials()] == ["infeasible", "infeasible"]
    repeats = [t for t in s.study.trials if t.user_attrs.get("duplicate_of") is not None]
    assert len(repeats) == 3 and all(t.constraints["flops_over_budget"] > 0 for t in repeats)  # still infeasible


# --------------------------------------------------------------------------------- 3. the give-up counters
def test_duplicates_do_not_use_up_the_give_up_counter(tmp_path, monkeypatch):
    monkeypatch.setattr(nas._searcher, "MAX_REJECTIONS", 3)
    s = make_searcher(tmp_path)
    s.study.enqueue_trial(FEASIBLE)
    s.searcher.suggest("t1")
    train(s, "t1", [0.5, 0.6])
    for params in (OVER_A, FEASIBLE, OVER_B, FEASIBLE, FEASIBLE, FEASIBLE, OTHER):
        s.study.enqueue_trial(params)
    config = s.searcher.suggest("t2")  # two rejections and four repeats in a row: under 3 rejections
    assert config != FINISHED and config["arch"] == arch_of(s, OTHER).to_dict()
    assert [r["status"] for r in s.run.read_trials()] == ["completed", "infeasible", "infeasible"]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_giving_up_on_the_budget_says_what_happened(tmp_path, monkeypatch, sampler):
    monkeypatch.setattr(nas._searcher, "MAX_REJECTIONS", 3)
    s = make_searcher(tmp_path, sampler=make_sampler(sampler, 0, 20))
    s.study.enqueue_trial(FEASIBLE)
    s.searcher.suggest("t1")
    train(s, "t1", [0.5, 0.6])
    for params in (OVER_A, DECREASING, OVER_B, FEASIBLE):  # the last one is never reached
        s.study.enqueue_trial(params)
    assert s.searcher.suggest("t2") == FINISHED
    message = s.logs[-1]
    assert "stopping" in message and "3" in message and "infeasible" in message, message
    assert "1 broke the space's constraints" in message and "2 over the budget" in message, message
    assert "0.128" in message and "0.1 G" in message, message  # the cheapest over budget: OVER_B, 128 M
    assert re.search(r"\b1 (were|was) trained", message), message
    assert "--budget" in message and "narrow the space" in message, message
    # random sampling (the default) never learns where the budget lies: the message names the samplers that do
    assert ("--sampler tpe or evolution" in message) == (sampler == "random"), message
    assert "\n" not in message.strip()


def test_a_used_up_space_stops_the_search_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(nas._searcher, "MAX_DUPLICATES", 4)
    monkeypatch.setattr(nas._searcher, "MAX_REJECTIONS", 50)
    s = make_searcher(tmp_path, SINGLE)
    s.searcher.suggest("t1")
    train(s, "t1", [0.5, 0.6])
    started = len(s.study.trials)
    assert s.searcher.suggest("t2") == FINISHED
    assert len(s.study.trials) - started == 4  # MAX_DUPLICATES proposals, then it stops
    message = s.logs[-1]
    assert "stopping" in message and "4" in message and "1 trained" in message, message
    assert "widen the space" in message and "--trials" in message, message
    assert "budget" not in message, message  # not mistaken for a budget problem


# ------------------------------------------------------------------------------------------- 4. the sampler
def test_tpe_samples_the_conditional_space_jointly_and_lies_about_running_trials():
    from nas._loop import make_sampler

    tpe = make_sampler("tpe", 0, 20)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._group is True and tpe._constant_liar is True and tpe._multivariate is True
    assert tpe._n_startup_trials == 10


# ----------------------------------------------------------------------------------- 5. interrupted trials
def test_a_trial_cut_off_is_interrupted_told_fail_and_proposed_again(tmp_path):
    s = make_searcher(tmp_path)
    s.study.enqueue_trial(OTHER)
    first = s.searcher.suggest("t1")
    train(s, "t1", [0.45])  # one epoch of two, not stopped by ASHA, no error: the run ended under it
    (r,) = s.run.read_trials()
    assert r["status"] == "interrupted" and r["error"] is None and r["accuracies"] == [0.45]
    assert r["trial_id"] == first["candidate"] and r["arch"] == arch_of(s, OTHER).to_dict()
    assert s.study.trials[first["candidate"]].state == optuna.trial.TrialState.FAIL
    again = s.searcher.suggest("t2")  # put back into the study: proposed first, and trained again
    assert again != FINISHED and again["arch"] == first["arch"] and again["candidate"] != first["candidate"]
    assert s.study.trials[again["candidate"]].user_attrs.get("retrains") == first["candidate"]
    train(s, "t2", [0.45, 0.5])
    assert [x["status"] for x in s.run.read_trials()] == ["interrupted", "completed"]


def test_asha_stopped_trials_are_stopped_and_others_cut_off_are_interrupted(tmp_path):
    """Four trials reach ASHA's first rung (epoch 1 of 3) in falling order of accuracy; ASHA stops the lower
    ones, then the run ends under the others."""
    from ray.tune.schedulers import TrialScheduler

    s = make_searcher(tmp_path, epochs=3, budget=10**12)
    asha = CandidateASHA(time_attr="epoch", max_t=3, grace_period=1, reduction_factor=2, metric="accuracy",
                         mode="max", stopped=s.searcher.asha_stopped)
    ids = [f"t{i}" for i in range(4)]
    configs = [s.searcher.suggest(i) for i in ids]
    assert len({c["candidate"] for c in configs}) == 4
    decisions = {}
    for n, (trial_id, config) in enumerate(zip(ids, configs)):
        trial = SimpleNamespace(trial_id=trial_id, config=config)
        asha.on_trial_add(None, trial)
        result = {"epoch": 1, "accuracy": 0.9 - 0.1 * n}
        s.searcher.on_trial_result(trial_id, result)
        decisions[trial_id] = asha.on_trial_result(None, trial, result)
    stopped = {i for i, d in decisions.items() if d == TrialScheduler.STOP}
    assert stopped and stopped != set(ids) and stopped == s.searcher.asha_stopped
    for trial_id in ids:  # ASHA's stops, then the end of the run for the rest
        s.searcher.on_trial_complete(trial_id, {"epoch": 1, "accuracy": 0.5})
    got = {r["ray_trial_id"]: r["status"] for r in s.run.read_trials() if r["status"] != "infeasible"}
    assert got == {i: "stopped" if i in stopped else "interrupted" for i in ids}
    state = {t.number: t.state for t in s.study.trials}
    for trial_id, config in zip(ids, configs):
        assert state[config["candidate"]] == (optuna.trial.TrialState.PRUNED if trial_id in stopped
                                              else optuna.trial.TrialState.FAIL)


# ---------------------------------------------------------------------------------------------- 7. resources
def test_check_resources_names_the_flag_that_asks_too_much(monkeypatch):
    import ray

    from nas.cluster import check_resources
    from nas.errors import OpmixError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 1e9})
    check_resources(2, 0)  # fits
    with pytest.raises(OpmixError) as cpus:
        check_resources(64, 0)
    assert "--cpus-per-trial 64" in str(cpus.value) and "(2)" in str(cpus.value) and "\n" not in str(cpus.value)
    with pytest.raises(OpmixError) as gpus:
        check_resources(1, 1)
    assert "--gpus-per-trial 1" in str(gpus.value) and "\n" not in str(gpus.value)


# ------------------------------------------------------------------------------------ 9. the error classes
def test_cli_run_turns_opmix_errors_into_one_line_and_lets_bugs_through(capsys):
    from nas import _cli
    from nas.errors import OpmixError

    def failing(exc):
        def main(argv):
            raise exc
        return main

    with pytest.raises(SystemExit) as exit_info:
        _cli.run("prog", failing(OpmixError("--flag x: bad\n  value; use y")))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "prog: error: --flag x: bad value; use y\n"
    for bug in (ValueError("a bug"), KeyError("a bug"), OSError("a bug")):  # a traceback, not exit code 2
        with pytest.raises(type(bug)):
            _cli.run("prog", failing(bug))
        assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as exit_info:
        _cli.run("prog", lambda argv: 0)
    assert exit_info.value.code == 0


def test_an_unknown_operator_is_an_opmix_error_and_a_key_error():
    import operators
    from nas.errors import OpmixError, UnknownNameError

    with pytest.raises(UnknownNameError) as info:
        operators.get_spec("nope")
    assert isinstance(info.value, OpmixError) and isinstance(info.value, KeyError)
    text = str(info.value)
    assert text.startswith("unknown operator 'nope'") and "resnet_basic" in text  # unquoted, unlike KeyError


# ------------------------------------------------------------------------------- real searches, in process
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    write_tiny_fashion(root / "data")
    write_space(root)
    return root


def quiet(message: str) -> None:
    pass


def _ray_failures(run: RunDir) -> dict[str, int]:
    """Ray Tune's failure count per trial id, from its experiment state (the runtime metadata of each trial)."""
    import json

    (state_file,) = (run.ray / "session-1").glob("experiment_state-*.json")
    out = {}
    for trial_json, runtime_json in json.loads(state_file.read_text())["trial_data"]:
        out[json.loads(trial_json)["trial_id"]] = json.loads(runtime_json)["num_failures"]
    return out


@pytest.mark.usefixtures("local_ray")
class TestInProcessSearch:
    """Real searches in this process, in the session's Ray."""

    def test_a_trial_cut_off_by_the_time_budget_is_interrupted_and_resume_trains_it(self, tmp_path, workdir,
                                                                                   monkeypatch):
        import nas._loop
        from nas._loop import SearchConfig, search

        def stall(config, **parameters):  # a trial still training when the time budget ends
            time.sleep(600)

        space = write_space(tmp_path, """
            stem: {type: patch4, width: 16}
            stages:
            - {output_stride: 4, ops: [resnet_basic, convnext], width: [16, 32], depth: [1, 2]}
            """)  # eight cheap networks: a resume that proposed anew would rarely repeat the one cut off
        config = SearchConfig(budget=10**9, space=str(space), trials=1, epochs=1, data_dir=str(workdir / "data"),
                              max_train=64, sampler="random", seed=5, confirm=0)
        run = RunDir(tmp_path / "run")
        run.write_config({})
        with monkeypatch.context() as patch:
            patch.setattr(nas._loop, "trainable", stall)
            t0 = time.time()
            first = search(config, run=run, time_budget_s=8, log=quiet)
            assert time.time() - t0 < 120  # the time budget ended the session, not the trial
        (cut,) = [r for r in run.read_trials() if r["status"] != "infeasible"]
        assert cut["status"] == "interrupted" and cut["error"] is None and cut["epochs"] == 0, cut
        assert first["by_status"]["interrupted"] == 1
        assert first["by_status"]["completed"] == first["by_status"]["stopped"] == first["by_status"]["failed"] == 0
        assert first["failures"] == []

        again = search(config, run=run, resume=True, log=quiet)  # the real trial function now
        trained = [r for r in run.read_trials() if r["status"] != "infeasible"]
        assert [r["status"] for r in trained] == ["interrupted", "completed"], trained
        assert trained[1]["arch"] == cut["arch"] and trained[1]["trial_id"] != cut["trial_id"]
        assert again["by_status"]["completed"] == 1 and again["by_status"]["interrupted"] == 1

    def test_a_trial_that_fails_is_recorded_failed_once_and_not_retried(self, tmp_path, workdir):
        """Two deterministic failures: 'boom' is registered only in this process, so a Ray worker cannot read the
        architecture; the other network fails in training (labels out of range). Neither is tried twice."""
        import dataclasses

        import torch

        import operators
        from nas._loop import SearchConfig, search
        from nas.data import load_dataset

        if "boom" not in operators.list_ops():
            operators.register_op("boom", operators.get_spec("resnet_basic").factory, paper="test", family="conv")
        space = write_space(tmp_path, """
            stem: {type: patch4, width: 16}
            stages:
            - {output_stride: 4, ops: [boom, resnet_basic], width: [16], depth: [1]}
            """)
        data = load_dataset("fashion-mnist", workdir / "data", seed=3)
        data = dataclasses.replace(data, train_y=torch.full_like(data.train_y, 99))  # a 10-class head: out of range
        config = SearchConfig(budget=10**9, space=str(space), trials=2, epochs=1, data_dir=str(workdir / "data"),
                              max_train=64, sampler="random", seed=3, confirm=0)
        run = RunDir(tmp_path / "run")
        run.write_config({})
        summary = search(config, run=run, log=quiet, data=data)
        recs = run.read_trials()
        assert sorted((r["status"], r["arch"]["stages"][0]["op"]) for r in recs) == [("failed", "boom"),
                                                                                    ("failed", "resnet_basic")], recs
        errors = {r["arch"]["stages"][0]["op"]: r["error"] for r in recs}
        assert "'boom'" in errors["boom"] and "99" in errors["resnet_basic"], errors
        assert summary["failures"] == recs
        # one attempt each: Ray counted no failure (it retries only those), and wrote no error file
        assert _ray_failures(run) == {r["ray_trial_id"]: 0 for r in recs}
        assert not list((run.ray / "session-1").glob("*/error.txt"))


# --------------------------------------------------------------------------------- through the command line
def tiny_args(workdir: Path, space: Path, *extra) -> list[str]:
    return ["--budget", "80M", "--space", str(space), "--epochs", "1", "--max-train", "64", "--confirm", "0",
            "--data-dir", str(workdir / "data"), "--runs-dir", str(workdir / "runs"), *extra]


def test_a_trial_that_asks_for_more_cpus_than_ray_has_is_one_line_and_nothing_is_written(workdir, local_ray):
    result = search_cli(*tiny_args(workdir, workdir / "mini.yaml", "--trials", "1", "--name", "greedy",
                                   "--cpus-per-trial", "64"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cpus-per-trial 64" in lines[0], result.stderr
    assert not (workdir / "runs" / "greedy").exists()


def test_a_wrong_opmix_data_is_one_line_and_never_a_silent_fallback(tmp_path, workdir, monkeypatch):
    args = tiny_args(workdir, workdir / "mini.yaml", "--trials", "1", "--name", "nodata")
    args[args.index("--data-dir"):args.index("--data-dir") + 2] = []  # the data from $OPMIX_DATA
    monkeypatch.setenv("OPMIX_DATA", str(tmp_path / "nonexistent"))
    result = search_cli(*args)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "OPMIX_DATA" in lines[0] and "nonexistent" in lines[0], result.stderr
    assert not (workdir / "runs" / "nodata").exists()


@pytest.fixture(scope="module")
def finished_tiny(workdir, local_ray):
    """A finished one-trial run, its space file in a folder of its own (the tests edit and restore both)."""
    folder = workdir / "own-space"
    folder.mkdir()
    space = write_space(folder)
    result = search_cli(*tiny_args(workdir, space, "--trials", "1", "--name", "tiny", "--seed", "2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir / "runs" / "tiny", space


def test_resume_searches_the_runs_own_space_when_the_original_is_broken(finished_tiny, workdir):
    run, space = finished_tiny
    original = space.read_text()
    before = RunDir(run).read_trials()
    space.write_text("stages: [this is not a space\n")  # edited into garbage after the run started
    try:
        result = search_cli(*tiny_args(workdir, space, "--name", "tiny", "--resume", "--trials", "2"))
    finally:
        space.write_text(original)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = RunDir(run).read_trials()
    assert after[:len(before)] == before
    trained = [r for r in after if r["status"] != "infeasible"]
    assert len(trained) == 2
    own = load_space(run / "space.yaml")
    from nas.arch import Arch

    assert all(own.contains(Arch.from_dict(r["arch"])) for r in after)


def test_resume_without_the_runs_space_is_one_line(finished_tiny, workdir):
    run, space = finished_tiny
    before = (run / "trials.jsonl").read_text(), sorted((run / "ray").iterdir())
    (run / "space.yaml").rename(run / "space.yaml.aside")  # the original space file is still there
    try:
        result = search_cli(*tiny_args(workdir, space, "--name", "tiny", "--resume", "--trials", "3"))
    finally:
        (run / "space.yaml.aside").rename(run / "space.yaml")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "space.yaml" in lines[0] and "--resume" in lines[0], result.stderr
    assert ((run / "trials.jsonl").read_text(), sorted((run / "ray").iterdir())) == before  # nothing ran
