"""ASGI entry point: HTTP to Django, WebSocket to the chat consumers."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "flowsite.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application

from flowsite.handler import PooledThreadsASGIHandler  # noqa: E402

django_asgi_app = PooledThreadsASGIHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from flowsite.runtime import (  # noqa: E402
    send_twisted_writes_at_once,
    skip_twisted_form_parsing,
    tune_gc,
)
from predictions.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
    }
)

skip_twisted_form_parsing()
send_twisted_writes_at_once()
tune_gc()
