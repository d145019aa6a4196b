"""App config for predictions: chatflows, predictions, chat messages and their API."""

from django.apps import AppConfig


class PredictionsConfig(AppConfig):
    name = "predictions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from flowsite import checks  # noqa: F401  (registers the system checks)
        from flowsite.runtime import skip_request_started_cleanup

        skip_request_started_cleanup(debug=settings.DEBUG)
