"""OpenAPI 3 for the REST API: doc serializers for the DRF views, hand-written plain views.

drf-spectacular describes the DRF views (management API) from their `extend_schema`
annotations; the plain Django views (ping, public reads, predictions) are not DRF views, so
`add_plain_views` (a postprocessing hook) writes their paths and components here. Every route of
predictions/urls.py appears in the schema (tests/unit/security/test_schema.py checks it).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema_field
from rest_framework import serializers

from predictions.api.limits import CHAT_ID_RE

# --- authentication ----------------------------------------------------------------------------


class ManagementKeyScheme(OpenApiAuthenticationExtension):
    target_class = "predictions.auth.ManagementKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: a management key for the management API, or the "
            "chatflow's key for its predictions.",
        }


# --- fields ------------------------------------------------------------------------------------


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "description": "JSON text of {nodes, edges}"},
            {
                "type": "object",
                "properties": {
                    "nodes": {"type": "array", "items": {"type": "object"}},
                    "edges": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["nodes"],
            },
        ],
        "description": "Flowise's flowData; secrets masked as ******** keep their stored values",
    }
)
class FlowDataField(serializers.JSONField):
    """flowData: a JSON object or Flowise's JSON-string form of one."""


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "description": "JSON text of an object"},
            {"type": "object", "additionalProperties": True},
        ],
        "nullable": True,
    }
)
class JsonObjectField(serializers.JSONField):
    """chatbotConfig / apiConfig: an object, Flowise's JSON-string form of one, or null."""


# --- doc serializers (components of the DRF views) --------------------------------------------


class ErrorSerializer(serializers.Serializer):
    """Every error before a stream starts: Flowise's shape plus a stable `code`."""

    statusCode = serializers.IntegerField()
    success = serializers.BooleanField()
    message = serializers.CharField()
    stack = serializers.DictField()
    code = serializers.CharField()


class ChatflowSerializer(serializers.Serializer):
    """A chatflow as Flowise returns it; secrets in flowData's node inputs are masked."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    flowData = serializers.CharField(help_text="JSON string: {nodes, edges}; secrets masked")
    deployed = serializers.BooleanField()
    isPublic = serializers.BooleanField()
    apikeyid = serializers.UUIDField(allow_null=True)
    chatbotConfig = serializers.CharField(allow_null=True, help_text="JSON string or null")
    apiConfig = serializers.CharField(allow_null=True, help_text="JSON string or null")
    isStreaming = serializers.BooleanField()
    type = serializers.CharField()
    createdDate = serializers.DateTimeField()
    updatedDate = serializers.DateTimeField()


class DeleteResultSerializer(serializers.Serializer):
    raw = serializers.ListField(child=serializers.JSONField())
    affected = serializers.IntegerField()


class ChatMessageSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    role = serializers.ChoiceField(choices=["userMessage", "apiMessage"])
    chatflowid = serializers.UUIDField()
    content = serializers.CharField(allow_blank=True)
    chatId = serializers.CharField()
    sessionId = serializers.CharField()
    memoryType = serializers.CharField(allow_null=True)
    sourceDocuments = serializers.CharField(allow_null=True, help_text="JSON string or null")
    usedTools = serializers.CharField(allow_null=True, help_text="JSON string or null")
    createdDate = serializers.DateTimeField()


class ApiKeyChatflowSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    flowName = serializers.CharField()
    updatedDate = serializers.DateTimeField()


class ApiKeySerializer(serializers.Serializer):
    """An API key; `apiKey` is its first characters only (the key itself is never stored)."""

    id = serializers.UUIDField()
    keyName = serializers.CharField()
    apiKey = serializers.CharField()
    canManage = serializers.BooleanField()
    createdAt = serializers.DateTimeField()
    chatFlows = ApiKeyChatflowSerializer(many=True)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    """The created key: `apiKey` is the whole key, returned this once."""


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Return error responses of the given statuses, all in the API error shape."""
    return {
        status: OpenApiResponse(ErrorSerializer, description=ERROR_DESCRIPTIONS[status])
        for status in statuses
    }


