"""The port check module finds a real listening socket and its process, from /proc."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from conftest import load_module

ROOT = Path(__file__).resolve().parent.parent
port_check = load_module(
    "pypi_server_port_check", ROOT / "roles" / "pypi_server" / "library" / "pypi_server_port_check.py"
)


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


def test_a_bound_but_not_listening_socket_is_free() -> None:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert port_check.listening_sockets(bound.getsockname()[1]) == {}


def test_user_name_falls_back_to_the_uid() -> None:
    assert port_check.user_name(0) == "root"
    assert port_check.user_name(2**31 - 7) == str(2**31 - 7)
