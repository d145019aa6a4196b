"""App config for queueadmin: the queue dashboard inside Django admin."""

from django.apps import AppConfig


class QueueadminConfig(AppConfig):
    name = "queueadmin"
    verbose_name = "Queues"
