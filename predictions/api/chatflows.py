"""Management API (staff session or management key): chatflows CRUD and chat history."""

from __future__ import annotations

import functools
import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from predictions import secrets, selectors, services
from predictions.api import limits
from predictions.api.limits import StrictBooleanField, StrictCharField
from predictions.api.schema import (
    MANAGEMENT_ERRORS,
    ChatflowSerializer,
    ChatMessageSerializer,
    DeleteResultSerializer,
    FlowDataField,
    JsonObjectField,
    errors,
)
from predictions.exceptions import BadRequest, PredictionError, chatflow_not_found, error_response
from predictions.models import ApiKey, Chatflow, ChatMessage


def _json_object(value: Any, field: str) -> dict[str, Any]:
    """Accept an object or Flowise's JSON-string form of one."""
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise serializers.ValidationError({field: f"not valid JSON ({exc.msg})"}) from exc
        except RecursionError as exc:
            raise serializers.ValidationError({field: "nested too deeply"}) from exc
    if not isinstance(value, dict):
        raise serializers.ValidationError({field: "must be a JSON object"})
    limits.check_depth(value, field)
    return value


def chatflow_to_json(chatflow: Chatflow) -> dict[str, Any]:
    """Return a chatflow as Flowise does (flowData, chatbotConfig and apiConfig as JSON strings)."""
    return {
        "id": str(chatflow.id),
        "name": chatflow.name,
        # Secrets of node inputs never leave the server; sending the mask back keeps them.
        "flowData": secrets.flow_data_mask(chatflow.flow_data),
        "deployed": chatflow.deployed,
        "isPublic": chatflow.is_public,
        "apikeyid": str(chatflow.api_key_id) if chatflow.api_key_id else None,
        "chatbotConfig": json.dumps(chatflow.chatbot_config) if chatflow.chatbot_config else None,
        "apiConfig": json.dumps(chatflow.api_config) if chatflow.api_config else None,
        "isStreaming": chatflow.is_streaming,
        "type": "CHATFLOW",
        "createdDate": chatflow.created_at.isoformat(),
        "updatedDate": chatflow.updated_at.isoformat(),
    }


class ChatflowInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=255)
    flowData = FlowDataField()
    deployed = StrictBooleanField(required=False, default=False)
    isPublic = StrictBooleanField(required=False, default=False)
    apikeyid = serializers.UUIDField(required=False, allow_null=True)
    chatbotConfig = JsonObjectField(required=False, allow_null=True)
    apiConfig = JsonObjectField(required=False, allow_null=True)

    def validate_flowData(self, value: Any) -> Any:
        if not isinstance(value, str | dict):
            raise serializers.ValidationError("must be a JSON object or a JSON string of one")
        return value

    def to_fields(self) -> dict[str, Any]:
        data = self.validated_data
        fields: dict[str, Any] = {}
        mapping = {
            "name": "name",
            "flowData": "flow_data",
            "deployed": "deployed",
            "isPublic": "is_public",
        }
        for src, dst in mapping.items():
            if src in data:
                fields[dst] = data[src]
        for src, dst in (("chatbotConfig", "chatbot_config"), ("apiConfig", "api_config")):
            if src in data:
                fields[dst] = _json_object(data[src], src)
        if "apikeyid" in data:
            key_id = data["apikeyid"]
            if key_id is None:
                fields["api_key"] = None
            else:
                key = ApiKey.objects.active().filter(id=key_id).first()
                if key is None:
                    raise BadRequest(f"API key {key_id} not found", code="api_key_not_found")
                fields["api_key"] = key
        return fields


class ChatflowUpdateSerializer(ChatflowInputSerializer):
    """PUT's body (for the schema): every field optional; absent fields are left as they are."""

    name = StrictCharField(max_length=255, required=False)
    flowData = FlowDataField(required=False)
    deployed = StrictBooleanField(required=False)
    isPublic = StrictBooleanField(required=False)


class ChatflowListApi(APIView):
    @extend_schema(
        operation_id="chatflows_list",
        summary="List chatflows",
        responses={200: ChatflowSerializer(many=True), **errors(*MANAGEMENT_ERRORS)},
        tags=["chatflows"],
    )
    def get(self, request: Request) -> Response:
        return Response([chatflow_to_json(c) for c in Chatflow.objects.all()])

    @extend_schema(
        operation_id="chatflows_create",
        summary="Create a chatflow (flowData is validated; 400 names the node)",
        request=ChatflowInputSerializer,
        responses={200: ChatflowSerializer, **errors(400, 413, 415, *MANAGEMENT_ERRORS)},
        tags=["chatflows"],
    )
    def post(self, request: Request) -> Response:
        serializer = ChatflowInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        chatflow = services.chatflow_create(**serializer.to_fields())
        return Response(chatflow_to_json(chatflow), status=200)


