"""The prediction input's fast path agrees with PredictionInputSerializer, or steps aside."""

from __future__ import annotations

import pytest

from predictions.api.predict import PredictionInputSerializer, _simple_input

TAKEN = [
    {"question": "hi"},
    {"question": "  spaced  ", "streaming": True},
    {"question": "héllo ✓ \u2028", "streaming": False, "chatId": "chat-1_a.b:c@d+e=f~g|h"},
    {"question": "q", "overrideConfig": {}, "history": [], "uploads": []},
    {"question": "q", "unknownKey": {"ignored": True}},
]

LEFT_TO_THE_SERIALIZER = [
    {},
    {"question": ""},
    {"question": 3},
    {"question": None},
    {"question": "nul\x00"},
    {"question": "lone \ud800 surrogate"},
    {"question": "x" * 40_000},
    {"question": "q", "streaming": "true"},
    {"question": "q", "streaming": None},
    {"question": "q", "chatId": ""},
    {"question": "q", "chatId": " padded "},
    {"question": "q", "chatId": "has space"},
    {"question": "q", "chatId": 7},
    {"question": "q", "chatId": "x" * 300},
    {"question": "q", "overrideConfig": {"temperature": 0.1}},
    {"question": "q", "history": [{"role": "userMessage", "content": "a"}]},
    {"question": "q", "uploads": [{"type": "file"}]},
    {"question": "q", "overrideConfig": None},
]


@pytest.mark.parametrize("data", TAKEN)
def test_simple_input_equals_the_serializer(data, settings):
    serializer = PredictionInputSerializer(data=data)
    assert serializer.is_valid(), serializer.errors

    assert _simple_input(data) == dict(serializer.validated_data)


@pytest.mark.parametrize("data", LEFT_TO_THE_SERIALIZER)
def test_anything_else_is_left_to_the_serializer(data, settings):
    settings.MAX_QUESTION_LENGTH = 32_000

    assert _simple_input(data) is None
