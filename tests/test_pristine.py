"""The bad-input harness's owner labels (scripts/pristine.py): which runs surely ended, which surely run."""

from __future__ import annotations

import os
import subprocess

from scripts.pristine import OWNER_PARTS, new_owner, owner_state


def label(**changes: str) -> str:
    """This process's owner label with some of its parts changed."""
    parts = dict(zip(OWNER_PARTS, new_owner().split("/"), strict=True))
    return "/".join({**parts, **changes}.values())


def ended_pid() -> str:
    ended = subprocess.Popen(["true"])
    ended.wait()
    return str(ended.pid)


def test_this_process_is_alive() -> None:
    assert owner_state(new_owner()) == "alive"
    assert new_owner().split("/")[4] == str(os.getpid())


def test_an_ended_process_is_gone() -> None:
    assert owner_state(label(pid=ended_pid())) == "gone"


def test_a_pid_that_now_names_another_process_is_gone() -> None:
    assert owner_state(label(started=str(int(new_owner().split("/")[5]) + 1))) == "gone"


def test_a_process_of_an_earlier_boot_is_gone() -> None:
    assert owner_state(label(boot="00000000-0000-0000-0000-000000000000", pid=ended_pid())) == "gone"


def test_another_machine_namespace_or_label_format_is_unknown() -> None:
    # Another host, another machine, another PID namespace (a CI job's container on the same kernel): its PIDs
    # cannot be looked up here, even when the boot is the same one and the PID is not in use here.
    for changes in ({"host": "another-host"}, {"machine": "0" * 32}, {"pid_namespace": "1"}):
        assert owner_state(label(pid=ended_pid(), **changes)) == "unknown", changes
    # The earlier label (a random part only), or none that can be read.
    for text in ("6eafdac9890c4b88a9d9174c669cb18a", "", "a/b/c", label(pid="x")):
        assert owner_state(text) == "unknown", text
