"""predictions.clients: model HTTP clients spread over a few pools per event loop."""

from __future__ import annotations

from predictions import clients


async def test_http_clients_are_shared_in_turn_per_loop() -> None:
    clients.reset_clients()
    handed = [clients.get_http_client() for _ in range(2 * clients.HTTP_CLIENT_SHARDS)]

    # Each of the loop's clients in turn, so no one connection pool grows with the load.
    assert len({id(c) for c in handed}) == clients.HTTP_CLIENT_SHARDS
    assert handed[: clients.HTTP_CLIENT_SHARDS] == handed[clients.HTTP_CLIENT_SHARDS :]
    for client in handed[: clients.HTTP_CLIENT_SHARDS]:
        await client.aclose()
    clients.reset_clients()
