"""Optuna storage URLs: what a run folder keeps of one (never its password), which one a resumed run
reopens, and opening one when several runs race to create its tables."""

from __future__ import annotations

import time

from .errors import OpmixError

__all__ = ["storage_to_store", "storage_to_resume", "open_storage"]


def storage_to_store(url: str | None) -> str | None:
    """``url`` as a run's ``config.yaml`` keeps it: with its password, if any, replaced by ``***`` (a run folder
    is shared and copied; a password belongs in the URL given at the command line, PGPASSWORD or ~/.pgpass)."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not a database URL: Optuna refuses it with its own message
        return url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def storage_to_resume(stored: str | None, given: str | None) -> str | None:
    """The storage a resumed run reopens: its own (``stored``), or ``given`` (``--storage``) when that is the
    same database, which it must be when the stored URL's password was held back."""
    if given is None:
        if stored is not None and ":***@" in stored:
            raise OpmixError(f"--resume: this run's study is in {stored}, whose password is not kept in the run "
                             f"folder; pass --storage with the full URL (or put the password in PGPASSWORD or "
                             f"~/.pgpass)")
        return stored
    if storage_to_store(given) != stored:
        raise OpmixError(f"--resume: this run's study is in {stored or 'its own study.db'}, not --storage "
                         f"{storage_to_store(given)}; drop --storage to continue it where it is")
    return given


def open_storage(url: str):
    """The Optuna storage at ``url``. Runs that start together on a fresh database (PostgreSQL) race on
    Optuna's first CREATE TABLEs, and the losers fail on a duplicate key or table: they retry, and find the
    tables made."""
    import random

    import optuna
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            return optuna.storages.get_storage(url)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 5:
                raise
            time.sleep(0.1 + random.random())
