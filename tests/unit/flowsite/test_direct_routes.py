"""flowsite.handler.DirectRoutes: cookie-less requests to chosen views skip Django's middleware
chain and URL resolver, and get the same answer as through them."""

from __future__ import annotations

import json

import pytest
from asgiref.testing import ApplicationCommunicator
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from flowsite.handler import DirectRoutes, PooledThreadsASGIHandler, RequestThreads


@csrf_exempt
async def _answer_view(request, name):
    return JsonResponse({"name": name, "method": request.method})


@csrf_exempt
async def _failing_view(request):
    raise RuntimeError("the view broke")


async def _guarded_view(request):  # not exempt from CSRF: never a direct route
    return JsonResponse({"guarded": True})


_routes = [
    path("answer/<str:name>", _answer_view),
    path("fail", _failing_view),
    path("guarded", _guarded_view),
]
urlpatterns = [path("api/v1/", include(_routes)), path("other/<str:name>", _answer_view)]
direct_urlpatterns = [path("api/v1/", include(_routes))]


def _scope(
    path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None
) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), *(headers or [])],
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
    }


class _Counted:
    """Counts the requests that took Django's middleware chain."""

    def __init__(self, chain):
        self.chain, self.calls = chain, 0

    async def __call__(self, request):
        self.calls += 1
        return await self.chain(request)


def _handler() -> tuple[PooledThreadsASGIHandler, _Counted]:
    handler = PooledThreadsASGIHandler(RequestThreads(idle_kept=4))
    counted = _Counted(handler._middleware_chain)
    handler._middleware_chain = counted
    return handler, counted


async def _call(handler, scope: dict, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    communicator = ApplicationCommunicator(handler, scope)
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(10)
    content = b""
    while True:
        message = await communicator.receive_output(10)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, content


async def _both_ways(scope: dict, body: bytes = b"") -> tuple[tuple, tuple]:
    """The answer to `scope` by its direct route, and by Django's chain."""
    handler, counted = _handler()
    direct = await _call(handler, scope, body)
    assert counted.calls == 0, "expected the direct route"
    handler.direct_routes.hooks = None  # as with a middleware DirectRoutes does not know
    chain = await _call(handler, scope, body)
    assert counted.calls == 1, "expected Django's chain"
    return direct, chain


@pytest.fixture
def urls(settings):
    settings.ROOT_URLCONF = __name__
    settings.CORS_ORIGINS = ["https://app.example"]


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param(_scope("/api/v1/answer/one"), id="answered"),
        pytest.param(_scope("/api/v1/answer/one", method="PUT"), id="another method"),
        pytest.param(
            _scope("/api/v1/answer/one", headers=[(b"origin", b"https://app.example")]),
            id="an allowed origin",
        ),
        pytest.param(
            _scope("/api/v1/answer/one", headers=[(b"origin", b"https://elsewhere.example")]),
            id="another origin",
        ),
        pytest.param(_scope("/api/v1/fail"), id="a view that raises"),
    ],
)
async def test_a_direct_route_answers_as_the_middleware_chain_does(urls, scope):
    direct, chain = await _both_ways(scope)

    assert direct == chain
    status, headers, _ = direct
    if status == 200:  # what CORS, security, common and X-Frame-Options middleware add
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["content-length"]
    if scope["headers"][1:] == [(b"origin", b"https://app.example")]:
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert headers["vary"] == "Origin"


async def test_a_view_that_raises_is_answered_500_and_logged(urls, caplog):
    direct, chain = await _both_ways(_scope("/api/v1/fail"))

    assert direct[0] == chain[0] == 500
    errors = [r for r in caplog.records if r.name == "django.request"]
    assert [r.getMessage() for r in errors] == ["Internal Server Error: /api/v1/fail"] * 2


async def test_an_unknown_host_is_refused_on_the_direct_route_too(urls, settings):
    settings.ALLOWED_HOSTS = ["flowsite.example"]

    direct, chain = await _both_ways(_scope("/api/v1/answer/one"))

    assert direct == chain
    assert direct[0] == 400


async def test_https_redirect_applies_on_the_direct_route_too(urls, settings):
    settings.SECURE_SSL_REDIRECT = True

    direct, chain = await _both_ways(_scope("/api/v1/answer/one"))

    assert direct == chain
    assert direct[0] == 301
    assert direct[1]["location"] == "https://localhost/api/v1/answer/one"


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        (_scope("/api/v1/answer/one", headers=[(b"cookie", b"sessionid=abc")]), "cookies"),
        (_scope("/other/one"), "not a direct route"),
        (_scope("/api/v1/guarded"), "not exempt from CSRF"),
    ],
)
async def test_other_requests_take_the_middleware_chain(urls, scope, reason):
    handler, counted = _handler()

    status, _, _ = await _call(handler, scope)

    assert counted.calls == 1, reason
    assert status == (403 if reason == "not exempt from CSRF" else 200)


async def test_an_unknown_middleware_sends_every_request_through_the_chain(urls, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    assert DirectRoutes().hooks is None

    handler, counted = _handler()
    status, _, _ = await _call(handler, _scope("/api/v1/answer/one"))

    assert (status, counted.calls) == (200, 1)


def test_cookie_middleware_is_skipped_and_the_rest_kept_in_order(settings):
    hooks = DirectRoutes().hooks

    assert [type(hook).__name__ for hook in hooks] == [
        "CorsMiddleware",
        "SecurityMiddleware",
        "CommonMiddleware",
        "XFrameOptionsMiddleware",
    ]


@pytest.mark.django_db(transaction=True)
async def test_the_prediction_endpoint_is_a_direct_route():
    """The real route: an unknown chatflow, a malformed body and predictions, both ways."""
    from predictions.models import Chatflow
    from tests.conftest import offline_flow

    chatflow = await Chatflow.objects.acreate(name="direct", flow_data=offline_flow())
    url = f"/api/v1/prediction/{chatflow.id}"
    unknown = await _both_ways(_scope("/api/v1/prediction/4c6f1a52-0000-4000-8000-000000000000"))
    malformed = await _both_ways(_scope(url), b"{not json")
    handler, counted = _handler()
    direct = await _call(handler, _scope(url), b'{"question": "hello", "chatId": "one"}')
    assert counted.calls == 0
    chain = await _call(
        handler, _scope(url, headers=[(b"cookie", b"x=1")]), b'{"question": "hello"}'
    )
    assert counted.calls == 1

    assert unknown[0] == unknown[1]
    assert unknown[0][0] == 404
    assert malformed[0] == malformed[1]
    assert malformed[0][0] == 400
    (status, headers, content), (status_chain, headers_chain, content_chain) = direct, chain
    assert status == status_chain == 200
    # Each answer names its own prediction, chat and message; the rest is the same.
    for varying in ("x-prediction-id", "content-length"):
        headers.pop(varying), headers_chain.pop(varying)
    assert headers == headers_chain
    answer, answer_chain = json.loads(content), json.loads(content_chain)
    assert answer.pop("chatId") == answer.pop("sessionId") == "one"
    assert answer_chain.pop("chatId") == answer_chain.pop("sessionId") != "one"
    answer.pop("chatMessageId"), answer_chain.pop("chatMessageId")
    assert answer == answer_chain
    assert answer["text"].startswith('Offline model here (no LLM configured). You said: "hello".')
