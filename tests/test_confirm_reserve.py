"""The time budget's split between the proxies and the confirmation (``nas._confirm.ConfirmReserve``): the
confirmation's estimate from the top candidates' training times, the share kept before there is one, its cap,
and the stopper that ends the proxy phase when the moving deadline passes."""

from __future__ import annotations

import statistics
import time

import pytest

from nas._confirm import (CONFIRM_SHARE, CONFIRM_START_S, RESERVE_MAX, SEEDS, ConfirmReserve,
                          confirmation_estimate_s, job_seconds, makespan)

ARCH = {"stages": []}  # the estimate reads the records' ids, figures and timings, never the network


def rec(trial_id, accuracy, gflops, train_s, wall_s=None, status="completed", **extra):
    return {"trial_id": trial_id, "status": status, "accuracy": accuracy, "flops": int(gflops * 1e9),
            "params": 1, "arch": ARCH, "timings": {"train_s": train_s, "wall_s": wall_s or train_s}, **extra}


def confirmed(trial_id, seed):
    return {"trial_id": f"{trial_id}-c{seed}", "status": "confirmed", "confirms": trial_id, "seed": seed,
            "accuracy": 0.5, "flops": 1, "params": 1, "arch": ARCH}


# A front of three (0.6 at 3 G, 0.5 at 2 G, 0.4 at 1 G), one trial off it (0.3 at 2.5 G) and one over the
# 4 G budget. Their confirmation trainings cost, at twice the images: A 10 s x 2 + 2 s waiting = 22 s,
# B 5 s x 2 = 10 s, C 3 s x 2 = 6 s.
RECORDS = [rec(0, 0.6, 3.0, 10.0, 12.0), rec(1, 0.5, 2.0, 5.0), rec(2, 0.4, 1.0, 3.0), rec(3, 0.3, 2.5, 1.0),
           rec(4, 0.9, 5.0, 1.0)]
BUDGET = 4e9


def estimate(records, k, slots=2, references=False):
    return confirmation_estimate_s(records, BUDGET, k, references=references, seed=0, slots=slots, data_factor=2.0)


def test_a_job_costs_the_proxy_training_times_the_data_factor_plus_the_time_it_waited():
    assert job_seconds(RECORDS[0], 2.0) == 10.0 * 2 + (12.0 - 10.0)
    assert job_seconds(RECORDS[0], 1.0) == 12.0
    assert job_seconds({"trial_id": 9}, 2.0) == 0.0  # a record written before timings: no evidence, no cost


@pytest.mark.parametrize("costs,slots,want", [
    ([10, 4, 3, 3], 2, 10),  # 10 | 4 + 3 + 3
    ([10, 4, 3, 3], 1, 20),
    ([10, 4, 3, 3], 8, 10),
    ([5, 5, 5], 2, 10),
    ([], 2, 0),
])
def test_makespan_gives_each_job_to_the_worker_that_frees_first(costs, slots, want):
    assert makespan(costs, slots) == want


def test_the_estimate_lays_the_top_k_s_seeds_on_the_slots_best_first():
    # k=2: A's two seeds fill both slots (22 s), then B's two (10 s)
    assert estimate(RECORDS, k=2) == CONFIRM_START_S + 22 + 10
    # one slot: every training after the other
    assert estimate(RECORDS, k=2, slots=1) == CONFIRM_START_S + SEEDS * (22 + 10)
    # k=3 adds C's two seeds: 22 | 22 on the slots, then 10, 10, 6, 6 go to the one freeing first
    assert estimate(RECORDS, k=3) == CONFIRM_START_S + makespan([22, 22, 10, 10, 6, 6], 2) == CONFIRM_START_S + 38


def test_a_top_short_of_k_counts_the_missing_candidates_at_the_median_cost():
    # k=5 on a front of three: two candidates to come, each two trainings at the median of 22, 10 and 6
    want = makespan([22, 22, 10, 10, 6, 6] + [statistics.median([22, 10, 6])] * 2 * SEEDS, 2)
    assert estimate(RECORDS, k=5) == CONFIRM_START_S + want


def test_confirmations_already_recorded_are_not_counted_again():
    done = RECORDS + [confirmed(0, 0), confirmed(0, 1)]  # A confirmed in an earlier session
    assert estimate(done, k=2) == CONFIRM_START_S + 10  # B's two seeds, side by side


def test_a_reference_is_confirmed_beside_the_top_k_and_does_not_fill_it():
    ref = rec("ref-resnet", 0.35, 3.5, 20.0, reference="resnet")
    with_ref = RECORDS + [ref]
    assert estimate(with_ref, k=2, references=False) == CONFIRM_START_S + 22 + 10
    assert estimate(with_ref, k=2, references=True) == CONFIRM_START_S + makespan([22, 22, 10, 10, 40, 40], 2)


def test_no_estimate_before_a_candidate_within_the_budget_completes():
    assert estimate([], k=2) is None
    assert estimate([RECORDS[4]], k=2) is None  # over the budget
    assert estimate([rec(5, 0.5, 1.0, 3.0, status="stopped")], k=2) is None


def test_the_reserve_follows_the_estimate_within_its_bounds():
    records: list[dict] = []
    started, total = 1000.0, 600.0
    reserve = ConfirmReserve(lambda: records, started=started, total_s=total, budget=BUDGET, k=2,
                             references=False, seed=0, slots=2, data_factor=2.0)
    assert reserve.reserve_s() == CONFIRM_SHARE * total and reserve.estimated is None  # nothing known yet
    assert reserve.deadline() == started + total - CONFIRM_SHARE * total
    records.extend(RECORDS)
    assert reserve.reserve_s() == CONFIRM_START_S + 32 == reserve.estimated  # cheap candidates: more proxies
    assert reserve.deadline() == started + total - (CONFIRM_START_S + 32)
    records.append(rec(6, 0.7, 3.5, 1000.0))  # a slow candidate takes the top: capped at RESERVE_MAX
    assert reserve.estimated is not None and reserve.reserve_s() == RESERVE_MAX * total
    assert reserve.estimated == CONFIRM_START_S + 2000 + 22


def test_the_stopper_ends_the_proxy_phase_when_the_moving_deadline_passes():
    from nas._loop import _deadline_stopper

    deadline = [time.time() + 3600]
    stopper = _deadline_stopper(lambda: deadline[0])
    assert not stopper.stop_all() and not stopper("trial", {"accuracy": 0.5})
    deadline[0] = time.time() - 1  # the confirmation's estimate grew
    assert stopper.stop_all() and not stopper("trial", {"accuracy": 0.5})  # the experiment ends, not one trial


def test_the_data_factor_is_the_confirmation_s_images_over_the_proxy_s():
    import types

    import torch

    from nas._loop import SearchConfig, _data_factor

    def data(n_train):
        return types.SimpleNamespace(train_x=torch.zeros(n_train, 1), val_x=torch.zeros(100, 1))

    config = SearchConfig(budget=10**9, max_train=128)  # the confirmation trains on 2 x 128
    assert config.confirmation.max_train == 256
    assert _data_factor(config, data(1000)) == 2.0
    assert _data_factor(config, data(200)) == 200 / 128  # the training split caps the confirmation
    assert _data_factor(config, data(100)) == 1.0  # and the proxy
