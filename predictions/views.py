"""Browser pages: the start page, the chat page of a chatflow, and a chat's history as JSON."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from predictions import selectors, webchat
from predictions.exceptions import PredictionError, chatflow_not_found, error_response
from predictions.models import Chatflow


def _config_text(config: dict[str, Any], *path: str) -> str:
    """Return a string from chatbotConfig (nested keys allowed), or "" when absent or not text."""
    value: Any = config
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value.strip() if isinstance(value, str) else ""


def _title(chatflow: Chatflow) -> str:
    return _config_text(chatflow.chatbot_config, "title") or chatflow.name


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """List the chatflows this visitor may chat with."""
    chatflows = [
        {
            "id": chatflow.id,
            "title": _title(chatflow),
            "name": chatflow.name,
            "public": webchat.chatflow_is_public(chatflow),
            "streaming": chatflow.is_streaming,
        }
        for chatflow in webchat.chatflow_list_for_user(request.user)
    ]
    context = {"chatflows": chatflows, "is_staff": webchat.is_staff(request.user)}
    return render(request, "predictions/index.html", context)


def _refusal_page(request: HttpRequest, exc: PredictionError) -> HttpResponse:
    login_url = f"{reverse('admin:login')}?{urlencode({'next': request.path})}"
    context = {"error": exc, "login_url": login_url}
    return render(request, "predictions/refused.html", context, status=exc.status)


@require_GET
def chat(request: HttpRequest, chatflow_id: str) -> HttpResponse:
    """The chat window of one chatflow; history and answers come through JavaScript."""
    chatflow = selectors.chatflow_get(chatflow_id)
    if chatflow is None:
        return _refusal_page(request, chatflow_not_found(chatflow_id))
    denial = webchat.chat_denial(user=request.user, chatflow=chatflow)
    if denial is not None:
        return _refusal_page(request, denial)
    config = chatflow.chatbot_config
    page_config = {
        "chatflowId": str(chatflow.id),
        "wsPath": f"/ws/chat/{chatflow.id}/",
        "historyUrl": reverse("chat:history", args=[chatflow.id]),
        "welcomeMessage": _config_text(config, "welcomeMessage"),
        "placeholder": _config_text(config, "textInput", "placeholder") or "Ask something…",
        "maxQuestionLength": settings.MAX_QUESTION_LENGTH,
    }
    context = {"chatflow": chatflow, "title": _title(chatflow), "page_config": page_config}
    return render(request, "predictions/chat.html", context)


@require_GET
def chat_history(request: HttpRequest, chatflow_id: str) -> HttpResponse:
    """GET ?chatId=<uuid>: the stored messages of one conversation, with the chat's own rules."""
    chatflow = selectors.chatflow_get(chatflow_id)
    try:
        if chatflow is None:
            raise chatflow_not_found(chatflow_id)
        denial = webchat.chat_denial(user=request.user, chatflow=chatflow)
        if denial is not None:
            raise denial
        chat_id = webchat.parse_chat_id(request.GET.get("chatId"))
    except PredictionError as exc:
        return error_response(exc)
    messages = webchat.chat_history(chatflow=chatflow, chat_id=chat_id)
    return JsonResponse({"chatId": chat_id, "messages": messages})
