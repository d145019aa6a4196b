"""Queue dashboard fixtures: the dashboard switched on, users with and without its permission,
predictions made through the real services, and a Redis round-trip counter."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission
from django.test import Client

from predictions import services
from predictions.models import Prediction
from tests.integration.predictions.conftest import rq_queue, worker

__all__ = ["rq_queue", "worker"]


@pytest.fixture(autouse=True)
def _dashboard_on(settings) -> None:
    settings.ENABLE_QUEUE_DASHBOARD = True


def _client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def admin_user_client(django_user_model) -> Client:
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    return _client_for(user)


@pytest.fixture
def viewer_client(django_user_model) -> Client:
    """A staff user holding only `queueadmin.view_dashboard`."""
    user = django_user_model.objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    return _client_for(user)


@pytest.fixture
def staff_client(staff_user) -> Client:
    """A staff user without the dashboard permission."""
    return _client_for(staff_user)


def predict(chatflow, question: str = "hello", **request: Any) -> Prediction:
    """Create a prediction through the service (queue mode enqueues it on commit)."""
    fields = {
        "question": question,
        "chat_id": "chat-1",
        "session_id": "chat-1",
        "streaming": False,
        "override_config": {},
        "history": [],
    }
    fields.update(request)
    return services.prediction_create(
        chatflow=chatflow, request=services.PredictionRequest(**fields)
    )


def wait_for(predicate: Callable[[], Any], what: str, limit: float = 15) -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_for_status(prediction_id: Any, *statuses: str, limit: float = 15) -> Prediction:
    def done() -> Prediction | None:
        prediction = Prediction.objects.get(id=prediction_id)
        return prediction if prediction.status in statuses else None

    return wait_for(done, f"prediction {prediction_id} to be {statuses}", limit)


def wait_for_job(connection, job_id: Any, status: str, limit: float = 15) -> None:
    """Wait until rq recorded the job's outcome (it does so after the prediction's own)."""
    from rq.job import Job

    def recorded() -> bool:
        value = connection.hget(Job.key_for(str(job_id)), "status")
        return value is not None and value.decode() == status

    wait_for(recorded, f"rq job {job_id} to be {status}", limit)


@dataclass
class RoundTrips:
    """Counts Redis round trips: one per command sent alone, one per pipeline executed."""

    count: int = 0
    commands: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.count = 0
        self.commands.clear()


@pytest.fixture
def round_trips(monkeypatch) -> RoundTrips:
    counter = RoundTrips()
    single = redis.Redis.execute_command
    pipelined = redis.client.Pipeline.execute

    def execute_command(self, *args: Any, **options: Any) -> Any:
        counter.count += 1
        counter.commands.append(str(args[0]))
        return single(self, *args, **options)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.command_stack:
            counter.count += 1
            counter.commands.append(f"pipeline[{len(self.command_stack)}]")
        return pipelined(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    return counter
