"""The bad-input harness's owner labels (scripts/pristine.py): which runs surely ended."""

from __future__ import annotations

import os
import socket
import subprocess

from scripts.pristine import new_owner, owner_gone


def test_this_process_is_never_gone() -> None:
    assert not owner_gone(new_owner())


def test_an_ended_process_is_gone() -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    host, boot, _, _, random = new_owner().split("/")
    assert owner_gone(f"{host}/{boot}/{ended.pid}/12345/{random}")


def test_a_pid_that_now_names_another_process_is_gone() -> None:
    host, boot, pid, started, random = new_owner().split("/")
    assert int(pid) == os.getpid()
    assert owner_gone(f"{host}/{boot}/{pid}/{int(started) + 1}/{random}")


def test_a_process_of_an_earlier_boot_is_gone() -> None:
    host, _, pid, started, random = new_owner().split("/")
    assert owner_gone(f"{host}/00000000-0000-0000-0000-000000000000/{pid}/{started}/{random}")


def test_a_process_on_another_host_or_unknown_may_still_run() -> None:
    _, boot, pid, _, random = new_owner().split("/")
    assert socket.gethostname() != "another-host"
    assert not owner_gone(f"another-host/{boot}/{pid}/1/{random}")
    # A label of the earlier format (a random part only), or none that can be read: not known to be gone.
    for label in ("6eafdac9890c4b88a9d9174c669cb18a", "", "a/b/c", f"{socket.gethostname()}//{pid}/1/{random}"):
        assert not owner_gone(label), label
