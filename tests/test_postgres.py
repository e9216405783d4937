"""--storage postgresql://...: searches on a real PostgreSQL 15 server that this module starts (tests/pg_helpers.py).

Several runs share one database, each in its own study (``study_name`` in its config.yaml): two searches at
once keep their studies apart, a resume reopens and grows the run's own study, and nas.pareto's front is the
study's. Skipped where no server can be started here or the driver (the ``postgres`` extra) is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pg_helpers import PG_BIN, PG_USER, default_driver, postgres_server, why_no_server

_reason = why_no_server()
if _reason:
    pytest.skip(_reason, allow_module_level=True)
pytest.importorskip("sqlalchemy")
pytest.importorskip(default_driver(), reason=f"the PostgreSQL driver {default_driver()!r} is not installed; "
                    f"pip install -e '.[postgres]'")

import optuna
from search_helpers import clean_env, run_cli, search_cli, small_args, write_space, write_tiny_fashion

from nas.rundir import RunDir

COMPLETE = optuna.trial.TrialState.COMPLETE


def output(result) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def server():
    with postgres_server() as pg:
        yield pg


@pytest.fixture(scope="module")
def url(server):
    """The database the searches share, its Optuna tables created once (a fresh database's first use by two
    runs at once is test_runs_started_together_on_a_fresh_database's)."""
    optuna.storages.RDBStorage(server.url)
    return server.url


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg-search")
    write_tiny_fashion(root / "data")
    write_space(root)
    return root


def candidates(run: Path) -> list[dict]:
    return [r for r in RunDir(run).read_trials() if "confirms" not in r]


def config_of(run: Path) -> dict:
    return RunDir(run).read_config()


def assert_study_is_the_runs(run: Path, url: str) -> optuna.Study:
    """Every candidate of the run is the trial of the same number in the run's own study (same values when
    completed, same parameters), and every other trial of that study is a duplicate proposal of one of them:
    nothing of another run in it."""
    from nas.arch import Arch
    from nas.space import load_space

    config = config_of(run)
    study = optuna.load_study(study_name=config["study_name"], storage=url)
    recs = candidates(run)
    ids = [r["trial_id"] for r in recs]
    assert recs and len(ids) == len(set(ids))
    by_number = {t.number: t for t in study.trials}
    space = load_space(run / "space.yaml")
    for r in recs:
        assert r["trial_id"] in by_number, f"{run.name}: candidate {r['trial_id']} is not in its study"
        t = by_number[r["trial_id"]]
        assert "duplicate_of" not in t.user_attrs
        assert t.params == space.params_of(Arch.from_dict(r["arch"])), (r["trial_id"], t.params, r["arch"])
        if r["status"] == "completed":
            assert t.state == COMPLETE and t.values == [r["accuracy"], r["flops"]]
        elif r["status"] == "stopped":
            assert t.state == optuna.trial.TrialState.PRUNED
        elif r["status"] == "infeasible":
            assert t.state == COMPLETE and max(t.constraints.values()) > 0
    others = [t for t in study.trials if t.number not in set(ids)]
    assert all(t.user_attrs.get("duplicate_of") in ids for t in others), \
        [(t.number, t.state, t.user_attrs) for t in others]
    assert len(study.trials) == len(recs) + len(others)
    return study


# --------------------------------------------------------------------------------- two runs at once, one database
def _with_password(url: str, password: str = "not-kept") -> str:
    return url.replace(f"{PG_USER}@", f"{PG_USER}:{password}@", 1)


@pytest.fixture(scope="module")
def two_runs(url, workdir):
    """Two searches started at the same moment, different --name and --seed, the same --storage (alpha's with a
    password, which the trust-auth server ignores and the run folder must not keep)."""
    names, procs, logs = ("alpha", "beta"), [], []
    try:
        for seed, name in enumerate(names, start=1):
            log = open(workdir / f"{name}.out", "w+")
            logs.append(log)
            storage = _with_password(url) if name == "alpha" else url
            args = small_args(workdir, "--trials", "3", "--name", name, "--seed", str(seed), "--storage", storage)
            procs.append(subprocess.Popen([sys.executable, "-m", "nas.search", *args], cwd=workdir, env=clean_env(),
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 600
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for proc in procs:  # a search still running (a timeout, a failure here) is ended with its own Ray
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=60)
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
    for name, proc, text in zip(names, procs, texts):
        assert proc.returncode == 0, f"{name}:\n{text[-4000:]}"
    return {name: workdir / "runs" / name for name in names}


def test_two_concurrent_searches_keep_their_own_studies(two_runs, url):
    configs = {name: config_of(run) for name, run in two_runs.items()}
    for name, config in configs.items():
        assert config["storage"] == (_with_password(url, "***") if name == "alpha" else url), config
        assert config["study_name"].startswith(f"opmix-{name}-"), config
        assert "not-kept" not in (two_runs[name] / "config.yaml").read_text()
        assert not (two_runs[name] / "study.db").exists()  # the study is in PostgreSQL, not beside the run
    assert configs["alpha"]["study_name"] != configs["beta"]["study_name"]
    for name, run in two_runs.items():
        trained = [r for r in candidates(run) if r["status"] != "infeasible"]
        assert len(trained) == 3 and any(r["status"] == "completed" for r in trained), name
        assert_study_is_the_runs(run, url)
    names = optuna.get_all_study_names(storage=url)
    assert sorted(names) == sorted(c["study_name"] for c in configs.values())


def test_resume_on_the_database_grows_the_runs_own_study(two_runs, url, workdir, local_ray):
    run = two_runs["alpha"]
    config, before = config_of(run), candidates(run)
    study_before = optuna.load_study(study_name=config["study_name"], storage=url)
    n_before = len(study_before.trials)
    names_before = sorted(optuna.get_all_study_names(storage=url))
    args = small_args(workdir, "--name", "alpha", "--resume", "--trials", "5", confirm=None)
    refused = search_cli(*args)  # the run's config.yaml names its database, but not the password
    assert refused.returncode == 2 and "pass --storage with the full URL" in refused.stderr, output(refused)
    assert candidates(run) == before
    result = search_cli(*args, "--storage", _with_password(url))
    assert result.returncode == 0, output(result)
    assert config_of(run) == config
    after = candidates(run)
    assert after[:len(before)] == before  # nothing finished is lost or rewritten
    new = after[len(before):]
    assert sum(r["status"] != "infeasible" for r in before) == 3
    assert sum(r["status"] != "infeasible" for r in new) == 2  # only the new candidates trained
    assert "training 2 candidates" in result.stdout
    assert min(r["trial_id"] for r in new) >= n_before  # numbered on in the same study, not from 0 in a new one
    assert len({json.dumps(r["arch"], sort_keys=True) for r in after if r["status"] != "infeasible"}) == 5
    study = assert_study_is_the_runs(run, url)
    assert len(study.trials) > n_before
    assert sorted(optuna.get_all_study_names(storage=url)) == names_before  # no study was added
    summaries = [s.study_name for s in optuna.get_all_study_summaries(storage=url)]
    assert sorted(summaries) == names_before and summaries.count(config["study_name"]) == 1
    assert not (run / "study.db").exists()
    assert_study_is_the_runs(two_runs["beta"], url)  # the other run's study is untouched by the resume


def test_pareto_of_a_postgres_run_agrees_with_optuna(two_runs, url):
    from nas.pareto import analyze

    import nas.pareto

    run = two_runs["beta"]
    result = run_cli(nas.pareto.main, run, "--json")
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    recs = RunDir(run).read_trials()
    assert ours["front"], "the tiny run should have completed trials"
    assert [e["trial_id"] for e in ours["front"]] == [r["trial_id"] for r in analyze(recs, 80e6)["front"]]
    study = optuna.load_study(study_name=config_of(run)["study_name"], storage=url)
    feasible = [t for t in study.best_trials
                if t.state == COMPLETE and all(v <= 0 for v in (t.constraints or {}).values())]
    theirs = {(round(t.values[0], 9), int(t.values[1])) for t in feasible}
    assert theirs == {(round(e["accuracy"], 9), e["flops"]) for e in ours["front"]}
    by_number = {t.number: t for t in study.trials}
    for e in ours["front"]:  # each of our front's trials is the study's trial of the same number
        assert by_number[e["trial_id"]].values == [e["accuracy"], e["flops"]]


# --------------------------------------------------------------------------------- a fresh database, runs at once
RACER = """
import sys, time, traceback
from pathlib import Path
from nas.data import load_dataset
from nas.rundir import RunDir
from nas.search import SearchConfig, search

name, workdir, barrier, urls = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
config = SearchConfig(budget=80_000_000, space=str(workdir / "mini.yaml"), trials=0, epochs=1,
                      data_dir=str(workdir / "data"), confirm=0)
data = load_dataset(config.dataset, config.data_dir, seed=config.seed)
failed = False
for k, url in enumerate(urls):
    (barrier / f"{name}.ready{k}").touch()
    while not (barrier / f"go{k}").exists():
        time.sleep(0.001)
    try:
        search(config, run=RunDir(workdir / "racers" / f"{name}-{k}"), storage=url, study_name=name, data=data,
               log=lambda m: None)
    except Exception as exc:
        failed = True
        print(f"round {k}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}", flush=True)
sys.exit(1 if failed else 0)
"""


def test_runs_started_together_on_a_fresh_database(server, workdir, tmp_path):
    """Runs that open their studies at the same moment in a database no run has used yet each get their own.

    The first use of a database creates Optuna's tables, which concurrent CREATE TABLEs race on in PostgreSQL.
    A run with every trial done (trials=0 here) opens its study and trains nothing (no Ray), so a few
    processes are released from a barrier at once, in rounds, each round on a new database."""
    rounds, names = 3, [f"opmix-racer-{i}" for i in range(3)]
    as_pg = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []
    urls = []
    for k in range(rounds):
        subprocess.run([*as_pg, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(server.port), "-U", PG_USER,
                        f"fresh{k}"], check=True, capture_output=True, timeout=60)
        urls.append(server.url.rsplit("/", 1)[0] + f"/fresh{k}")
    procs = [subprocess.Popen([sys.executable, "-c", RACER, name, str(workdir), str(tmp_path), *urls], cwd=workdir,
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True) for name in names]
    try:
        for k in range(rounds):
            deadline = time.time() + 300
            while not all((tmp_path / f"{n}.ready{k}").exists() for n in names):
                assert all(p.poll() is None for p in procs) and time.time() < deadline, \
                    [p.communicate()[1][-2000:] if p.poll() is not None else "running" for p in procs]
                time.sleep(0.01)
            (tmp_path / f"go{k}").touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(timeout=60)
    failed = [f"{n}: {out.strip() or err.strip()[-1500:]}" for n, p, (out, err) in zip(names, procs, outs)
              if p.returncode != 0]
    assert not failed, "\n".join(failed)
    for db_url in urls:
        assert sorted(optuna.get_all_study_names(storage=db_url)) == sorted(names)
