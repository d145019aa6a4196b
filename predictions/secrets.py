"""Find secrets (API keys, passwords, tokens) in node inputs and requests: mask, encrypt, decrypt.

A value is secret when its field name looks secret (`is_secret_name`); everything below a secret
field (a per-node override object, a headers object) is secret too. Node inputs that hold a JSON
object as a string (Flowise's `baseOptions`) are searched inside as well.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from predictions import crypto

logger = logging.getLogger(__name__)

MASK = "********"

# Words that make any field name secret wherever they appear in it.
_SECRET_WORDS = {
    "secret",
    "secrets",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "authorization",
    "apikey",
    "credential",
    "credentials",
    "cookie",
    "bearer",
}
# "…Key" is secret after these words (openAIApiKey, accessKey, x-api-key), not after others
# (memoryKey, inputKey, outputKey).
_KEY_QUALIFIERS = {
    "api",
    "access",
    "secret",
    "private",
    "auth",
    "subscription",
    "license",
    "encryption",
    "signing",
    "client",
    "master",
    "service",
    "account",
}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _words(name: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Return True for names like openAIApiKey, password, accessToken, Authorization, x-api-key.

    Counters and settings that merely mention tokens or keys (maxTokens, tokenDelayMs,
    memoryKey) are not secret.
    """
    words = _words(name)
    if not words:
        return False
    if _SECRET_WORDS.intersection(words):
        return True
    last = words[-1]
    if last == "token":
        return True
    if last == "key":
        return len(words) == 1 or words[-2] in _KEY_QUALIFIERS
    return False


def _json_object_text(value: str) -> dict[str, Any] | None:
    text = value.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def map_secrets(
    value: Any, fn: Callable[[str], str], *, secret: bool = False, numbers: bool = False
) -> Any:
    """Return value with fn applied to every non-empty string that is secret.

    With numbers=True, secret numbers are passed to fn as text too. Containers are copied only
    where something changed, so an unchanged value comes back as the same object (callers use
    `is` to skip re-encoding).
    """
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, item in value.items():
            new = map_secrets(item, fn, secret=secret or is_secret_name(str(key)), numbers=numbers)
            changed = changed or new is not item
            out[key] = new
        return out if changed else value
    if isinstance(value, list):
        items = [map_secrets(item, fn, secret=secret, numbers=numbers) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        return items if changed else value
    if isinstance(value, str) and value:
        if secret:
            new_text = fn(value)
            return value if new_text == value else new_text
        nested = _json_object_text(value)
        if nested is not None:
            new_nested = map_secrets(nested, fn, numbers=numbers)
            if new_nested is not nested:
                return json.dumps(new_nested)
    if secret and numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return fn(str(value))
    return value


def mask_secrets(value: Any) -> Any:
    """Return value with every secret replaced by a mask (for display: admin, dashboard, API)."""
    return map_secrets(value, lambda _text: MASK, numbers=True)


def encrypt_secrets(value: Any) -> Any:
    """Return value with every secret encrypted with the instance key (for storage)."""
    return map_secrets(value, lambda text: text if text == MASK else crypto.encrypt(text))


def decrypt_secrets(value: Any, *, where: str = "") -> Any:
    """Return value with every encrypted secret decrypted (for running).

    A secret that cannot be decrypted (SECRET_KEY changed without SECRET_KEY_FALLBACKS) becomes
    empty, which means "not set" to the nodes, and is logged without its value.
    """

    def decrypt(text: str) -> str:
        try:
            return crypto.decrypt(text)
        except crypto.SecretUndecryptable:
            logger.error(
                "%s: a stored secret cannot be decrypted (SECRET_KEY changed?); it is ignored. "
                "Add the old key to SECRET_KEY_FALLBACKS or enter the secret again.",
                where or "secret",
            )
            return ""

    return map_secrets(value, decrypt)


# --- flowData ----------------------------------------------------------------------------------


def _nodes(data: Any) -> list[dict[str, Any]]:
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list):
        return []
    return [n for n in nodes if isinstance(n, dict) and isinstance(n.get("data"), dict)]


def _map_flow_inputs(flow_data: str, fn: Callable[[Any, dict[str, Any]], Any]) -> str:
    """Apply fn(inputs, node) to each node's data.inputs; re-encode only if something changed."""
    try:
        data = json.loads(flow_data)
    except (ValueError, TypeError):
        return flow_data
    changed = False
    for node in _nodes(data):
        inputs = node["data"].get("inputs")
        if not isinstance(inputs, dict):
            continue
        new = fn(inputs, node)
        if new is not inputs:
            node["data"]["inputs"] = new
            changed = True
    return json.dumps(data) if changed else flow_data


def flow_data_encrypt(flow_data: str) -> str:
    """Return flowData (a JSON string) with the secrets of every node's inputs encrypted."""
    return _map_flow_inputs(flow_data, lambda inputs, node: encrypt_secrets(inputs))


def flow_data_decrypt(flow_data: str, *, where: str = "") -> str:
    """Return flowData with its encrypted secrets decrypted (undecryptable ones emptied)."""
    return _map_flow_inputs(
        flow_data,
        lambda inputs, node: decrypt_secrets(inputs, where=f"{where} node {node.get('id')}"),
    )


def flow_data_mask(flow_data: str) -> str:
    """Return flowData with every secret of the nodes' inputs shown as the mask."""
    return _map_flow_inputs(flow_data, lambda inputs, node: mask_secrets(inputs))


def _keep_masked(new: Any, old: Any, *, secret: bool = False) -> Any:
    """Return new with each secret MASK replaced by the value at the same place in old."""
    if isinstance(new, dict):
        old_dict = old if isinstance(old, dict) else {}
        out = {
            key: _keep_masked(item, old_dict.get(key), secret=secret or is_secret_name(str(key)))
            for key, item in new.items()
        }
        return out if any(out[k] is not new[k] for k in new) else new
    if isinstance(new, list):
        old_list = old if isinstance(old, list) else []
        items = [
            _keep_masked(item, old_list[i] if i < len(old_list) else None, secret=secret)
            for i, item in enumerate(new)
        ]
        return items if any(a is not b for a, b in zip(items, new, strict=True)) else new
    if secret and new == MASK:
        # Nothing stored behind the mask (a copied flow): "" means "not set" to the nodes.
        return old if isinstance(old, str) and old != MASK else ""
    if isinstance(new, str) and not secret:
        nested = _json_object_text(new)
        old_nested = _json_object_text(old) if isinstance(old, str) else None
        if nested is not None:
            merged = _keep_masked(nested, old_nested or {})
            if merged is not nested:
                return json.dumps(merged)
    return new


def flow_data_keep_secrets(flow_data: str, stored: str | None) -> str:
    """Return flowData where every masked secret keeps the stored chatflow's value.

    A client that read a chatflow (secrets masked) and sends it back unchanged must not wipe
    the secrets; nodes are matched by id. A mask with nothing stored behind it becomes "".
    """
    try:
        old_nodes = {str(n.get("id")): n for n in _nodes(json.loads(stored or "{}"))}
    except ValueError:
        old_nodes = {}

    def keep(inputs: dict[str, Any], node: dict[str, Any]) -> Any:
        old = old_nodes.get(str(node.get("id")), {}).get("data", {})
        old_inputs = old.get("inputs") if isinstance(old, dict) else None
        return _keep_masked(inputs, old_inputs if isinstance(old_inputs, dict) else {})

    return _map_flow_inputs(flow_data, keep)
