"""predictions.clients: one model HTTP session per event loop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from predictions import clients
from predictions.engine.runner import environment_has_proxies_or_netrc


async def test_http_session_is_shared_per_loop_and_closed_with_it() -> None:
    clients.reset_clients()
    session = clients.get_http_client()

    assert clients.get_http_client() is session
    assert session.connector is not None
    assert session.connector.limit == 0

    await clients.aclose_http_client()
    assert session.closed
    assert clients.get_http_client() is not session  # a new one after closing
    await clients.aclose_http_client()
    clients.reset_clients()


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No proxy variables, and a home directory without a netrc file."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


async def test_model_sessions_skip_aiohttps_per_request_environment_lookups_without_any(
    bare_environment: pytest.MonkeyPatch,
) -> None:
    clients.reset_clients()
    session = clients.get_http_client()
    try:
        # aiohttp's trust_env reads proxies and the netrc file in a thread on every request.
        assert session.trust_env is False
    finally:
        await clients.aclose_http_client()


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY", "NETRC"])
def test_a_proxy_variable_or_a_netrc_file_keeps_them(
    bare_environment: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine models.example login u password p\n")
    bare_environment.setenv(variable, str(netrc) if variable == "NETRC" else "http://proxy:3128")

    assert environment_has_proxies_or_netrc() is True


def test_a_netrc_file_in_the_home_directory_keeps_them(
    bare_environment: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert environment_has_proxies_or_netrc() is False
    (tmp_path / ".netrc").write_text("machine models.example login u password p\n")

    assert environment_has_proxies_or_netrc() is True
