"""predictions.clients: one model HTTP session per event loop."""

from __future__ import annotations

from predictions import clients


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