ERROR_DESCRIPTIONS = {
    400: "Bad request (`malformed_json`, `invalid_request`, flow errors naming the node, …)",
    401: "Authentication required or invalid (`api_key_required`, `invalid_api_key`, …)",
    403: "Not allowed (`forbidden`, `origin_not_allowed`)",
    404: "Not found (`chatflow_not_found`, `prediction_not_found`, `api_key_not_found`)",
    405: "Method not allowed",
    406: "Not acceptable: the API answers JSON",
    409: "The prediction was cancelled",
    413: "Too large (`body_too_large`, `question_too_long`, `history_too_long`, …)",
    415: "Unsupported media type: send application/json",
    429: "Rate limited (`rate_limited`): the chatflow's apiConfig.rateLimit; see Retry-After",
    500: "Internal error",
    502: "The model server failed (`provider_*`, `worker_lost`)",
    503: "No capacity or a backing service is away (`queue_unavailable`, `queue_full`, …); "
    "see Retry-After",
    504: "Timed out (`prediction_timeout`, `provider_timeout`)",
}

# Statuses every management (DRF) route can answer besides its own (503: database away).
MANAGEMENT_ERRORS = (401, 403, 405, 406, 503)

# --- the plain views -----------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(status: int, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status],
        "content": _json(_ref("Error")),
    }
    if headers:
        response["headers"] = headers
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        headers = None
        if status == 429:
            headers = {"Retry-After": _RETRY_AFTER | {"required": True}}
        elif status == 503:
            headers = {"Retry-After": _RETRY_AFTER}
        elif status == 405:
            headers = {"Allow": {"schema": {"type": "string"}, "description": "Allowed methods"}}
        out[str(status)] = _error(status, headers)
    return out


_RETRY_AFTER = {"schema": {"type": "string", "pattern": r"^\d+$"}, "description": "Seconds"}

# One server-sent event, as an SSE parser sees it: Flowise writes a `message:` line (no `event:`
# field, so the SSE event type is "message"), the JSON in `data:`, and Flowsite an `id:`.
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": 'Each frame is `message:\\ndata:{"event": <name>, "data": <payload>}'
            "\\nid:<seq>\\n\\n`; events start, token, …, metadata, end (or error/abort, end). "
            "`:heartbeat` comments keep idle streams open.",
            "required": ["data"],
            "properties": {
                "event": {"type": "string", "enum": ["message"]},
                "data": {
                    "type": "string",
                    "description": 'JSON: {"event": "start"|"token"|…|"end", "data": …}',
                },
                "id": {"type": "string", "pattern": "^[0-9]+$"},
            },
        }
    }
}


