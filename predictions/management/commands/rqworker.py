"""django-rq's rqworker, defaulting to QUEUE_NAME so the bare command serves Flowsite's queue."""

from django.conf import settings
from django.db import connection
from django_rq.management.commands.rqworker import Command as DjangoRqWorkerCommand

from flowsite.runtime import tune_gc
from predictions import dbthreads

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
        dbthreads.start(database_threads())
        try:
            return super().handle(*(args or (settings.QUEUE_NAME,)), **options)
        finally:
            dbthreads.stop()


def database_threads() -> int:
    """WORKER_DATABASE_THREADS, leaving two pooled connections for the rest (one on SQLite)."""
    if connection.vendor == "sqlite":
        return 1
    threads = settings.WORKER_DATABASE_THREADS
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if isinstance(pool, dict) and pool.get("max_size"):
        threads = min(threads, max(1, pool["max_size"] - 2))
    return threads
