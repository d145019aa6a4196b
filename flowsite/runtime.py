"""Process-wide tuning for the long-running processes (web and worker), applied once loaded."""

from __future__ import annotations

import gc
import inspect
import sys
import time
from datetime import datetime
from typing import Any

from django.core import signals
from django.db import close_old_connections, reset_queries

# Collect the youngest generation every 50,000 allocations instead of 700: a prediction
# allocates tens of thousands of short-lived objects, and at Python's default each one paid
# for several collections (0.8 ms of the web process's CPU per prediction, measured). The older
# generations keep Python's ratios: collected less often (20, 100), a web process's RSS kept
# growing (170 MB after 3,850 predictions, against a plateau near 158 MB with these).
GC_THRESHOLD = (50_000, 10, 10)


def tune_gc() -> None:
    """Move everything loaded so far (Django, the apps, their imports) out of the collector's
    sight, and collect young objects less often. Call once, after startup imports."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def skip_request_started_cleanup(debug: bool) -> None:
    """Stop running Django's start-of-request database cleanup.

    `close_old_connections` also runs when each request finishes, so at the start it has
    nothing left to close (connections are never kept between requests here), and
    `reset_queries` only matters when DEBUG logs queries. Under ASGI the two cost each
    request a trip to a worker thread.
    """
    signals.request_started.disconnect(close_old_connections)
    if not debug:
        signals.request_started.disconnect(reset_queries)


def skip_twisted_form_parsing() -> None:
    """Stop Twisted parsing POST bodies that daphne hands to Django unparsed anyway.

    For every POST with a Content-Type, Twisted's request parses the type with the email
    package (a new header class per request: 4 % of the web process's CPU and cyclic garbage)
    and a form or multipart body into `args`, which nothing reads (an upload was parsed twice).
    daphne builds its requests from `daphne.http_protocol.WebRequest`, looked up per
    connection: a subclass there turns Twisted's `parsePOSTFormSubmission` off. Does nothing
    without daphne, or with a Twisted that has no such switch.
    """
    try:
        from daphne import http_protocol
        from twisted.web import http
    except ImportError:
        return
    base = http_protocol.WebRequest
    if getattr(base, "skips_form_parsing", False):
        return
    if "parsePOSTFormSubmission" not in inspect.signature(http.Request.__init__).parameters:
        return

    class WebRequest(base):  # type: ignore[misc, valid-type]
        skips_form_parsing = True

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parsePOSTFormSubmission", False)
            super().__init__(*args, **kwargs)

    http_protocol.WebRequest = WebRequest


def send_twisted_writes_at_once() -> None:
    """Send what daphne writes to a TCP connection at once when nothing is waiting before it.

    Twisted buffers every write and asks the reactor to say when the socket can take it: per
    write, the connection registered with the event loop as a writer, a turn of the loop, one
    `send()` and the registration removed again. A streamed answer writes once per batch of
    SSE frames: that was a tenth of the web process's CPU per streaming prediction (measured
    back to back; a twentieth non-streaming). Here a write that finds Twisted's buffer empty
    goes to `send()` straight away; what the socket does not take, and every write behind it,
    takes Twisted's path as before (as do TLS, connections closing, and any error, which
    Twisted's next write attempt reports).

    daphne listens through Twisted's TCP endpoints, whose ports make connections of
    `tcp.Port.transport`: a subclass there does it. Does nothing without Twisted.
    """
    try:
        from twisted.internet import tcp
    except ImportError:
        return
    base = tcp.Port.transport
    if getattr(base, "sends_writes_at_once", False):
        return

    class Server(base):  # type: ignore[misc, valid-type]
        sends_writes_at_once = True

        def _idle(self) -> bool:
            return (
                self.connected
                and not self.TLS
                and not self.disconnecting
                and not self._writeDisconnecting
                and not self._writeDisconnected
                and not self._tempDataLen
                and self.offset == len(self.dataBuffer)
            )

        def write(self, data: bytes) -> None:
            if type(data) is bytes and data and self._idle():
                sent = self.writeSomeData(data)
                # An exception (the connection was lost) or nothing sent: Twisted's path.
                if type(sent) is int and sent > 0:
                    if sent == len(data):
                        return
                    data = data[sent:]
            super().write(data)

        def writeSequence(self, iovec) -> None:
            if self._idle() and all(type(part) is bytes for part in iovec):
                self.write(b"".join(iovec))
            else:
                super().writeSequence(iovec)

    Server.__name__ = Server.__qualname__ = base.__name__
    Server.__module__ = __name__
    tcp.Port.transport = Server


def remember_rq_serializers() -> None:
    """Resolve each rq serializer once, not at every rq object made with it.

    rq passes its serializer to every Queue, Job, registry and result it makes, and each checks
    it again with `resolve_serializer`: an isinstance against a runtime Protocol, which walks the
    Protocol's attributes every time (7 µs). A job took seven of them (counted), about 1 % of
    the worker's CPU, and more in the web process that enqueued it. The same argument
    resolves to the same serializer, so the first answer is kept (for arguments that can be
    keys: classes, instances, dotted paths); None still means rq's default.

    Replaces `resolve_serializer` in `rq.serializers` and wherever a loaded module imported it
    by name; modules loaded later import the replacement.
    """
    from rq import serializers

    original = serializers.resolve_serializer
    if getattr(original, "remembers", False):
        return
    resolved: dict[Any, Any] = {}

    def resolve_serializer(serializer=None):
        if serializer is None:
            return original(serializer)
        try:
            return resolved[serializer]
        except KeyError:
            resolved[serializer] = found = original(serializer)
            return found
        except TypeError:  # not a key: resolved every time, as rq does
            return original(serializer)

    resolve_serializer.remembers = True  # type: ignore[attr-defined]
    resolve_serializer.__doc__ = original.__doc__
    _replace_everywhere(original, resolve_serializer)


def _replace_everywhere(original: Any, replacement: Any) -> None:
    """Put `replacement` wherever a loaded module of rq, django-rq or Flowsite holds `original`
    under its name."""
    name = original.__name__
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] not in ("rq", "django_rq", "predictions", "queueadmin"):
            continue
        if getattr(module, name, None) is original:
            setattr(module, name, replacement)


def speed_up_rq_timestamps() -> None:
    """Parse and format rq's timestamps without strptime and strftime.

    rq stores every time of a job, execution and result as text ("2026-12-07T23:50:52.696562Z",
    UTC), parses it back with `datetime.strptime` (6 µs: a regular expression and locale checks
    each time), formats it with `strftime` and takes the current second as
    `calendar.timegm(now().utctimetuple())`: each job many times, in the web process and the
    worker, 4-5 % of the worker's samples in py-spy. The replacements give
    the same values (held to rq's own functions by tests): rq's form is parsed by
    `datetime.fromisoformat` (1 µs), anything else still by rq's `utcparse`.

    Replaces `utcparse`, `utcformat` and `current_timestamp` in `rq.utils` and wherever a loaded
    module imported them by name; modules loaded later import the replacements.
    """
    from rq import utils

    if getattr(utils.utcparse, "fast", False):
        return
    rq_utcparse, rq_utcformat = utils.utcparse, utils.utcformat

    def utcparse(string: str) -> datetime:
        if len(string) == 27 and string[10] == "T" and string[19] == "." and string[26] == "Z":
            try:
                return datetime.fromisoformat(string)  # aware, in UTC, as rq's
            except ValueError:
                pass
        return rq_utcparse(string)

    def utcformat(dt: datetime) -> str:
        if dt.year < 1000:  # strftime writes fewer than four digits then
            return rq_utcformat(dt)
        return (
            f"{dt.year}-{dt.month:02}-{dt.day:02}T{dt.hour:02}:{dt.minute:02}:{dt.second:02}"
            f".{dt.microsecond:06}Z"
        )

    def current_timestamp() -> int:
        return int(time.time())  # whole seconds since the epoch, as calendar.timegm gives

    for original, replacement in (
        (rq_utcparse, utcparse),
        (rq_utcformat, utcformat),
        (utils.current_timestamp, current_timestamp),
    ):
        replacement.fast = True  # type: ignore[attr-defined]
        replacement.original = original  # type: ignore[attr-defined]
        replacement.__doc__ = original.__doc__
        _replace_everywhere(original, replacement)
