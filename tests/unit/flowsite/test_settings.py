"""flowsite.settings at startup: the full problem list, hidden secrets, the generated secret key."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

SETUP = "import django; django.setup()"
# Loading the settings module alone is enough (and quicker) where the apps do not matter.
LOAD_SETTINGS = "from django.conf import settings; settings.SECRET_KEY"
PRINT_SECRET_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def _start(code: str, home: Path, **overrides: str | None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with Flowsite's settings and this environment."""
    environ = dict(os.environ)
    environ.update(
        DJANGO_SETTINGS_MODULE="flowsite.settings", PYTHONPATH=str(REPO), FLOWSITE_HOME=str(home)
    )
    for name, value in overrides.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environ,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def bad_start(tmp_path_factory) -> subprocess.CompletedProcess[str]:
    return _start(
        SETUP,
        tmp_path_factory.mktemp("home"),
        MODE="foo",
        PORT="abc",
        WORKER_CONCURRENCY="0",
        DATABASE_URL="ftp://flowsite:hunter2-db@x/db",
        REDIS_URL="http://:hunter2-redis@x",
        REDIS_PASSWORD="hunter2-password",
    )


def _last_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Return the ImproperlyConfigured message from a failed start's traceback."""
    assert result.returncode != 0
    marker = "django.core.exceptions.ImproperlyConfigured: "
    assert marker in result.stderr, result.stderr
    return result.stderr.split(marker, 1)[1]


def test_settings_bad_environment_fails_with_one_improperly_configured(bad_start) -> None:
    message = _last_line_error(bad_start)

    assert bad_start.stderr.count("django.core.exceptions.ImproperlyConfigured: ") == 1
    assert message.startswith("Invalid environment (5):")


@pytest.mark.parametrize(
    ("name", "expected", "example"),
    [
        ("MODE", "one of main|queue", "MODE=main"),
        ("PORT", "a whole number >= 1 and <= 65535", "PORT=3000"),
        ("WORKER_CONCURRENCY", "a whole number >= 1 and <= 10000", "WORKER_CONCURRENCY=100"),
        ("DATABASE_URL", "a URL with scheme sqlite or postgres", "DATABASE_URL=postgres://"),
        ("REDIS_URL", "a URL with scheme redis or rediss", "REDIS_URL=redis://"),
    ],
)
def test_settings_bad_environment_names_each_variable_form_and_example(
    bad_start, name: str, expected: str, example: str
) -> None:
    message = _last_line_error(bad_start)

    line = next(line for line in message.splitlines() if line.startswith(f"  - {name}: "))
    assert f"expected {expected}" in line
    assert f"e.g. {example}" in line


def test_settings_bad_environment_never_shows_secret_values(bad_start) -> None:
    assert "hunter2" not in bad_start.stderr
    assert "hunter2" not in bad_start.stdout


def test_settings_port_above_range_is_refused(tmp_path) -> None:
    message = _last_line_error(_start(LOAD_SETTINGS, tmp_path, PORT="70000"))

    assert "PORT: expected a whole number >= 1 and <= 65535, e.g. PORT=3000; got '70000'" in message


def test_settings_malformed_url_port_is_reported_without_the_password(tmp_path) -> None:
    result = _start(
        LOAD_SETTINGS,
        tmp_path,
        DATABASE_URL="postgres://flowsite:hunter2-db@db:notaport/flowsite",
        REDIS_URL="redis://:hunter2-redis@redis:notaport/0",
    )
    message = _last_line_error(result)

    assert message.startswith("Invalid environment (2):")
    assert "DATABASE_URL: expected a database URL" in message
    assert "REDIS_URL: expected redis://[user:password@]host:port/db" in message
    assert "hunter2" not in result.stderr


def test_settings_secret_key_is_generated_once_into_flowsite_home(tmp_path) -> None:
    first = _start(PRINT_SECRET_KEY, tmp_path, SECRET_KEY=None)
    second = _start(PRINT_SECRET_KEY, tmp_path, SECRET_KEY=None)

    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert len(key) >= 50
    assert second.stdout.strip() == key
    stored = tmp_path / "secret_key"
    assert stored.read_text().strip() == key
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


def test_settings_secret_key_from_environment_is_used_as_is(tmp_path) -> None:
    key = "k" * 40

    result = _start(PRINT_SECRET_KEY, tmp_path, SECRET_KEY=key)

    assert result.stdout.strip() == key
    assert not (tmp_path / "secret_key").exists()


PRINT_POOL = (
    "from django.conf import settings; print(settings.DATABASES['default']['OPTIONS'].get('pool'))"
)


def test_postgres_gets_a_bounded_connection_pool(tmp_path: Path) -> None:
    started = _start(
        PRINT_POOL,
        tmp_path,
        DATABASE_URL="postgres://u@db:5432/x",
        DATABASE_POOL_SIZE="7",
        DATABASE_POOL_TIMEOUT="1.5",
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == (
        "{'min_size': 1, 'max_size': 7, 'timeout': 1.5, 'max_idle': 300}"
    )


def test_database_pool_size_zero_turns_the_pool_off(tmp_path: Path) -> None:
    started = _start(
        PRINT_POOL, tmp_path, DATABASE_URL="postgres://u@db:5432/x", DATABASE_POOL_SIZE="0"
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "None"
