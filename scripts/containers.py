#!/usr/bin/env python3
"""Helpers the Molecule scenarios' tests, the proof and the benchmark share: the docker CLI, the docker run options
of each kind of init (molecule/shared/vars/run-options.yml), polling and ansible-playbook runs.

As a script it prints the run options of one kind of init as docker run flags, one a line, for shell scripts:

    .venv/bin/python scripts/containers.py run-options systemd   (any python3 with PyYAML)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

RUN_OPTIONS_FILE = Path(__file__).resolve().parent.parent / "molecule" / "shared" / "vars" / "run-options.yml"
# community.docker.docker_container's parameter (the file's keys) -> docker run's flag, once per value.
FLAGS = {
    "cgroupns_mode": "--cgroupns",
    "volumes": "-v",
    "capabilities": "--cap-add",
    "tmpfs": "--tmpfs",
    "env": "-e",
    "stop_signal": "--stop-signal",
}


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


def run_options(init: str) -> list[str]:
    """The docker run flags of a container whose PID 1 is init (systemd, sysv or none), in the order
    molecule/shared/vars/run-options.yml gives them: the Molecule scenarios start their containers with the same."""
    kinds = _run_options()
    if init not in kinds:
        raise ValueError(f"no run options for init {init!r} in {RUN_OPTIONS_FILE} (kinds: {', '.join(kinds)})")
    flags: list[str] = []
    for parameter, value in kinds[init].items():
        if parameter not in FLAGS:
            raise ValueError(f"{RUN_OPTIONS_FILE}: {init}.{parameter} has no docker run flag here (FLAGS)")
        if isinstance(value, dict):
            values = [f"{key}={item}" for key, item in value.items()]
        else:
            values = value if isinstance(value, list) else [value]
        flags += [part for item in values for part in (FLAGS[parameter], str(item))]
    return flags


def _run_options() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(RUN_OPTIONS_FILE.read_text(encoding="utf-8"))["airgap_pypi_run_options"]


# A container with systemd as PID 1, as the scenarios start theirs (bench, the proof, the operations scenario).
SYSTEMD_RUN_OPTIONS = run_options("systemd")


def role_play(
    role: str, tasks_from: str, role_vars: dict[str, Any], hosts: str = "localhost", python: str | None = None
) -> dict[str, Any]:
    """A play that runs one task file of a role (include_role tasks_from) with role_vars on hosts, no facts gathered;
    with python, as the hosts' interpreter (the tests' own, for plays on this machine)."""
    return {
        "hosts": hosts,
        "gather_facts": False,
        **({"vars": {"ansible_python_interpreter": python}} if python else {}),
        "tasks": [
            {
                "name": f"{role} {tasks_from}",
                "ansible.builtin.include_role": {"name": role, "tasks_from": tasks_from},
                "vars": role_vars,
            }
        ],
    }


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


def changed_tasks(output: str) -> list[str]:
    """'TASK name -> host' for every task that reported changed in an ansible-playbook output, in order: what a
    check-mode or idempotence assertion should say when it fails."""
    changed, task = [], "?"
    for line in output.splitlines():
        if line.startswith("TASK [") or line.startswith("RUNNING HANDLER ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: ["):
            changed.append(f"{task} -> {line.split('[', 1)[1].split(']', 1)[0]}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the docker run options of a kind of init as docker run flags, one a line "
        f"({RUN_OPTIONS_FILE.relative_to(RUN_OPTIONS_FILE.parents[3])})."
    )
    parser.add_argument("command", choices=["run-options"])
    parser.add_argument("init", choices=list(_run_options()), help="the kind of init of the container's image")
    args = parser.parse_args(argv)
    print("\n".join(run_options(args.init)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
