"""A throwaway PostgreSQL 15 server for tests: its own data directory, 127.0.0.1 on a free port, trust
authentication, stopped and removed on exit (also when the test that used it fails).

PostgreSQL refuses to run as root, so as root the server's commands run as the ``postgres`` system user
(``runuser``) in a temporary directory that user owns; as the ``postgres`` user they run directly.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path(os.environ.get("OPMIX_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
DATABASE = "opmix_test"


def why_no_server() -> str | None:
    """Why this machine cannot start a test server (a skip reason), or None when it can."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / name).is_file()]
    if missing:
        return f"PostgreSQL server binaries not found in {PG_BIN} ({', '.join(missing)}; apt-get install postgresql-15)"
    try:
        pg = pwd.getpwnam(PG_USER)
    except KeyError:
        pg = None
    if os.geteuid() == 0:
        if pg is None:
            return f"running as root, but there is no {PG_USER!r} system user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root, but runuser (util-linux) is missing to run the server as postgres"
    elif pg is None or os.geteuid() != pg.pw_uid:
        return f"neither root nor the {PG_USER!r} user, so no PostgreSQL server can be started here"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``start()`` a fresh cluster with one database; ``url`` reaches it; ``stop()`` ends it and removes it."""

    def __init__(self, database: str = DATABASE):
        self.database = database
        self.root: Path | None = None
        self.port: int | None = None
        self.started = False

    # --------------------------------------------------------------------------------------------- helpers
    def _as_pg(self, *cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(c) for c in cmd]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", PG_USER, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.root,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-2000:]}"
                               f"{result.stderr[-2000:]}{self._log_tail()}")
        return result

    def _log_tail(self) -> str:
        log = self.root / "server.log" if self.root else None
        if log is not None and log.is_file():
            return "\nserver.log:\n" + log.read_text(errors="replace")[-2000:]
        return ""

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def url(self) -> str:
        """A plain ``postgresql://`` URL, as a user passes it to ``--storage``."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    # --------------------------------------------------------------------------------------------- life
    def start(self, tries: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="opmix-pg-"))  # under /tmp, which postgres can traverse
        if os.geteuid() == 0:
            pg = pwd.getpwnam(PG_USER)
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
        self._as_pg(PG_BIN / "initdb", "-D", self.data, "--auth=trust", "-U", PG_USER, "--encoding=UTF8",
                    "--no-locale", "--no-sync")
        error = None
        for _ in range(tries):  # another process may take the free port before the server binds it
            self.port = _free_port()
            options = (f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                       f"-c full_page_writes=off -c max_connections=100")
            result = self._as_pg(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-w",
                                 "-t", "60", "-o", options, "start", check=False)
            if result.returncode == 0:
                self.started = True
                break
            error = f"pg_ctl start exited {result.returncode}: {result.stdout[-1000:]}{self._log_tail()}"
            self._as_pg(PG_BIN / "pg_ctl", "-D", self.data, "stop", "-m", "immediate", check=False)
        else:
            raise RuntimeError(error)
        self._wait_ready()
        self._as_pg(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", PG_USER, self.database)

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while True:
            ready = self._as_pg(PG_BIN / "pg_isready", "-h", "127.0.0.1", "-p", self.port, "-U", PG_USER,
                                check=False)
            if ready.returncode == 0:
                return
            if time.time() > deadline:
                raise RuntimeError(f"the PostgreSQL server on port {self.port} is not ready: {ready.stdout}"
                                   f"{self._log_tail()}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop the server (fast, then immediate if need be) and remove its directory; safe to call twice."""
        try:
            if self.started or (self.root is not None and (self.data / "postmaster.pid").exists()):
                result = self._as_pg(PG_BIN / "pg_ctl", "-D", self.data, "stop", "-m", "fast", "-w", "-t", "60",
                                     check=False)
                if result.returncode != 0:
                    self._as_pg(PG_BIN / "pg_ctl", "-D", self.data, "stop", "-m", "immediate", "-w", check=False)
            self.started = False
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None


@contextmanager
def postgres_server(database: str = DATABASE) -> Iterator[PostgresServer]:
    server = PostgresServer(database)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def default_driver() -> str:
    """The DB-API module that SQLAlchemy uses for a plain ``postgresql://`` URL (psycopg from SQLAlchemy 2.1)."""
    from sqlalchemy.engine import make_url

    return make_url("postgresql://").get_dialect().driver
