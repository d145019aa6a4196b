"""Encrypt secrets at rest with a Fernet key derived from SECRET_KEY (and SECRET_KEY_FALLBACKS).

Encrypted values are strings `fsenc:v1:<fernet token>`, so plain (legacy) and encrypted values
can live side by side and nothing is encrypted twice. The key is HKDF-SHA256 of SECRET_KEY:
rotating SECRET_KEY needs the old one in SECRET_KEY_FALLBACKS until every value was re-saved.
"""

from __future__ import annotations

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

PREFIX = "fsenc:v1:"
_SALT = b"flowsite.secrets"
_INFO = b"flowsite node-input secrets v1"


class SecretUndecryptable(Exception):
    """A stored secret was encrypted with a key this process does not have."""


def _fernet_key(secret_key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


@lru_cache(maxsize=4)
def _fernet(secret_key: str, fallbacks: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(key)) for key in (secret_key, *fallbacks)])


def fernet() -> MultiFernet:
    """Return the instance's cipher: SECRET_KEY first, then SECRET_KEY_FALLBACKS for reading."""
    fallbacks = tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
    return _fernet(settings.SECRET_KEY, fallbacks)


def is_encrypted(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def encrypt(value: str) -> str:
    """Return value encrypted (an already encrypted value is returned unchanged)."""
    if is_encrypted(value):
        return value
    return PREFIX + fernet().encrypt(value.encode()).decode("ascii")


def decrypt(value: str) -> str:
    """Return the plain text of an encrypted value (a plain value is returned unchanged).

    Raises SecretUndecryptable when no configured key opens it (SECRET_KEY changed).
    """
    if not is_encrypted(value):
        return value
    try:
        return fernet().decrypt(value[len(PREFIX) :].encode("ascii")).decode()
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise SecretUndecryptable(
            "a stored secret cannot be decrypted with SECRET_KEY or SECRET_KEY_FALLBACKS"
        ) from exc
