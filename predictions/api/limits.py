"""Limits on what a request carries: JSON nesting, overrideConfig size, chat ids, uploads.

Each refusal is a 4xx in the API error shape whose message names the variable that sets the
limit (README "Configuration").
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from predictions.exceptions import BadRequest, PayloadTooLarge

# Management documents (flowData, chatbotConfig, apiConfig) are far shallower than this.
MAX_JSON_DEPTH = 64
# Letters, digits and - _ . : @ + = ~ | (no spaces, slashes or control characters).
CHAT_ID_RE = re.compile(r"[A-Za-z0-9_.:@+=~|-]+")
CHAT_ID_CHARSET = "letters, digits and - _ . : @ + = ~ |"


def json_shape(value: Any) -> tuple[int, int]:
    """Return (depth, entries) of a JSON value without recursion.

    Depth counts nested objects and lists (a scalar is 0, {} is 1); entries counts object keys
    and list items at every level.
    """
    depth = entries = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        level += 1
        depth = max(depth, level)
        for child in children:
            entries += 1
            stack.append((child, level))
    return depth, entries


def check_depth(value: Any, field: str, limit: int = MAX_JSON_DEPTH) -> None:
    depth, _ = json_shape(value)
    if depth > limit:
        raise BadRequest(f"{field} is nested {depth} levels deep; the limit is {limit}")


def check_override_config(value: Any) -> None:
    """Refuse an overrideConfig deeper than MAX_OVERRIDE_DEPTH or bigger than MAX_OVERRIDE_KEYS."""
    depth, entries = json_shape(value)
    if depth > settings.MAX_OVERRIDE_DEPTH:
        raise BadRequest(
            f"overrideConfig is nested {depth} levels deep; the limit is "
            f"MAX_OVERRIDE_DEPTH={settings.MAX_OVERRIDE_DEPTH}",
            code="override_config_too_deep",
        )
    if entries > settings.MAX_OVERRIDE_KEYS:
        raise PayloadTooLarge(
            f"overrideConfig has {entries} keys and items; the limit is "
            f"MAX_OVERRIDE_KEYS={settings.MAX_OVERRIDE_KEYS}",
            code="override_config_too_large",
        )


def check_chat_id(value: Any, field: str) -> str:
    """Return a valid chatId / sessionId, or raise 400 invalid_chat_id."""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string", code="invalid_chat_id")
    if len(value) > settings.MAX_CHAT_ID_LENGTH:
        raise BadRequest(
            f"{field} is {len(value)} characters; the limit is "
            f"MAX_CHAT_ID_LENGTH={settings.MAX_CHAT_ID_LENGTH}",
            code="invalid_chat_id",
        )
    if not CHAT_ID_RE.fullmatch(value):
        raise BadRequest(f"{field} may only contain {CHAT_ID_CHARSET}", code="invalid_chat_id")
    return value


def _upload_size(upload: Any) -> int:
    """Return the size of an upload: its declared size, or the length of its data."""
    size = getattr(upload, "size", None)
    if isinstance(size, int):
        return size
    if isinstance(upload, dict):
        data = upload.get("data")
        if isinstance(data, str):
            return len(data)
        return len(json.dumps(upload, default=str))
    return len(str(upload))


def check_uploads(uploads: list[Any]) -> None:
    """Refuse uploads: too many (413), one too large (413), otherwise not supported (400)."""
    if not uploads:
        return
    if len(uploads) > settings.MAX_UPLOADS:
        raise PayloadTooLarge(
            f"{len(uploads)} uploads; the limit is MAX_UPLOADS={settings.MAX_UPLOADS}",
            code="too_many_uploads",
        )
    for upload in uploads:
        size = _upload_size(upload)
        if size > settings.MAX_UPLOAD_BYTES:
            raise PayloadTooLarge(
                f"an upload is {size} bytes; the limit is "
                f"MAX_UPLOAD_BYTES={settings.MAX_UPLOAD_BYTES}",
                code="upload_too_large",
            )
    raise BadRequest("uploads are not supported yet", code="uploads_not_supported")


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into text."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A BooleanField that takes JSON true/false only (management inputs, as Flowise's UI)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class LimitedJSONParser(JSONParser):
    """DRF's JSON parser with MAX_REQUEST_BODY_BYTES (413) and a nesting limit (400, not 500).

    DRF reads the request stream itself, past Django's DATA_UPLOAD_MAX_MEMORY_SIZE check.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.MAX_REQUEST_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise PayloadTooLarge(
                f"request body over MAX_REQUEST_BODY_BYTES={limit}", code="body_too_large"
            )
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
        depth, _ = json_shape(data)
        if depth > MAX_JSON_DEPTH:
            raise ParseError(f"JSON nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}")
        return data
