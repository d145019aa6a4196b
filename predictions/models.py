"""Chatflow, Prediction, ChatMessage and ApiKey, with status rules and state filters."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from django.db import models
from django.utils import timezone

API_KEY_PREFIX = "fs_"


def hash_api_key(raw: str) -> str:
    """Return the stored form of an API key (keys are 256-bit random, so one SHA-256 suffices)."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A bearer key: guards chatflow predictions or, with can_manage, the management API."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=16, editable=False, help_text="First characters, to tell keys apart."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    can_manage = models.BooleanField(
        default=False, help_text="May call the management API (chatflows, chat history)."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def generate() -> str:
        return API_KEY_PREFIX + secrets.token_urlsafe(32)

    def set_key(self, raw: str) -> None:
        self.prefix = raw[:10]
        self.key_hash = hash_api_key(raw)

    def matches(self, raw: str) -> bool:
        return self.revoked_at is None and secrets.compare_digest(self.key_hash, hash_api_key(raw))


class Chatflow(models.Model):
    """A flow graph in Flowise's export shape, with its public settings."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255)
    flow_data = models.TextField(help_text="Flowise's flowData: a JSON string of nodes and edges.")
    deployed = models.BooleanField(default=False)
    is_public = models.BooleanField(default=False)
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="chatflows"
    )
    chatbot_config = models.JSONField(default=dict, blank=True)
    api_config = models.JSONField(default=dict, blank=True)
    is_streaming = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def version(self) -> str:
        """Return a key that changes whenever the flow definition changes (for caches)."""
        return f"{self.id}:{self.updated_at.timestamp() if self.updated_at else 0}"

    def allowed_origins(self) -> list[str]:
        origins = self.chatbot_config.get("allowedOrigins") or []
        return [o.rstrip("/") for o in origins if isinstance(o, str) and o.strip()]


class PredictionStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = (
    PredictionStatus.SUCCEEDED,
    PredictionStatus.FAILED,
    PredictionStatus.CANCELLED,
)
ACTIVE_STATUSES = (PredictionStatus.QUEUED, PredictionStatus.RUNNING)


class PredictionQuerySet(models.QuerySet):
    def active(self) -> PredictionQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def running(self) -> PredictionQuerySet:
        return self.filter(status=PredictionStatus.RUNNING)

    def queued(self) -> PredictionQuerySet:
        return self.filter(status=PredictionStatus.QUEUED)


class Prediction(models.Model):
    """The durable record of one prediction; Redis holds only its id and events."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chatflow = models.ForeignKey(Chatflow, on_delete=models.CASCADE, related_name="predictions")
    chat_id = models.CharField(max_length=255)
    session_id = models.CharField(max_length=255)
    request = models.JSONField(
        default=dict, help_text="question, overrideConfig, history, streaming"
    )
    streaming = models.BooleanField(default=False)
    status = models.CharField(
        max_length=16, choices=PredictionStatus.choices, default=PredictionStatus.QUEUED
    )
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    worker_name = models.CharField(max_length=255, blank=True)
    chat_message_id = models.UUIDField(default=uuid.uuid4, editable=False)
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = PredictionQuerySet.as_manager()

    class Meta:
        ordering = ["-enqueued_at"]
        indexes = [
            models.Index(fields=["chatflow", "chat_id", "status"]),
            models.Index(fields=["status", "enqueued_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def question(self) -> str:
        return str(self.request.get("question", ""))

    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def can_cancel(self) -> bool:
        return self.status in ACTIVE_STATUSES


class ChatMessageRole(models.TextChoices):
    USER = "userMessage"
    API = "apiMessage"


class ChatMessage(models.Model):
    """One message of a conversation, written only when a prediction completes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chatflow = models.ForeignKey(Chatflow, on_delete=models.CASCADE, related_name="messages")
    prediction = models.ForeignKey(
        Prediction, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages"
    )
    chat_id = models.CharField(max_length=255)
    session_id = models.CharField(max_length=255)
    role = models.CharField(max_length=16, choices=ChatMessageRole.choices)
    content = models.TextField()
    memory_type = models.CharField(max_length=64, blank=True)
    source_documents = models.JSONField(null=True, blank=True)
    used_tools = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["chatflow", "session_id", "created_at"]),
            models.Index(fields=["chatflow", "chat_id", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"
