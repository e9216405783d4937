"""The run folder, ``runs/<name>/``: the format that search, calibrate, pareto, export, the tests and the
benchmarks share. ``RunDir`` names its files, ``load_run`` reads one (with one-line errors), and every file is
written by ``atomic_write`` (whole files) or ``append_jsonl`` (records), so a crash loses nothing.

- ``config.yaml``: the resolved configuration (space file and its contents' name, budget, dataset, sampler,
  seed, trials, epochs, proxy and trainer settings): everything needed to reproduce or resume the run, with
  ``storage`` and ``study_name``, the run's own Optuna study (unique, so runs can share one database);
- ``space.yaml``: a copy of the space file, which a resumed run searches even if the original changed;
- ``study.db``: the Optuna study (SQLite) unless ``--storage`` names another database;
- ``ray/session-K/``: the Ray Tune experiment of the K-th session of the run (a resumed run adds one), and
  ``ray/session-K-confirm/`` that of its confirmation rung;
- ``trials.jsonl``: one JSON object per candidate, and per confirmation training (``status: confirmed``),
  appended (and fsync'ed) as each one ends. A candidate's ``status``: ``completed`` (all epochs),
  ``stopped`` (by ASHA), ``failed`` (its ``error`` says why), ``infeasible`` (over the budget or against a
  constraint of the space: never trained; ``flops`` is null when a constraint refused it before counting)
  or ``interrupted`` (cut off by the time budget, Ctrl-C or a crash: no result; ``--resume`` trains it
  again, and a later record of the same network follows);
- ``search.log``: the progress lines of every session.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from .errors import OpmixError

__all__ = ["RunDir", "STATUSES", "load_run", "trial_record", "trial_label", "arch_line", "atomic_write", "save_figure", "append_line", "append_jsonl", "read_jsonl"]

STATUSES = ("completed", "stopped", "infeasible", "failed", "interrupted", "confirmed")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    study = property(lambda self: self.path / "study.db")
    trials = property(lambda self: self.path / "trials.jsonl")
    space = property(lambda self: self.path / "space.yaml")
    ray = property(lambda self: self.path / "ray")

    def exists(self) -> bool:
        return self.config.is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.config, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.config.read_text())
        except OSError as exc:
            raise OpmixError(f"{self.config}: cannot be read ({exc.strerror}); is {self.path} a run folder?") from None
        if not isinstance(data, dict):
            raise OpmixError(f"{self.config}: is not a run configuration; is {self.path} a run folder?")
        return data

    def append_trial(self, record: dict[str, Any]) -> None:
        """Append one record durably: a crash after this returns never loses it."""
        append_jsonl(self.trials, record)

    def read_trials(self) -> list[dict[str, Any]]:
        """Every record; a line cut short by a crash is skipped with a warning."""
        return read_jsonl(self.trials)

    def next_session(self) -> str:
        """The first ``session-K`` whose proxy and confirmation folders are both unused."""
        k = 1
        while (self.ray / f"session-{k}").exists() or (self.ray / f"session-{k}-confirm").exists():
            k += 1
        return f"session-{k}"


def load_run(path: str | Path) -> tuple[RunDir, dict[str, Any], list[dict[str, Any]]]:
    """The run at ``path``: its directory, configuration and trial records (one-line errors otherwise)."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise OpmixError(f"{run.path}: no such run folder; pass runs/NAME as python -m nas.search made it")
    if not run.exists():
        raise OpmixError(f"{run.path}: not a run folder (no config.yaml); pass runs/NAME as python -m nas.search "
                         f"made it")
    config = run.read_config()
    if not (isinstance(config.get("budget"), (int, float))
            or (config.get("budget") is None and (config.get("latency") or {}).get("budget_ms"))):
        raise OpmixError(f"{run.config}: has neither a numeric 'budget' nor a latency budget; was it written by "
                         f"python -m nas.search?")
    return run, config, run.read_trials()


def trial_record(trial_id: int | str, arch, status: str, flops: int, params: int, *, error: str | None,
                 accuracies: list[float] = (), reference: str | None = None, ray_trial_id: str | None = None,
                 timings: dict[str, float] | None = None, note: str | None = None, node: str | None = None,
                 **extra: Any) -> dict[str, Any]:
    """One line of ``trials.jsonl``: the shape every reader of a run expects; ``extra`` keys go at the end
    (a confirmation's ``confirms``, ``seed`` and ``fidelity``). ``arch`` is an ``Arch``."""
    return {
        "trial_id": trial_id,
        "status": status,
        "flops": flops,
        "params": params,
        "accuracy": accuracies[-1] if accuracies else None,
        "epochs": len(accuracies),
        "accuracies": list(accuracies),
        "arch": arch.to_dict(),
        "reference": reference,
        "error": error,
        "note": note,
        "ray_trial_id": ray_trial_id,
        "node": node,
        "timings": timings or {},
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }


def trial_label(record: dict[str, Any]) -> str:
    """How every command names a trial: 'ref NAME' for a reference, else 'trial N' (a record's ``trial_id``,
    a confirmation's ``confirms``, or a Ray trial config's ``candidate``)."""
    if record.get("reference"):
        return f"ref {record['reference']}"
    for key in ("confirms", "candidate", "trial_id"):
        if record.get(key) is not None:
            return f"trial {record[key]}"
    return "trial ?"


def arch_line(arch: dict[str, Any]) -> str:
    """One compact line per architecture: per stage, op x depth and width."""
    return " | ".join(f"{s['op']} x{s['depth']} {s['width']}" for s in arch["stages"])


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to a temporary sibling of a name of its own, fsync it, then rename it over
    ``path``: readers see the old file or the whole new one, after a crash too, and two writers of one file
    never write into each other's temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep the file from the others who read a shared run
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, path: Path, **savefig_kwargs: Any) -> Path:
    """A matplotlib figure written through ``atomic_write`` (its format from ``path``'s suffix)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)


def append_line(path: Path, line: str) -> None:
    """Append one line of text (a log line) and fsync it; after a last line torn by a crash (no newline),
    start a new line, so that this one stays whole."""
    torn = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line (``append_line``), so that it stays whole and readable."""
    append_line(path, json.dumps(record, sort_keys=False))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every whole line of ``path`` ([] when it does not exist); one cut short by a crash is skipped with a
    warning."""
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{n}: an unreadable line (cut short by a crash?) was skipped")
    return records
