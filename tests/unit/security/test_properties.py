"""Property tests: the flowData parser refuses bad input cleanly; SSE frames round-trip."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictions.engine import NODE_TYPES, Flow, FlowValidationError, parse_flow
from predictions.streaming import Event, decode_event, encode_event, sse_frame

SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)

# --- the flowData parser -----------------------------------------------------------------------

node_ids = st.sampled_from(["a", "b", "c", "chatOfflineModel_0", ""]) | st.text(max_size=5)
node_types = st.sampled_from([*NODE_TYPES, "unknownNode"]) | json_scalars
references = node_ids.map(lambda node_id: "{{" + node_id + ".data.instance}}")
input_values = json_values | references | st.lists(references, max_size=3)
nodes = st.fixed_dictionaries(
    {"id": node_ids | json_scalars},
    optional={
        "data": st.fixed_dictionaries(
            {},
            optional={
                "name": node_types,
                "inputs": st.dictionaries(st.text(max_size=12), input_values, max_size=6)
                | json_values,
                "outputs": json_values,
            },
        )
        | json_values
    },
)
edges = st.fixed_dictionaries(
    {},
    optional={
        "source": node_ids,
        "target": node_ids,
        "sourceHandle": st.text(max_size=10),
        "targetHandle": st.text(max_size=10),
    },
)
flow_like = st.fixed_dictionaries(
    {},
    optional={
        "nodes": st.lists(nodes, max_size=5) | json_values,
        "edges": st.lists(edges | json_values, max_size=5) | json_values,
    },
)


def _parses_or_refuses(flow_data: Any) -> None:
    try:
        result: Flow | FlowValidationError = parse_flow(flow_data)
    except FlowValidationError as exc:
        result = exc
    if isinstance(result, FlowValidationError):
        assert result.code
        assert isinstance(result.message, str)
    else:
        assert isinstance(result, Flow)


@SETTINGS
@given(json_values)
def test_parse_flow_refuses_arbitrary_json_with_flow_validation_error(value):
    _parses_or_refuses(value)
    _parses_or_refuses(json.dumps(value))


@SETTINGS
@given(flow_like)
def test_parse_flow_refuses_flow_like_documents_with_flow_validation_error(value):
    _parses_or_refuses(json.dumps(value))


@SETTINGS
@given(st.text() | st.binary())
def test_parse_flow_refuses_arbitrary_text_with_flow_validation_error(text):
    _parses_or_refuses(text)


def test_parse_flow_refuses_json_nested_past_the_recursion_limit():
    _parses_or_refuses("[" * 5000 + "]" * 5000)


# --- SSE -----------------------------------------------------------------------------------------

events = st.builds(
    lambda seq, name, data: Event(seq=seq, event=name, data=data),
    st.integers(min_value=1, max_value=10**12),
    st.sampled_from(["start", "token", "metadata", "error", "abort", "end"]) | st.text(),
    json_values,
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def flowise_sdk_parse(chunks: list[bytes]) -> list[dict[str, Any]]:
    """Parse as Flowise's SDK does: decode, split lines on \\n, JSON.parse what follows `data:`."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, out = "", []
    for chunk in chunks:
        buffer += decoder.decode(chunk)
        *lines, buffer = buffer.split("\n")
        out.extend(json.loads(line[5:]) for line in lines if line.startswith("data:"))
    return out


def event_source_parse(chunks: list[bytes]) -> list[dict[str, Any]]:
    """Parse as the SSE spec (EventSource, fetch-event-source in Flowise's embed widget) does."""
    text = codecs.decode(b"".join(chunks), "utf-8")
    dispatched, data, last_id = [], [], None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if data:
                dispatched.append({"id": last_id, **json.loads("\n".join(data))})
            data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            last_id = value
    return dispatched


@SETTINGS
@given(st.lists(events, min_size=1, max_size=5), st.lists(st.integers(min_value=0), max_size=8))
def test_sse_frames_round_trip_through_flowise_client_parsers(batch, cuts):
    stream = b":heartbeat\n\n".join(sse_frame(event) for event in batch)
    expected = [{"event": e["event"], "data": e["data"]} for e in batch]

    assert flowise_sdk_parse(_chunks(stream, cuts)) == expected
    assert event_source_parse(_chunks(stream, cuts)) == [
        {"id": str(e["seq"]), **x} for e, x in zip(batch, expected, strict=True)
    ]


@SETTINGS
@given(events)
def test_an_sse_frame_holds_the_event_as_the_json_encoder_writes_it(event):
    payload = json.dumps(
        {"event": event["event"], "data": event["data"]}, ensure_ascii=False, separators=(",", ":")
    )
    payload = payload.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    payload = payload.replace("\x85", "\\u0085")
    assert sse_frame(event) == f"message:\ndata:{payload}\nid:{event['seq']}\n\n".encode()


@SETTINGS
@given(events)
def test_events_round_trip_through_the_redis_stream_encoding(event):
    assert decode_event(f"0-{event['seq']}", encode_event(event)) == event
    raw = {k.encode(): v.encode() for k, v in encode_event(event).items()}
    assert decode_event(f"0-{event['seq']}".encode(), raw) == event


@SETTINGS
@given(events, st.dictionaries(st.text(), json_values, max_size=4))
def test_a_successs_result_round_trips_through_the_redis_stream_encoding(event, result):
    event["result"] = result
    raw = {k.encode(): v.encode() for k, v in encode_event(event).items()}
    assert decode_event(f"0-{event['seq']}".encode(), raw) == event


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_sse_data_lines_survive_python_line_splitting(char):
    import httpx

    frame = sse_frame(Event(seq=1, event="token", data=f"a{char}b"))
    lines = list(httpx.Response(200, content=frame).iter_lines())
    data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert data == [{"event": "token", "data": f"a{char}b"}]
