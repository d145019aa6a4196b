"""flowsite.runtime.remember_rq_serializers: rq's serializer checked once per serializer."""

from __future__ import annotations

import sys
import types

import pytest
import rq.job
import rq.queue
import rq.registry
import rq.results
import rq.worker.base
from rq import serializers
from rq.serializers import DefaultSerializer, JSONSerializer

from flowsite.runtime import remember_rq_serializers


def test_every_loaded_rq_module_resolves_through_the_remembering_function():
    resolve = serializers.resolve_serializer

    assert resolve.remembers  # installed when the app loaded
    for module in (rq.job, rq.queue, rq.registry, rq.results, rq.worker.base):
        assert module.resolve_serializer is resolve


class Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def dumps(self, value):
        return JSONSerializer.dumps(value)

    def loads(self, value):
        return JSONSerializer.loads(value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, DefaultSerializer),
        (JSONSerializer, JSONSerializer),
        ("rq.serializers.JSONSerializer", JSONSerializer),
    ],
)
def test_it_answers_what_rq_answers(given, expected):
    resolve = serializers.resolve_serializer

    assert resolve(given) is expected
    assert resolve(given) is expected  # remembered


def test_an_unhashable_serializer_is_resolved_every_time():
    serializer = Unhashable()

    assert serializers.resolve_serializer(serializer) is serializer


def test_a_serializer_rq_refuses_is_refused_every_time():
    for _ in range(2):
        with pytest.raises(NotImplementedError):
            serializers.resolve_serializer(object())


def test_the_check_runs_once_per_serializer_and_modules_get_the_replacement(monkeypatch):
    checked: list[object] = []

    def resolve_serializer(serializer=None):
        checked.append(serializer)
        return serializer or DefaultSerializer

    user = types.ModuleType("rq.user_of_serializers")
    user.resolve_serializer = resolve_serializer
    other = types.ModuleType("unrelated")
    other.resolve_serializer = resolve_serializer
    monkeypatch.setattr(serializers, "resolve_serializer", resolve_serializer)
    monkeypatch.setitem(sys.modules, user.__name__, user)
    monkeypatch.setitem(sys.modules, other.__name__, other)

    remember_rq_serializers()
    remember_rq_serializers()  # once is enough: not wrapped twice

    remembering = serializers.resolve_serializer
    assert user.resolve_serializer is remembering
    assert other.resolve_serializer is resolve_serializer  # not rq's: left alone
    for _ in range(3):
        assert remembering(JSONSerializer) is JSONSerializer
        assert remembering(None) is DefaultSerializer
    assert checked == [JSONSerializer, None, None, None]
