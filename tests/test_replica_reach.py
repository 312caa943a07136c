"""The replica's reach check (roles/pypi_replica/tasks/preflight_host.yml): the script its task runs tells a name that
does not resolve (exit 3) from a refused port, which counts as reached (on a first run the writer's SSH server
comes later in the same run). The cluster scenario covers an address with no answer (exit 4) and the task's
message."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

TASKS = Path(__file__).resolve().parents[1] / "roles" / "pypi_replica" / "tasks" / "preflight_host.yml"
TASK = "Try the writer's SSH port from the replica"


def reach(host: str, port: int, prefix: Sequence[str] = ()) -> tuple[int, str]:
    """The task's own script (its argv after the interpreter), run with this Python (after prefix): (exit code, what
    it printed)."""
    task = next(task for task in yaml.safe_load(TASKS.read_text()) if task.get("name") == TASK)
    argv = task["ansible.builtin.command"]["argv"]
    assert argv[1] == "-c", argv
    argv = [*prefix, sys.executable, "-c", argv[2], host, str(port)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr


def test_a_name_that_does_not_resolve_is_not_reached() -> None:
    # In a network namespace of its own (no network at all), so that no query leaves this machine.
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare for a network namespace of its own")
    code, said = reach("writer.invalid", 22, ["unshare", "--net"])
    assert code == 3 and "the name does not resolve" in said, (code, said)


def test_a_name_that_is_no_host_name_is_not_reached() -> None:
    # A label longer than DNS allows: Python refuses it before any lookup (was a traceback, exit 1).
    code, said = reach("x" * 64 + ".invalid", 22)
    assert code == 3 and "the name does not resolve" in said and "label too long" in said, (code, said)


def test_a_refused_port_counts_as_reached_and_an_open_one_answers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert reach("127.0.0.1", port) == (0, "answered\n")
    # The same port, now closed: refused, which a writer whose SSH server is not installed yet answers.
    code, said = reach("127.0.0.1", port)
    assert code == 0 and said.startswith("refused"), (code, said)
