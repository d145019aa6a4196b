"""django-rq's rqworker, defaulting to QUEUE_NAME so the bare command serves Flowsite's queue."""

from django.conf import settings
from django_rq.management.commands.rqworker import Command as DjangoRqWorkerCommand


class Command(DjangoRqWorkerCommand):
    help = "Run a Flowsite worker (ConcurrentWorker) on QUEUE_NAME, or on the queues given."

    def handle(self, *args, **options):
        if settings.MODE != "queue":
            self.stderr.write(
                self.style.WARNING("MODE is not 'queue': web processes will not enqueue anything.")
            )
        return super().handle(*(args or (settings.QUEUE_NAME,)), **options)
