"""Helpers of the chat WebSocket tests (main and queue mode): connect, receive, pick events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from channels.testing import WebsocketCommunicator

from flowsite.asgi import application

# Generous: queue mode waits on a worker thread and Redis; a hang still fails the test.
TIMEOUT = 15
ORIGIN = (b"origin", b"http://localhost")


@contextlib.asynccontextmanager
async def chat_socket(
    chatflow_id: object, *headers: tuple[bytes, bytes]
) -> AsyncIterator[WebsocketCommunicator]:
    """Connect to the chat of a chatflow through the real ASGI application (origin check incl.)."""
    communicator = WebsocketCommunicator(
        application, f"/ws/chat/{chatflow_id}/", headers=[ORIGIN, *headers]
    )
    try:
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        yield communicator
    finally:
        await communicator.disconnect()


async def receive_until(
    communicator: WebsocketCommunicator, frame_type: str = "done", *, event: str | None = None
) -> list[dict[str, Any]]:
    """Receive frames up to and including the first of `frame_type` (or that event)."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=TIMEOUT)
        frames.append(frame)
        if frame["type"] == frame_type and (event is None or frame.get("event") == event):
            return frames


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"seq": f["seq"], "event": f["event"], "data": f["data"]}
        for f in frames
        if f["type"] == "event"
    ]
