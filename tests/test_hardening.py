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
    assert complete[0].constraints == {"flops_over_budget": fake_flops(reference) - s.searcher.budget}
    resumed.suggest("t3")  # the cut-off candidate is still waiting, and trains now
    assert resumed.live["t3"]["arch"] == arch_of(s, FEASIBLE)
    (ref_record,) = [r for r in s.run.read_trials() if r.get("reference")]
    assert ref_record["trial_id"] == "ref-myref" and ref_record["accuracy"] == 0.6
