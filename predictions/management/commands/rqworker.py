"""django-rq's rqworker, defaulting to QUEUE_NAME so the bare command serves Flowsite's queue."""

from django.conf import settings
from django_rq.management.commands.rqworker import Command as DjangoRqWorkerCommand

from flowsite.runtime import tune_gc

# django-rq sets rq's log level from --verbosity (INFO unless -v0), not from LOG_LEVEL: the bare
# command (verbosity 1) follows LOG_LEVEL instead, so LOG_LEVEL=warning drops rq's lines per job.
_VERBOSITY_OF_LEVEL = {"DEBUG": 2, "INFO": 1, "WARNING": 0, "ERROR": 0}


class Command(DjangoRqWorkerCommand):
    help = "Run a Flowsite worker (ConcurrentWorker) on QUEUE_NAME, or on the queues given."

    def handle(self, *args, **options):
        if settings.MODE != "queue":
            self.stderr.write(
                self.style.WARNING("MODE is not 'queue': web processes will not enqueue anything.")
            )
        tune_gc()
        if options.get("verbosity", 1) == 1:
            options["verbosity"] = _VERBOSITY_OF_LEVEL.get(settings.LOG_LEVEL, 1)
        return super().handle(*(args or (settings.QUEUE_NAME,)), **options)
