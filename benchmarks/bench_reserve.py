"""What the confirmation's reserve buys under a time budget: a fixed share against the estimate.

    python benchmarks/bench_reserve.py [--seeds 4] [--seconds 240] [--results ~/.cache/opmix/reserve.jsonl]

Under ``--time-budget`` the proxy phase ends early enough for the confirmation to fit. ``fixed`` keeps
``CONFIRM_SHARE`` (35 %) of the time budget for it, as opmix did before; ``estimated`` (today's) keeps that share
only until a candidate completes, then the estimate from the top candidates' training times
(``nas._confirm.ConfirmReserve``). For each seed, one search per arm, interleaved, on the setting of
``bench_search.py strategies --schedule`` (the frozen default space under 4.5 GFLOPs, CIFAR-10 JPEGs at the
"quarter-data" proxy, ``--confirm 1``, random sampler, up to 60 candidates, ``--seconds`` of wall time): the
same seed is the same data split, proxy seed and sampler seed in both arms, so the runs are paired until the
arms' deadlines part. Each finished run is a line of ``--results``; a rerun skips the (arm, seed) pairs it holds.
The report: per arm, candidates trained, wall time, hypervolume and the pick's confirmed accuracy (medians over
seeds with bootstrap 90 % intervals, and estimated's paired difference from fixed), how many picks were
confirmed by both seeds, and the estimate against the confirmation's real duration. Leave the machine to it: the
arms are compared at equal wall time, so anything else running changes what each trains.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from pathlib import Path
from unittest import mock

from bench_search import (CIFAR_TARBALL, STRATEGY_FIDELITY, STRATEGY_SPACE, _cifar_folder, _strategy_run,
                          _trained, median_line)

ARMS = ("fixed", "estimated")


def _run(arm: str, seed: int, *, data, dataset: str, budget: int, seconds: float) -> dict:
    import nas._confirm

    lines: list[tuple[float, str]] = []
    t0 = time.time()
    # fixed: the estimate never exists, so the reserve stays CONFIRM_SHARE of the time budget
    patch = (mock.patch.object(nas._confirm, "confirmation_estimate_s", lambda *a, **k: None) if arm == "fixed"
             else contextlib.nullcontext())
    with patch:
        row = _strategy_run("random", 60, seed, f"reserve-{arm}", data=data, dataset=dataset, budget=budget,
                            fidelity=STRATEGY_FIDELITY, time_budget_s=seconds,
                            log=lambda m: lines.append((time.time() - t0, m)))

    def seconds_in(pattern: str) -> float | None:
        found = [float(m.group(1)) for _, line in lines if (m := re.search(pattern, line))]
        return found[-1] if found else None

    started = [t for t, line in lines if "confirming" in line]
    row.update(arm=arm, estimate_s=seconds_in(r"confirmation estimated at (\d+) s"),
               confirm_s=seconds_in(r"confirmation done in (\d+) s"),
               proxy_phase_s=round(started[-1], 1) if started else None)
    return row


def report(rows: list[dict]) -> list[str]:
    import numpy as np

    def by_seed(arm: str, get) -> dict:
        return {r["seed"]: get(r) for r in rows if r["arm"] == arm and get(r) is not None}

    out = [f"{len({r['seed'] for r in rows})} seeds, {rows[0]['time_budget_s']:g} s each (median over seeds "
           "[90 % interval]; estimated's paired difference from fixed [90 % interval])"]
    quantities = {"trained": _trained, "proxy phase s": lambda r: r["proxy_phase_s"],
                  "wall s": lambda r: r["wall_s"], "hypervolume": lambda r: r["hypervolume"],
                  "pick confirmed": lambda r: r["pick_confirmed"] if r["pick_complete"] else None}
    for name, get in quantities.items():
        out.append(f"  {name}")
        for arm in ARMS:
            text = median_line(arm, by_seed(arm, get), by_seed("fixed", get) if arm != "fixed" else None, "fixed")
            if text:
                out.append(text)
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if mine:
            out.append(f"  {arm}: pick confirmed by both seeds in {sum(r['pick_complete'] for r in mine)} of "
                       f"{len(mine)} runs")
    pairs = [(r["estimate_s"], r["confirm_s"]) for r in rows if r["estimate_s"] and r["confirm_s"]]
    if pairs:
        ratio = sorted(c / e for e, c in pairs)
        out.append(f"  confirmation's real duration / its estimate (estimated arm): median {np.median(ratio):.2f}, "
                   f"range {ratio[0]:.2f}-{ratio[-1]:.2f} over {len(ratio)} runs")
    return out


def main() -> None:
    import ray

    from nas.data import load_dataset
    from nas.flops import parse_budget

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1, each run in both arms")
    p.add_argument("--seconds", type=float, default=240.0, help="each run's time budget")
    p.add_argument("--budget", default="4.5GFLOPs")
    p.add_argument("--cifar-dir", default="~/.cache/opmix/cifar-10-jpeg", help="where the JPEGs are extracted")
    p.add_argument("--tarball", default=str(CIFAR_TARBALL))
    p.add_argument("--dataset", default=None, help="another dataset (a smoke test: fashion-mnist)")
    p.add_argument("--results", default=str(Path("~/.cache/opmix/reserve.jsonl").expanduser()))
    p.add_argument("--report", action="store_true", help="only print the report of --results")
    args = p.parse_args()
    results = Path(args.results).expanduser()
    rows = [json.loads(line) for line in results.read_text().splitlines() if line] if results.exists() else []
    if not args.report:
        budget = parse_budget(args.budget)
        dataset = args.dataset or f"imagefolder:{_cifar_folder(Path(args.cifar_dir).expanduser(), Path(args.tarball))}"
        done = {(r["arm"], r["seed"]) for r in rows}
        print(f"{results}: {len(rows)} run(s) done before, kept; space {STRATEGY_SPACE.name}", flush=True)
        results.parent.mkdir(parents=True, exist_ok=True)
        for seed in range(args.seeds):
            data = None
            for arm in ARMS:
                if (arm, seed) in done:
                    continue
                data = data or load_dataset(dataset, None, seed=seed)
                row = _run(arm, seed, data=data, dataset=dataset, budget=budget, seconds=args.seconds)
                rows.append(row)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{arm:9s} seed {seed}: trained {_trained(row)}, proxy phase {row['proxy_phase_s']} s, "
                      f"estimate {row['estimate_s']} s, confirmation {row['confirm_s']} s, pick confirmed "
                      f"{row['pick_confirmed']}, {row['wall_s']:.0f} s", flush=True)
        ray.shutdown()
    for line in report(rows):
        print(line)


if __name__ == "__main__":
    main()
