"""Limits on what comes in: overrideConfig, chat ids, uploads, JSON nesting, body size."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncClient, Client

from predictions import services
from predictions.api.limits import json_shape
from predictions.models import Prediction
from tests.conftest import offline_flow
from tests.unit.helpers import acreate_chatflow, error_of, post_json, prediction_url

pytestmark = pytest.mark.django_db(transaction=True)


async def _ask(api: AsyncClient, **body):
    chatflow = await acreate_chatflow(flow_data=offline_flow(memory=False))
    body.setdefault("question", "hi")
    return await post_json(api, prediction_url(chatflow.id), body)


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("value", "shape"),
    [(1, (0, 0)), ({}, (1, 0)), ({"a": [1, 2]}, (2, 3)), (_nested(4), (4, 3))],
)
def test_json_shape_counts_depth_and_entries(value, shape):
    assert json_shape(value) == shape


async def test_override_config_too_deep_is_400(api: AsyncClient, settings):
    settings.MAX_OVERRIDE_DEPTH = 5
    assert (await _ask(api, overrideConfig=_nested(5))).status_code == 200
    response = await _ask(api, overrideConfig=_nested(6))
    assert response.status_code == 400
    body = error_of(response)
    assert body["code"] == "override_config_too_deep"
    assert "MAX_OVERRIDE_DEPTH=5" in body["message"]


async def test_override_config_with_too_many_keys_is_413(api: AsyncClient, settings):
    settings.MAX_OVERRIDE_KEYS = 10
    assert (await _ask(api, overrideConfig={f"k{i}": i for i in range(10)})).status_code == 200
    response = await _ask(api, overrideConfig={"vars": {f"k{i}": i for i in range(10)}})
    assert response.status_code == 413
    assert error_of(response)["code"] == "override_config_too_large"


@pytest.mark.parametrize(
    "chat_id", ["", "with space", "a/b", "new\nline", "é", "x" * 256, 12, True, None]
)
async def test_bad_chat_ids_are_400(api: AsyncClient, chat_id):
    response = await _ask(api, chatId=chat_id)
    assert response.status_code == 400
    assert error_of(response)["code"] in ("invalid_chat_id", "invalid_request")
    assert not await Prediction.objects.aexists()


@pytest.mark.parametrize("session_id", ["a b", "a/b", "x" * 256, 5, ["s"]])
async def test_bad_session_ids_are_400(api: AsyncClient, session_id):
    response = await _ask(api, overrideConfig={"sessionId": session_id})
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_chat_id"


@pytest.mark.parametrize("chat_id", ["user-1", "a@b.example", "tg:12345", "A_b.c+d=e~f|g", "0"])
async def test_good_chat_ids_pass(api: AsyncClient, chat_id):
    response = await _ask(api, chatId=chat_id, overrideConfig={"sessionId": chat_id})
    assert response.status_code == 200
    assert response.json()["chatId"] == chat_id


async def test_chat_id_length_follows_max_chat_id_length(api: AsyncClient, settings):
    settings.MAX_CHAT_ID_LENGTH = 10
    assert (await _ask(api, chatId="x" * 10)).status_code == 200
    response = await _ask(api, chatId="x" * 11)
    assert "MAX_CHAT_ID_LENGTH=10" in error_of(response)["message"]


async def test_uploads_are_refused_with_count_and_size_limits_first(api: AsyncClient, settings):
    settings.MAX_UPLOADS = 2
    settings.MAX_UPLOAD_BYTES = 100
    upload = {"data": "data:text/plain;base64,aGk=", "type": "file", "name": "a.txt"}

    refused = await _ask(api, uploads=[upload])
    assert (refused.status_code, error_of(refused)["code"]) == (400, "uploads_not_supported")
    many = await _ask(api, uploads=[upload] * 3)
    assert (many.status_code, error_of(many)["code"]) == (413, "too_many_uploads")
    big = await _ask(api, uploads=[{**upload, "data": "x" * 101}])
    assert (big.status_code, error_of(big)["code"]) == (413, "upload_too_large")


def test_multipart_files_are_refused_and_counted(make_chatflow, settings, tmp_path):
    settings.MAX_UPLOADS = 2
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    chatflow = make_chatflow(flow_data=offline_flow(memory=False))
    url = prediction_url(chatflow.id)
    files = []
    for i in range(3):
        path = tmp_path / f"f{i}.txt"
        path.write_text("hello")
        files.append(path.open("rb"))

    one = Client().post(url, {"question": "hi", "files": files[:1]})
    assert (one.status_code, error_of(one)["code"]) == (400, "uploads_not_supported")
    for f in files:
        f.seek(0)
    many = Client().post(url, {"question": "hi", "files": files})
    assert (many.status_code, error_of(many)["code"]) == (413, "too_many_uploads")
    for f in files:
        f.close()


def test_malformed_multipart_is_400(make_chatflow):
    chatflow = make_chatflow(flow_data=offline_flow(memory=False))
    response = Client().post(
        prediction_url(chatflow.id),
        b"--xyz\r\nContent-Disposition: form-data\r\n\r\nbroken",
        content_type="multipart/form-data; boundary=xyz",
    )
    assert response.status_code == 400
    error_of(response)


async def test_deeply_nested_prediction_body_is_400_not_500(api: AsyncClient):
    chatflow = await acreate_chatflow(flow_data=offline_flow(memory=False))
    body = '{"question": "hi", "overrideConfig": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = await post_json(api, prediction_url(chatflow.id), body)
    assert response.status_code == 400
    assert error_of(response)["code"] == "malformed_json"


@pytest.fixture
def manager_headers() -> dict[str, str]:
    _, raw = services.apikey_create(name="m", can_manage=True)
    return {"Authorization": f"Bearer {raw}"}


def test_deeply_nested_management_body_is_400_not_500(manager_headers):
    for body in (
        '{"name": "x", "flowData": ' + "[" * 100_000 + "]" * 100_000 + "}",
        json.dumps({"name": "x", "flowData": "[" * 100_000 + "]" * 100_000}),
        json.dumps({"name": "x", "flowData": _nested(80)}),
        json.dumps({"name": "x", "flowData": offline_flow(), "chatbotConfig": "[" * 50_000}),
    ):
        response = Client().post(
            "/api/v1/chatflows", body, content_type="application/json", headers=manager_headers
        )
        assert response.status_code == 400, response.content[:200]
        error_of(response)


def test_management_body_over_the_limit_is_413(manager_headers, settings):
    settings.MAX_REQUEST_BODY_BYTES = 2048
    body = json.dumps({"name": "x", "flowData": offline_flow(), "pad": "x" * 4096})
    response = Client().post(
        "/api/v1/chatflows", body, content_type="application/json", headers=manager_headers
    )
    assert response.status_code == 413
    assert error_of(response)["code"] == "body_too_large"


def test_management_api_takes_json_only(manager_headers):
    response = Client().post("/api/v1/chatflows", {"name": "x"}, headers=manager_headers)
    assert response.status_code == 415
    error_of(response)
