"""Latency against FLOPs on the default space, and the per-layer predictor's accuracy (``nas.latency``).

    python benchmarks/bench_latency.py measure [--n 120] [--hours 3] [--out benchmarks/results/latency/default.jsonl]
    python benchmarks/bench_latency.py repeat  [--k 20]   # the same networks again, later: the noise floor
    python benchmarks/bench_latency.py report               # the tables of docs/latency.md
    python benchmarks/bench_latency.py searches [--minutes 6] [--latency-budget 60ms]
    python benchmarks/bench_latency.py operators            # ms/GFLOP per operator, target and proxy shapes

``measure`` draws ``--n`` architectures uniformly from the default space within 4.5 GFLOPs (seed 0, the
space's constraints met), and for each target (``ort-cpu`` and ``torch-cpu``, 1 thread, batch 1, 224 px):
times the whole deploy network end to end (``measure_arch_latency``), then predicts it from the per-layer
table (``predict``), measuring the layers the table lacks and recording what that cost. It appends one JSON
line per (network, target) to ``--out`` and skips those already there, so it resumes where it stopped.
Every measurement is pinned to the last core (``nas.latency.pinned``): run nothing else there meanwhile
(``taskset -c 0 CMD`` keeps other work off it).

``report`` prints, per target: Kendall tau-b of FLOPs against latency; ms per GFLOP per operator (from the
table's block entries); the repeatability (second measurement over first); the predictor's accuracy, with
its correction fitted in 5-fold cross-validation (a network is never predicted by a fit that saw it), as the
share within +-10 % and +-5 % and tau; FLOPs as a predictor (scaled by the best single factor) the same way;
and the table's cost.

``searches`` runs one search under ``--latency-budget`` (ort-cpu, with the table ``measure`` filled) and one
FLOPs-only search, both at 4.5 GFLOPs with the same seed and time budget, and measures each pick's latency on
ort-cpu.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "latency" / "default.jsonl"
TARGETS = ("ort-cpu", "torch-cpu")
BUDGET = 4.5e9
# operators whose code changed while the stored measurements were taken (ACmix, SASA, attention-augmented
# conv and HaloNet were rewritten without gathers): a repeat of a network using them times other code
REWRITTEN = {"acmix", "sasa", "attention_augmented", "halo"}


def draw(n: int, seed: int = 0, cache: Path | None = None):
    """``n`` distinct architectures of the default space within the budget, in a fixed order; kept in
    ``cache`` (JSON lines) so that a resumed measurement does not count the draws' FLOPs again."""
    from nas.arch import Arch
    from nas.flops import measure_arch
    from nas.space import load_space

    kept = _done(cache) if cache is not None else []
    if len(kept) >= n and all(k["seed"] == seed for k in kept):
        return [(Arch.from_dict(k["arch"]), k["flops"], k["params"]) for k in kept[:n]]

    space = load_space("hybrid")
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        arch = space.random(rng)
        if arch in seen:
            continue
        seen.add(arch)
        flops, params = measure_arch(arch)
        if flops <= BUDGET:
            out.append((arch, flops, params))
    if cache is not None:
        from nas.rundir import atomic_write

        atomic_write(cache, "".join(json.dumps({"seed": seed, "arch": a.to_dict(), "flops": f, "params": p}) + "\n"
                                    for a, f, p in out))
    return out


