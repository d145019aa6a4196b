"""The chat WebSocket: Origin must be an allowed host; a key-bound chatflow is not open there."""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from flowsite.asgi import application
from tests.conftest import offline_flow
from tests.unit.helpers import acreate_apikey, acreate_chatflow

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10


async def _connect(chatflow_id, *headers: tuple[bytes, bytes]) -> tuple[bool, object, object]:
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{chatflow_id}/", headers=list(headers)
    )
    connected, code = await communicator.connect(timeout=TIMEOUT)
    return connected, code, communicator


@pytest.mark.parametrize(
    "origin",
    [
        b"http://evil.example",
        b"https://localhost.evil.example",
        b"null",
        None,
    ],
)
async def test_cross_site_origins_are_refused_before_the_socket_opens(origin):
    chatflow = await acreate_chatflow(is_public=True, flow_data=offline_flow(memory=False))
    headers = [(b"origin", origin)] if origin else []
    connected, _, communicator = await _connect(chatflow.id, *headers)
    assert not connected
    await communicator.disconnect()


async def test_an_allowed_host_origin_is_accepted():
    chatflow = await acreate_chatflow(is_public=True, flow_data=offline_flow(memory=False))
    connected, _, communicator = await _connect(chatflow.id, (b"origin", b"http://localhost"))
    assert connected
    await communicator.send_json_to({"type": "ping"})
    assert await communicator.receive_json_from(timeout=TIMEOUT) == {"type": "pong"}
    await communicator.disconnect()


async def test_a_key_bound_chatflow_is_closed_to_anonymous_sockets():
    key, _ = await acreate_apikey(name="guard")
    chatflow = await acreate_chatflow(
        api_key=key, is_public=True, flow_data=offline_flow(memory=False)
    )
    connected, _, communicator = await _connect(chatflow.id, (b"origin", b"http://localhost"))
    assert connected  # accepted, then refused with an application close code
    frame = await communicator.receive_json_from(timeout=TIMEOUT)
    assert frame["type"] == "error"
    assert frame["code"] == "login_required"
    closed = await communicator.receive_output(timeout=TIMEOUT)
    assert closed == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()
