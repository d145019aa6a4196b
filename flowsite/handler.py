"""Django's ASGI handler, with each request's thread-sensitive work on a reused thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextvars import ContextVar
from importlib import import_module
from typing import Any, TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers import asgi as django_asgi
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, ResolverMatch, URLResolver, set_urlconf
from django.urls.resolvers import RegexPattern
from django.utils.log import log_response
from django.utils.module_loading import import_string

# Idle request threads kept for the next requests; more are ended as their requests finish.
IDLE_THREADS_KEPT = 64

T = TypeVar("T")


class RequestThreads:
    """Single-thread executors lent to one request at a time.

    Django gives every request a ThreadSensitiveContext of its own: its ORM calls, sync
    middleware and signal receivers run on one thread, started for the request and joined (from
    yet another thread) when it ends. That was two thread starts per prediction request, about
    a twentieth of the web process's CPU. Lending each request an executor that served an
    earlier one keeps the one-thread-per-request rule without the starts (see RequestThread).
    """

    def __init__(self, idle_kept: int = IDLE_THREADS_KEPT) -> None:
        self.idle_kept = idle_kept
        self._idle: list[ThreadPoolExecutor] = []
        self._lent = 0
        self._lock = threading.Lock()

    def acquire(self) -> ThreadPoolExecutor:
        with self._lock:
            self._lent += 1
            if self._idle:
                return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def release(self, executor: ThreadPoolExecutor) -> None:
        with self._lock:
            self._lent -= 1
            if len(self._idle) < self.idle_kept:
                self._idle.append(executor)
                return
        executor.shutdown(wait=False)  # its thread ends once its last call returns

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def lent(self) -> int:
        return self._lent


class RequestThread(Executor):
    """One request's executor for its thread-sensitive calls: a thread from `RequestThreads`,
    taken at the request's first such call and kept until the request ends, or until the
    request hands it back between calls to wait for something long (`hand_back_request_thread`).

    A request that waits for a prediction's answer held its thread all along: a thousand
    callers waiting were a thousand threads, and callers that came in bursts started a thread
    for nearly every request.
    """

    def __init__(self, threads: RequestThreads) -> None:
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._executor is None:
            self._executor = self._threads.acquire()
        return self._executor.submit(fn, *args, **kwargs)

    def hand_back(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            self._threads.release(executor)

    @property
    def holding(self) -> bool:
        """Whether the request holds a thread now (its connections may be open on it)."""
        return self._executor is not None


_request_thread: ContextVar[RequestThread | None] = ContextVar("request_thread", default=None)


def hand_back_request_thread() -> None:
    """Let the current request's thread serve other requests while this one waits.

    Call it between the request's thread-sensitive calls, once the request left nothing on the
    thread (its database connections closed); its next such call takes a thread again, not
    necessarily the same one. Outside a request of `PooledThreadsASGIHandler`, nothing happens.
    """
    thread = _request_thread.get()
    if thread is not None:
        thread.hand_back()


def _closing_on_the_loop(sync_to_async: Callable[..., Any]) -> Callable[..., Any]:
    """django.core.handlers.asgi's `sync_to_async`, except for closing a response of a request
    that holds no thread: that runs on the event loop.

    Django closes every response with `sync_to_async(response.close)`, whose request_finished
    receivers close the database connections the request opened on its thread. A request that
    handed its thread back (the prediction view, once stored) or never took one has none open:
    the hop to a thread, with the wake-ups on both sides, was 6-8 % of the web process's CPU
    per prediction (measured back to back). A request that holds its thread still closes there.
    """

    def patched(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
        closes_a_response = (
            not args
            and not kwargs
            and getattr(func, "__name__", "") == "close"
            and isinstance(getattr(func, "__self__", None), HttpResponseBase)
        )
        if not closes_a_response:
            return sync_to_async(func, *args, **kwargs)

        async def close() -> Any:
            thread = _request_thread.get()
            if thread is None or thread.holding:  # the hop, built only when it is taken
                return await sync_to_async(func)()
            return func()

        return close

    patched.closes_on_the_loop = True  # type: ignore[attr-defined]
    return patched


if not getattr(django_asgi.sync_to_async, "closes_on_the_loop", False):
    django_asgi.sync_to_async = _closing_on_the_loop(django_asgi.sync_to_async)


class ASGIRequestWithoutCycles(ASGIRequest):
    """An ASGIRequest that lets go of the closures middleware hung on it once it is closed.

    Authentication and messages middleware store on the request functions that refer back to it
    (`user`, `auser`, `_messages`): a reference cycle per request, which only the garbage
    collector freed, with the request, its session, headers and body around it. Django closes
    the request with its response, after the last byte was sent.
    """

    REFERRING_BACK = ("user", "auser", "_messages")

    def close(self) -> None:
        try:
            super().close()
        finally:
            for name in self.REFERRING_BACK:
                self.__dict__.pop(name, None)


class DirectRoutes:
    """Requests without cookies to a few views, answered without Django's middleware chain and
    URL resolver, with the hooks of the same middleware run in the same order.

    The way to the view and back was eight middleware, each a coroutine inside an exception
    handler of its own, and a URL resolver that tries a dozen patterns: without them, 4-6 %
    less of the web process's CPU per prediction (measured back to back). The views are the
    ones a ROOT_URLCONF module lists in `direct_urlpatterns` (the prediction endpoint); they
    must be exempt from CSRF and must not use the session, its user or messages. A request to
    one of them without a Cookie header skips the middleware that only act on cookies
    (`only_for_cookies`: session, authentication, CSRF, messages: they change nothing for it)
    and runs the hooks of the others (CORS, security, common, X-Frame-Options) inline: the same
    checks (allowed hosts, HTTPS redirect), the same headers, the same error responses and
    logging (one difference: where the view looked for a session, the 401 of a chatflow with a
    key asked without one, the session middleware adds `Vary: Cookie`; without cookies there is
    no session to vary on). A request with cookies, to any other path, or under a MIDDLEWARE
    setting with a middleware this class does not know, takes Django's way.
    """

    def __init__(self, middleware: list[str] | None = None) -> None:
        self.hooks = self._hooks(settings.MIDDLEWARE if middleware is None else middleware)
        self._resolvers: dict[str, URLResolver | None] = {}

    @staticmethod
    def _hooks(middleware: list[str]) -> list[Any] | None:
        from flowsite.middleware import CorsMiddleware, InlineMiddlewareMixin

        async def unreachable(request: HttpRequest) -> HttpResponseBase:
            raise AssertionError("direct routes call their hooks, never the chain")

        hooks = []
        for path in middleware:
            cls = import_string(path)
            if getattr(cls, "only_for_cookies", False):
                continue
            inline = issubclass(cls, InlineMiddlewareMixin) and (
                cls.needs_thread is InlineMiddlewareMixin.needs_thread
            )
            other_hooks = ("process_view", "process_exception", "process_template_response")
            if not (inline or cls is CorsMiddleware) or any(hasattr(cls, h) for h in other_hooks):
                return None  # a middleware that may do more than its two hooks: Django's way
            hooks.append(cls(unreachable))
        return hooks

    def _resolver(self) -> URLResolver | None:
        urlconf = settings.ROOT_URLCONF
        if urlconf not in self._resolvers:
            patterns = getattr(import_module(urlconf), "direct_urlpatterns", None)
            resolver = URLResolver(RegexPattern(r"^/"), list(patterns)) if patterns else None
            self._resolvers[urlconf] = resolver
        return self._resolvers[urlconf]

    def match(self, request: HttpRequest) -> ResolverMatch | None:
        """The direct route of `request`, if it takes one."""
        if self.hooks is None or request.META.get("HTTP_COOKIE"):
            return None
        resolver = self._resolver()
        if resolver is None:
            return None
        try:
            match = resolver.resolve(request.path_info)
        except Resolver404:
            return None
        return match if getattr(match.func, "csrf_exempt", False) else None

    async def respond(
        self, handler: ASGIHandler, request: HttpRequest, match: ResolverMatch
    ) -> HttpResponseBase:
        """As BaseHandler.get_response_async, with the hooks in place of the chain."""
        set_urlconf(settings.ROOT_URLCONF)
        request.resolver_match = match
        response = await self._through(handler, request, match, 0)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            await sync_to_async(log_response, thread_sensitive=False)(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    async def _through(
        self, handler: ASGIHandler, request: HttpRequest, match: ResolverMatch, index: int
    ) -> HttpResponseBase:
        """Middleware `index` and those inside it, each inside an exception handler as in
        Django's chain (convert_exception_to_response)."""
        try:
            if index == len(self.hooks):
                response = await match.func(request, *match.args, **match.kwargs)
                handler.check_response(response, match.func)
                return response
            middleware = self.hooks[index]
            process_request = getattr(middleware, "process_request", None)
            response = process_request(request) if process_request is not None else None
            if response is None:
                response = await self._through(handler, request, match, index + 1)
            process_response = getattr(middleware, "process_response", None)
            if process_response is not None:
                response = process_response(request, response)
            return response
        except Exception as exc:
            return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)


