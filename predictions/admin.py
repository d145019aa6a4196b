"""Read-mostly admin pages for chatflows, predictions, chat messages and API keys."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Q
from django.utils import timezone

from predictions import secrets, services
from predictions.engine import EngineError
from predictions.exceptions import PredictionError
from predictions.models import ApiKey, Chatflow, ChatMessage, Prediction
from predictions.secrets import mask_secrets


class ChatflowAdminForm(forms.ModelForm):
    """Shows flowData with its secrets masked; a mask left in place keeps the stored secret."""

    class Meta:
        model = Chatflow
        fields = (
            "name",
            "flow_data",
            "deployed",
            "is_public",
            "api_key",
            "chatbot_config",
            "api_config",
        )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and "flow_data" in self.fields:
            self.initial["flow_data"] = secrets.flow_data_mask(self.instance.flow_data)
        if "api_key" in self.fields:
            # Active keys, and the current one even if revoked (so other fields can be saved).
            self.fields["api_key"].queryset = ApiKey.objects.filter(
                Q(revoked_at__isnull=True) | Q(pk=self.instance.api_key_id)
            )

    def clean(self):
        cleaned = super().clean()
        for name in ("chatbot_config", "api_config"):
            if name in cleaned and not isinstance(cleaned[name], dict):
                self.add_error(name, "Must be a JSON object, e.g. {}")
        if "flow_data" in cleaned and not self.errors:
            stored = None
            if self.instance.pk:
                stored = (
                    Chatflow.objects.filter(pk=self.instance.pk)
                    .values_list("flow_data", flat=True)
                    .first()
                )
            try:
                services.chatflow_validate(
                    flow_data=cleaned["flow_data"],
                    api_config=cleaned.get("api_config"),
                    stored=stored,
                )
            except (EngineError, PredictionError) as exc:
                raise forms.ValidationError(exc.message) from exc
        return cleaned


@admin.register(Chatflow)
class ChatflowAdmin(admin.ModelAdmin):
    form = ChatflowAdminForm
    list_display = ("name", "id", "is_streaming", "is_public", "deployed", "api_key", "updated_at")
    search_fields = ("name", "id")
    readonly_fields = ("id", "is_streaming", "created_at", "updated_at")

    def save_model(self, request, obj, form, change):
        fields = {name: getattr(obj, name) for name in form.changed_data}
        if change:
            # The row as stored: masked secrets in the form stand for its values.
            stored = Chatflow.objects.get(pk=obj.pk)
            updated = services.chatflow_update(chatflow=stored, **fields)
            obj.flow_data, obj.is_streaming = updated.flow_data, updated.is_streaming
            obj.updated_at = updated.updated_at
        else:
            created = services.chatflow_create(
                name=obj.name,
                flow_data=obj.flow_data,
                deployed=obj.deployed,
                is_public=obj.is_public,
                chatbot_config=obj.chatbot_config,
                api_config=obj.api_config,
                api_key=obj.api_key,
            )
            obj.pk = created.pk


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "chatflow",
        "status",
        "error_code",
        "streaming",
        "attempts",
        "worker_name",
        "enqueued_at",
        "finished_at",
    )
    list_filter = ("status", "error_code", "streaming")
    search_fields = ("id", "chat_id", "session_id")
    readonly_fields = [f.name for f in Prediction._meta.fields if f.name != "request"] + [
        "masked_request"
    ]
    exclude = ("request",)

    @admin.display(description="request (secrets masked)")
    def masked_request(self, obj: Prediction):
        return mask_secrets(obj.request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ChatMessage)
class ChatMessageAdmin(admin.ModelAdmin):
    list_display = ("created_at", "chatflow", "chat_id", "role", "short_content")
    list_filter = ("role",)
    search_fields = ("chat_id", "session_id")

    @admin.display(description="content")
    def short_content(self, obj: ChatMessage) -> str:
        return obj.content[:80]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "can_manage", "created_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "can_manage")
    search_fields = ("name", "prefix")
    # Revoking is one-way (the revoke action); a revoked key is never brought back.
    readonly_fields = ("prefix", "created_at", "revoked_at")
    fields = ("name", "can_manage", "prefix", "created_at", "revoked_at")
    actions = ["revoke_keys"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        raw = ApiKey.generate()
        obj.set_key(raw)
        super().save_model(request, obj, form, change)
        messages.warning(request, f"API key created — copy it now, it is shown only once: {raw}")

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            services.apikey_revoke(key=key)
            self.log_change(request, key, f"Revoked at {timezone.now().isoformat()}")
            revoked += 1
        self.message_user(request, f"{revoked} API key(s) revoked.", messages.SUCCESS)
