"""Record the wall time of every task of every playbook run to a JSON-lines file (make test's slowest tasks).

Enabled by scripts/test.sh with ANSIBLE_CALLBACKS_ENABLED=task_times and AIRGAP_PYPI_TASK_TIMES=<file>; without
that variable it records nothing. One line per task: the step (AIRGAP_PYPI_STEP), the playbook, the task's name
with its role, its wall seconds from its start to the next task's start (or the end of the play), and how many
hosts ran it and how many skipped it. Lines are appended with one write each, so runs side by side share a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: task_times
    type: aggregate
    short_description: append each task's wall time to the file named by AIRGAP_PYPI_TASK_TIMES
    description:
      - Test harness of airgap-pypi; scripts/test.sh reads the file and prints the slowest tasks.
    requirements:
      - enable with ANSIBLE_CALLBACKS_ENABLED=task_times and set AIRGAP_PYPI_TASK_TIMES
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._path = os.environ.get("AIRGAP_PYPI_TASK_TIMES", "")
        self._step = os.environ.get("AIRGAP_PYPI_STEP", "")
        self._playbook = ""
        self._task: dict[str, Any] | None = None

    def v2_playbook_on_start(self, playbook: Any) -> None:
        self._playbook = Path(getattr(playbook, "_file_name", "") or "").name

    def _start(self, task: Any) -> None:
        self._flush()
        role = getattr(getattr(task, "_role", None), "_role_name", "") or ""
        name = task.get_name().strip()
        self._task = {
            "name": name if not role or name.startswith(role) else f"{role} : {name}",
            "action": task.action,
            "started": time.monotonic(),
            "hosts": 0,
            "skipped": 0,
        }

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._start(task)

    def _count(self, skipped: bool = False) -> None:
        if self._task is not None:
            self._task["hosts"] += 1
            self._task["skipped"] += int(skipped)

    def v2_runner_on_ok(self, result: Any) -> None:
        self._count()

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._count()

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._count()

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._count(skipped=True)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        self._flush()

    def _flush(self) -> None:
        task, self._task = self._task, None
        if task is None or not self._path:
            return
        record = {
            "step": self._step,
            "playbook": self._playbook,
            "task": task["name"],
            "action": task["action"],
            "seconds": round(time.monotonic() - task["started"], 3),
            "hosts": task["hosts"],
            "skipped": task["skipped"],
        }
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        # One O_APPEND write per line: runs side by side (two test lanes) never interleave within a line.
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
