"""App config for predictions: chatflows, predictions, chat messages and their API."""

from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    name = "predictions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from flowsite import checks  # noqa: F401  (registers the system checks)
        from flowsite.runtime import (
            remember_rq_serializers,
            skip_request_started_cleanup,
            speed_up_rq_timestamps,
        )

        skip_request_started_cleanup(debug=settings.DEBUG)
        remember_rq_serializers()
        speed_up_rq_timestamps()

        from django.db.models.signals import post_delete, post_save

        from predictions.models import Chatflow

        post_save.connect(_forget_chatflow, sender=Chatflow, dispatch_uid="chatflow-forget-save")
        post_delete.connect(
            _forget_chatflow, sender=Chatflow, dispatch_uid="chatflow-forget-delete"
        )


def _forget_chatflow(sender, instance, **kwargs) -> None:
    """A saved or deleted chatflow applies to this process's next prediction at once."""
    from predictions.selectors import chatflow_forget

    chatflow_forget(instance.pk)
