"""flowsite.handler: a request's thread-sensitive work on one thread, reused by later requests."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from types import SimpleNamespace

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.core import signals
from django.db import connections
from django.http import HttpResponse
from django.urls import path

from flowsite.handler import (
    PooledThreadsASGIHandler,
    RequestThread,
    RequestThreads,
    hand_back_request_thread,
)
from flowsite.runtime import skip_twisted_form_parsing
from tests.unit.helpers import wait_until


def _scope(path: str) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


async def _get(handler: PooledThreadsASGIHandler, path: str = "/healthz") -> int:
    communicator = ApplicationCommunicator(handler, _scope(path))
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    while True:
        message = await communicator.receive_output(10)
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"]


@pytest.fixture
def finished_on():
    """The threads Django's request_finished receivers ran on (a request's sync work)."""
    threads: list[int] = []

    def record(**kwargs) -> None:
        threads.append(threading.get_ident())

    signals.request_finished.connect(record, weak=False)
    yield threads
    signals.request_finished.disconnect(record)


async def test_requests_one_after_another_reuse_one_thread(finished_on, settings):
    settings.ROOT_URLCONF = __name__
    handler = PooledThreadsASGIHandler(RequestThreads(idle_kept=4))

    statuses = [await _get(handler, "/hold") for _ in range(3)]

    assert statuses == [200, 200, 200]
    assert len(finished_on) == 3
    assert len(set(finished_on)) == 1
    assert finished_on[0] != threading.get_ident()  # never the event loop's thread
    assert handler.threads.idle == 1


async def test_requests_at_once_each_have_a_thread_of_their_own(finished_on):
    handler = PooledThreadsASGIHandler(RequestThreads(idle_kept=4))
    all_in = threading.Barrier(3, timeout=10)

    def hold(**kwargs) -> None:  # on the request's thread: waits until all three are in
        all_in.wait()

    signals.request_started.connect(hold, weak=False)
    try:
        statuses = await asyncio.gather(*(_get(handler) for _ in range(3)))
    finally:
        signals.request_started.disconnect(hold)

    assert statuses == [200, 200, 200]
    assert len(set(finished_on)) == 3
    assert handler.threads.idle == 3


async def test_threads_past_the_idle_limit_end(finished_on):
    threads = RequestThreads(idle_kept=1)
    executors = [threads.acquire() for _ in range(3)]
    idents = [executor.submit(threading.get_ident).result(5) for executor in executors]

    for executor in executors:
        threads.release(executor)

    assert threads.idle == 1
    assert threads.acquire() is executors[0]
    alive = {thread.ident for thread in threading.enumerate()}
    for executor in executors[1:]:
        for thread in executor._threads:
            thread.join(5)
    assert not ({thread.ident for thread in threading.enumerate()} & set(idents[1:]))
    assert idents[0] in alive


async def test_a_request_is_freed_without_the_garbage_collector():
    handler = PooledThreadsASGIHandler(RequestThreads(idle_kept=4))
    requests: list[weakref.ref] = []

    class Recorded(handler.request_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            requests.append(weakref.ref(self))

    handler.request_class = Recorded
    gc.collect()
    gc.disable()  # what a reference cycle holds stays until the collector runs
    try:
        # /api/v1/ping passes the session, authentication and messages middleware.
        assert await _get(handler, "/api/v1/ping") == 200
        await asyncio.sleep(0)
        assert len(requests) == 1
        assert requests[0]() is None
    finally:
        gc.enable()


def test_daphne_requests_leave_post_bodies_to_django(monkeypatch):
    from daphne import http_protocol
    from twisted.web import http

    monkeypatch.setattr(http_protocol, "WebRequest", http_protocol.WebRequest)  # undone after
    skip_twisted_form_parsing()
    skip_twisted_form_parsing()  # once is enough
    passed: dict = {}

    def request_init(self, channel, **kwargs):
        passed.update(kwargs)
        self.channel = channel

    monkeypatch.setattr(http.Request, "__init__", request_init)
    server = SimpleNamespace(protocol_connected=lambda request: None)
    channel = SimpleNamespace(factory=SimpleNamespace(server=server))

    http_protocol.WebRequest(channel)

    assert http_protocol.WebRequest.__mro__[1].__name__ == "WebRequest"  # one subclass, not two
    assert passed == {"parsePOSTFormSubmission": False}


def test_a_request_thread_runs_every_call_on_one_thread_until_handed_back():
    threads = RequestThreads(idle_kept=4)
    thread = RequestThread(threads)

    first = [thread.submit(threading.get_ident).result(5) for _ in range(3)]
    assert len(set(first)) == 1
    assert (threads.lent, threads.idle) == (1, 0)

    thread.hand_back()
    assert (threads.lent, threads.idle) == (0, 1)
    other = threads.acquire()  # another request's, meanwhile
    assert other.submit(threading.get_ident).result(5) == first[0]

    assert thread.submit(threading.get_ident).result(5) != first[0]  # a thread again: another
    thread.hand_back()
    threads.release(other)
    assert (threads.lent, threads.idle) == (0, 2)


_waiting = SimpleNamespace(event=None, handed_back=0)


async def _waiting_view(request):
    await sync_to_async(connections.close_all)()  # a call on the request's thread
    hand_back_request_thread()
    _waiting.handed_back += 1
    await _waiting.event.wait()
    return HttpResponse("answered")


async def _holding_view(request):
    await sync_to_async(threading.get_ident)()  # takes a thread, kept to the request's end
    return HttpResponse("answered")


async def _answering_view(request):
    return HttpResponse("answered")


async def _handing_back_view(request):
    await sync_to_async(threading.get_ident)()
    hand_back_request_thread()
    return HttpResponse("answered")


urlpatterns = [
    path("wait", _waiting_view),
    path("hold", _holding_view),
    path("hand-back", _handing_back_view),
    path("answer", _answering_view),
]


async def test_a_request_that_holds_no_thread_is_finished_on_the_event_loop(
    finished_on, settings, monkeypatch
):
    settings.ROOT_URLCONF = __name__
    handler = PooledThreadsASGIHandler(RequestThreads(idle_kept=4))
    # As in the web process (flowsite.runtime): no sync receiver when a request starts (other
    # tests and Django's test client connect some again), so nothing takes a thread then.
    monkeypatch.setattr(signals.request_started, "receivers", [])

    # Never took a thread; took one and handed it back before answering.
    statuses = [await _get(handler, "/answer"), await _get(handler, "/hand-back")]

    assert statuses == [200, 200]
    assert finished_on == [threading.get_ident()] * 2  # once each, without a thread hop
    assert handler.threads.lent == 0
    assert handler.threads.idle == 1  # the one /hand-back took for its call


async def test_requests_that_wait_after_handing_their_thread_back_hold_none(settings):
    settings.ROOT_URLCONF = __name__
    _waiting.event, _waiting.handed_back = asyncio.Event(), 0
    handler = PooledThreadsASGIHandler(RequestThreads(idle_kept=8))
    requests = [asyncio.ensure_future(_get(handler, "/wait")) for _ in range(5)]

    async def all_waiting() -> bool:
        return _waiting.handed_back == 5

    await wait_until(all_waiting)
    assert handler.threads.lent == 0  # five callers waiting, no thread held

    _waiting.event.set()
    assert await asyncio.gather(*requests) == [200] * 5
    assert handler.threads.lent == 0
