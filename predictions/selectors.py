"""Shared reads: chatflows by id (tolerating malformed ids), predictions of a chat."""

from __future__ import annotations

import time
import uuid

from django.conf import settings

from predictions.models import ACTIVE_STATUSES, Chatflow, Prediction

# Chatflows read for predictions, by id: (monotonic time they expire, chatflow).
_recent_chatflows: dict[uuid.UUID, tuple[float, Chatflow]] = {}
_RECENT_CHATFLOWS_MAX = 1024
# How many times a chatflow was forgotten: a read that began before one is not remembered.
_forgets = 0


def parse_uuid(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def chatflow_get(chatflow_id: object) -> Chatflow | None:
    """Return the chatflow, or None when the id is unknown or not a UUID."""
    pk = parse_uuid(chatflow_id)
    return None if pk is None else Chatflow.objects.filter(id=pk).first()


async def achatflow_get(chatflow_id: object) -> Chatflow | None:
    pk = parse_uuid(chatflow_id)
    return None if pk is None else await Chatflow.objects.filter(id=pk).afirst()


async def achatflow_get_recent(chatflow_id: object) -> Chatflow | None:
    """Return the chatflow as read at most CHATFLOW_CACHE_SECONDS ago (for predictions).

    Saves a database read per prediction; when it expires, one request reads it again while
    the others keep the copy they have. Saves and deletes in this process apply at once
    (`chatflow_forget`); those made by other processes after at most CHATFLOW_CACHE_SECONDS.
    Unknown ids are never remembered, so a new chatflow answers at once everywhere. The
    instance is shared: read it, never change it.
    """
    pk = parse_uuid(chatflow_id)
    if pk is None:
        return None
    ttl = settings.CHATFLOW_CACHE_SECONDS
    now = time.monotonic()
    recent = _recent_chatflows.get(pk)
    if recent is not None:
        if recent[0] > now:
            return recent[1]
        # One request reads it again; those that come meanwhile keep the one they have.
        _recent_chatflows[pk] = (now + ttl, recent[1])
    generation = _forgets
    try:
        chatflow = await achatflow_get(pk)
    except BaseException:
        _recent_chatflows.pop(pk, None)
        raise
    if chatflow is None or ttl <= 0 or generation != _forgets:  # (a save meanwhile: not this)
        _recent_chatflows.pop(pk, None)
        return chatflow
    if len(_recent_chatflows) >= _RECENT_CHATFLOWS_MAX:
        _recent_chatflows.clear()
    _recent_chatflows[pk] = (time.monotonic() + ttl, chatflow)
    return chatflow


def chatflow_forget(chatflow_id: uuid.UUID) -> None:
    """Drop a chatflow from `achatflow_get_recent`'s memory (it was saved or deleted)."""
    global _forgets
    _forgets += 1
    _recent_chatflows.pop(chatflow_id, None)


def chatflows_forget_all() -> None:
    _recent_chatflows.clear()


async def aprediction_get(prediction_id: object) -> Prediction | None:
    pk = parse_uuid(prediction_id)
    if pk is None:
        return None
    return await Prediction.objects.select_related("chatflow").filter(id=pk).afirst()


async def aprediction_list_active_for_chat(*, chatflow: Chatflow, chat_id: str) -> list[Prediction]:
    return [
        p
        async for p in Prediction.objects.filter(
            chatflow=chatflow, chat_id=chat_id, status__in=ACTIVE_STATUSES
        )
    ]
