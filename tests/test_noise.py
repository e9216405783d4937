"""Noise statistics that say what they claim: the pooled seed sd, the paired (McNemar) image noise, complete
seeds for the pick, the paired bootstrap of two taus, and per-image results through a confirmation record.
Every expected number is computed here from the formula it checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nas.pareto import analyze, confirmed_lines, noise_statement
from nas.stats import (binomial_difference_se, bootstrap_difference, bootstrap_interval, kendall_tau_b,
                       pack_bits, paired_difference_se, pooled_sd, spearman_rho, unpack_bits)

ARCH = {"input": {"channels": 3, "size": 224, "classes": 1000}, "stem": {"type": "patch4", "width": 32},
        "stages": [{"op": "convnext", "width": 64, "depth": 2, "stride": 1}], "head": {"type": "pool_linear"}}
FIDELITY = {"max_train": 3072, "epochs": 2, "train_images": 3072, "val_images": 1000}


def proxy(trial_id, flops=1e9):
    return {"trial_id": trial_id, "status": "completed", "flops": flops, "params": 10**6, "accuracy": 0.5,
            "epochs": 2, "accuracies": [0.5], "arch": ARCH, "reference": None, "error": None}


def confirmation(of, seed, accuracy=None, flops=1e9, fidelity=FIDELITY, correct=None, status="confirmed"):
    """A confirmation record as nas._confirm writes it; with ``correct`` (per-image 0/1), its accuracy is
    theirs and the record holds them packed, as the trial function reports them."""
    r = {**proxy(f"{of}-c{seed}", flops), "status": status, "confirms": of, "seed": seed, "fidelity": fidelity}
    if correct is not None:
        correct = np.asarray(correct, dtype=bool)
        accuracy = float(correct.mean())
        r.update(correct=pack_bits(correct), val_images=len(correct))
    return {**r, "accuracy": accuracy, "accuracies": [accuracy]}


def pooled(*groups):
    """sqrt(sum of squared deviations from each group's own mean / sum of (n_i - 1)), written out."""
    squares = sum((x - sum(g) / len(g)) ** 2 for g in groups for x in g)
    return math.sqrt(squares / sum(len(g) - 1 for g in groups))


# ------------------------------------------------------------------------------------------- nas.stats
def test_pooled_sd_weights_each_group_by_its_degrees_of_freedom():
    groups = [[0.80, 0.82], [0.70, 0.74, 0.75], [0.9]]
    sd, dof = pooled_sd(groups)
    assert dof == 1 + 2 and sd == pytest.approx(pooled(*groups[:2]))
    # equal group sizes: the root mean square of the groups' sds, not their mean
    even = [[0.80, 0.82], [0.70, 0.76], [0.5, 0.5]]
    sds = [np.std(g, ddof=1) for g in even]
    assert pooled_sd(even)[0] == pytest.approx(math.sqrt(np.mean(np.square(sds))))
    assert pooled_sd(even)[0] > np.mean(sds)
    sd, dof = pooled_sd([[0.8], [0.7]])  # one value per group: nothing to pool
    assert math.isnan(sd) and dof == 0
    with pytest.raises(ValueError, match="NaN"):
        pooled_sd([[0.8, float("nan")]])


def test_paired_se_is_mcnemars_for_one_seed_each():
    n = 40
    a = np.zeros(n, bool)
    a[:30] = True  # a gets images 0-29 right
    b = np.zeros(n, bool)
    b[8:34] = True  # b gets 8-33: only a gets 0-7 (8 images), only b 30-33 (4)
    only_a, only_b = 8, 4
    expected = math.sqrt(((only_a + only_b) / n - ((only_a - only_b) / n) ** 2) / n)
    assert paired_difference_se(a, b) == pytest.approx(expected)
    assert paired_difference_se(b, a) == pytest.approx(expected)
    assert paired_difference_se(a, a) == 0.0  # the same predictions: no image noise in the difference
    # networks that agree on most images: less noise than two independent accuracies would have
    assert expected < binomial_difference_se(a.mean(), b.mean(), n)
    with pytest.raises(ValueError, match="same images"):
        paired_difference_se(a, b[:-1])


def test_paired_se_over_seeds_uses_each_images_mean_result():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 50)) < 0.8, rng.random((3, 50)) < 0.7  # 2 seeds of a, 3 of b, on 50 images
    d = a.mean(axis=0) - b.mean(axis=0)
    expected = math.sqrt((np.mean(d ** 2) - np.mean(d) ** 2) / 50)
    assert paired_difference_se(a, b) == pytest.approx(expected)
    assert np.mean(d) == pytest.approx(a.mean() - b.mean())  # d's mean is the difference of the mean accuracies


