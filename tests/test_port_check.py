"""The shared port reader (pypi_common_port, used by the port check and path check modules) finds a real
listening socket and its process, from /proc."""

from __future__ import annotations

import os
import socket

from ansible.module_utils import pypi_common_port as port_check


def test_finds_a_listening_socket_and_its_owner() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        sockets = port_check.listening_sockets(port)
        assert sockets, f"port {port} not found in /proc/net/tcp"
        assert set(sockets.values()) == {os.getuid()}
        owners = port_check.owners_of(sockets)
        assert os.getpid() in [owner["pid"] for owner in owners]
        facts = port_check.who_listens(port)
        assert facts["in_use"] and os.getpid() in [owner["pid"] for owner in facts["owners"]]


def test_a_bound_but_not_listening_socket_is_free() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert port_check.listening_sockets(bound.getsockname()[1]) == {}


def test_user_name_falls_back_to_the_uid() -> None:
    assert port_check.user_name(0) == "root"
    assert port_check.user_name(2**31 - 7) == str(2**31 - 7)
