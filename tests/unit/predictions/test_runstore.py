"""The run's plain-SQL statements store and read exactly what the ORM would."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from predictions import runstore, services
from predictions.models import ChatMessage, ChatMessageRole, Prediction, PredictionStatus

pytestmark = pytest.mark.django_db


def _prediction(make_chatflow) -> Prediction:
    return services.prediction_create(
        chatflow=make_chatflow(),
        request=services.PredictionRequest(
            question='hé \u2028 "quoted"',
            chat_id="chat-1",
            session_id="session-1",
            streaming=True,
            override_config={"temperature": 0.2},
            history=[{"role": "userMessage", "content": "before"}],
        ),
    )


def test_prediction_claim_returns_the_row_as_the_orm_reads_it(make_chatflow):
    created = _prediction(make_chatflow)

    claimed = runstore.prediction_claim(str(created.id), "worker-1")

    stored = Prediction.objects.get(id=created.id)
    assert claimed is not None
    for field in Prediction._meta.concrete_fields:
        assert getattr(claimed, field.attname) == getattr(stored, field.attname), field.name
    assert stored.status == PredictionStatus.RUNNING
    assert stored.attempts == 1
    assert stored.worker_name == "worker-1"
    assert stored.started_at is not None
    assert claimed.request["question"] == 'hé \u2028 "quoted"'


def test_prediction_claim_of_a_finished_prediction_is_none(make_chatflow):
    created = _prediction(make_chatflow)
    Prediction.objects.filter(id=created.id).update(status=PredictionStatus.CANCELLED)

    assert runstore.prediction_claim(str(created.id), "worker-1") is None
    assert Prediction.objects.get(id=created.id).attempts == 0


def test_prediction_succeed_only_a_running_one(make_chatflow):
    created = _prediction(make_chatflow)
    result = {"text": "ünïcode", "nested": {"list": [1, 2.5, None, True]}}

    assert runstore.prediction_succeed(created.id, result) is False  # still queued
    runstore.prediction_claim(str(created.id), "worker-1")
    assert runstore.prediction_succeed(created.id, result) is True

    stored = Prediction.objects.get(id=created.id)
    assert stored.status == PredictionStatus.SUCCEEDED
    assert stored.result == result
    assert stored.finished_at is not None


def test_messages_insert_and_history_round_trip(make_chatflow):
    created = _prediction(make_chatflow)
    now = timezone.now()
    common = {
        "chatflow_id": created.chatflow_id,
        "prediction_id": created.id,
        "chat_id": "chat-1",
        "session_id": "session-1",
        "memory_type": "Buffer Memory",
    }
    answer_id = uuid.uuid4()
    runstore.messages_insert(
        [
            ChatMessage(role=ChatMessageRole.USER, content="q", created_at=now, **common),
            ChatMessage(
                id=answer_id,
                role=ChatMessageRole.API,
                content="a",
                used_tools=[{"tool": "x"}],
                created_at=now + timezone.timedelta(microseconds=1),
                **common,
            ),
        ]
    )

    answer = ChatMessage.objects.get(id=answer_id)
    assert answer.used_tools == [{"tool": "x"}]
    assert answer.source_documents is None
    assert answer.created_at == now + timezone.timedelta(microseconds=1)
    assert runstore.history(created.chatflow_id, "session-1", 10) == [
        ("userMessage", "q"),
        ("apiMessage", "a"),
    ]
    assert runstore.history(created.chatflow_id, "session-1", 1) == [("apiMessage", "a")]
    assert runstore.history(created.chatflow_id, "other", 10) == []


def test_chatflow_stamp_changes_with_a_save_and_is_none_when_gone(make_chatflow):
    chatflow = make_chatflow()
    chatflow_id = chatflow.id
    before = runstore.chatflow_stamp(chatflow_id)

    services.chatflow_update(chatflow=chatflow, name="renamed")
    after = runstore.chatflow_stamp(chatflow_id)
    chatflow.delete()

    assert before is not None
    assert after != before
    assert runstore.chatflow_stamp(chatflow_id) is None
