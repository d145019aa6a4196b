"""The deployment recipes name only things that exist: commands, modules, files, URLs.

Docker cannot run here, so these checks read the Dockerfile, docker-compose.yml, the entrypoint
and the Procfile, and check every command, module path and file they name.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from django.core.management import get_commands
from django.urls import resolve

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
HEALTH_SERVER = ROOT / "predictions" / "worker" / "health.py"


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _entrypoint_cases() -> dict[str, str]:
    """The entrypoint's `name) command ;;` lines."""
    cases = re.findall(r"^\s*(\w+)\) (.+?) ;;$", ENTRYPOINT.read_text(), re.MULTILINE)
    return dict(cases)


def _check_command_line(line: str) -> None:
    """Check `python manage.py <command>` and `daphne ... module:attr` in a shell line."""
    for part in re.split(r"&&|;", line):
        words = shlex.split(part.replace("exec ", "", 1).strip())
        if not words:
            continue
        if words[:2] == ["python", "manage.py"]:
            assert words[2] in get_commands(), f"no manage.py command {words[2]!r}"
        elif words[0] == "daphne":
            module, _, attr = words[-1].partition(":")
            assert hasattr(importlib.import_module(module), attr), words[-1]


def test_procfile_commands_exist():
    lines = (ROOT / "Procfile").read_text().splitlines()
    processes = dict(line.split(": ", 1) for line in lines if line.strip())
    assert set(processes) >= {"release", "web", "worker"}
    for command in processes.values():
        _check_command_line(command)


def test_web_commands_listen_with_a_long_backlog():
    # daphne's -b/-p listen with Twisted's backlog of 50: a burst of new clients is dropped.
    processes = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines())
    for command in (processes["web"], _entrypoint_cases()["web"]):
        [endpoint] = [word for word in shlex.split(command) if word.startswith("tcp:")]
        assert "backlog=1024" in endpoint.split(":"), command


def test_entrypoint_runs_the_procfile_processes():
    assert ENTRYPOINT.stat().st_mode & 0o111, "deploy/entrypoint.sh must be executable"
    cases = _entrypoint_cases()
    assert set(cases) >= {"web", "worker", "release", "manage"}
    assert "flowsite.asgi:application" in cases["web"]
    assert "manage.py rqworker" in cases["worker"]
    for name in ("web", "worker", "release"):
        _check_command_line(cases[name].replace('"$@"', "").replace('"${PORT:-3000}"', "3000"))


def test_dockerfile_copies_and_installs_files_that_exist():
    text = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+) ", text, re.MULTILINE):
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    for requirements in re.findall(r"pip install .*-r (\S+)", text):
        assert (ROOT / requirements).is_file(), requirements
    entrypoint = re.search(r'^ENTRYPOINT \["/app/(\S+)"\]', text, re.MULTILINE)
    assert entrypoint is not None
    assert (ROOT / entrypoint.group(1)) == ENTRYPOINT
    [default] = re.findall(r'^CMD \["(\w+)"\]', text, re.MULTILINE)
    assert default in _entrypoint_cases()


def test_requirements_pin_every_package():
    for name in ("base.txt", "dev.txt"):
        for line in (ROOT / "requirements" / name).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-r "):
                assert (ROOT / "requirements" / line[3:]).is_file(), line
            else:
                assert "==" in line, f"{name}: {line} is not pinned"


def test_compose_runs_queue_mode_with_two_workers_redis_aof_and_postgres():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"release", "web", "worker", "redis", "postgres"}
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["web"]["environment"]["MODE"] == "queue"
    assert services["redis"]["command"] == ["redis-server", "--appendonly", "yes"]
    assert "redis-data:/data" in services["redis"]["volumes"]
    assert set(compose["volumes"]) == {"redis-data", "postgres-data"}
    for name in ("release", "web", "worker"):
        [command] = services[name]["command"]
        assert command in _entrypoint_cases(), f"{name}: unknown command {command!r}"


@pytest.mark.parametrize("service", ["web", "worker"])
def test_compose_healthchecks_probe_readyz_with_a_script_that_exists(service):
    test = _compose()["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "deploy/healthcheck.py"]
    assert (ROOT / test[2]).is_file()
    url = urlparse(test[3])
    assert url.path == "/readyz"
    if service == "web":
        assert url.port == 3000
        assert resolve(url.path).url_name == "readyz"
    else:
        assert url.port == int(_compose()["services"][service]["environment"]["WORKER_PORT"])
        assert 'path == "/readyz"' in HEALTH_SERVER.read_text()


def test_compose_services_depend_on_services_that_exist():
    services = _compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