class ChatflowDetailApi(APIView):
    def _get(self, chatflow_id: str) -> Chatflow:
        chatflow = selectors.chatflow_get(chatflow_id)
        if chatflow is None:
            raise chatflow_not_found(chatflow_id)
        return chatflow

    @extend_schema(
        operation_id="chatflows_retrieve",
        summary="Get a chatflow (secrets in flowData masked)",
        responses={200: ChatflowSerializer, **errors(404, *MANAGEMENT_ERRORS)},
        tags=["chatflows"],
    )
    def get(self, request: Request, chatflow_id: str) -> Response:
        return Response(chatflow_to_json(self._get(chatflow_id)))

    @extend_schema(
        operation_id="chatflows_update",
        summary="Change a chatflow (masked secrets keep their stored values)",
        request=ChatflowUpdateSerializer,
        responses={200: ChatflowSerializer, **errors(400, 404, 413, 415, *MANAGEMENT_ERRORS)},
        tags=["chatflows"],
    )
    def put(self, request: Request, chatflow_id: str) -> Response:
        chatflow = self._get(chatflow_id)
        serializer = ChatflowInputSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        chatflow = services.chatflow_update(chatflow=chatflow, **serializer.to_fields())
        return Response(chatflow_to_json(chatflow))

    @extend_schema(
        operation_id="chatflows_destroy",
        summary="Delete a chatflow",
        responses={200: DeleteResultSerializer, **errors(404, *MANAGEMENT_ERRORS)},
        tags=["chatflows"],
    )
    def delete(self, request: Request, chatflow_id: str) -> Response:
        chatflow = self._get(chatflow_id)
        chatflow.delete()
        return Response({"raw": [], "affected": 1})


def _message_to_json(message: ChatMessage) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "role": message.role,
        "chatflowid": str(message.chatflow_id),
        "content": message.content,
        "chatId": message.chat_id,
        "sessionId": message.session_id,
        "memoryType": message.memory_type or None,
        "sourceDocuments": json.dumps(message.source_documents)
        if message.source_documents
        else None,
        "usedTools": json.dumps(message.used_tools) if message.used_tools else None,
        "createdDate": message.created_at.isoformat(),
    }


class ChatMessageListApi(APIView):
    class FilterSerializer(serializers.Serializer):
        chatId = serializers.CharField(required=False)
        sessionId = serializers.CharField(required=False)
        order = serializers.ChoiceField(choices=["ASC", "DESC"], required=False, default="ASC")
        startDate = serializers.DateTimeField(required=False)
        endDate = serializers.DateTimeField(required=False)

    @extend_schema(
        operation_id="chatmessage_list",
        summary="A chatflow's chat history",
        parameters=[FilterSerializer],
        responses={200: ChatMessageSerializer(many=True), **errors(400, 404, *MANAGEMENT_ERRORS)},
        tags=["chatflows"],
    )
    def get(self, request: Request, chatflow_id: str) -> Response:
        if selectors.chatflow_get(chatflow_id) is None:
            raise chatflow_not_found(chatflow_id)
        for name, value in request.query_params.items():
            if value == "" and name in self.FilterSerializer().fields:
                raise BadRequest(f"{name} must not be empty", code="invalid_request")
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        f = filters.validated_data
        messages = ChatMessage.objects.filter(chatflow_id=chatflow_id)
        if "chatId" in f:
            messages = messages.filter(chat_id=f["chatId"])
        if "sessionId" in f:
            messages = messages.filter(session_id=f["sessionId"])
        if "startDate" in f:
            messages = messages.filter(created_at__gte=f["startDate"])
        if "endDate" in f:
            messages = messages.filter(created_at__lte=f["endDate"])
        ordering = "created_at" if f["order"] == "ASC" else "-created_at"
        return Response([_message_to_json(m) for m in messages.order_by(ordering)])


def _allow(*methods: str):
    """Answer other methods with 405 in the API error shape (plain views)."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = error_response(
                    PredictionError(
                        f"Use {', '.join(methods)}", code="method_not_allowed", status=405
                    )
                )
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        # Read-only views: an unsafe method gets the 405 above, not the CSRF failure page.
        return csrf_exempt(wrapper)

    return decorate


@_allow("GET", "HEAD")
def chatflow_streaming(request: HttpRequest, chatflow_id: str) -> HttpResponse:
    """GET /chatflows-streaming/<id>: whether the flow streams (public; SDKs ask every call)."""
    chatflow = get_object_or_404_json(chatflow_id)
    if isinstance(chatflow, HttpResponse):
        return chatflow
    return JsonResponse({"isStreaming": chatflow.is_streaming})


_PUBLIC_CONFIG_KEYS_HIDDEN = {"allowedOrigins"}


@_allow("GET", "HEAD")
def public_chatbot_config(request: HttpRequest, chatflow_id: str) -> HttpResponse:
    """GET /public-chatbotConfig/<id>: the chat window's settings, never the flow's definition."""
    chatflow = get_object_or_404_json(chatflow_id)
    if isinstance(chatflow, HttpResponse):
        return chatflow
    config = {
        k: v for k, v in chatflow.chatbot_config.items() if k not in _PUBLIC_CONFIG_KEYS_HIDDEN
    }
    body = {
        **config,
        "uploads": {
            "isSpeechToTextEnabled": False,
            "isImageUploadAllowed": False,
            "isRAGFileUploadAllowed": False,
            "imgUploadSizeAndTypes": [],
            "fileUploadSizeAndTypes": [],
        },
        "isTTSEnabled": False,
    }
    return JsonResponse(body)


def get_object_or_404_json(chatflow_id: str) -> Chatflow | HttpResponse:
    chatflow = selectors.chatflow_get(chatflow_id)
    if chatflow is None:
        return error_response(chatflow_not_found(chatflow_id))
    return chatflow


@_allow("GET", "HEAD")
def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse("pong", content_type="text/plain")
