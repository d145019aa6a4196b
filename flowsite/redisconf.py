"""One Redis connection config from Flowise variables, for RQ, Channels, events and cancel."""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse


@dataclass(frozen=True)
class RedisConfig:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    keep_alive_ms: int | None = None
    connect_timeout: float = 5.0
    socket_timeout: float = 30.0
    max_connections: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Return the address without credentials (they travel as keyword arguments)."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    @property
    def display(self) -> str:
        return self.url

    def client_kwargs(self) -> dict[str, Any]:
        """Return redis-py keyword arguments shared by every client (sync and asyncio)."""
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout,
            "retry_on_timeout": False,
            "health_check_interval": 30,
        }
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.keep_alive_ms:
            kwargs["socket_keepalive"] = True
            kwargs["health_check_interval"] = max(1, self.keep_alive_ms // 1000)
        if self.tls:
            kwargs["ssl_cert_reqs"] = "required" if self.verify else "none"
            if self.ca_file:
                kwargs["ssl_ca_certs"] = self.ca_file
            if self.cert_file:
                kwargs["ssl_certfile"] = self.cert_file
            if self.key_file:
                kwargs["ssl_keyfile"] = self.key_file
        return kwargs

    def rq_queue(self, *, default_timeout: int, result_ttl: int) -> dict[str, Any]:
        """Return one django-rq RQ_QUEUES entry for this connection."""
        client_kwargs = {
            k: v
            for k, v in self.client_kwargs().items()
            if k not in {"username", "password", "ssl_cert_reqs"}
        }
        return {
            "HOST": self.host,
            "PORT": self.port,
            "DB": self.db,
            "USERNAME": self.username,
            "PASSWORD": self.password,
            "SSL": self.tls,
            "SSL_CERT_REQS": ("required" if self.verify else "none") if self.tls else None,
            "REDIS_CLIENT_KWARGS": client_kwargs,
            "DEFAULT_TIMEOUT": default_timeout,
            "DEFAULT_RESULT_TTL": result_ttl,
        }

    def channel_host(self) -> dict[str, Any]:
        """Return a channels-redis `hosts` entry."""
        kwargs = self.client_kwargs()
        # The channel layer keeps subscriber connections open and idle; a read timeout would
        # tear them down between messages.
        kwargs.pop("socket_timeout", None)
        return {"address": self.url, **kwargs}


def parse_redis_url(url: str) -> dict[str, Any]:
    """Split a redis:// or rediss:// URL into host, port, db, username, password and tls."""
    parsed = urlparse(url)
    db = 0
    path = (parsed.path or "").strip("/")
    if path:
        db = int(path)
    return {
        "host": parsed.hostname or "localhost",
        "port": parsed.port or 6379,
        "db": db,
        "username": unquote(parsed.username) if parsed.username else None,
        "password": unquote(parsed.password) if parsed.password else None,
        "tls": parsed.scheme == "rediss",
    }


def write_pem(home: Path, name: str, b64: str) -> str:
    """Decode a base64 PEM from the environment into a private file and return its path."""
    try:
        content = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc
    if b"-----BEGIN" not in content:
        raise ValueError("base64 decodes to something that is not PEM")
    folder = home / "tls"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    os.chmod(path, 0o600)
    return str(path)


def redact(url: str) -> str:
    """Return a URL with its password replaced, for messages."""
    parsed = urlparse(url)
    if parsed.password:
        # Keep host[:port] as written: parsed.port raises on a malformed port, and this runs
        # exactly when the URL is malformed.
        host = parsed.netloc.rpartition("@")[2]
        netloc = f"{quote(parsed.username or '')}:***@{host}"
        return parsed._replace(netloc=netloc).geturl()
    return url
