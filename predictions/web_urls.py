"""Routes of the browser pages: the start page and the chat page per chatflow."""

from pathlib import Path

from django.urls import path
from django.views.static import serve

from predictions import views

app_name = "chat"

# The chat page's own CSS and JS, served by the app itself so the page works under a bare
# ASGI server (daphne) as well as under runserver, whose static handler answers first.
STATIC_DIR = Path(__file__).resolve().parent / "static" / "predictions"

urlpatterns = [
    path("", views.index, name="index"),
    path("chat/<str:chatflow_id>/", views.chat, name="chat"),
    path("chat/<str:chatflow_id>/history", views.chat_history, name="history"),
    path(
        "static/predictions/<path:path>",
        serve,
        {"document_root": STATIC_DIR},
        name="static",
    ),
]
