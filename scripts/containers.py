"""Helpers the Molecule scenarios' tests share: the docker CLI, polling and ansible-playbook runs."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def docker(
    *args: str, check: bool = True, timeout: float = 120, input_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI and return its result (input_file, if given, is its standard input)."""
    if input_file is None:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)
    with input_file.open("rb") as stdin:
        done = subprocess.run(["docker", *args], stdin=stdin, capture_output=True, check=check, timeout=timeout)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def wait_for(predicate: Callable[[], bool], seconds: float, step: float = 0.5) -> bool:
    """Poll predicate until it holds or the time is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# docker run options for a container with systemd as PID 1, without --privileged (scripts/build_images.sh).
SYSTEMD_RUN_OPTIONS = [
    "--cgroupns",
    "host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp",
    "-e",
    "container=docker",
    "--stop-signal",
    "SIGRTMIN+3",
]


def ansible_playbook(
    playbook: Path, inventory: Path, *args: str, project: Path, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook -i inventory playbook args, run in project with its roles and no colour."""
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(project / "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(playbook), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=project,
        timeout=timeout,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """Parse PLAY RECAP lines into {host: {ok: n, changed: n, ...}}."""
    hosts: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        if ":" in line and "=" in line:
            name, counts = line.split(":", 1)
            hosts[name.strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return hosts
