"""The run's plain-SQL statements store and read exactly what the ORM would."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from predictions import runstore, services
from predictions.models import ChatMessage, ChatMessageRole, Prediction, PredictionStatus

pytestmark = pytest.mark.django_db


def _prediction(make_chatflow, chatflow=None) -> Prediction:
    return services.prediction_create(
        chatflow=chatflow or make_chatflow(),
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

    claim = runstore.prediction_claim(str(created.id), "worker-1")

    stored = Prediction.objects.get(id=created.id)
    assert claim is not None
    claimed, chatflow_stamp = claim
    assert chatflow_stamp is not None
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


def _common(prediction: Prediction, memory_type: str = "") -> dict:
    """The fields both chat messages of a prediction share."""
    return {
        "chatflow_id": prediction.chatflow_id,
        "prediction_id": prediction.id,
        "chat_id": "chat-1",
        "session_id": "session-1",
        "memory_type": memory_type,
    }


def test_messages_insert_and_history_round_trip(make_chatflow):
    created = _prediction(make_chatflow)
    now = timezone.now()
    common = _common(created, memory_type="Buffer Memory")
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


def test_the_claims_chatflow_stamp_changes_with_a_save(make_chatflow):
    chatflow = make_chatflow()
    before = _prediction(make_chatflow, chatflow)
    after = _prediction(make_chatflow, chatflow)

    _, stamp_before = runstore.prediction_claim(str(before.id), "worker-1")
    services.chatflow_update(chatflow=chatflow, name="renamed")
    _, stamp_after = runstore.prediction_claim(str(after.id), "worker-1")

    assert stamp_before is not None
    assert stamp_after != stamp_before


def _messages(prediction: Prediction, answer_id: uuid.UUID) -> list[ChatMessage]:
    now = timezone.now()
    common = _common(prediction)
    return [
        ChatMessage(role=ChatMessageRole.USER, content="hé \u2028 q", created_at=now, **common),
        ChatMessage(
            id=answer_id,
            role=ChatMessageRole.API,
            content="a",
            source_documents=[{"pageContent": "x", "metadata": {}}],
            created_at=now + timezone.timedelta(microseconds=1),
            **common,
        ),
    ]


def test_prediction_succeed_with_messages_writes_both_as_the_orm_would(make_chatflow):
    created = _prediction(make_chatflow)
    runstore.prediction_claim(str(created.id), "worker-1")
    answer_id = uuid.uuid4()
    messages = _messages(created, answer_id)

    assert runstore.prediction_succeed_with_messages(created.id, {"text": "a"}, messages)

    stored = Prediction.objects.get(id=created.id)
    assert (stored.status, stored.result) == (PredictionStatus.SUCCEEDED, {"text": "a"})
    answer = ChatMessage.objects.get(id=answer_id)
    assert answer.source_documents == [{"pageContent": "x", "metadata": {}}]
    assert answer.used_tools is None
    assert answer.created_at == messages[1].created_at
    assert runstore.history(created.chatflow_id, "session-1", 10) == [
        ("userMessage", "hé \u2028 q"),
        ("apiMessage", "a"),
    ]


def test_prediction_succeed_with_messages_of_a_stopped_one_writes_neither(make_chatflow):
    created = _prediction(make_chatflow)
    runstore.prediction_claim(str(created.id), "worker-1")
    Prediction.objects.filter(id=created.id).update(status=PredictionStatus.CANCELLED)

    written = runstore.prediction_succeed_with_messages(
        created.id, {"text": "a"}, _messages(created, uuid.uuid4())
    )

    assert written is False
    assert Prediction.objects.get(id=created.id).status == PredictionStatus.CANCELLED
    assert not ChatMessage.objects.filter(prediction_id=created.id).exists()


def test_prediction_insert_stores_what_the_orm_would(make_chatflow):
    chatflow = make_chatflow()
    prediction = Prediction(
        chatflow=chatflow,
        chat_id="chat-1",
        session_id="session-1",
        streaming=True,
        request={"question": "hé \u2028", "overrideConfig": {}, "history": []},
    )

    stored = runstore.prediction_insert(prediction)

    read = Prediction.objects.get(id=prediction.id)
    assert stored is prediction
    assert not prediction._state.adding
    for field in Prediction._meta.concrete_fields:
        assert getattr(read, field.attname) == getattr(prediction, field.attname), field.name
    assert read.status == PredictionStatus.QUEUED
    assert read.enqueued_at is not None