def _done(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _measure_one(arch, index: int, flops: int, target, table, phase: str) -> dict:
    from nas.flops import arch_layers
    from nas.latency import measure_arch_latency, predict

    record = {"index": index, "phase": phase, "target": target.name, "flops": flops,
              "ops": [s.op for s in arch.stages], "arch": arch.to_dict()}
    t0 = time.perf_counter()
    try:
        total = measure_arch_latency(arch, target)["total"]
    except Exception as exc:  # noqa: BLE001 -- a conversion that fails is a finding, recorded
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return record
    record.update(total.to_dict(), e2e_seconds=round(time.perf_counter() - t0, 2))
    if phase == "repeat":
        return record
    t0 = time.perf_counter()
    pred = predict(arch, table)
    record.update(sum_ms=round(pred.sum_ms, 4), layers_measured=pred.measured,
                  table_seconds=round(time.perf_counter() - t0, 2))
    t0 = time.perf_counter()
    predict(arch, table, measure=False)  # warm: what a search pays per candidate once the table has its layers
    record["warm_predict_ms"] = round(1e3 * (time.perf_counter() - t0), 3)
    shape = (target.batch, arch.in_chans, arch.input_size, arch.input_size)
    record["blocks"] = [(arch.stages[int(layer.part.split(".")[1])].op, layer.count.flops,
                         table.layer_ms(layer, measure=False))
                        for layer in arch_layers(arch, shape) if layer.part.startswith("stages.")]
    table.add_network(arch, pred.sum_ms, total)
    return record


def measure(args) -> None:
    from nas.latency import LatencyTable, Target

    deadline = time.time() + 3600 * args.hours
    done = {(r["index"], r["target"]) for r in _done(args.out) if r["phase"] == "first"}
    tables = {name: LatencyTable(Target(name), args.out.parent / f"{Target(name).key()}.json") for name in TARGETS}
    for index, (arch, flops, _) in enumerate(draw(args.n, cache=args.out.parent / "archs.jsonl")):
        for name in TARGETS:
            if (index, name) in done:
                continue
            if time.time() > deadline:
                print(f"time is up; {len(done)} measured; run again to continue")
                return
            rec = _measure_one(arch, index, flops, tables[name].target, tables[name], "first")
            _append(args.out, rec)
            done.add((index, name))
            print(f"{index:4d} {name:9s} {flops / 1e9:5.2f} G  {rec.get('ms', float('nan')):8.2f} ms  "
                  f"sum {rec.get('sum_ms', float('nan')):8.2f}  {rec.get('error', '')}", flush=True)


def repeat(args) -> None:
    from nas.latency import Target

    records = _done(args.out)
    again = {(r["index"], r["target"]) for r in records if r["phase"] == "repeat"}
    firsts = sorted((r for r in records if r["phase"] == "first" and "ms" in r), key=lambda r: r["index"])
    from nas.arch import Arch

    for r in firsts:
        if r["index"] >= args.k or (r["index"], r["target"]) in again:
            continue
        rec = _measure_one(Arch.from_dict(r["arch"]), r["index"], r["flops"], Target(r["target"]), None, "repeat")
        _append(args.out, rec)
        print(f"{r['index']:4d} {r['target']:9s} first {r['ms']:8.2f}  again {rec.get('ms', float('nan')):8.2f} ms",
              flush=True)


def operators_phase(args) -> None:
    """ms per GFLOP per operator at the target's shapes and at the proxy's: each operator of the default
    space, with its first parameter choices, as a stride-1 block of the space's stage 2 (stage 3 for the
    operators only offered from there), at the stage's middle width on its 224-px map, and as the default
    proxy builds it (width x 0.25 rounded as ``nas.network.scale_width`` does, on the map a 28-px
    Fashion-MNIST image gives at that output stride). Appends to ``operators.jsonl`` beside ``--out``."""
    import math

    import operators
    from nas.flops import count_flops
    from nas.latency import Target, _deploy, measure_module
    from nas.network import scale_width
    from nas.space import load_space

    out = args.out.parent / "operators.jsonl"
    done = {(r["op"], r["shape"], r["target"]) for r in _done(out)}
    space = load_space("hybrid")
    seen = {}
    for i in (1, 2):
        for choice in space.stages[i].ops:
            seen.setdefault(choice.name, (i, choice))
    for name, (i, choice) in seen.items():
        stage = space.stages[i]
        widths = stage.widths(choice).values
        width = widths[len(widths) // 2]
        params = {k: v.values[0] for k, v in choice.params}
        side = 224 // stage.output_stride
        proxy_width = scale_width(width, 0.25, name, params)
        proxy_side = math.ceil(2 * 28 / stage.output_stride)
        for shape, (c, hw) in (("target", (width, side)), ("proxy", (proxy_width, proxy_side))):
            torch.manual_seed(0)
            block = _deploy(operators.create_op(name, c, c, 1, **params))
            flops = count_flops(block, (1, c, hw, hw))
            for target in ("ort-cpu", "torch-cpu"):
                if (name, shape, target) in done:
                    continue
                try:
                    t = measure_module(block, (1, c, hw, hw), Target(target))
                    row = {"op": name, "shape": shape, "target": target, "width": c, "side": hw, "flops": flops,
                           **t.to_dict()}
                except Exception as exc:  # noqa: BLE001 -- recorded: an operator the runtime cannot run
                    row = {"op": name, "shape": shape, "target": target, "width": c, "side": hw, "flops": flops,
                           "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                _append(out, row)
                print(json.dumps(row), flush=True)


def operators_report(path: Path) -> None:
    rows = _done(path)
    if not rows:
        return
    table: dict[str, dict] = {}
    for r in rows:
        if "ms" in r:
            table.setdefault(r["op"], {})[(r["shape"], r["target"])] = (r["ms"] / (r["flops"] / 1e9), r)
    print(f"\nms per GFLOP per operator, one stride-1 block (stage 2's middle width on 28x28, or stage 3's on 14x14) "
          f"at the target's shape and at the default proxy's (width x 0.25, the map of a 28-px image), 1 thread:")
    print(f"{'operator':20s} {'target':>12s} {'ort':>8s} {'torch':>8s}   {'proxy':>10s} {'ort':>8s} {'torch':>8s}")
    for op, cells in sorted(table.items(), key=lambda kv: -kv[1].get(("target", "ort-cpu"), (0,))[0]):
        def cell(shape, target):
            v = cells.get((shape, target))
            return f"{v[0]:8.0f}" if v else f"{'-':>8s}"
        t = next((v[1] for k, v in cells.items() if k[0] == "target"), None)
        p = next((v[1] for k, v in cells.items() if k[0] == "proxy"), None)
        tt = f"{t['width']}x{t['side']}" if t else "-"
        pp = f"{p['width']}x{p['side']}" if p else "-"
        print(f"{op:20s} {tt:>12s} {cell('target', 'ort-cpu')} {cell('target', 'torch-cpu')}   {pp:>10s} "
              f"{cell('proxy', 'ort-cpu')} {cell('proxy', 'torch-cpu')}")


def searches(args) -> None:
    """One search under --latency-budget against one FLOPs-only search, at equal wall time (``--minutes``
    each, same seed, data and FLOP budget); then each pick's latency measured end to end on the target.
    Appends one line per search to ``searches.jsonl`` beside ``--out``; a search already there is not run again."""
    import subprocess

    from nas.arch import Arch
    from nas.latency import Target, measure_arch_latency
    from nas.pareto import analyze, objectives_of
    from nas.rundir import load_run

    out = args.out.parent / "searches.jsonl"
    done = {r["name"] for r in _done(out)}
    runs = Path(args.runs_dir)
    table = args.out.parent / f"{Target('ort-cpu').key()}.json"  # the table 'measure' filled: a warm start
    plans = {"flops-only": [], f"latency-{args.latency_budget}": ["--latency-budget", args.latency_budget,
                                                                    "--latency-target", "ort-cpu",
                                                                    "--latency-table", str(table)]}
    for name, extra in plans.items():
        if name in done:
            continue
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "nas.search", "--budget", "4.5GFLOPs", "--time-budget",
                        f"{args.minutes}m", "--name", name, "--runs-dir", str(runs), "--seed", "0", *extra],
                       check=False, cwd=ROOT)
        run, config, records = load_run(runs / name)
        best = analyze(records, config["budget"], *objectives_of(config))["best"]
        row = {"name": name, "minutes": args.minutes, "wall_s": round(time.time() - t0, 1),
               "trained": sum(r["status"] in ("completed", "stopped") and "confirms" not in r for r in records)}
        if best is not None:
            timing = measure_arch_latency(Arch.from_dict(best["arch"]), Target("ort-cpu"))["total"]
            conf = [r["accuracy"] for r in records if r.get("confirms") == best["trial_id"] and r["status"] == "confirmed"]
            row.update(pick=best["trial_id"], flops=best["flops"], proxy_accuracy=best["accuracy"],
                       confirmed=conf, predicted_ms=(best.get("latency") or {}).get("predicted_ms"),
                       **{f"ort_{k}": v for k, v in timing.to_dict().items()})
        _append(out, row)
        print(json.dumps(row), flush=True)


def _tau(x, y) -> float:
    from nas.stats import kendall_tau_b

    return kendall_tau_b(x, y)


def _cv_predictions(rows: list[dict], folds: int = 5, seed: int = 0) -> list[float]:
    """Each network's corrected prediction from a correction fitted on the other folds."""
    from nas.latency import Correction

    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = [0.0] * len(rows)
    for f in range(folds):
        test = set(order[f::folds])
        corr = Correction.fit([{"sum_ms": r["sum_ms"], "ms": r["ms"]} for i, r in enumerate(rows) if i not in test])
        for i in test:
            out[i] = corr(rows[i]["sum_ms"])
    return out


def _cv_flops(rows: list[dict], folds: int = 5, seed: int = 0) -> list[float]:
    """FLOPs times the single factor (ms per FLOP, least relative squares) fitted on the other folds."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out = [0.0] * len(rows)
    for f in range(folds):
        test = set(order[f::folds])
        train = [r for i, r in enumerate(rows) if i not in test]
        k = sum(r["flops"] / r["ms"] for r in train) / sum((r["flops"] / r["ms"]) ** 2 for r in train)
        for i in test:
            out[i] = k * rows[i]["flops"]
    return out


def _accuracy(pred: list[float], meas: list[float]) -> str:
    errs = [(p - m) / m for p, m in zip(pred, meas)]
    w10 = sum(abs(e) <= 0.10 for e in errs) / len(errs)
    w5 = sum(abs(e) <= 0.05 for e in errs) / len(errs)
    med = statistics.median(abs(e) for e in errs)
    return (f"{100 * w10:5.1f} % {100 * w5:5.1f} %   {_tau(pred, meas):5.2f}   {100 * med:5.1f} %  "
            f"{100 * min(errs):+6.1f}..{100 * max(errs):+6.1f} %")


def report(args) -> None:
    records = _done(args.out)
    print(f"{args.out}: {sum(r['phase'] == 'first' for r in records)} (network, target) "
          f"measurements; 224 px, batch 1, 1 thread, deploy form")
    for name in TARGETS:
        rows = [r for r in records if r["phase"] == "first" and r["target"] == name and "ms" in r]
        failed = [r for r in records if r["phase"] == "first" and r["target"] == name and "error" in r]
        if len(rows) < 5:
            print(f"\n{name}: {len(rows)} networks, too few to report")
            continue
        ms, flops = [r["ms"] for r in rows], [r["flops"] for r in rows]
        per_g = [r["ms"] / (r["flops"] / 1e9) for r in rows]
        print(f"\n== {name}: {len(rows)} networks ({len(failed)} failed to run: "
              f"{'; '.join(sorted({r['error'][:80] for r in failed})) or '-'})")
        print(f"FLOPs against latency: Kendall tau-b {_tau(flops, ms):.2f}; ms per GFLOP {min(per_g):.0f} to "
              f"{max(per_g):.0f} ({max(per_g) / min(per_g):.0f}x), median {statistics.median(per_g):.0f}")
        spread = [r["spread"] for r in rows]
        print(f"one measurement's round medians spread by {100 * statistics.median(spread):.1f} % (median), "
              f"{100 * max(spread):.1f} % at most; IQR/median {100 * statistics.median(r['iqr_ms'] / r['median_ms'] for r in rows):.1f} % (median)")
        again = {r["index"]: r for r in records if r["phase"] == "repeat" and r["target"] == name and "ms" in r}
        # operators rewritten between the two passes (issue 19) run other code the second time: left out
        pairs = [(again[r["index"]]["ms"], r["ms"]) for r in rows if r["index"] in again
                 and not set(r["ops"]) & REWRITTEN]
        if pairs:
            ratios = sorted(a / b for a, b in pairs)
            within = sum(abs(x - 1) <= 0.10 for x in ratios)
            within5 = sum(abs(x - 1) <= 0.05 for x in ratios)
            print(f"repeatability: {len(ratios)} networks (of the first {args.k}, none with an operator rewritten "
                  f"meanwhile) measured again later, second/first {ratios[0]:.2f} to "
                  f"{ratios[-1]:.2f} (median {statistics.median(ratios):.3f}); {within} of {len(ratios)} within "
                  f"+-10 %, {within5} within +-5 %")
        print(f"\n{'predictor':28s} {'+-10 %':>7s} {'+-5 %':>7s} {'tau':>6s} {'median |err|':>12s} {'range':>18s}")
        print(f"{'FLOPs x best factor':28s} {_accuracy(_cv_flops(rows), ms)}")
        print(f"{'table: plain sum':28s} {_accuracy([r['sum_ms'] for r in rows], ms)}")
        print(f"{'table: sum + correction':28s} {_accuracy(_cv_predictions(rows), ms)}")
        steady = [i for i, r in enumerate(rows) if r["spread"] <= 0.10]
        if len(steady) >= 5:
            cv = _cv_predictions(rows)
            print(f"{'same, steady measurements':28s} {_accuracy([cv[i] for i in steady], [ms[i] for i in steady])}"
                  f"   ({len(steady)} networks whose round medians agree within 10 %)")
        from nas.latency import Correction

        whole = Correction.fit([{"sum_ms": r["sum_ms"], "ms": r["ms"]} for r in rows])
        print(f"(correction and factor fitted in 5-fold cross-validation; on all {len(rows)} networks the "
              f"correction keeps the form '{whole.form}': ms = {whole.a:.2f} + {whole.b:.3f} x sum, leave-one-out "
              f"90th-percentile error {100 * whole.error:.1f} %)")
        per_op: dict[str, list[float]] = {}
        for r in rows:
            for op, fl, t in r["blocks"]:
                if t is not None:
                    acc = per_op.setdefault(op, [0.0, 0.0, 0])
                    acc[0] += t
                    acc[1] += fl
                    acc[2] += 1
        print(f"\n{'operator':22s} {'blocks':>7s} {'ms/GFLOP':>9s}   (block entries at the target's shapes)")
        for op, (t, fl, n) in sorted(per_op.items(), key=lambda kv: -kv[1][0] / max(kv[1][1], 1)):
            print(f"{op:22s} {n:7d} {t / (fl / 1e9) if fl else float('nan'):9.1f}")
        cold = [r for r in rows if r.get("layers_measured")]
        entries = sum(r["layers_measured"] for r in rows)
        secs = sum(r["table_seconds"] for r in rows)
        print(f"\ntable cost: {entries} layers measured for {len(rows)} networks, {secs:.0f} s in all "
              f"({secs / max(entries, 1):.2f} s per layer); the first 20 networks needed "
              f"{sum(r['layers_measured'] for r in rows[:20])} layers, {sum(r['table_seconds'] for r in rows[:20]):.0f} s; "
              f"{len(cold)} networks met a new layer; a warm prediction takes "
              f"{statistics.median(r['warm_predict_ms'] for r in rows):.2f} ms (median)")
        print(f"end-to-end measurement: {statistics.median(r['e2e_seconds'] for r in rows):.1f} s per network "
              f"(median, the ONNX export included for ort-cpu)")
    operators_report(args.out.parent / "operators.jsonl")
    for r in _done(args.out.parent / "searches.jsonl"):
        print(f"\nsearch {r['name']} ({r['minutes']:g} min, {r['trained']} trained): pick {r.get('pick')}, "
              f"{(r.get('flops') or 0) / 1e9:.2f} GFLOPs, proxy accuracy {r.get('proxy_accuracy')}, confirmed "
              f"{r.get('confirmed')}, ort-cpu {r.get('ort_ms')} ms (IQR {r.get('ort_iqr_ms')})")
    both = {}
    for r in records:
        if r["phase"] == "first" and "ms" in r:
            both.setdefault(r["index"], {})[r["target"]] = r["ms"]
    paired = [v for v in both.values() if len(v) == 2]
    if len(paired) >= 5:
        print(f"\nthe two runtimes rank {len(paired)} networks with Kendall tau-b "
              f"{_tau([v['ort-cpu'] for v in paired], [v['torch-cpu'] for v in paired]):.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("measure", "repeat", "report", "searches", "operators"))
    p.add_argument("--minutes", type=float, default=6.0, help="searches: each search's time budget")
    p.add_argument("--latency-budget", default="60ms", help="searches: the latency-aware search's budget")
    p.add_argument("--runs-dir", default="/tmp/opmix-bench-runs", help="searches: where the runs go")
    p.add_argument("--n", type=int, default=120)
    p.add_argument("--k", type=int, default=24)
    p.add_argument("--hours", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    {"measure": measure, "repeat": repeat, "report": report, "searches": searches,
     "operators": operators_phase}[args.phase](args)


if __name__ == "__main__":
    main()