def test_binomial_se_formula():
    assert binomial_difference_se(0.81, 0.72, 1000) == pytest.approx(math.sqrt((0.81 * 0.19 + 0.72 * 0.28) / 1000))
    with pytest.raises(ValueError, match="validation images"):
        binomial_difference_se(0.8, 0.7, 0)


def test_bits_round_trip_and_refuse_the_wrong_count():
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1, 1], bool)  # 13: not a whole number of bytes
    text = pack_bits(bits)
    assert len(text) == 2 * math.ceil(13 / 8) and text[:2] == f"{0b10110001:02x}"
    assert unpack_bits(text, 13).tolist() == bits.tolist()
    with pytest.raises(ValueError, match="not the 20 images"):
        unpack_bits(text, 20)
    with pytest.raises(ValueError, match="hex"):
        unpack_bits("zz", 8)


def test_bootstrap_difference_pairs_the_two_statistics_on_each_resample():
    rng = np.random.default_rng(1)
    y = rng.normal(size=12)
    x, z = y + 0.5 * rng.normal(size=12), y + 2.0 * rng.normal(size=12)
    lo, hi = bootstrap_difference(kendall_tau_b, x, z, y, resamples=300, seed=4)
    idx = np.random.default_rng(4).integers(0, 12, size=(300, 12))  # the draws bootstrap_interval makes too
    diffs = [kendall_tau_b(x[i], y[i]) - kendall_tau_b(z[i], y[i]) for i in idx]
    diffs = [d for d in diffs if not math.isnan(d)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diffs, [0.05, 0.95])))
    assert bootstrap_interval(kendall_tau_b, x, y, resamples=300, seed=4) == pytest.approx(
        tuple(np.quantile([kendall_tau_b(x[i], y[i]) for i in idx], [0.05, 0.95])))
    assert bootstrap_difference(spearman_rho, x, x, y, resamples=50) == (0.0, 0.0)  # a score against itself


# ---------------------------------------------------------------------------------------- the pick (nas.pareto)
def entry(analysis, trial_id):
    return next(e for e in analysis["confirmed"] if e["trial_id"] == trial_id)


def test_the_seed_term_is_pooled_over_the_candidates_at_one_fidelity():
    """Before, the seed term of a pair was pooled over the pair alone: 0 with one seed on each side, one
    degree of freedom per candidate. Now every candidate at the fidelity counts; another fidelity does not."""
    other = {**FIDELITY, "epochs": 5}
    recs = [proxy(i) for i in range(5)] + [
        confirmation(0, 0, 0.80), confirmation(0, 1, 0.84),  # the pick: mean 0.82
        confirmation(1, 0, 0.70), confirmation(1, 1, 0.71),
        confirmation(2, 0, 0.60), confirmation(2, 1, 0.66),
        confirmation(3, 0, 0.815),  # its seed 1 was cut off: one seed
        confirmation(4, 0, 0.50, fidelity=other), confirmation(4, 1, 0.10, fidelity=other),  # not in the pool
    ]
    a = analyze(recs, 4e9)
    s = pooled([0.80, 0.84], [0.70, 0.71], [0.60, 0.66])
    assert a["pick"]["trial_id"] == 0 and a["pick"]["pooled_sd"] == pytest.approx(s)
    assert a["pick"]["pooled_dof"] == 3 and a["pick"]["pooled_over"] == 3
    binomial = lambda p, q: math.sqrt((p * (1 - p) + q * (1 - q)) / 1000)  # no per-image results recorded
    one = entry(a, 3)["noise"]  # 2 seeds against 1: the old rule's seed term came from the pick's seeds alone
    assert one.seed_se == pytest.approx(math.sqrt(s ** 2 / 2 + s ** 2 / 1))
    assert one.total == pytest.approx(math.hypot(one.seed_se, binomial(0.82, 0.815))) and not one.paired
    two = entry(a, 1)["noise"]
    assert two.seed_se == pytest.approx(s) and two.total == pytest.approx(math.hypot(s, binomial(0.82, 0.705)))
    assert entry(a, 1)["within_noise"] is (0.82 - 0.705 <= two.total)
    text = noise_statement(a)
    assert f"seed sd {s:.4f} pooled over 3 candidates, 3 degrees of freedom" in text
    assert "binomial on 1000 images" in text and "no per-image results" in text