def _path_param(name: str, description: str, fmt: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if fmt:
        schema["format"] = fmt
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


CHATFLOW_ID = _path_param("chatflow_id", "Chatflow id (a UUID; anything else answers 404)")
PREDICTION_ID = _path_param("prediction_id", "Prediction id (a UUID; anything else answers 404)")

_OPTIONAL_KEY = [{}, {"bearerAuth": []}, {"cookieAuth": []}]


def _bool_like() -> dict[str, Any]:
    """What DRF's BooleanField accepts: booleans, 0/1 and the usual words."""
    words = ["true", "false", "True", "False", "TRUE", "FALSE", "1", "0", "yes", "no", "on", "off"]
    return {
        "anyOf": [
            {"type": "boolean"},
            {"type": "string", "enum": words},
            {"type": "integer", "enum": [0, 1]},
        ]
    }


def components() -> dict[str, Any]:
    """Return the schemas of the plain views' bodies."""
    chat_id = {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.MAX_CHAT_ID_LENGTH,
        "pattern": f"^{CHAT_ID_RE.pattern}$",
    }
    return {
        "HistoryItem": {
            "type": "object",
            "description": "A message to prepend; Flowise's older {type, message} also works.",
            "properties": {
                "role": {"type": "string", "enum": ["apiMessage", "userMessage"]},
                "content": {"type": "string"},
                "type": {"type": "string", "enum": ["apiMessage", "userMessage"]},
                "message": {"type": "string"},
            },
            "anyOf": [{"required": ["role", "content"]}, {"required": ["type", "message"]}],
        },
        "PredictionRequest": {
            "type": "object",
            "required": ["question"],
            "properties": {
                "question": {
                    "type": "string",
                    "minLength": 1,
                    "description": f"At most MAX_QUESTION_LENGTH={settings.MAX_QUESTION_LENGTH} "
                    "characters (413 question_too_long above)",
                },
                "streaming": _bool_like() | {"description": "Stream SSE if the flow can stream"},
                "overrideConfig": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "Overrides of the node inputs the chatflow allows, sessionId, "
                    f"vars; at most MAX_OVERRIDE_DEPTH={settings.MAX_OVERRIDE_DEPTH} levels and "
                    f"MAX_OVERRIDE_KEYS={settings.MAX_OVERRIDE_KEYS} keys",
                },
                "history": {
                    "type": "array",
                    "items": _ref("HistoryItem"),
                    "description": f"At most MAX_HISTORY_MESSAGES={settings.MAX_HISTORY_MESSAGES}",
                },
                "chatId": chat_id,
                "uploads": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": True},
                    "description": "Not supported yet: any upload answers 400 "
                    f"uploads_not_supported (413 above MAX_UPLOADS={settings.MAX_UPLOADS})",
                },
            },
        },
        "PredictionForm": {
            "type": "object",
            "required": ["question"],
            "properties": {
                "question": {"type": "string", "minLength": 1},
                "streaming": {"type": "string", "enum": ["true", "false"]},
                "overrideConfig": {"type": "string", "description": "JSON object"},
                "history": {"type": "string", "description": "JSON list"},
                "chatId": chat_id,
            },
            "description": "Flowise's form upload; any file part answers 400 "
            "uploads_not_supported (413 above MAX_UPLOADS / MAX_UPLOAD_BYTES).",
        },
        "PredictionResponse": {
            "type": "object",
            "required": ["text", "question", "chatId", "chatMessageId", "sessionId"],
            "properties": {
                "text": {"type": "string"},
                "question": {"type": "string"},
                "chatId": {"type": "string"},
                "chatMessageId": {"type": "string", "format": "uuid"},
                "isStreamValid": {"type": "boolean"},
                "sessionId": {"type": "string"},
                "memoryType": {"type": "string"},
                "sourceDocuments": {"type": "array", "items": {}},
                "usedTools": {"type": "array", "items": {}},
                "followUpPrompts": {"type": "string", "description": "A JSON-encoded string"},
            },
            "additionalProperties": True,
        },
        "PredictionStatus": {
            "type": "object",
            "required": ["id", "chatflowid", "chatId", "sessionId", "status", "streaming"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "chatflowid": {"type": "string", "format": "uuid"},
                "chatId": {"type": "string"},
                "sessionId": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
                },
                "streaming": {"type": "boolean"},
                "result": {
                    "nullable": True,
                    "allOf": [_ref("PredictionResponse")],
                },
                "error": {
                    "type": "object",
                    "nullable": True,
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                },
                "attempts": {"type": "integer", "minimum": 0},
                "enqueuedAt": {"type": "string", "format": "date-time"},
                "startedAt": {"type": "string", "format": "date-time", "nullable": True},
                "finishedAt": {"type": "string", "format": "date-time", "nullable": True},
            },
        },
        "StopResult": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {
                "status": {"type": "integer", "enum": [200]},
                "message": {"type": "string"},
                "predictionStatus": {"type": "string"},
                "aborted": {"type": "integer", "minimum": 0},
            },
        },
        "Streaming": {
            "type": "object",
            "required": ["isStreaming"],
            "properties": {"isStreaming": {"type": "boolean"}},
        },
        "PublicChatbotConfig": {
            "type": "object",
            "description": "chatbotConfig's keys (title, welcomeMessage, colours…), never the flow",
            "required": ["uploads", "isTTSEnabled"],
            "properties": {
                "uploads": {"type": "object", "additionalProperties": True},
                "isTTSEnabled": {"type": "boolean"},
            },
            "additionalProperties": True,
        },
        "JobQueueMonitor": {
            "type": "object",
            "required": ["backend", "mode"],
            "properties": {
                "backend": {"type": "string", "enum": ["rq", "in-process"]},
                "mode": {"type": "string", "enum": ["main", "queue"]},
            },
            "additionalProperties": True,
        },
    }


def _operation(summary: str, tag: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": extra.pop("operation_id"), "summary": summary, "tags": [tag]} | {
        "responses": responses,
        **extra,
    }


