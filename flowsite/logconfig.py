"""Build the LOGGING dict from LOG_LEVEL and LOG_FORMAT: one stdout handler, text or JSON."""

from __future__ import annotations

import json
import logging
from typing import Any


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def build_logging(*, level: str, fmt: str) -> dict[str, Any]:
    """Return a dictConfig for the flowsite, predictions, queueadmin, rq and django loggers."""
    formatter = (
        {"()": "flowsite.logconfig.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"}
    )
    logger = {"handlers": ["stdout"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {
            name: dict(logger)
            for name in ("flowsite", "predictions", "queueadmin", "rq.worker", "django")
        },
        "root": {"handlers": ["stdout"], "level": "WARNING"},
    }