def test_one_seed_everywhere_leaves_the_seed_noise_unmeasured_and_says_so():
    recs = [proxy(0), proxy(1, 2e9), confirmation(0, 0, 0.8), confirmation(1, 0, 0.8, flops=2e9)]
    a = analyze(recs, 4e9)
    assert a["best"]["trial_id"] == 0 and not a["pick"]["complete"]  # the cheaper on a tie, marked
    noise = entry(a, 1)["noise"]
    assert noise.seed_se is None and noise.total == pytest.approx(math.sqrt(2 * 0.8 * 0.2 / 1000))
    text = noise_statement(a)
    assert "retraining noise unmeasured" in text and "the pick lacks a second seed" in text


def test_a_candidate_without_all_its_seeds_is_shown_but_not_picked():
    """Trial 1's mean of one seed (0.90) tops trial 0's two (0.85); before, it was the pick, ranked on one
    seed. Its seed 1 failed (a record says so) or was cut off (nothing recorded)."""
    base = [proxy(0), proxy(1), confirmation(0, 0, 0.84), confirmation(0, 1, 0.86), confirmation(1, 0, 0.90)]
    for extra, why in (([], "cut off"), ([confirmation(1, 1, None, status="failed")], "failed")):
        a = analyze(base + extra, 4e9)
        assert a["best"]["trial_id"] == 0 and a["pick"]["complete"]
        lacking = entry(a, 1)
        assert not lacking["complete"] and lacking["missing"] == [1] and not lacking["recommended"]
        text = noise_statement(a)
        assert f"trial 1 has a higher mean but lacks seed 1 ({why}), so it is not the pick" in text
        assert text.startswith("the pick is the only confirmed candidate with all its seeds")  # not 'beats'

        rows = {line.split()[2 if line[0] in "*~" else 1]: line for line in confirmed_lines(a) if "convnext" in line}
        assert rows["0"].startswith("*") and " 1/2 " in rows["1"] and " 2 " in rows["0"]


def test_paired_image_noise_from_per_image_results():
    """Two networks that agree on all but 15 of 1000 images, 0.015 apart: beyond the paired noise (about
    0.004), within the binomial one (0.018) that the same records without per-image results fall back to."""
    n = 1000
    a0 = np.arange(n) < 800  # 0.800
    a1 = a0.copy()
    a1[900] = True  # seed 1 of a gets one more image: 0.801
    b0 = np.arange(n) < 785  # 0.785, a subset of a's images
    b1 = b0.copy()
    b1[0] = False  # 0.784
    recs = [proxy(0), proxy(1), confirmation(0, 0, correct=a0), confirmation(0, 1, correct=a1),
            confirmation(1, 0, correct=b0), confirmation(1, 1, correct=b1)]
    a = analyze(recs, 4e9)
    d = (a0.astype(float) + a1) / 2 - (b0.astype(float) + b1) / 2
    image = math.sqrt((np.mean(d ** 2) - np.mean(d) ** 2) / n)
    s = pooled([a0.mean(), a1.mean()], [b0.mean(), b1.mean()])
    noise = entry(a, 1)["noise"]
    assert noise.paired and noise.image_se == pytest.approx(image)
    assert noise.total == pytest.approx(math.hypot(s * math.sqrt(1 / 2 + 1 / 2), image))
    gap = a["pick"]["mean"] - entry(a, 1)["mean"]
    assert gap > noise.total and entry(a, 1)["within_noise"] is False
    assert "image noise paired on the same 1000 validation images" in noise_statement(a)
    # records written before per-image results: the binomial fallback, and the pair is within noise
    old = analyze([{k: v for k, v in r.items() if k not in ("correct", "val_images")} for r in recs], 4e9)
    fallback = entry(old, 1)["noise"]
    binomial = math.sqrt((0.8005 * 0.1995 + 0.7845 * 0.2155) / 1000)
    assert not fallback.paired and fallback.image_se == pytest.approx(binomial)
    assert gap <= fallback.total and entry(old, 1)["within_noise"] is True


