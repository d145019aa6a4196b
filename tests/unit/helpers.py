"""Helpers for API tests: async chatflow setup, SSE parsing, condition waits, task draining."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async
from django.db import connections
from django.test import AsyncClient

from predictions import local, services
from tests.conftest import offline_flow
from tests.unit.engine.flows import conversation, flow_json, llm_chain, openai, prompt

JSON = "application/json"


def prediction_url(chatflow_id: object) -> str:
    return f"/api/v1/prediction/{chatflow_id}"


async def acreate_chatflow(**kwargs: Any):
    """Create a chatflow from an async test (offline flow with memory unless told otherwise)."""
    kwargs.setdefault("name", "test flow")
    kwargs.setdefault("flow_data", offline_flow())
    return await sync_to_async(services.chatflow_create)(**kwargs)


async def acreate_apikey(*, name: str = "key", can_manage: bool = False):
    return await sync_to_async(services.apikey_create)(name=name, can_manage=can_manage)


def openai_flow(base_url: str, **model_inputs: Any) -> str:
    """Return flowData: promptTemplate + chatOpenAI at `base_url` + llmChain (no memory)."""
    return flow_json(
        [
            openai("chatOpenAI_0", base_url=base_url, **model_inputs),
            prompt("promptTemplate_0", template="{question}"),
            llm_chain("llmChain_0", model="chatOpenAI_0", prompt_id="promptTemplate_0"),
        ]
    )


def openai_conversation_flow(base_url: str, **model_inputs: Any) -> str:
    """Return flowData: chatOpenAI at `base_url` + conversationChain (no memory)."""
    return flow_json(
        [
            openai("chatOpenAI_0", base_url=base_url, **model_inputs),
            conversation("conversationChain_0", model="chatOpenAI_0", systemMessagePrompt="Hi."),
        ]
    )


async def post_json(client: AsyncClient, url: str, body: Any, **headers: str) -> Any:
    """POST `body` as JSON (a str/bytes body is sent as is)."""
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return await client.post(url, data, content_type=JSON, headers=headers or None)


async def read_stream(response: Any) -> bytes:
    """Return the whole body of a streaming response."""
    return b"".join([chunk async for chunk in response.streaming_content])


def parse_frames(body: bytes) -> list[dict[str, Any]]:
    """Split SSE bytes into frames {seq, event, data}; heartbeats are skipped."""
    frames = []
    for block in body.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        lines = block.split("\n")
        assert lines[0] == "message:", block
        assert lines[1].startswith("data:"), block
        assert lines[2].startswith("id:"), block
        payload = json.loads(lines[1][len("data:") :])
        frames.append(
            {"seq": int(lines[2][len("id:") :]), "event": payload["event"], "data": payload["data"]}
        )
    return frames


def events(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["event"] for frame in frames]


def error_of(response: Any) -> dict[str, Any]:
    """Return the JSON error body, checking it has Flowise's shape plus our code."""
    body = response.json()
    assert set(body) == {"statusCode", "success", "message", "stack", "code"}, body
    assert body["statusCode"] == response.status_code
    assert body["success"] is False
    assert body["stack"] == {}
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, within: float = 5.0, interval: float = 0.01
) -> None:
    """Poll an async condition until it holds; fail the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(interval)


async def drain_predictions(within: float = 10.0) -> None:
    """Wait for every main-mode prediction task, then close the DB connections of its threads."""
    tasks = [task for task in list(local._tasks.values()) if not task.done()]
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    local._tasks.clear()
    local._cancelled.clear()
    await sync_to_async(connections.close_all)()
    # A run that outlived its request's ThreadSensitiveContext made its later sync calls on a
    # one-off asgiref thread; close that thread's DB connection too.
    for executor in list(SyncToAsync.context_to_thread_executor.values()):
        await asyncio.wrap_future(executor.submit(connections.close_all))


@contextlib.asynccontextmanager
async def request_context() -> AsyncIterator[None]:
    """Run a request as Django's ASGIHandler does: sync code on a thread of its own.

    The thread's DB connection is closed on the way out (the ASGI handler's request_finished
    would close it; AsyncClient does not), so the test database can be dropped at the end.
    """
    async with ThreadSensitiveContext():
        try:
            yield
        finally:
            await sync_to_async(connections.close_all)()


# Rows that migrations and post_migrate create and no test changes.
_KEEP = {"django_content_type", "auth_permission", "django_migrations"}


def fast_flush():
    """Empty tables with DELETE instead of TRUNCATE between transactional tests.

    Postgres TRUNCATE costs ~100 ms per test on these few-row tables, DELETE about 1 ms. Django's
    flush runs the statements in one transaction and its foreign keys are deferred, so the order
    of the DELETEs does not matter. Content types and permissions are kept, so flush's
    post_migrate (which only re-creates them) is skipped too. Sequence resets still go through
    Django's own flush.
    """
    from django.core.management.commands import flush as flush_command
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        tables = [table for table in tables if table not in _KEEP]
        if reset_sequences or not tables:
            return original(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        return [f"DELETE FROM {self.quote_name(table)};" for table in tables]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DatabaseOperations, "sql_flush", sql_flush)
        # post_migrate would only re-create the content types and permissions kept above.
        patch.setattr(flush_command, "emit_post_migrate_signal", lambda *args, **kwargs: None)
        yield
