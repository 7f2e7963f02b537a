"""``tim4rec serve``'s own socket: answers leave without waiting on Nagle's algorithm."""

from __future__ import annotations

import http.client
import socket
import statistics
import time

from tests.serving.conftest import Server, free_port
from tim4rec.serving.server import listen


def test_the_listening_socket_turns_nagle_off():
    listener = listen("127.0.0.1", free_port())
    try:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0  # accepted sockets inherit it
    finally:
        listener.close()


def test_a_kept_alive_connection_is_answered_without_a_delayed_ack_stall(server: Server):
    """The answer's head and body are written apart; with Nagle on, the body waited for the client's delayed
    acknowledgement (about 40 ms on Linux) on every request of a kept-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    seconds = []
    for _ in range(15):
        started = time.perf_counter()
        connection.request("GET", "/health")
        connection.getresponse().read()
        seconds.append(time.perf_counter() - started)
    connection.close()
    assert statistics.median(seconds[5:]) < 0.02, seconds
