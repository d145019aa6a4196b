"""REST routes under /api/v1/ (Flowise's paths)."""

from django.urls import path

from predictions.api import apikeys, chatflows, predict
from queueadmin import api as queueadmin_api

app_name = "predictions"

# Also a direct route (flowsite.urls.direct_urlpatterns).
prediction_route = path("prediction/<str:chatflow_id>", predict.prediction_create, name="create")

urlpatterns = [
    path("ping", chatflows.ping, name="ping"),
    path("chatflows", chatflows.ChatflowListApi.as_view(), name="chatflow-list"),
    path(
        "chatflows/<str:chatflow_id>", chatflows.ChatflowDetailApi.as_view(), name="chatflow-detail"
    ),
    path(
        "chatflows-streaming/<str:chatflow_id>",
        chatflows.chatflow_streaming,
        name="chatflow-streaming",
    ),
    path(
        "public-chatbotConfig/<str:chatflow_id>",
        chatflows.public_chatbot_config,
        name="public-chatbot-config",
    ),
    prediction_route,
    path("predictions/<str:prediction_id>", predict.prediction_detail, name="detail"),
    path("predictions/<str:prediction_id>/events", predict.prediction_events, name="events"),
    path("predictions/<str:prediction_id>/cancel", predict.prediction_cancel, name="cancel"),
    path(
        "chatmessage/abort/<str:chatflow_id>/<str:chat_id>", predict.chatmessage_abort, name="abort"
    ),
    path(
        "chatmessage/<str:chatflow_id>",
        chatflows.ChatMessageListApi.as_view(),
        name="chatmessage-list",
    ),
    path("monitor/job_queue", queueadmin_api.monitor_job_queue, name="monitor-job-queue"),
    path("apikey", apikeys.ApiKeyListApi.as_view(), name="apikey-list"),
    path("apikey/<str:apikey_id>", apikeys.ApiKeyDetailApi.as_view(), name="apikey-detail"),
]
