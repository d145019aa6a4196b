"""predictions/secrets.py and predictions/crypto.py: which names are secret, mask, encrypt, keep."""

from __future__ import annotations

import json

import pytest

from predictions import crypto, secrets
from predictions.secrets import MASK


@pytest.mark.parametrize(
    "name",
    [
        "openAIApiKey",
        "apiKey",
        "api_key",
        "x-api-key",
        "OPENAI_API_KEY",
        "azureOpenAIApiKey",
        "secretAccessKey",
        "accessKey",
        "password",
        "redisPassword",
        "accessToken",
        "token",
        "Authorization",
        "clientSecret",
        "credential",
        "Ocp-Apim-Subscription-Key",
        "key",
    ],
)
def test_is_secret_name_recognises_secrets(name: str):
    assert secrets.is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "maxTokens",
        "tokens",
        "tokenDelayMs",
        "memoryKey",
        "inputKey",
        "outputKey",
        "sessionId",
        "modelName",
        "temperature",
        "basepath",
        "",
    ],
)
def test_is_secret_name_leaves_settings_alone(name: str):
    assert not secrets.is_secret_name(name)


def test_mask_secrets_masks_nested_values_and_keeps_the_rest():
    value = {
        "question": "hi",
        "overrideConfig": {
            "openAIApiKey": {"chatOpenAI_0": "sk-1"},
            "temperature": 0.2,
            "password": 1234,
        },
        "history": [{"token": "t"}],
    }
    masked = secrets.mask_secrets(value)
    assert masked == {
        "question": "hi",
        "overrideConfig": {
            "openAIApiKey": {"chatOpenAI_0": MASK},
            "temperature": 0.2,
            "password": MASK,
        },
        "history": [{"token": MASK}],
    }
    assert value["overrideConfig"]["openAIApiKey"]["chatOpenAI_0"] == "sk-1"


def test_mask_secrets_looks_inside_json_object_strings():
    masked = secrets.mask_secrets({"baseOptions": json.dumps({"Authorization": "Bearer x"})})
    assert json.loads(masked["baseOptions"]) == {"Authorization": MASK}


def test_mask_secrets_returns_the_same_object_when_nothing_is_secret():
    value = {"a": [1, {"b": "c"}], "memoryKey": "chat_history"}
    assert secrets.mask_secrets(value) is value


def test_encrypt_then_decrypt_secrets_round_trips_and_hides_the_plain_text():
    value = {"openAIApiKey": "sk-plain", "headers": {"x-api-key": "abc"}, "maxTokens": 5}
    encrypted = secrets.encrypt_secrets(value)
    assert "sk-plain" not in json.dumps(encrypted)
    assert crypto.is_encrypted(encrypted["openAIApiKey"])
    assert encrypted["maxTokens"] == 5
    assert secrets.decrypt_secrets(encrypted) == value


def test_encrypt_is_idempotent_and_leaves_the_mask():
    once = secrets.encrypt_secrets({"apiKey": "k", "password": MASK})
    assert secrets.encrypt_secrets(once) == once
    assert once["password"] == MASK


def test_crypto_reads_values_of_a_previous_key_from_secret_key_fallbacks(settings):
    settings.SECRET_KEY = "old-key-" + "x" * 40
    token = crypto.encrypt("sk-old")
    settings.SECRET_KEY = "new-key-" + "y" * 40
    settings.SECRET_KEY_FALLBACKS = ["old-key-" + "x" * 40]
    assert crypto.decrypt(token) == "sk-old"
    settings.SECRET_KEY_FALLBACKS = []
    with pytest.raises(crypto.SecretUndecryptable):
        crypto.decrypt(token)


def test_decrypt_secrets_empties_an_undecryptable_secret(settings):
    settings.SECRET_KEY = "one-key-" + "x" * 40
    encrypted = secrets.encrypt_secrets({"openAIApiKey": "sk"})
    settings.SECRET_KEY = "two-key-" + "y" * 40
    assert secrets.decrypt_secrets(encrypted) == {"openAIApiKey": ""}


def test_crypto_leaves_plain_values_alone():
    assert crypto.decrypt("plain") == "plain"
    assert not crypto.is_encrypted("plain")


def _flow(**inputs) -> str:
    return json.dumps(
        {
            "nodes": [
                {"id": "chatOpenAI_0", "data": {"name": "chatOpenAI", "inputs": inputs}},
                {"id": "other", "data": {"name": "x"}},
                "not a node",
            ],
            "edges": [],
        }
    )


def _inputs(flow_data: str) -> dict:
    return json.loads(flow_data)["nodes"][0]["data"]["inputs"]


def test_flow_data_encrypt_mask_and_decrypt():
    flow = _flow(openAIApiKey="sk-1", modelName="gpt", baseOptions='{"api-key": "h"}')
    stored = secrets.flow_data_encrypt(flow)
    assert "sk-1" not in stored
    assert '"h"' not in stored
    assert _inputs(secrets.flow_data_mask(stored))["openAIApiKey"] == MASK
    assert json.loads(_inputs(secrets.flow_data_mask(stored))["baseOptions"]) == {"api-key": MASK}
    assert _inputs(secrets.flow_data_decrypt(stored)) == _inputs(flow)


def test_flow_data_without_secrets_is_returned_unchanged():
    flow = '{"nodes": [],   "edges": []}'
    assert secrets.flow_data_encrypt(flow) is flow
    assert secrets.flow_data_mask("not json") == "not json"


def test_flow_data_keep_secrets_puts_stored_values_behind_masks():
    stored = secrets.flow_data_encrypt(_flow(openAIApiKey="sk-1", baseOptions='{"api-key": "h"}'))
    sent = _flow(openAIApiKey=MASK, baseOptions=json.dumps({"api-key": MASK}), modelName="new")
    kept = secrets.flow_data_decrypt(secrets.flow_data_keep_secrets(sent, stored))
    assert _inputs(kept) == {
        "openAIApiKey": "sk-1",
        "baseOptions": json.dumps({"api-key": "h"}),
        "modelName": "new",
    }


def test_flow_data_keep_secrets_empties_a_mask_with_nothing_stored():
    kept = secrets.flow_data_keep_secrets(_flow(openAIApiKey=MASK), None)
    assert _inputs(kept)["openAIApiKey"] == ""


def test_flow_data_keep_secrets_leaves_a_mask_in_a_plain_input():
    kept = secrets.flow_data_keep_secrets(_flow(systemMessage=MASK), _flow(systemMessage="x"))
    assert _inputs(kept)["systemMessage"] == MASK
