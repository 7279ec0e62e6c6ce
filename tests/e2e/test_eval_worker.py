"""Acceptance of ``dialtone eval-worker``, the Tests page's worker as a deployment runs it: a process
of its own, configured from the environment, connected to NATS as ``eval``. A run requested from
the admin API goes over the bus to it; it places the call through the gateway, signed as Twilio
signs, reads the session back from the admin API, stores the verdict and publishes the run's
progress.

The worker scripts no simulator (a deployment has none: the real model answers). Here the test
plays the model's part itself: it sets the Realtime simulator, which it owns, to the shipped
scenario's ``model`` block, as an operator's real model would answer. Without a key the worker
says loudly that it cannot script anything; with a missing setting it refuses to start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import nats
import pytest
from dialtone_dev.eval_runner import sim_script
from dialtone_dev.eval_scenarios import load_scenarios
from dialtone_dev.platform import Platform, Ports
from dialtone_proto import subjects
from dialtone_proto.evals import EvalProgress
from dialtone_sim.polling import poll
from dialtone_sim.realtime import RealtimeSimulator

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

DIALTONE = Path(sys.executable).parent / "dialtone"  # the entry point a deployment's image runs


def worker_env(platform: Platform, metrics_port: int) -> dict[str, str]:
    """The environment a deployment gives the worker (deploy/compose.yaml, deploy/k8s/base)."""
    assert platform.nats_url and platform.database_url and platform.nats_credentials
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return env | {
        "NATS_URL": platform.nats_url,
        "NATS_USER": "eval",
        "NATS_PASSWORD": platform.nats_connect_options("eval")["password"],
        "DATABASE_URL": platform.database_url,
        "GATEWAY_URL": platform.gateway_url,
        "PUBLIC_BASE_URL": platform.public_base_url or platform.gateway_url,
        "TWILIO_AUTH_TOKEN": platform.twilio_auth_token,
        "TWILIO_ACCOUNT_SID": platform.twilio_account_sid or "",
        "ADMIN_URL": platform.admin_url,
        "ADMIN_TOKEN": platform.admin_token,
        "AGENTS_DIR": str(platform.agents_dir),
        "METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": "INFO",
    }


@contextlib.asynccontextmanager
async def worker_process(env: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(str(DIALTONE), "eval-worker", env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _healthy(url: str, proc: asyncio.subprocess.Process, log: Path) -> bool:
    if proc.returncode is not None:
        raise AssertionError(f"the worker exited ({proc.returncode}):\n{await asyncio.to_thread(log.read_text)}")
    with contextlib.suppress(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            return r.status == 200
    return False


async def test_a_run_requested_over_the_bus_is_placed_by_the_standalone_worker(
    platform: Platform, realtime: RealtimeSimulator, tmp_path: Path
) -> None:
    (scenario,) = [s for s in load_scenarios(platform.agents_dir, "support")[0] if s.name == "crm_down"]
    metrics_port = Ports.free().gateway
    log = tmp_path / "eval-worker.log"
    previous = realtime.scenario
    realtime.scenario = sim_script(scenario)  # the test answers as the model; the worker scripts nothing
    nc = await nats.connect(platform.nats_url, name="e2e-eval-worker", **platform.nats_connect_options())
    heard: list[EvalProgress] = []
    finished = asyncio.Event()

    async def on_progress(msg: nats.aio.msg.Msg) -> None:
        heard.append(EvalProgress.model_validate_json(msg.data))
        if heard[-1].status in ("passed", "failed", "error"):
            finished.set()

    try:
        await nc.subscribe(subjects.EVAL_PROGRESS_ALL, cb=on_progress)
        async with worker_process(worker_env(platform, metrics_port), log) as proc:
            health = f"http://127.0.0.1:{metrics_port}/healthz"
            await poll(lambda: _healthy(health, proc, log), 20, what="the worker's /healthz")
            assert "OPENAI_API_KEY is not set" in log.read_text()  # said loudly: nothing is scripted

            headers = {"Authorization": f"Bearer {platform.admin_token}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(f"{platform.admin_url}/tests/runs",
                                     json={"agent": "support", "scenario": "crm_down"}) as r:  # fmt: skip
                    assert r.status == 202, await r.text()
                    run_id = (await r.json())["run_id"]
                await asyncio.wait_for(finished.wait(), 40)

                # Progress, live on the bus: queued, running, the call's verdict, the run's.
                mine = [p for p in heard if p.run_id == run_id]
                assert [p.status for p in mine] == ["queued", "running", "running", "passed"], mine
                verdict = mine[2].result
                assert verdict is not None and verdict.passed and verdict.failures == [], verdict
                assert verdict.scenario == "support/crm_down" and verdict.call_sid

                # Stored, as the Tests page reads it.
                async with http.get(f"{platform.admin_url}/tests/runs/{run_id}") as r:
                    run = await r.json()
                assert (run["status"], run["done"], run["passed"], run["total"]) == ("passed", 1, 1, 1)
                assert run["simulated"] is True  # no key: the run says the model was not tested
                (call,) = run["calls"]
                assert call["call_sid"] == verdict.call_sid and call["passed"]
                names = {c["name"] for c in call["checks"]}
                assert any("lookup_customer" in n for n in names), names  # the mocked tool, called
                async with http.get(f"{platform.admin_url}/sessions/{verdict.call_sid}") as r:
                    session = await r.json()
                assert session["test_run"] == run_id
                assert any("could not check" in (line.get("text") or "") for line in session["transcript"])

                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    assert 'dialtone_eval_calls_total{verdict="passed"} 1.0' in await r.text()

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0, log.read_text()
    finally:
        realtime.scenario = previous
        await nc.drain()


async def test_the_worker_refuses_to_start_without_its_settings(platform: Platform, tmp_path: Path) -> None:
    env = worker_env(platform, 0)
    del env["ADMIN_TOKEN"], env["GATEWAY_URL"]
    proc = await asyncio.create_subprocess_exec(str(DIALTONE), "eval-worker", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "missing settings: GATEWAY_URL, ADMIN_TOKEN" in err.decode()
    assert platform.admin_token not in (out + err).decode()  # never a secret
