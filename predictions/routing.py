"""WebSocket routes: the chat of one chatflow (asgi.py checks Origin against ALLOWED_HOSTS)."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from predictions.consumers import PredictionStreamConsumer

websocket_urlpatterns = [
    # Sessions give the consumer the logged-in user: staff may use non-public chatflows.
    path(
        "ws/chat/<str:chatflow_id>/",
        AuthMiddlewareStack(PredictionStreamConsumer.as_asgi()),
        name="chat-ws",
    ),
]
