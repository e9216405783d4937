"""The strategies benchmark's bookkeeping (``benchmarks/bench_search.py strategies``), without training: its report
pairs runs by seed (a sampler against random, more candidates against fewer, Hyperband against ASHA at equal
wall time), leaves out a run without a confirmed pick from that quantity only, and a run waits while the results
file's ``.pause`` exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "benchmarks" / "bench_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(sampler, seed, schedule="asha", *, hv, proxy, pick, completed=10, stopped=5, budget=None, trials=20):
    return {"sampler": sampler, "trials": trials, "seed": seed, "schedule": schedule, "hypervolume": hv,
            "best_proxy": proxy, "pick_confirmed": pick, "time_budget_s": budget,
            "by_status": {"completed": completed, "stopped": stopped, "infeasible": 7}}


def paired_line(lines: list[str], header: str, key: str, label: str) -> str:
    """The line of ``label`` under ``key`` in the report block whose header starts with ``header``."""
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header))
    block = lines[start + 1:]
    block = block[:next((i for i, line in enumerate(block) if not line.startswith("  ")), len(block))]
    at = block.index(f"  {key}")
    return next(line for line in block[at + 1:] if line.strip().startswith(label))


def test_a_sampler_is_paired_with_random_on_the_seeds_both_ran(bench):
    rng = np.random.default_rng(0)
    random_hv, tpe_hv = rng.uniform(0.1, 0.3, 5), rng.uniform(0.1, 0.3, 6)
    rows = [row("random", s, hv=random_hv[s], proxy=0.3, pick=0.35) for s in range(5)]
    rows += [row("tpe", s, hv=tpe_hv[s], proxy=0.3, pick=0.35) for s in range(6)]  # seed 5: no random run
    lines = bench.strategies_report(rows)
    line = paired_line(lines, "asha, 20 trained candidates", "hypervolume", "tpe")
    assert re.search(r"n\s+6\s", line), line  # its own median is over its 6 seeds
    assert f"{np.median(tpe_hv):.4f}" in line
    # the paired difference only over the 5 seeds random ran too
    assert f"vs random (5 seeds) {np.median(tpe_hv[:5] - random_hv):+.4f}" in line, line


def test_more_candidates_are_paired_with_fewer_per_sampler_on_the_seeds_both_ran(bench):
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0.30, 0.36, 4), rng.uniform(0.32, 0.38, 3)
    rows = [row(sampler, s, hv=0.2, proxy=0.3, pick=few[s] + shift, trials=20)
            for s in range(4) for sampler, shift in (("random", 0.0), ("tpe", 0.01))]
    rows += [row(sampler, s, hv=0.2, proxy=0.3, pick=many[s] + shift, trials=60)
             for s in range(3) for sampler, shift in (("random", 0.0), ("tpe", 0.05))]
    lines = bench.strategies_report(rows)
    header = "asha, 60 against 20 trained candidates, per sampler"
    for sampler, gain in (("random", 0.0), ("tpe", 0.04)):  # each sampler against its own 20-candidate runs
        line = paired_line(lines, header, "pick_confirmed", sampler)
        assert re.search(r"n\s+3\s", line), line
        assert f"vs 20 (3 seeds) {np.median(many - few[:3]) + gain:+.4f}" in line, line  # seed 3: no 60 run
    pooled = paired_line(lines, header, "pick_confirmed", "pooled")  # both samplers' 3 pairs in one median
    both = np.concatenate([many - few[:3], many - few[:3] + 0.04])
    assert f"vs 20 (6 sampler-seed pairs) {np.median(both):+.4f}" in pooled, pooled
    assert paired_line(lines, "asha, 20 trained candidates", "pick_confirmed", "tpe")  # the per-budget blocks stay
    assert paired_line(lines, "asha, 60 trained candidates", "pick_confirmed", "tpe")
    assert not any("60 against 20" in line for line in bench.strategies_report([r for r in rows if r["trials"] == 20]))


def test_hyperband_is_paired_with_asha_at_equal_wall_time_and_a_lost_pick_leaves_only_that_quantity(bench):
    asha_trained, hb_trained = [14, 15, 17, 16], [16, 15, 22, 17]
    rows = [row("random", s, "asha-timed", hv=0.2, proxy=0.3, pick=None if s == 3 else 0.35 + s / 100,
                completed=t - 5, budget=240.0) for s, t in enumerate(asha_trained)]
    rows += [row("random", s, "hyperband", hv=0.2, proxy=0.3, pick=0.36 + s / 100, completed=t - 5, budget=240.0)
             for s, t in enumerate(hb_trained)]
    lines = bench.strategies_report(rows)
    header = "hyperband against asha at equal wall time (240 s each, up to 60 candidates), sampler random"
    trained = paired_line(lines, header, "trained", "hyperband")
    assert f"vs asha-timed (4 seeds) {np.median(np.subtract(hb_trained, asha_trained)):+.4f}" in trained, trained
    pick = paired_line(lines, header, "pick_confirmed", "hyperband")
    assert "vs asha-timed (3 seeds) +0.0100" in pick, pick  # seed 3's ASHA run confirmed nothing
    assert re.search(r"n\s+3\s", paired_line(lines, header, "pick_confirmed", "asha-timed"))
    assert re.search(r"n\s+4\s", paired_line(lines, header, "hypervolume", "asha-timed"))
    assert not any(line.strip().startswith(("asha-timed,", "hyperband,")) for line in lines)  # reported once


def test_a_run_waits_while_the_pause_file_exists(bench, tmp_path, monkeypatch):
    pause = tmp_path / "strategies.pause"
    bench._wait_while_paused(pause)  # no file: returns at once
    pause.touch()
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 3:
            pause.unlink()

    monkeypatch.setattr(bench.time, "sleep", sleep)
    bench._wait_while_paused(pause)
    assert len(polls) == 3 and not pause.exists()


def test_the_reserve_report_pairs_the_arms_by_seed_and_counts_unconfirmed_picks(bench, monkeypatch):
    """``benchmarks/bench_reserve.py``: estimated against fixed on the seeds both ran, a pick that lost a seed
    left out of the pick's accuracy only, and the confirmation's duration over its estimate."""
    import sys

    monkeypatch.setitem(sys.modules, "bench_search", bench)  # what the script imports beside it
    spec = importlib.util.spec_from_file_location("bench_reserve", ROOT / "benchmarks" / "bench_reserve.py")
    reserve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reserve)

    def run(arm, seed, trained, pick, complete=True, estimate=None, confirm=None):
        r = row("random", seed, hv=0.2, proxy=0.3, pick=pick, completed=trained, stopped=0, budget=240.0)
        return {**r, "arm": arm, "pick_complete": complete, "proxy_phase_s": 150.0, "wall_s": 200.0,
                "estimate_s": estimate, "confirm_s": confirm}

    rows = [run("fixed", 0, 10, 0.30), run("estimated", 0, 13, 0.31, estimate=50, confirm=40),
            run("fixed", 1, 12, 0.32), run("estimated", 1, 20, 0.35, complete=False, estimate=40, confirm=20),
            run("estimated", 2, 30, 0.40, estimate=60, confirm=30)]  # seed 2: no fixed run to pair with
    lines = reserve.report(rows)
    trained = paired_line(lines, "3 seeds", "trained", "estimated")
    assert "n  3" in trained and f"vs fixed (2 seeds) {np.median([13 - 10, 20 - 12]):+.4f}" in trained
    pick = paired_line(lines, "3 seeds", "pick confirmed", "estimated")
    assert "n  2" in pick and f"vs fixed (1 seeds) {0.31 - 0.30:+.4f}" in pick  # seed 1 lost a seed
    assert "  estimated: pick confirmed by both seeds in 2 of 3 runs" in lines
    ratios = sorted([40 / 50, 20 / 40, 30 / 60])
    assert (f"median {np.median(ratios):.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f} over 3 runs") in lines[-1]
