"""flowsite.env.Env: typed readers that collect every problem and raise one ImproperlyConfigured."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from dotenv import dotenv_values

from flowsite.env import Env


def _read_like_settings(env: Env) -> None:
    """Read the variables the brief's bad environment sets, as settings.py reads them."""
    env.choice("MODE", ("main", "queue"), "main")
    env.int("PORT", 3000, min_value=1, max_value=65535)
    env.int("WORKER_CONCURRENCY", 100, min_value=1, max_value=10000)
    env.url(
        "DATABASE_URL",
        "sqlite:///x.sqlite3",
        schemes=("sqlite", "postgres", "postgresql"),
        example="postgres://flowsite:secret@db:5432/flowsite",
        secret=True,
    )
    env.url(
        "REDIS_URL",
        "",
        schemes=("redis", "rediss"),
        example="redis://:secret@redis:6379/0",
        secret=True,
    )
    env.str("REDIS_PASSWORD", secret=True)


BAD = {
    "MODE": "foo",
    "PORT": "abc",
    "WORKER_CONCURRENCY": "0",
    "DATABASE_URL": "ftp://flowsite:hunter2-db@x/db",
    "REDIS_URL": "http://:hunter2-redis@x",
    "REDIS_PASSWORD": "hunter2-password",
}


def _message(source: dict[str, str]) -> str:
    env = Env(source=source)
    _read_like_settings(env)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env.raise_if_problems()
    return str(excinfo.value)


def test_env_reports_every_problem_in_one_error() -> None:
    message = _message(BAD)

    assert message.startswith("Invalid environment (5):")
    for name in ("MODE", "PORT", "WORKER_CONCURRENCY", "DATABASE_URL", "REDIS_URL"):
        assert f"- {name}: expected " in message


def test_env_problem_names_expected_form_and_example() -> None:
    message = _message({"PORT": "abc"})

    assert "PORT: expected a whole number >= 1 and <= 65535, e.g. PORT=3000; got 'abc'" in message


def test_env_int_above_maximum_is_a_problem() -> None:
    message = _message({"PORT": "70000"})

    assert "PORT: expected a whole number >= 1 and <= 65535" in message
    assert "got '70000'" in message


def test_env_int_below_minimum_is_a_problem() -> None:
    message = _message({"WORKER_CONCURRENCY": "0"})

    assert "WORKER_CONCURRENCY: expected a whole number >= 1 and <= 10000" in message
    assert "e.g. WORKER_CONCURRENCY=100" in message


def test_env_choice_lists_the_choices() -> None:
    message = _message({"MODE": "foo"})

    assert "MODE: expected one of main|queue, e.g. MODE=main; got 'foo'" in message


def test_env_url_with_wrong_scheme_is_a_problem() -> None:
    message = _message({"DATABASE_URL": "ftp://x", "REDIS_URL": "http://x"})

    assert "DATABASE_URL: expected a URL with scheme sqlite or postgres or postgresql" in message
    assert "e.g. DATABASE_URL=postgres://" in message
    assert "REDIS_URL: expected a URL with scheme redis or rediss" in message
    assert "e.g. REDIS_URL=redis://" in message


def test_env_never_shows_secret_values() -> None:
    message = _message(BAD)

    assert "hunter2" not in message
    assert "(hidden)" in message


def test_env_without_problems_does_not_raise() -> None:
    env = Env(source={"MODE": "QUEUE", "PORT": "8000"})

    assert env.choice("MODE", ("main", "queue"), "main") == "queue"
    assert env.int("PORT", 3000, min_value=1, max_value=65535) == 8000
    env.raise_if_problems()


def test_env_empty_value_means_default() -> None:
    env = Env(source={"PORT": "  ", "DEBUG": ""})

    assert env.int("PORT", 3000) == 3000
    assert env.bool("DEBUG", True) is True
    assert not env.is_set("PORT")


def test_env_bool_accepts_common_spellings() -> None:
    env = Env(source={"A": "yes", "B": "Off", "C": "1", "D": "maybe"})

    assert env.bool("A", False) is True
    assert env.bool("B", True) is False
    assert env.bool("C", False) is True
    assert env.bool("D", False) is False
    assert env.problems == ["D: expected true or false, e.g. D=true; got 'maybe'"]


def test_env_list_splits_on_commas() -> None:
    env = Env(source={"CORS_ORIGINS": " https://a.example , ,https://b.example"})

    assert env.list("CORS_ORIGINS", ["*"]) == ["https://a.example", "https://b.example"]
    assert env.list("MISSING", ["*"]) == ["*"]


def test_env_float_rejects_text() -> None:
    env = Env(source={"SSE_HEARTBEAT_SECONDS": "soon"})

    assert env.float("SSE_HEARTBEAT_SECONDS", 30.0, min_value=0.05, example="30") == 30.0
    assert env.problems == [
        "SSE_HEARTBEAT_SECONDS: expected a number >= 0.05, e.g. SSE_HEARTBEAT_SECONDS=30; "
        "got 'soon'"
    ]


def test_env_dotenv_values_are_used_but_real_environment_wins(tmp_path) -> None:
    # settings.py builds its source exactly like this: {**.env file, **os.environ}.
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=4000\nQUEUE_NAME=from-dotenv\n")
    environ = {"PORT": "5000"}
    env = Env(source={**dotenv_values(dotenv), **environ})

    assert env.int("PORT", 3000) == 5000
    assert env.str("QUEUE_NAME", "flowsite-queue") == "from-dotenv"
