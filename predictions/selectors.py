"""Shared reads: chatflows by id (tolerating malformed ids), predictions of a chat."""

from __future__ import annotations

import uuid

from predictions.models import ACTIVE_STATUSES, Chatflow, Prediction


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
