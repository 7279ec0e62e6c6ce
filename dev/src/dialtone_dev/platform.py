"""Run the whole platform on one machine: the servers it needs and the five services.

``make run`` uses this, and so do the end-to-end tests and the benchmark, so what a new user
starts is exactly what the tests exercise. With ``NATS_URL`` / ``DATABASE_URL`` unset it starts
embedded NATS (JetStream) and PostgreSQL; each service runs as its own process, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import secrets
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from dialtone_common.embedded import embedded_nats, embedded_postgres, free_port
from dialtone_common.nats_auth import RunCredentials
from pydantic import AliasChoices

ROOT = Path(__file__).resolve().parents[3]
SERVICES = {
    "media-gateway": "dialtone_gateway",
    "realtime-bridge": "dialtone_bridge",
    "tool-runner": "dialtone_tools",
    "transcript-writer": "dialtone_writer",
    "admin-api": "dialtone_admin",
}

# The setting that gives each service the port of its /healthz (and /metrics).
PORT_SETTING = {
    "media-gateway": "GATEWAY_PORT",
    "realtime-bridge": "METRICS_PORT",
    "tool-runner": "METRICS_PORT",
    "transcript-writer": "METRICS_PORT",
    "admin-api": "ADMIN_PORT",
}


@dataclass
class Ports:
    gateway: int = 8000
    admin: int = 8001
    bridge: int = 9101
    tools: int = 9102
    writer: int = 9103

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())


@dataclass
class Service:
    """One running service process."""

    name: str
    instance: str
    proc: asyncio.subprocess.Process
    log_path: Path
    health_url: str
    _pump: asyncio.Task | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait for it; kill it if it overstays."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 2)
        return self.proc.returncode or 0

    @property
    def base_url(self) -> str:
        """Where this instance serves /healthz and /metrics (and the gateway's or admin API's routes)."""
        return self.health_url.removesuffix("/healthz")

    @property
    def port(self) -> int:
        return int(self.base_url.rpartition(":")[2])

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# Each service's settings class: every environment name it reads is one `make run` passes on.
SETTINGS = {
    "media-gateway": "dialtone_gateway.settings:GatewaySettings",
    "realtime-bridge": "dialtone_bridge.settings:BridgeSettings",
    "tool-runner": "dialtone_tools.settings:ToolSettings",
    "transcript-writer": "dialtone_writer.settings:WriterSettings",
    "admin-api": "dialtone_admin.settings:AdminSettings",
}
# Set by the platform whatever the environment says: where its servers and services are, and the
# embedded NATS's credentials (``NATS_URL`` and ``DATABASE_URL`` given to ``make run`` are used as
# the servers themselves; the ports come from ``make run``'s own settings). ``HOST`` is the admin
# API's alias for ``ADMIN_HOST``, but some shells set it to the machine's name.
MANAGED = frozenset({"NATS_URL", "NATS_USER", "NATS_PASSWORD", "DATABASE_URL", "GATEWAY_PORT", "ADMIN_PORT",
                     "PORT", "METRICS_PORT", "HOST"})  # fmt: skip


def setting_names(service: str) -> frozenset[str]:
    """The environment names ``service`` reads (aliases included), from its settings class."""
    module, _, cls = SETTINGS[service].partition(":")
    settings = getattr(importlib.import_module(module), cls)
    names: set[str] = set()
    for field_name, info in settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(c).upper() for c in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(field_name.upper())
    return frozenset(names)


@dataclass
class Platform:
    """Servers and services of one Dialtone installation.

    Use as ``async with Platform(...) as p``; it starts whatever is not given, in order, and stops
    everything in reverse on exit. Its own embedded NATS asks for credentials: each service gets
    its user's, and a test or tool connects with ``nats_connect_options()`` (the ``dev-harness``
    user, which only this embedded server knows)."""

    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    nats_url: str | None = None
    # The NATS users' passwords of this run. Drawn when the platform starts its own embedded NATS
    # (which then asks every client for them); give them with ``nats_url`` for an embedded server
    # started elsewhere with the same credentials. None with a given ``nats_url``: the services
    # connect without credentials.
    nats_credentials: RunCredentials | None = None
    database_url: str | None = None
    realtime_url: str | None = None
    live_url: str | None = None  # GPT-Live (agents with engine = "live")
    openai_api_key: str | None = None
    twilio_auth_token: str = ""
    twilio_account_sid: str = ""
    twilio_api_base_url: str | None = None
    admin_token: str = ""
    public_base_url: str | None = None
    webhook_url: str | None = None  # the global webhook endpoint (the writer's WEBHOOK_URL)
    webhook_secret: str | None = None
    responses_url: str | None = None  # the Responses API base for the writer's analysis (OPENAI_BASE_URL)
    agents_dir: Path = ROOT / "agents"
    tools_module: str = str(ROOT / "examples" / "tools.py")
    echo: Callable[[str], None] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # `make run`: every setting of a service found in this process's environment reaches that
    # service (AGENTS_DIR, OPENAI_LIVE_URL, MAX_CALLS, ...). Tests leave it off: their platforms are
    # what the test says, whatever a developer's shell holds.
    settings_from_environment: bool = False
    services: dict[str, Service] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.twilio_auth_token = self.twilio_auth_token or secrets.token_hex(16)
        self.twilio_account_sid = self.twilio_account_sid or "AC" + secrets.token_hex(16)
        self.admin_token = self.admin_token or secrets.token_urlsafe(32)
        self.public_base_url = self.public_base_url or f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    async def __aenter__(self) -> Platform:
        try:
            await self.start_servers()
            await self.migrate()
            for name in ("transcript-writer", "tool-runner", "realtime-bridge", "media-gateway", "admin-api"):
                await self.start(name)
            await self.wait_healthy()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        order = ["media-gateway", "realtime-bridge", "tool-runner", "transcript-writer", "admin-api"]
        running = sorted(self.services.values(), key=lambda s: order.index(s.name) if s.name in order else 9)
        for service in running:
            await service.stop()
        self.services.clear()
        await asyncio.to_thread(self._stack.close)

    async def start_servers(self) -> None:
        """Embedded NATS and PostgreSQL, unless URLs were given."""
        if not self.nats_url:
            self.nats_credentials = self.nats_credentials or RunCredentials.generate()
            taken = set(vars(self.ports).values())
            port = free_port()
            while port in taken:  # the services' ports are chosen already, and released until they start
                port = free_port()
            self.nats_url = await asyncio.to_thread(
                self._stack.enter_context,
                embedded_nats(self.data_dir / "nats", port, credentials=self.nats_credentials),
            )
            self._say(f"embedded NATS (JetStream) at {self.nats_url}, a user and password per service")
        if not self.database_url:
            self.database_url = await asyncio.to_thread(
                self._stack.enter_context, embedded_postgres(self.data_dir / "postgres")
            )
            self._say(f"embedded PostgreSQL at {self.database_url}")

    async def migrate(self) -> None:
        from dialtone_writer.migrations import apply_migrations

        assert self.database_url is not None, "start() gives the platform its database"
        applied = await apply_migrations(self.database_url)
        if applied:
            self._say(f"applied migrations {applied}")

    def env(self, name: str) -> dict[str, str]:
        """The environment of one service: its public configuration, nothing inherited by accident."""
        keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV", "SYSTEMROOT", "XDG_RUNTIME_DIR")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env |= {"NATS_URL": self.nats_url or "", "PYTHONUNBUFFERED": "1", "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO")}
        if self.nats_credentials is not None:
            env |= self.nats_credentials.env(name)
        twilio = {"TWILIO_AUTH_TOKEN": self.twilio_auth_token or "", "TWILIO_ACCOUNT_SID": self.twilio_account_sid or ""}
        if self.twilio_api_base_url:
            twilio["TWILIO_API_BASE_URL"] = self.twilio_api_base_url
        public_base_url = self.public_base_url or ""  # set by __post_init__
        if name == "media-gateway":
            env |= twilio | {"PUBLIC_BASE_URL": public_base_url, "GATEWAY_PORT": str(self.ports.gateway)}
        elif name == "realtime-bridge":
            env |= twilio | {"AGENTS_DIR": str(self.agents_dir), "METRICS_PORT": str(self.ports.bridge)}
            if self.realtime_url:
                env["OPENAI_REALTIME_URL"] = self.realtime_url
            if self.live_url:
                env["OPENAI_LIVE_URL"] = self.live_url
            if self.openai_api_key:
                env["OPENAI_API_KEY"] = self.openai_api_key
        elif name == "tool-runner":
            env |= {"TOOLS_MODULE": self.tools_module, "DATABASE_URL": self.database_url or "",
                    "METRICS_PORT": str(self.ports.tools)}
        elif name == "transcript-writer":
            env |= {"DATABASE_URL": self.database_url or "", "METRICS_PORT": str(self.ports.writer),
                    "RECORDINGS_DIR": str(self.data_dir / "recordings"), "AGENTS_DIR": str(self.agents_dir)}
            env |= self._webhook_env()
            env |= {k: v for k, v in os.environ.items() if k.startswith("ANALYSIS_")}
            if self.openai_api_key:
                env["OPENAI_API_KEY"] = self.openai_api_key
            if self.responses_url:
                env["OPENAI_BASE_URL"] = self.responses_url
        elif name == "admin-api":
            env |= twilio | {"DATABASE_URL": self.database_url or "", "ADMIN_TOKEN": self.admin_token,
                             "ADMIN_PORT": str(self.ports.admin), "PUBLIC_BASE_URL": public_base_url,
                             "RECORDINGS_DIR": str(self.data_dir / "recordings")}
        if self.settings_from_environment:
            names = setting_names(name) - MANAGED
            env |= {k: v for k, v in os.environ.items() if k in names}
        return env | self.extra_env

    def _webhook_env(self) -> dict[str, str]:
        """The writer's webhook settings: the global endpoint, the WEBHOOK_* tuning of this
        environment, and the secrets the agents' [[webhooks]] name (their ``secret_env``)."""
        env = {k: v for k, v in os.environ.items() if k.startswith("WEBHOOK_")}
        for path in sorted(self.agents_dir.glob("*/agent.toml")):
            with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
                for hook in tomllib.loads(path.read_text()).get("webhooks") or []:
                    name = hook.get("secret_env") if isinstance(hook, dict) else None
                    if isinstance(name, str) and name in os.environ:
                        env[name] = os.environ[name]
        if self.webhook_url:
            env["WEBHOOK_URL"] = self.webhook_url
        if self.webhook_secret:
            env["WEBHOOK_SECRET"] = self.webhook_secret
        return env

    def nats_connect_options(self, user: str | None = None) -> dict[str, str]:
        """Keyword arguments of ``nats.connect`` for a test or tool on this platform's NATS: the
        ``dev-harness`` user (hears and may publish everything), or ``user`` (a service's user,
        ``gateway``, ``tools``, ...: to check what it may not do). Empty when the NATS server was
        given without credentials."""
        if self.nats_credentials is None:
            if user:
                raise ValueError("this platform's NATS has no users (it was given without credentials)")
            return {}
        return self.nats_credentials.connect_options(user) if user else self.nats_credentials.connect_options()

    def nats_violations(self, users: set[str] | None = None) -> list[str]:
        """The permission violations (publish or subscribe) the platform's own embedded NATS server
        logged, of ``users`` (default: anyone's). Empty when the server was given."""
        if self.nats_credentials is None:
            return []
        log = self.data_dir / "nats" / "nats-server.log"
        with contextlib.suppress(FileNotFoundError):
            lines = log.read_text(errors="replace").splitlines()
            return [line for line in lines if " Violation - " in line
                    and (users is None or any(f'"$G/user:{u}"' in line for u in users))]
        return []

    def health_url(self, name: str, port: int | None = None) -> str:
        default = {"media-gateway": self.ports.gateway, "admin-api": self.ports.admin,
                   "realtime-bridge": self.ports.bridge, "tool-runner": self.ports.tools,
                   "transcript-writer": self.ports.writer}[name]
        return f"http://127.0.0.1:{port or default}/healthz"

    async def start(self, name: str, *, instance: str | None = None, env: dict[str, str] | None = None) -> Service:
        """Start one service process. A second instance needs its own ``instance`` name and its own
        port in ``env``: ``GATEWAY_PORT`` (media-gateway), ``ADMIN_PORT`` (admin-api) or
        ``METRICS_PORT`` (the others); :meth:`start_instance` picks one."""
        instance = instance or name
        service_env = self.env(name) | {"INSTANCE_ID": instance} | (env or {})
        port = service_env.get(PORT_SETTING[name])
        log_path = self.data_dir / "logs" / f"{instance}.log"
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # logs name callers: private
        log_path.touch(mode=0o600, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", SERVICES[name],
            env=service_env, cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the launcher, which stops services in order
        )
        service = Service(name, instance, proc, log_path, self.health_url(name, int(port) if port else None))
        service._pump = asyncio.create_task(self._pump(service), name=f"log-{instance}")
        self.services[instance] = service
        return service

    async def start_instance(self, name: str, instance: str, env: dict[str, str] | None = None) -> Service:
        """Start another instance of ``name``, named ``instance``, on a free port of its own."""
        return await self.start(name, instance=instance, env={PORT_SETTING[name]: str(free_port())} | (env or {}))

    def instances(self, name: str) -> list[Service]:
        """The running instances of the service ``name``, in the order they were started."""
        return [s for s in self.services.values() if s.name == name]

    async def _pump(self, service: Service) -> None:
        assert service.proc.stdout is not None
        with open(service.log_path, "ab") as log:
            async for line in service.proc.stdout:
                log.write(line)
                log.flush()
                if self.echo:
                    self.echo(f"[{service.instance}] {line.decode(errors='replace').rstrip()}")

    async def wait_healthy(self, timeout: float = 60.0, services: list[Service] | None = None) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            for service in services or list(self.services.values()):
                while True:
                    if service.proc.returncode is not None:
                        raise RuntimeError(f"{service.instance} exited with {service.proc.returncode}:\n{service.log_tail()}")
                    with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                        async with http.get(service.health_url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                            if r.status == 200:
                                break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{service.instance} not healthy after {timeout}s:\n{service.log_tail()}")
                    await asyncio.sleep(0.1)

    def _say(self, text: str) -> None:
        if self.echo:
            self.echo(text)