# ------------------------------------------------------------------------------------------- nas.calibrate
def _setup(seeds: int = 1, reference_seeds: int = 1):
    from nas.calibrate import Setup

    knobs = {"max_train": 8, "epochs": 1, "width_mult": 0.25, "image_size": None, "batch_size": 8, "lr": 0.003,
             "grace_period": 2, "scale_windows": True}
    return Setup(space="hybrid", space_sha256="x", budget=1, archs=6, seeds=seeds, seed=0, dataset="d",
                 data_dir=None, settings={"p": knobs}, reference=knobs, reference_seeds=reference_seeds)


ARCHS = [{"index": i, "arch": {"i": i}, "flops": 100 + 7 * i - 3 * i * i, "params": 10 + i} for i in range(6)]
REF = [0.50, 0.60, 0.70, 0.80, 0.85, 0.90]


def test_minus_infinity_ranks_last_and_only_nan_is_left_out():
    """NASWOT gives -inf to arch 0 (two images with one code) and a NaN to arch 3; before, both were dropped
    and the row said n 4. Now -inf ranks last (n 5) and the line under the table says what was left out."""
    from nas.calibrate import REFERENCE, ZERO_COST, analyze, print_report

    naswot = [-math.inf, 1.0, 2.0, math.nan, 0.5, 3.0]
    results = [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a} for i, a in enumerate(REF)]
    results += [{"arch": i, "setting": ZERO_COST, "seed": 0, "scores": {"naswot": v}} for i, v in enumerate(naswot)]
    report = analyze(_setup(), ARCHS, results, resamples=0)
    row = next(r for r in report["rows"] if r["rung"] == "naswot")
    kept = [i for i in range(6) if not math.isnan(naswot[i])]
    assert row["n"] == 5 and row["undefined"] == 1
    assert row["tau"] == pytest.approx(kendall_tau_b([naswot[i] for i in kept], [REF[i] for i in kept]))
    lines = []
    print_report(report, out=lines.append)
    assert any(line.startswith("naswot: n 5 of 6: 1 architecture(s) scored NaN") for line in lines), lines


def test_seed_sd_is_pooled_over_architectures():
    """Seed sds of 0.02, 0.02 and 0 (x4): their mean is 0.0067, their root mean square 0.0115."""
    from nas.calibrate import REFERENCE, analyze

    spread = [0.02, 0.02, 0, 0, 0, 0]
    results = [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a} for i, a in enumerate(REF)]
    results += [{"arch": i, "setting": "p", "seed": s, "accuracy": a - 0.3 + (spread[i] * math.sqrt(2) if s else 0)}
                for i, a in enumerate(REF) for s in (0, 1)]
    rows = {r["rung"]: r for r in analyze(_setup(seeds=2), ARCHS, results, resamples=0)["rows"]}
    assert rows["p"]["seed_sd"] == pytest.approx(math.sqrt(np.mean(np.square(spread))))
    assert rows["p x2"]["seed_sd"] == rows["p"]["seed_sd"]


