"""Management API for API keys (Flowise's /apikey routes): list, create (shown once), revoke."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from predictions import selectors, services
from predictions.api.limits import StrictBooleanField, StrictCharField
from predictions.api.schema import (
    MANAGEMENT_ERRORS,
    ApiKeyCreatedSerializer,
    ApiKeySerializer,
    DeleteResultSerializer,
    errors,
)
from predictions.exceptions import NotFound
from predictions.models import ApiKey
from predictions.secrets import MASK


def apikey_to_json(key: ApiKey, raw: str | None = None) -> dict[str, Any]:
    """Return a key as Flowise lists them; `apiKey` is whole only when just created (`raw`)."""
    return {
        "id": str(key.id),
        "keyName": key.name,
        "apiKey": raw if raw is not None else f"{key.prefix}{MASK}",
        "canManage": key.can_manage,
        "createdAt": key.created_at.isoformat(),
        "chatFlows": [
            {
                "id": str(chatflow.id),
                "flowName": chatflow.name,
                "updatedDate": chatflow.updated_at.isoformat(),
            }
            for chatflow in key.chatflows.all()
        ],
    }


class ApiKeyListApi(APIView):
    @extend_schema_serializer(component_name="ApiKeyInput")
    class InputSerializer(serializers.Serializer):
        keyName = StrictCharField(max_length=100)
        canManage = StrictBooleanField(
            required=False, default=False, help_text="May call the management API"
        )

    @extend_schema(
        operation_id="apikey_list",
        summary="List the active API keys (first characters only)",
        responses={200: ApiKeySerializer(many=True), **errors(*MANAGEMENT_ERRORS)},
        tags=["apikey"],
    )
    def get(self, request: Request) -> Response:
        keys = ApiKey.objects.active().prefetch_related("chatflows")
        return Response([apikey_to_json(key) for key in keys])

    @extend_schema(
        operation_id="apikey_create",
        summary="Create an API key: the response holds the whole key, this once",
        request=InputSerializer,
        responses={200: ApiKeyCreatedSerializer, **errors(400, 413, 415, *MANAGEMENT_ERRORS)},
        tags=["apikey"],
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key, raw = services.apikey_create(
            name=serializer.validated_data["keyName"],
            can_manage=serializer.validated_data["canManage"],
        )
        return Response(apikey_to_json(key, raw))


class ApiKeyDetailApi(APIView):
    @extend_schema(
        operation_id="apikey_revoke",
        summary="Revoke an API key (at once, on every process)",
        responses={200: DeleteResultSerializer, **errors(404, *MANAGEMENT_ERRORS)},
        tags=["apikey"],
    )
    def delete(self, request: Request, apikey_id: str) -> Response:
        pk = selectors.parse_uuid(apikey_id)
        key = ApiKey.objects.active().filter(id=pk).first() if pk else None
        if key is None:
            raise NotFound(f"API key {apikey_id} not found", code="api_key_not_found")
        services.apikey_revoke(key=key)
        return Response({"raw": [], "affected": 1})
