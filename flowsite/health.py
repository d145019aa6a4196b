"""Web liveness and readiness: /healthz (the process answers), /readyz (database, Redis)."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

CHECK_TIMEOUT = 3.0


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", "mode": settings.MODE})


def _database_ok() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when the database (and in queue mode Redis) answer, else 503 with reasons."""
    reasons: list[str] = []
    try:
        await asyncio.wait_for(sync_to_async(_database_ok)(), CHECK_TIMEOUT)
    except Exception as exc:
        reasons.append(f"database: {type(exc).__name__}: {exc}")
    if settings.MODE == "queue":
        from predictions.clients import get_async_redis

        try:
            await asyncio.wait_for(get_async_redis().ping(), CHECK_TIMEOUT)
        except Exception as exc:
            reasons.append(f"redis: {type(exc).__name__}: {exc}")
    if reasons:
        return JsonResponse({"status": "not_ready", "reasons": reasons}, status=503)
    return JsonResponse({"status": "ready", "mode": settings.MODE})
