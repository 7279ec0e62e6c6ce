"""deploy/Dockerfile: one target per service, built with uv from the locked workspace, running as
an unprivileged user with a health check on the service's own /healthz. No Docker engine runs
here, so the file is read as Docker reads it, and the build stages' uv steps are replayed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import DEPLOY, ROOT, Service

DOCKERFILE = DEPLOY / "Dockerfile"


@dataclass
class Stage:
    name: str
    base: str  # an image, or the name of an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """The stages of a Dockerfile by name, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical:
        instruction, _, args = line.strip().partition(" ")
        instruction, args = instruction.upper(), " ".join(args.split())
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", args, re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            stage = stages[match[2]] = Stage(match[2], match[1])
        elif stage is not None:
            stage.instructions.append((instruction, args))
    return stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, nearest first."""
    out = [stages[name]]
    while out[-1].base in stages:
        out.append(stages[out[-1].base])
    return out


def last(stages: dict[str, Stage], name: str, instruction: str) -> str | None:
    """The instruction in effect for a target (the last one, inherited from its base stages)."""
    for stage in chain(stages, name):
        found = [args for ins, args in stage.instructions if ins == instruction]
        if found:
            return found[-1]
    return None


def env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for stage in reversed(chain(stages, name)):
        for ins, args in stage.instructions:
            if ins == "ENV":
                values.update(dict(part.split("=", 1) for part in shlex.split(args)))
    return values


def build_stage(stages: dict[str, Stage], target: str) -> str:
    sources = [args.split()[0].removeprefix("--from=") for ins, args in stages[target].instructions
               if ins == "COPY" and args.startswith("--from=") and args.endswith("/app/.venv /app/.venv")]
    assert len(sources) == 1, f"{target} copies one virtual environment from its build stage"
    return sources[0]


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.mark.unit
def test_every_service_has_an_image_target_that_runs_it(stages: dict[str, Stage], services: tuple[Service, ...]) -> None:
    for service in services:
        assert service.name in stages, f"no target {service.name}"
        assert json.loads(last(stages, service.name, "CMD") or "null") == service.argv


@pytest.mark.unit
def test_images_run_as_an_unprivileged_user(stages: dict[str, Stage], services: tuple[Service, ...]) -> None:
    """A numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd."""
    for service in services:
        user = last(stages, service.name, "USER")
        assert user is not None and re.fullmatch(r"[0-9]+(:[0-9]+)?", user), (service.name, user)
        assert int(user.split(":")[0]) >= 1000, (service.name, user)
        assert last(stages, service.name, "VOLUME") is None  # nothing writable but the tmpfs the runtime mounts


@pytest.mark.unit
def test_health_checks_ask_each_service_its_own_healthz(stages: dict[str, Stage], services: tuple[Service, ...]) -> None:
    for service in services:
        check = last(stages, service.name, "HEALTHCHECK")
        assert check is not None, service.name
        url = f"http://127.0.0.1:{service.health_port}/healthz"
        assert url in check, (service.name, check)
        command = json.loads(check.split(" CMD ", 1)[1])  # exec form: no shell is needed in the image
        assert command[:2] == ["python", "-c"], command


@pytest.mark.unit
def test_services_listen_beyond_the_container_loopback(stages: dict[str, Stage], services: tuple[Service, ...]) -> None:
    """The code binds 127.0.0.1 by default; inside a container that would refuse every probe."""
    for service in services:
        values = env(stages, service.name)
        assert values.get("METRICS_HOST") == "0.0.0.0", service.name
        if "host" in service.env:  # the two HTTP services' own bind address
            assert any(values.get(n) == "0.0.0.0" for n in service.env["host"]), service.name
        port_names = service.env.get("port") or service.env["metrics_port"]
        assert all(values.get(n, str(service.health_port)) == str(service.health_port) for n in port_names)


@pytest.mark.unit
def test_images_install_exactly_what_the_lock_pins(stages: dict[str, Stage], services: tuple[Service, ...]) -> None:
    """`uv sync --frozen` installs the locked versions or fails; without it a build could resolve
    newer dependencies than the ones tested. The dev group (pytest, linters) stays out."""
    for service in services:
        build = build_stage(stages, service.name)
        copied = {source for st in chain(stages, build) for ins, args in st.instructions if ins == "COPY"
                  for source in args.split()[:-1]}
        assert "uv.lock" in copied, service.name
        syncs = [args for ins, args in stages[build].instructions if ins == "RUN" and "uv sync" in args]
        assert syncs and all("--frozen --no-dev" in s and s.endswith(f"--package {service.project}") for s in syncs)
        assert "--no-editable" in syncs[-1], "an editable install would need the source tree in the image"


def _replay(stages: dict[str, Stage], build: str, workdir: Path) -> None:
    """Run a build stage's COPY and `uv sync` steps in ``workdir`` as Docker would in the image:
    sources copied under ``workdir/src``, the environment made in ``workdir/app/.venv``."""
    src, venv = workdir / "src", workdir / "app" / ".venv"
    src.mkdir(parents=True)
    environment = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_LINK_MODE": "copy",
                   "UV_PYTHON_DOWNLOADS": "never", "UV_COMPILE_BYTECODE": "0"}
    environment.pop("VIRTUAL_ENV", None)
    uv = shutil.which("uv") or str(Path.home() / ".local/bin/uv")
    for stage in reversed(chain(stages, build)):
        for ins, args in stage.instructions:
            if ins == "COPY" and not args.startswith("--from="):
                *sources, dest = args.split()
                for source in sources:
                    if (ROOT / source).is_dir():  # COPY dir dest: the directory's contents into dest
                        shutil.copytree(ROOT / source, src / dest, ignore=shutil.ignore_patterns("__pycache__"))
                    else:  # COPY file dir/ (or ./)
                        assert dest.endswith("/"), args
                        (src / dest).mkdir(parents=True, exist_ok=True)
                        shutil.copy(ROOT / source, src / dest / Path(source).name)
            elif ins == "RUN" and "uv sync" in args:
                command = [w for w in shlex.split(args) if not w.startswith("--mount=")]
                assert command[0] == "uv", command
                result = subprocess.run([uv, *command[1:]], cwd=src, env=environment, capture_output=True,
                                        text=True, timeout=600)
                assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("name", ["media-gateway", "realtime-bridge", "tool-runner", "transcript-writer", "admin-api"])
def test_the_build_stage_installs_a_service_that_starts_without_its_source(
    stages: dict[str, Stage], services: tuple[Service, ...], name: str, tmp_path: Path
) -> None:
    """The build stage's own steps, replayed with uv: the environment it leaves holds the service
    (non-editable, so the final image needs no source tree) and nothing of the dev group."""
    service = next(s for s in services if s.name == name)
    _replay(stages, build_stage(stages, name), tmp_path)
    shutil.rmtree(tmp_path / "src")
    python = tmp_path / "app" / ".venv" / "bin" / "python"
    probe = (f"import importlib.util as u, {service.package}.main, {service.package}.settings; "
             "print(u.find_spec('pytest') is None and u.find_spec('dialtone_sim') is None)")
    result = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert (result.returncode, result.stdout.strip()) == (0, "True"), result.stderr


@pytest.mark.integration
def test_the_eval_worker_build_stage_installs_a_worker_that_starts_without_its_source(
    stages: dict[str, Stage], tmp_path: Path
) -> None:
    """The test worker's image holds the dev package and the simulated Twilio edge its calls dial
    through, not the five services nor the dev group; its entry point runs and, given nothing,
    refuses to start, naming what is missing."""
    _replay(stages, build_stage(stages, "eval-worker"), tmp_path)
    shutil.rmtree(tmp_path / "src")
    venv = tmp_path / "app" / ".venv" / "bin"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    probe = ("import importlib.util as u, dialtone_dev.eval_service.main, dialtone_sim.twilio_edge; "
             "print([m for m in ('pytest', 'dialtone_bridge', 'dialtone_gateway') if u.find_spec(m)])")
    result = subprocess.run([str(venv / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=env)  # fmt: skip
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
    refused = subprocess.run([str(venv / "dialtone"), "eval-worker"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env=env)  # fmt: skip
    assert refused.returncode == 2 and "missing settings: DATABASE_URL" in refused.stderr, refused.stderr