def paths() -> dict[str, Any]:
    """Return the paths of the plain (non-DRF) views under /api/v1."""
    return {
        "/api/v1/ping": {
            "get": _operation(
                "Health: answers pong",
                "health",
                {
                    "200": {
                        "description": "pong",
                        "content": {"text/plain": {"schema": {"type": "string", "enum": ["pong"]}}},
                    },
                    **_errors(405),
                },
                operation_id="ping",
                security=[{}],
            )
        },
        "/api/v1/chatflows-streaming/{chatflow_id}": {
            "get": _operation(
                "Whether the chatflow streams (public; the SDKs ask before each prediction)",
                "public",
                {
                    "200": {"description": "OK", "content": _json(_ref("Streaming"))},
                    **_errors(404, 405),
                },
                operation_id="chatflows_streaming",
                parameters=[CHATFLOW_ID],
                security=[{}],
            )
        },
        "/api/v1/public-chatbotConfig/{chatflow_id}": {
            "get": _operation(
                "The chat window's settings for embedding (public; never the flow definition)",
                "public",
                {
                    "200": {"description": "OK", "content": _json(_ref("PublicChatbotConfig"))},
                    **_errors(404, 405),
                },
                operation_id="public_chatbot_config",
                parameters=[CHATFLOW_ID],
                security=[{}],
            )
        },
        "/api/v1/prediction/{chatflow_id}": {
            "post": {
                "operationId": "prediction_create",
                "summary": "Ask the chatflow: a JSON answer, or SSE with streaming=true",
                "description": "Open, or with `Authorization: Bearer <key>` when the chatflow "
                "has an API key. Rate limited by the chatflow's apiConfig.rateLimit, per client.",
                "tags": ["prediction"],
                "parameters": [CHATFLOW_ID],
                "security": _OPTIONAL_KEY,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("PredictionRequest")},
                        "multipart/form-data": {"schema": _ref("PredictionForm")},
                    },
                },
                "responses": {
                    "200": {
                        "description": "The answer (JSON), or its events (SSE) when streaming",
                        "content": {
                            **_json(_ref("PredictionResponse")),
                            **_SSE,
                        },
                    },
                    **_errors(400, 401, 403, 404, 405, 409, 413, 429, 500, 502, 503, 504),
                },
            }
        },
        "/api/v1/predictions/{prediction_id}": {
            "get": _operation(
                "A prediction's status and result",
                "prediction",
                {
                    "200": {"description": "OK", "content": _json(_ref("PredictionStatus"))},
                    **_errors(401, 403, 404, 405, 503),
                },
                operation_id="prediction_detail",
                parameters=[PREDICTION_ID],
                security=_OPTIONAL_KEY,
            )
        },
        "/api/v1/predictions/{prediction_id}/events": {
            "get": _operation(
                "A prediction's events as SSE, resumable with Last-Event-ID or after_seq",
                "prediction",
                {
                    "200": {"description": "SSE until `end`", "content": _SSE},
                    **_errors(400, 401, 403, 404, 405, 503),
                },
                operation_id="prediction_events",
                parameters=[
                    PREDICTION_ID,
                    {
                        "name": "after_seq",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                        "description": "Relay the events after this sequence number",
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                    },
                ],
                security=_OPTIONAL_KEY,
            )
        },
        "/api/v1/predictions/{prediction_id}/cancel": {
            "post": _operation(
                "Stop a prediction wherever it runs (a no-op once finished)",
                "prediction",
                {
                    "200": {"description": "OK", "content": _json(_ref("StopResult"))},
                    **_errors(401, 403, 404, 405, 503),
                },
                operation_id="prediction_cancel",
                parameters=[PREDICTION_ID],
                security=_OPTIONAL_KEY,
            )
        },
        "/api/v1/chatmessage/abort/{chatflow_id}/{chat_id}": {
            "put": _operation(
                "Stop what runs for a chat (the embed widget's stop button)",
                "prediction",
                {
                    "200": {"description": "OK", "content": _json(_ref("StopResult"))},
                    **_errors(401, 403, 404, 405, 503),
                },
                operation_id="chatmessage_abort",
                parameters=[CHATFLOW_ID, _path_param("chat_id", "The chat's id")],
                security=_OPTIONAL_KEY,
            )
        },
        "/api/v1/monitor/job_queue": {
            "get": _operation(
                "The job queue's state (superusers only)",
                "monitor",
                {
                    "200": {"description": "OK", "content": _json(_ref("JobQueueMonitor"))},
                    **_errors(403, 503),
                },
                operation_id="monitor_job_queue",
                security=[{"cookieAuth": []}],
            )
        },
    }


def add_plain_views(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the plain views' paths and components."""
    result.setdefault("paths", {}).update(paths())
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components())
    schemes = result["components"].setdefault("securitySchemes", {})
    schemes.setdefault("bearerAuth", {"type": "http", "scheme": "bearer"})
    schemes.setdefault(
        "cookieAuth", {"type": "apiKey", "in": "cookie", "name": settings.SESSION_COOKIE_NAME}
    )
    result["paths"] = dict(sorted(result["paths"].items()))
    return result
