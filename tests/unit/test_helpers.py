"""The shared test helpers keep their promises (a flaky helper fails unrelated tests)."""

from __future__ import annotations

import socket

from tests.helpers import free_port


def test_free_port_never_hands_out_the_same_port_twice_and_each_can_be_bound() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[-5:]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))
