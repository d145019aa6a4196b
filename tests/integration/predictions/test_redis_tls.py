"""REDIS_TLS with base64 PEM in REDIS_CA/CERT/KEY against a real TLS redis-server we start."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.worker.helpers import PROJECT_ROOT, free_port

PROBE = """
import asyncio, django
django.setup()
from channels.layers import get_channel_layer
from django.conf import settings
import django_rq
from predictions.clients import get_async_redis, get_command_pipe, get_sync_redis
from predictions.redispipe import CommandPipe, connection_like
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
print("sync", get_sync_redis().ping())
print("rq", django_rq.get_queue(settings.QUEUE_NAME).connection.ping())
async def main():
    print("async", await get_async_redis().ping())
    print("pipe", (await get_command_pipe().execute("PING")).decode())
    rq_connection = django_rq.get_queue(settings.QUEUE_NAME).connection
    rq_pipe = CommandPipe(connection_like(rq_connection, Retry(NoBackoff(), 0)))
    print("rq pipe", (await rq_pipe.execute("PING")).decode())
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("tls-check", channel)
    await layer.group_send("tls-check", {"type": "x", "n": 1})
    print("layer", (await asyncio.wait_for(layer.receive(channel), 5))["n"])
asyncio.run(main())
"""


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def tls_redis(tmp_path: Path):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; `make test` installs it")
    ca_key = _key()
    ca = _cert("flowsite test CA", ca_key, None, None, ca=True)
    server_key = _key()
    server = _cert("localhost", server_key, ca.subject, ca_key, ca=False)
    client_key = _key()
    client = _cert("flowsite client", client_key, ca.subject, ca_key, ca=False)
    files = {"ca.pem": _pem(ca), "server.pem": _pem(server), "server.key": _pem_key(server_key)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(tmp_path / "server.pem"),
            "--tls-key-file",
            str(tmp_path / "server.key"),
            "--tls-ca-cert-file",
            str(tmp_path / "ca.pem"),
            "--tls-auth-clients",
            "optional",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.05)
    yield {
        "port": port,
        "ca": base64.b64encode(_pem(ca)).decode(),
        "cert": base64.b64encode(_pem(client)).decode(),
        "key": base64.b64encode(_pem_key(client_key)).decode(),
    }
    process.kill()
    process.wait(5)


def _probe(env_extra: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "flowsite.settings",
            "MODE": "queue",
            "FLOWSITE_HOME": str(home),
            "REDIS_CONNECT_TIMEOUT": "2",
            **env_extra,
        }
    )
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_redis_tls_with_base64_ca_feeds_every_client(tls_redis, tmp_path):
    result = _probe(
        {
            "REDIS_TLS": "true",
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(tls_redis["port"]),
            "REDIS_CA": tls_redis["ca"],
            "REDIS_CERT": tls_redis["cert"],
            "REDIS_KEY": tls_redis["key"],
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:6] == [
        "sync True",
        "rq True",
        "async True",
        "pipe PONG",
        "rq pipe PONG",
        "layer 1",
    ]
    key_file = tmp_path / "tls" / "key.pem"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_redis_tls_url_form_works(tls_redis, tmp_path):
    result = _probe(
        {"REDIS_URL": f"rediss://127.0.0.1:{tls_redis['port']}/0", "REDIS_CA": tls_redis["ca"]},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layer 1" in result.stdout


def test_redis_tls_refuses_a_server_it_cannot_verify(tls_redis, tmp_path):
    result = _probe(
        {"REDIS_TLS": "true", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(tls_redis["port"])},
        tmp_path,
    )
    assert result.returncode != 0
    assert "certificate verify failed" in result.stderr.lower()