def test_the_target_bootstraps_the_paired_difference_of_the_taus():
    """The setting's tau-b against FLOPs' and params' on the same resamples, not its lower bound against
    their point values."""
    from nas.calibrate import REFERENCE, analyze, print_report

    proxy = [0.20, 0.10, 0.30, 0.50, 0.40, 0.60]
    results = [{"arch": i, "setting": REFERENCE, "seed": 0, "accuracy": a} for i, a in enumerate(REF)]
    results += [{"arch": i, "setting": "p", "seed": 0, "accuracy": a} for i, a in enumerate(proxy)]
    report = analyze(_setup(), ARCHS, results, resamples=300)
    t = report["targets"]
    for size in ("flops", "params"):
        z = [a[size] for a in ARCHS]
        margin = t[f"tau_minus_{size}"]
        assert margin["difference"] == pytest.approx(kendall_tau_b(proxy, REF) - kendall_tau_b(z, REF))
        assert margin["interval"] == pytest.approx(list(bootstrap_difference(kendall_tau_b, proxy, z, REF,
                                                                              resamples=300)))
    assert t["tau_interval_above_flops_and_params"] is all(
        t[f"tau_minus_{k}"]["interval"][0] > 0 for k in ("flops", "params"))
    lines = []
    print_report(report, out=lines.append)
    d = t["tau_minus_flops"]
    assert any(f"FLOPs' by {d['difference']:+.2f} [{d['interval'][0]:+.2f}, {d['interval'][1]:+.2f}]" in line
               for line in lines), lines


