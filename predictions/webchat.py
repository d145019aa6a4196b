"""The browser chat's rules and reads: who may use a chatflow, the start page list, history."""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Q, QuerySet

from predictions.exceptions import BadRequest, Forbidden, PredictionError, Unauthorized
from predictions.models import Chatflow, ChatMessage

# What the person at the chat window can do about a failed answer, by error code.
ERROR_HINTS = {
    "provider_unreachable": (
        "The model server is unreachable: check the chatflow's base URL and that the server runs."
    ),
    "provider_timeout": (
        "The model server did not answer in time: check that it runs and is not overloaded."
    ),
    "provider_unauthorized": (
        "The model server rejected the API key: check the chatflow's credential or OPENAI_API_KEY."
    ),
    "provider_rate_limited": (
        "The model server is rate limiting requests: wait a moment, then ask again."
    ),
    "provider_bad_response": (
        "The model server answered with an error: check the chatflow's model name and the "
        "server's logs."
    ),
    "prediction_timeout": (
        "The answer took longer than PREDICTION_TIMEOUT allows: ask something shorter, or ask "
        "an operator to raise the limit."
    ),
    "worker_lost": "The worker running this answer stopped: ask again.",
    "queue_unavailable": "The queue is unavailable right now: ask again in a few seconds.",
    "prompt_error": "The chatflow's prompt could not be filled in: an operator needs to fix it.",
    "invalid_flow": "The chatflow is misconfigured: an operator needs to fix it in the admin.",
    "missing_input": "The chatflow is misconfigured: an operator needs to fix it in the admin.",
    "unknown_node_type": "The chatflow uses a node Flowsite cannot run: an operator must fix it.",
    "events_unavailable": (
        "This answer was lost, probably because the server restarted while it ran: ask again."
    ),
    "internal_error": "Something went wrong on the server: ask again, or check the server logs.",
}
DEFAULT_HINT = "Ask again; if it keeps failing, check the server logs."


def hint_for(code: str) -> str:
    return ERROR_HINTS.get(code, DEFAULT_HINT)


def is_staff(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def chatflow_is_public(chatflow: Chatflow) -> bool:
    """Return True when anyone may chat with it: public or deployed, and no API key."""
    return chatflow.api_key_id is None and (chatflow.is_public or chatflow.deployed)


def chat_denial(*, user: Any, chatflow: Chatflow) -> PredictionError | None:
    """Return why `user` may not chat with `chatflow` (401: log in, 403: not staff), or None."""
    if chatflow_is_public(chatflow) or is_staff(user):
        return None
    if user is None or not user.is_authenticated:
        return Unauthorized(
            "This chatflow is not public: log in as a staff user to use it",
            code="login_required",
        )
    return Forbidden("This chatflow is only open to staff users", code="staff_only")


def chatflow_list_for_user(user: Any) -> QuerySet[Chatflow]:
    """Return the chatflows `user` may chat with: all for staff, the public ones otherwise."""
    chatflows = Chatflow.objects.order_by("name", "id")
    if is_staff(user):
        return chatflows
    return chatflows.filter(api_key__isnull=True).filter(Q(is_public=True) | Q(deployed=True))


def parse_chat_id(value: Any) -> str:
    """Return a chat id as the chat window uses them (a UUID), or raise BadRequest."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError as exc:
        raise BadRequest("chatId must be a UUID", code="invalid_chat_id") from exc


def chat_history(*, chatflow: Chatflow, chat_id: str) -> list[dict[str, Any]]:
    """Return the stored messages of one conversation, oldest first."""
    messages = ChatMessage.objects.filter(chatflow=chatflow, chat_id=chat_id).order_by("created_at")
    return [
        {
            "id": str(message.id),
            "role": message.role,
            "content": message.content,
            "predictionId": str(message.prediction_id) if message.prediction_id else None,
            "createdDate": message.created_at.isoformat(),
        }
        for message in messages
    ]
