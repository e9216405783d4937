"""The study as optuna-dashboard shows it (issue 19): objective names on the axes, and candidates over the FLOP
budget shown infeasible, not as finished trials at accuracy 0 among the others.

optuna-dashboard 0.21 reads a trial's feasibility from the trial system attribute ``"constraints"`` (a list, the
format of the samplers' deprecated ``constraints_func``), never from the ``"constraints:NAME"`` keys that Optuna
5's ``Trial.set_constraint`` writes; Optuna's samplers read both (``FrozenTrial.constraints`` merges them). The
study is built here the way ``nas._searcher`` tells it, through a ``constrain(trial, {name: value})`` function,
so that the searcher's own can be passed in. The JSON checks need ``pip install optuna-dashboard``; the
screenshot needs a browser (Debian: ``apt-get install chromium``; see ``benchmarks/dashboard_check.py``).
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path
from typing import Callable

import optuna
import pytest

CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "dashboard_check.py"
MISSING = importlib.util.find_spec("optuna_dashboard") is None
needs_dashboard = pytest.mark.skipif(MISSING, reason="optuna-dashboard is not installed: pip install optuna-dashboard")

BUDGET = 1e9  # FLOPs
WIDTHS = range(8, 81, 8)  # 2e7 FLOPs per unit of width: widths 56 to 80 break the budget (4 of 10)

Constrain = Callable[[optuna.Trial, "dict[str, float]"], None]


def constrain_today(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """nas._searcher before issue 19: Optuna 5's ``Trial.set_constraint`` only."""
    for name, value in constraints.items():
        trial.set_constraint(name, value)


def constrain_mirrored(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """The proposed fix: the same, and the values again as the list that optuna-dashboard reads."""
    constrain_today(trial, constraints)
    trial.storage.set_trial_system_attr(trial._trial_id, "constraints", list(constraints.values()))


def build_study(constrain: Constrain, *, metric_names: list[str] | None = None,
                sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Ten candidates told as opmix tells them: the FLOP constraint first, then COMPLETE with [accuracy, FLOPs];
    one over the budget with accuracy 0.0 (``nas._searcher``: infeasible, never trained)."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    if metric_names is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names)
    for width in WIDTHS:
        study.enqueue_trial({"width": width})
        trial = study.ask()
        flops = 2e7 * trial.suggest_int("width", 8, 80)
        constrain(trial, {"flops_over_budget": flops - BUDGET})
        study.tell(trial, [0.5 + 0.05 * width ** 0.5 if flops <= BUDGET else 0.0, flops])
    return study


def _check():
    spec = importlib.util.spec_from_file_location("dashboard_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _served(study: optuna.Study) -> dict:
    """The study's detail as the dashboard's front-end fetches it (``GET /api/studies/ID``)."""
    check = _check()
    with check.serve(study._storage) as base:
        (detail,) = check.study_details(base, study.study_name)
    return detail


def _over_budget(detail: dict) -> list[int]:
    return [t["number"] for t in detail["trials"] if t["values"][1] > BUDGET]


@needs_dashboard
def test_dashboard_does_not_read_set_constraint():
    """Today's study: no names, and the dashboard serves every trial with ``constraints: []``, so the four
    over the budget count as feasible. If this fails, optuna-dashboard reads ``set_constraint``'s keys now,
    and the mirrored list may go."""
    check = _check()
    detail = _served(build_study(constrain_today))
    assert "objective_names" not in detail  # the axes read "Objective 0", "Objective 1"
    assert len(_over_budget(detail)) == 4
    assert all(t["constraints"] == [] and check.feasible(t) for t in detail["trials"])


@needs_dashboard
def test_dashboard_reads_names_and_mirrored_constraints():
    check = _check()
    detail = _served(build_study(constrain_mirrored, metric_names=["accuracy", "FLOPs"]))
    assert detail["objective_names"] == ["accuracy", "FLOPs"]
    infeasible = [t["number"] for t in detail["trials"] if not check.feasible(t)]
    assert infeasible == _over_budget(detail) and len(infeasible) == 4


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_samplers_read_mirrored_constraints(sampler):
    """The mirror changes nothing the samplers decide: the same trials are infeasible, each violation is
    counted once per key (twice in all, for every trial alike), and sampling goes on without a warning."""
    from nas._loop import make_sampler

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = build_study(constrain_mirrored, sampler=make_sampler(sampler, seed=0, trials=20))
        study.optimize(lambda t: (0.5, 2e7 * t.suggest_int("width", 8, 80)), n_trials=3)
    assert not [w for w in caught if "constraint" in str(w.message)]
    told = study.trials[:len(WIDTHS)]
    assert all(t.constraints == {"0": t.constraints["flops_over_budget"],
                                 "flops_over_budget": t.constraints["flops_over_budget"]} for t in told)
    infeasible = [t.number for t in told if any(v > 0 for v in t.constraints.values())]
    assert infeasible == [t.number for t in told if t.values[1] > BUDGET]
    assert not {t.number for t in study.best_trials} & set(infeasible)


@needs_dashboard
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_screenshot_draws_the_study(tmp_path):
    """A headless-browser shot of the study's page. Drawn plots give thousands of colours (about 3,100 at
    1200x900, chromium 156); the study list is about 400, a page that finds no study about 1,000."""
    from PIL import Image

    check = _check()
    study = build_study(constrain_mirrored, metric_names=["accuracy", "FLOPs"])
    with check.serve(study._storage) as base:
        (detail,) = check.study_details(base, study.study_name)
        shot = check.screenshot(f"{base}/dashboard/studies/{detail['study_id']}", tmp_path / "study.png",
                                size=(1200, 900), wait_ms=1000, browser=shutil.which("chromium"))
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 900)
    assert len(image.getcolors(1 << 22)) > 2000
