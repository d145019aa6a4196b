"""Group names, stream keys and the SSE frame format: the one definition of the wire format."""

from __future__ import annotations

import json
from typing import Any, NotRequired, TypedDict

STREAM_KEY_PREFIX = "flowsite:events:"
CANCEL_KEY_PREFIX = "flowsite:cancel:"
CHANNEL_EVENT_TYPE = "prediction.event"

TERMINAL_EVENT = "end"
DONE = "[DONE]"


class Event(TypedDict):
    seq: int
    event: str
    data: Any
    # On the `end` of a success, live and in the stream: the stored result, so that the web
    # process waiting for a non-streaming answer need not read it back (also when it joined too
    # late for the live message and replays). Never sent to clients.
    result: NotRequired[dict[str, Any]]
    # On an event delivered live with others in one message, all but the last: more follow at
    # once (a relay may write them out together). Never sent to clients.
    more: NotRequired[bool]


def group_name(prediction_id: object) -> str:
    """Return the channel-layer group of a prediction (`prediction.<uuid>`)."""
    return f"prediction.{prediction_id}"


def stream_key(prediction_id: object) -> str:
    return f"{STREAM_KEY_PREFIX}{prediction_id}"


def cancel_key(prediction_id: object) -> str:
    return f"{CANCEL_KEY_PREFIX}{prediction_id}"


# One encoder: json.dumps with options builds a new one per call (a third of its time here).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> str:
    return _ENCODER.encode(value)


# A str as JSON, as _ENCODER writes one (ensure_ascii=False): the json module's C function.
_string = json.encoder.encode_basestring


# Line breaks to Python's str.splitlines (httpx's iter_lines, httpx-sse) that JSON leaves raw:
# escaped, so a data line never splits in a client.
_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def sse_frame(event: Event) -> bytes:
    """Encode one event as Flowise's SSE frame, with our `id:` line for Last-Event-ID resume."""
    data = event["data"]
    if isinstance(data, str):  # tokens: as _dumps would encode them, a tenth of its time
        payload = f'{{"event":{_string(event["event"])},"data":{_string(data)}}}'
    else:
        payload = _dumps({"event": event["event"], "data": data})
    if not payload.isascii():  # (translate costs more than the rest of the frame)
        payload = payload.translate(_LINE_BREAKS)
    return f"message:\ndata:{payload}\nid:{event['seq']}\n\n".encode()


SSE_HEARTBEAT = b":heartbeat\n\n"


def encode_event(event: Event) -> dict[str, str]:
    """Return the fields of a Redis Stream entry for an event (`r`: a success's result)."""
    fields = {"e": event["event"], "d": _dumps(event["data"])}
    if "result" in event:
        fields["r"] = _dumps(event["result"])
    return fields


def decode_event(entry_id: bytes | str, fields: dict[Any, Any]) -> Event:
    """Rebuild an event from a Redis Stream entry whose id is `0-<seq>`."""
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    name = fields.get(b"e", fields.get("e"))
    data = fields.get(b"d", fields.get("d"))
    if isinstance(name, bytes):
        name = name.decode()
    if isinstance(data, bytes):
        data = data.decode()
    event = Event(seq=int(raw_id.split("-", 1)[1]), event=str(name), data=json.loads(data))
    result = fields.get(b"r", fields.get("r"))
    if result is not None:
        event["result"] = json.loads(result)
    return event
