"""The embedded vector store: PostgreSQL with pgvector from the ``pgserver`` wheel.

pgserver ships PostgreSQL 16 and pgvector 0.6 as binaries inside a wheel. We use its binaries
but not its server manager: ``pgserver.get_server`` starts the postmaster through ``pg_ctl``,
which daemonises it, so it would outlive a killed ``ragstress serve``. Here ``postgres`` is a
direct child of the supervisor, listening on 127.0.0.1 (so the port is ours to choose and to
check), and the kernel sends it SIGINT (PostgreSQL's *fast* shutdown) if the supervisor dies
(``PR_SET_PDEATHSIG``), so no orphan survives even a SIGKILL of the parent.

PostgreSQL refuses to run as root. As root we do what pgserver does: run it as a system user
``pgserver`` (created with ``useradd`` if missing) that owns the data folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ragstress.reference.processes import child_setup

__all__ = ["EmbeddedPostgres", "PostgresError", "wait_for_postgres"]

_PG_USER = "postgres"  # the database role; not the system user
_SYSTEM_USER = "pgserver"  # the system user PostgreSQL runs as when we are root


class PostgresError(RuntimeError):
    """The embedded PostgreSQL could not be set up or started."""


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # pgserver's import asks platformdirs for a runtime folder it never uses here, which
        # warns when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH  # re-exported untyped by pgserver

    return Path(POSTGRES_BIN_PATH)


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _prepare_for_system_user(data_dir: Path) -> None:
    """As root: the system user exists, can reach the binaries and owns the data folder."""
    import pwd

    from pgserver.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(_SYSTEM_USER)  # pgserver's own helpers, as its server manager does
    bins = _bin_dir()
    ensure_prefix_permissions(bins)
    ensure_folder_permissions(bins, 0o055)  # group/other: read + execute
    ensure_folder_permissions(bins.parent / "lib", 0o044)
    ensure_prefix_permissions(data_dir)
    entry = pwd.getpwnam(_SYSTEM_USER)
    for path in (data_dir, *data_dir.rglob("*")):
        os.chown(path, entry.pw_uid, entry.pw_gid)


def wait_for_postgres(dsn: str, timeout_s: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Block until ``dsn`` accepts a connection; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PostgresError(f"postgres exited with code {proc.returncode} while starting")
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    raise PostgresError(f"postgres did not accept connections within {timeout_s:g} s: {last}")


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL cluster in ``data_dir/pgdata``, served on 127.0.0.1:``port``.

    ``start()`` runs initdb on first use, starts the postmaster as a child process and waits
    until it accepts connections; ``stop()`` asks for a fast shutdown and waits for it.
    """

    data_dir: Path
    port: int
    cpus: frozenset[int] | None = None
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def dsn(self) -> str:
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> str | None:
        return _SYSTEM_USER if _as_root() else None

    def _check_not_running(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # a stale file from a killed server; postgres removes it itself
        except PermissionError:
            pass
        raise PostgresError(
            f"a postgres server (pid {pid}) already runs on {self.pgdata}; stop it or give "
            f"another --data-dir"
        )

    def start(self, timeout_s: float = 60.0) -> None:
        bins = _bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_not_running()
        user = self._run_as()
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh and self.pgdata.exists():
            shutil.rmtree(self.pgdata)  # a half-made cluster from an interrupted initdb
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.pgdata.chmod(0o700)
        if user is not None:
            _prepare_for_system_user(self.data_dir)
        if fresh:
            result = subprocess.run(
                [
                    str(bins / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "--auth=trust",
                    "--encoding=utf8",
                    "-U",
                    _PG_USER,
                ],
                user=user,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise PostgresError(f"initdb failed: {result.stderr.strip()[-2000:]}")
        log = self.log_path or (self.data_dir / "postgres.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [
                    str(bins / "postgres"),
                    "-D",
                    str(self.pgdata),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    "",  # no Unix socket: TCP on loopback only
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                    # The corpus is rebuilt from its seed at will: durability only costs time.
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                user=user,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal goes to the supervisor only
                preexec_fn=child_setup(signal.SIGINT, self.cpus),  # noqa: PLW1509 (see processes.py)
            )
        try:
            wait_for_postgres(self.dsn, timeout_s, self.proc)
        except PostgresError as exc:
            self.stop()
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise PostgresError(f"{exc}\n--- {log} ---\n{tail}") from None

    def stop(self, timeout_s: float = 15.0) -> None:
        """Fast shutdown (SIGINT: abort transactions, disconnect clients); SIGKILL if stuck."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
