"""Read the worker's Django settings lazily; plain-rq defaults when Django isn't configured."""

from __future__ import annotations

import os
from typing import Any


def django_configured() -> bool:
    """Whether Django settings are (or can be) loaded in this process."""
    try:
        from django.conf import settings
    except ImportError:
        return False
    return settings.configured or bool(os.environ.get("DJANGO_SETTINGS_MODULE"))


def setting(name: str, default: Any) -> Any:
    """Return a Django setting, or `default` when the worker runs without Django."""
    if not django_configured():
        return default
    from django.conf import settings

    return getattr(settings, name, default)


async def close_http_client() -> None:
    """Close the loop's model HTTP session (predictions' jobs open it), before the loop closes."""
    if django_configured():
        from predictions.clients import aclose_http_client

        await aclose_http_client()


def close_django_connections() -> None:
    """Drop this thread's stale database connections, as Django does at the end of a request."""
    if django_configured():
        from django.db import close_old_connections

        close_old_connections()
