"""flowsite.runtime.send_twisted_writes_at_once: daphne's TCP writes, on real sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import protocol, tcp

from flowsite.runtime import send_twisted_writes_at_once

ROOT = Path(__file__).resolve().parents[3]


class Reactor:
    """What a connection asks of the reactor (Twisted's method names), recorded, not done."""

    def __init__(self) -> None:
        self.writers: set = set()
        self.writers_added = 0

    def addWriter(self, writer) -> None:
        self.writers.add(writer)
        self.writers_added += 1

    def removeWriter(self, writer) -> None:
        self.writers.discard(writer)

    def addReader(self, reader) -> None:
        pass

    def removeReader(self, reader) -> None:
        pass


@pytest.fixture
def connection(monkeypatch):
    """A daphne-side TCP connection of the patched class, and the client's socket."""
    monkeypatch.setattr(tcp.Port, "transport", tcp.Server)  # undone after
    send_twisted_writes_at_once()
    send_twisted_writes_at_once()  # once is enough
    assert tcp.Port.transport.__mro__[1] is tcp.Server

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, address = listener.accept()
    reactor = Reactor()
    transport = tcp.Port.transport(accepted, protocol.Protocol(), address, None, 1, reactor)
    yield transport, client, reactor
    client.close()
    accepted.close()


def _read(client: socket.socket, size: int) -> bytes:
    client.settimeout(5)
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        assert chunk, "the connection closed early"
        data += chunk
    return data


def test_a_write_the_socket_can_take_is_sent_without_the_event_loop(connection):
    transport, client, reactor = connection

    transport.write(b"data: one\n\n")
    transport.writeSequence([b"data: ", b"two\n\n"])

    assert _read(client, 22) == b"data: one\n\ndata: two\n\n"
    assert reactor.writers_added == 0
    assert transport.dataBuffer == b""
    assert not transport._tempDataBuffer


def test_what_the_socket_cannot_take_goes_later_and_in_order(connection):
    transport, client, reactor = connection
    big = bytes(range(256)) * 64 * 1024  # 16 MB: more than the socket buffers hold

    transport.write(big)
    assert reactor.writers == {transport}  # the rest waits for the socket
    transport.write(b"after")  # must not overtake what waits
    transport.writeSequence([b"and ", b"later"])

    received = bytearray()
    client.setblocking(False)
    while reactor.writers:
        transport.doWrite()  # what the reactor does when the socket can take more
        with contextlib.suppress(BlockingIOError):
            received += client.recv(1 << 20)
    received += _read(client, len(big) + 14 - len(received))

    assert bytes(received) == big + b"afterand later"
    transport.write(b"!")  # the buffer is empty again: at once
    assert _read(client, 1) == b"!"
    assert reactor.writers == set()


def test_a_write_to_a_lost_connection_is_left_to_twisted(connection):
    transport, _, reactor = connection
    transport.socket.shutdown(socket.SHUT_WR)  # send() now fails with EPIPE

    transport.write(b"data: lost\n\n")  # does not raise

    assert reactor.writers == {transport}
    assert isinstance(transport.doWrite(), Exception)  # Twisted's path reports the loss


def test_a_closing_connection_writes_the_way_twisted_does(connection):
    transport, _, reactor = connection
    transport.loseConnection()
    added = reactor.writers_added

    transport.write(b"data: last\n\n")

    assert transport._tempDataBuffer == [b"data: last\n\n"]
    assert reactor.writers_added == added + 1


def test_daphne_loading_the_application_gets_the_tuned_connections() -> None:
    probe = (
        "import flowsite.asgi\n"
        "from daphne.http_protocol import WebRequest\n"
        "from twisted.internet import tcp\n"
        "print(tcp.Port.transport.sends_writes_at_once, WebRequest.skips_form_parsing)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "flowsite.settings"}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
