"""What ``make run`` leaves on disk, and how ``make call`` finds the token to sign with.

Unit tests of the files, then one end-to-end run: ``make run`` with a real-looking Twilio token in
its environment keeps it out of every file, and ``make call`` signs with its own environment's token.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dialtone_common.embedded import free_port
from dialtone_dev.call import signing_token
from dialtone_dev.run import dev_secrets, private_data_dir, write_private
from dialtone_dev.settings import DevSettings

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever stays private is private by its own creation mode."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.unit
def test_private_files_are_owner_only_even_with_an_open_umask(tmp_path: Path, open_umask: None) -> None:
    data = private_data_dir(tmp_path / "a" / "dialtone")
    assert _mode(data) == 0o700
    write_private(data / "run.json", {"admin_token": "x"})
    assert _mode(data / "run.json") == 0o600
    assert json.loads((data / "run.json").read_text()) == {"admin_token": "x"}
    assert sorted(p.name for p in data.iterdir()) == ["run.json"]  # no temporary file left behind


@pytest.mark.unit
def test_files_left_world_readable_by_an_older_version_are_made_private(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "dialtone"
    data.mkdir(mode=0o755)
    old_run = data / "run.json"
    old_run.write_text('{"twilio_auth_token": "old"}')
    old_run.chmod(0o644)
    old_secrets = data / "secrets.json"
    old_secrets.write_text(json.dumps({"twilio_auth_token": "kept", "twilio_account_sid": "ACkept",
                                       "admin_token": "kept-admin"}))
    old_secrets.chmod(0o644)

    private_data_dir(data)
    write_private(old_run, {"admin_token": "new"})
    assert dev_secrets(data)["twilio_auth_token"] == "kept"
    assert _mode(data) == 0o700 and _mode(old_run) == 0o600 and _mode(old_secrets) == 0o600
    assert "old" not in old_run.read_text()


@pytest.mark.unit
def test_development_credentials_are_generated_once_and_kept(tmp_path: Path) -> None:
    first = dev_secrets(tmp_path)
    assert _mode(tmp_path / "secrets.json") == 0o600
    assert len(first["twilio_auth_token"]) == 32 and first["twilio_account_sid"].startswith("AC")
    assert dev_secrets(tmp_path) == first


@pytest.mark.unit
def test_make_call_signs_with_its_environments_token_else_the_development_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("DIALTONE_DATA_DIR", str(tmp_path))
    dev = dev_secrets(tmp_path)["twilio_auth_token"]
    assert signing_token(DevSettings(), {"twilio_auth_token_from": "development"}) == dev
    with pytest.raises(LookupError, match="set the same TWILIO_AUTH_TOKEN"):
        signing_token(DevSettings(), {"twilio_auth_token_from": "environment"})
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "from-the-environment")
    assert signing_token(DevSettings(), {"twilio_auth_token_from": "environment"}) == "from-the-environment"


async def _dialtone(command: str, env: dict[str, str], timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dialtone_dev", command, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.e2e
async def test_make_run_keeps_a_real_twilio_token_out_of_its_files(tmp_path: Path) -> None:
    real_token = "f" * 32  # what a Twilio auth token looks like
    env = {k: v for k, v in os.environ.items()
           if k not in ("NATS_URL", "DATABASE_URL", "OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "ADMIN_TOKEN")}
    data = tmp_path / "dialtone"
    env |= {
        "TWILIO_AUTH_TOKEN": real_token, "DIALTONE_DATA_DIR": str(data),
        "GATEWAY_PORT": str(free_port()), "ADMIN_PORT": str(free_port()), "SIMULATOR_PORT": str(free_port()), "LIVE_SIMULATOR_PORT": str(free_port()),
        "RESPONSES_SIMULATOR_PORT": str(free_port()),
        "BRIDGE_METRICS_PORT": str(free_port()), "TOOLS_METRICS_PORT": str(free_port()),
        "WRITER_METRICS_PORT": str(free_port()),
    }
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dialtone_dev", "run", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (data / "run.json").exists():
            assert run.returncode is None, "make run exited"
            assert time.monotonic() < deadline, "make run did not start within 120 s"
            await asyncio.sleep(0.1)
        assert _mode(data) & 0o077 in (0, 0o001)  # as root, PostgreSQL's own user may pass through
        for name in ("run.json", "secrets.json"):
            assert _mode(data / name) == 0o600, name
            assert real_token not in (data / name).read_text(), name

        code, out = await _dialtone("call", {k: v for k, v in env.items() if k != "TWILIO_AUTH_TOKEN"}, 30)
        assert code == 1 and "set the same TWILIO_AUTH_TOKEN" in out, out
        code, out = await _dialtone("call", env | {"TWILIO_AUTH_TOKEN": "e" * 32}, 60)
        assert code == 1 and "refused the call's signature" in out, out
        code, out = await _dialtone("call", env, 120)
        assert code == 0 and "Transcript:" in out, out
    finally:
        if run.returncode is None:
            os.killpg(run.pid, signal.SIGINT)
        await asyncio.wait_for(run.wait(), 60)
    assert not (data / "run.json").exists()