def test_a_missing_settings_file_is_one_line_and_exit_2(tmp_path, capsys):
    from nas import _cli
    from nas.calibrate import PROG, _main

    with pytest.raises(SystemExit) as stop:
        _cli.run(PROG, _main, ["--out", str(tmp_path / "o"), "--budget", "1G", "--archs", "3",
                               "--settings", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "missing.yaml: cannot be read" in err and "--settings" in err and "Traceback" not in err


def test_a_failed_job_is_recorded_once_and_retried_only_on_purpose(tmp_path, monkeypatch, capsys):
    """Arch 1's proxy training fails every time. Continuing runs nothing and exits 0, saying how to retry;
    --retry-failed runs it again (here it has been fixed) and the failure line goes. Jobs run in this
    process (``in_process``): Ray is not what is tested."""
    import functools
    import types

    import nas.calibrate as cal
    import nas.data
    from nas import _cli

    from search_helpers import write_space

    (tmp_path / "s.yaml").write_text("settings: {p: {max_train: 8, epochs: 1}}\nreference: {epochs: 2}\n")
    calls, broken = [], [True]

    def job(arch, setting, knobs, seed, data, threads, imports=()):
        calls.append((arch["i"], setting, seed))
        if setting == cal.ZERO_COST:
            return {"scores": {"naswot": float(arch["i"])}, "seconds": 0.0}
        if setting == "p" and arch["i"] == 1 and broken[0]:
            raise FloatingPointError("the training loss became nan by epoch 1, step 3")
        return {"accuracy": REF[arch["i"]], "accuracies": [REF[arch["i"]]], "seconds": 0.0}

    monkeypatch.setattr(cal, "_run_job", job)
    monkeypatch.setattr(cal, "sample_archs", lambda *a, **k: ARCHS[:4])
    monkeypatch.setattr(cal, "calibrate", functools.partial(cal.calibrate, in_process=True))
    monkeypatch.setattr(cal, "analyze", functools.partial(cal.analyze, resamples=0))  # no intervals: seconds
    monkeypatch.setattr(nas.data, "load_dataset", lambda *a, **k: types.SimpleNamespace(
        train_x=[0] * 16, val_x=[0] * 8, source="a stand-in", image_size=28))
    argv = ["--out", str(tmp_path / "o"), "--budget", "1G", "--archs", "4", "--seeds", "1",
            "--settings", str(tmp_path / "s.yaml"), "--space", str(write_space(tmp_path))]  # a space quick to load
    hint = "1 job(s) failed (see results.jsonl); run again with --retry-failed to retry them"

    def run(*extra):
        calls.clear()
        with pytest.raises(SystemExit) as stop:
            _cli.run(cal.PROG, cal._main, argv + list(extra))
        return stop.value.code, capsys.readouterr().out

    code, out = run()
    assert code == 0 and len(calls) == 4 * 3 and hint in out, out
    errors = lambda: [r for r in cal.CalibrationDir(tmp_path / "o").read_results() if "error" in r]
    assert [(r["arch"], r["setting"]) for r in errors()] == [(1, "p")]
    assert errors()[0]["error"] == "FloatingPointError: the training loss became nan by epoch 1, step 3"
    code, out = run()  # continue: the failure stays recorded once, nothing runs again
    assert code == 0 and calls == [] and "12 jobs done, 0 to run" in out and hint in out
    assert len(errors()) == 1
    broken[0] = False
    code, out = run("--retry-failed")
    assert code == 0 and calls == [(1, "p", 0)] and hint not in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["jobs_failed"] == 0 and report["jobs_left"] == 0
    assert next(r for r in report["rows"] if r["rung"] == "p")["n"] == 4


# ------------------------------------------------------------------ per-image results: trainer to record
def test_the_trainer_reports_which_images_it_got_right():
    """The per-image results are those of the validation images in order: the model's own predictions agree,
    their mean is the epoch's accuracy, and ``report`` gets them only when asked (``per_image``)."""
    import torch

    from nas.train import TrainConfig, train_proxy
    from train_helpers import small_cnn, square_task

    data = square_task(n_train=96, n_val=37)  # 37 images: not a whole number of bytes when packed
    torch.manual_seed(0)
    model = small_cnn()
    reports, plain = [], []
    cfg = TrainConfig(epochs=2, batch_size=32, max_val=None, device="cpu")
    result = train_proxy(model, data, cfg, report=lambda e, acc, loss, correct: reports.append((acc, correct)),
                         per_image=True)
    for acc, correct in reports:
        assert correct.dtype == torch.bool and len(correct) == 37 and correct.sum().item() / 37 == acc
    with torch.no_grad():
        model.eval()
        x = (data.val_x.float() / 255 - data.mean[0]) / data.std[0]
        assert torch.equal(result.correct, model(x).argmax(1) == data.val_y)
    assert torch.equal(reports[-1][1], result.correct)
    assert unpack_bits(pack_bits(result.correct.numpy()), 37).tolist() == result.correct.tolist()
    torch.manual_seed(0)
    train_proxy(small_cnn(), data, cfg, report=lambda e, acc, loss: plain.append(acc))  # three arguments still
    assert plain == [acc for acc, _ in reports]


def test_a_confirmation_record_keeps_the_last_epochs_per_image_results(tmp_path):
    """The recorder writes the trial function's last result's ``correct`` and ``val_images`` into the record,
    and the pick reads them back as paired noise."""
    import types

    from nas._confirm import _recorder
    from nas.proxy import ProxySettings
    from nas.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    rng = np.random.default_rng(3)
    bits = {(c, s): rng.random(40) < 0.7 + 0.1 * c for c in (0, 1) for s in (0, 1)}
    recorder = _recorder(run, ProxySettings(epochs=2), FIDELITY, log=lambda m: None)
    for (c, s), right in bits.items():
        job = {"confirms": c, "seed": s, "reference": None, "arch": ARCH, "flops": 10**9, "params": 10**6}
        trial = types.SimpleNamespace(trial_id=f"t{c}{s}", config={"job": job}, last_result=None)
        recorder.on_trial_start(0, [], trial)
        recorder.on_trial_result(0, [], trial, {"epoch": 1, "accuracy": 0.5})
        trial.last_result = {"epoch": 2, "accuracy": float(right.mean()), "correct": pack_bits(right),
                             "val_images": 40}
        recorder.on_trial_complete(0, [], trial)
    records = run.read_trials()
    assert [(r["confirms"], r["seed"], r["status"], r["val_images"]) for r in records] == [
        (c, s, "confirmed", 40) for c, s in bits]
    assert all(unpack_bits(r["correct"], 40).tolist() == bits[r["confirms"], r["seed"]].tolist() for r in records)
    a = analyze([proxy(0), proxy(1)] + records, 4e9)
    other = a["confirmed"][1]
    d = np.mean([bits[a["pick"]["trial_id"], s] for s in (0, 1)], axis=0) - np.mean(
        [bits[other["trial_id"], s] for s in (0, 1)], axis=0)
    assert other["noise"].paired and other["noise"].image_se == pytest.approx(
        math.sqrt((np.mean(d ** 2) - np.mean(d) ** 2) / 40))
