"""What a user sees of a study in optuna-dashboard: its trials as the dashboard's JSON API serves them, and a
headless-browser screenshot of the study's page (the Pareto front of a multi-objective study).

    python benchmarks/dashboard_check.py runs/NAME [--study opmix] [--out dashboard.png]
    python benchmarks/dashboard_check.py sqlite:///runs/NAME/study.db [--out dashboard.png]

It serves the storage with ``optuna_dashboard.wsgi`` on a free local port in a background thread, prints the
study's metric names and, per trial, its number, state, values and whether the dashboard counts it feasible,
then screenshots ``/dashboard/studies/ID`` with Debian's ``chromium --headless`` (skipped, with a note, when
no browser is installed). Needs ``pip install optuna-dashboard``.

What the dashboard reads (optuna-dashboard 0.21, ``_serializer.py``): a trial's ``constraints`` is the trial
system attribute ``"constraints"``, the list the deprecated ``constraints_func`` of the samplers writes; the
per-name keys ``"constraints:NAME"`` that ``Trial.set_constraint`` writes are not read, so such a trial is
served with ``constraints: []`` and drawn feasible. The front-end counts a trial feasible when every value of
that list is <= 0, and draws an infeasible one light grey (#cccccc, "Infeasible Trial") on the Pareto front,
History and Timeline. The objectives' names (Pareto front selectors, History axis) are the study's
``metric_names`` (``study.set_metric_names``), else "Objective 0", "Objective 1".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socketserver
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def storage_of(target: str) -> tuple[str, str | None]:
    """A run folder -> (its storage URL, its study name); a storage URL or a study file (SQLite, journal: the
    dashboard tells them apart) -> (itself, None: every study)."""
    path = Path(target)
    if "://" in target or path.is_file():
        return target, None
    if not path.is_dir():
        raise SystemExit(f"{target}: neither a run folder, a study file nor a storage URL (sqlite:///PATH, ...)")
    sys.path.insert(0, str(ROOT))
    from nas.rundir import RunDir

    run = RunDir(path)
    config = run.read_config() if run.exists() else {}
    return config.get("storage") or f"sqlite:///{run.study.resolve()}", config.get("study_name") or "opmix"


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per connection: a browser opens spare connections it may never send on, and a server that
    serves one connection at a time waits on such a one while the page's real requests queue."""
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # one line per request would bury the report
        pass


@contextlib.contextmanager
def serve(storage) -> Iterator[str]:
    """optuna-dashboard over ``storage`` (a URL or an Optuna storage object) on a free port of 127.0.0.1,
    in a daemon thread; yields its base URL and stops the server on exit."""
    try:
        import optuna_dashboard
    except ImportError:
        raise SystemExit("optuna-dashboard is not installed: pip install optuna-dashboard") from None
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage),
                         server_class=_ThreadingServer, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def study_details(base: str, name: str | None = None) -> list[dict[str, Any]]:
    """The dashboard's own study-detail JSON (``GET /api/studies/ID``, what its front-end draws from) of the
    study called ``name``, or of every study; each with ``study_id`` added."""
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    chosen = [s for s in studies if name is None or s["study_name"] == name]
    if not chosen:
        names = ", ".join(s["study_name"] for s in studies) or "none"
        raise SystemExit(f"no study {name!r} in this storage (it holds: {names}); pass --study NAME")
    return [{**get_json(f"{base}/api/studies/{s['study_id']}"), "study_id": s["study_id"]} for s in chosen]


def feasible(trial: dict[str, Any]) -> bool:
    """The front-end's rule (bundle.js: ``constraints.every(e => e <= 0)``): an empty list is feasible."""
    return all(c <= 0 for c in trial["constraints"])


def report(detail: dict[str, Any]) -> str:
    names = detail.get("objective_names")
    lines = [f"study {detail['name']!r} (id {detail['study_id']}): directions {detail['directions']}, "
             f"metric names {names if names else 'none: the dashboard shows Objective 0, Objective 1, ...'}",
             f"{'trial':>6s}  {'state':9s}  {'feasible':8s}  {'constraints':24s}  values"]
    for t in detail["trials"]:
        lines.append(f"{t['number']:6d}  {t['state']:9s}  {'yes' if feasible(t) else 'NO':8s}  "
                     f"{json.dumps(t['constraints']):24s}  {t.get('values')}")
    lines.append(f"Pareto front as the dashboard computes it (constraints ignored there): trials "
                 f"{[t['number'] for t in detail['best_trials']]}")
    return "\n".join(lines)


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(url: str, out: Path, *, size: tuple[int, int] = (1400, 1800), wait_ms: int = 5000,
               browser: str | None = None) -> Path:
    """A headless-browser screenshot of ``url`` into ``out`` (PNG). ``wait_ms`` of virtual time lets the page
    fetch the study and draw its plots before the shot."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError(f"no browser found (looked for {', '.join(BROWSERS)}): apt-get install chromium")
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing cached from another study
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run folder (runs/NAME) or an Optuna storage URL")
    parser.add_argument("--study", help="the study's name (default: the run's; with a URL, every study)")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"),
                        help="the screenshot; with several studies, -ID is added to the name")
    parser.add_argument("--window-size", default="1400,1800", help="WIDTH,HEIGHT of the browser window")
    args = parser.parse_args(argv)
    storage, name = storage_of(args.target)
    size = tuple(int(v) for v in args.window_size.split(","))
    with serve(storage) as base:
        details = study_details(base, args.study or name)
        for detail in details:
            print(report(detail))
            out = args.out if len(details) == 1 else args.out.with_stem(f"{args.out.stem}-{detail['study_id']}")
            url = f"{base}/dashboard/studies/{detail['study_id']}"
            if find_browser() is None:
                print(f"no screenshot: no browser ({', '.join(BROWSERS)}); apt-get install chromium")
                continue
            print(f"screenshot of {url}: {screenshot(url, out, size=size)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