class PooledThreadsASGIHandler(ASGIHandler):
    """ASGIHandler whose requests borrow their thread from `RequestThreads` and leave no
    reference cycles behind (see `listen_for_disconnect` and `ASGIRequestWithoutCycles`).

    As with Django's handler, a task a request starts must not call thread-sensitive code
    after the request ended: start it in a context of its own (`contextvars.Context()`).
    """

    request_class = ASGIRequestWithoutCycles

    def __init__(self, threads: RequestThreads | None = None) -> None:
        super().__init__()
        self.threads = threads or RequestThreads()
        self.direct_routes = DirectRoutes()

    async def run_get_response(self, request: HttpRequest) -> HttpResponseBase:
        match = self.direct_routes.match(request)
        if match is None:
            return await super().run_get_response(request)
        response = await self.direct_routes.respond(self, request, match)
        response._handler_class = self.__class__
        return response

    async def listen_for_disconnect(self, receive: Any) -> None:
        """Return when the client disconnects (Django's raises RequestAborted).

        `handle` only ignores that exception, and its traceback tied the request, its response
        and their frames into a cycle that only the garbage collector could free: about 120
        objects per request, and 2.4 ms for each young-generation collection that had to walk
        them (0.3 ms per request). Returning ends the task just the same.
        """
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        thread = RequestThread(self.threads)
        token = _request_thread.set(thread)
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            _request_thread.reset(token)
            thread.hand_back()
