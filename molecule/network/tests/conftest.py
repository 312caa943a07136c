"""Shared helpers for the network scenario's verify step."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from scripts.containers import docker, wait_for  # noqa: F401 - the tests import both from here

NM = "airgap-pypi-net-nm"
IFUPDOWN = "airgap-pypi-net-ifupdown"
PRISTINE = "airgap-pypi-net-pristine"
NETWORKS = ("airgap-pypi-net-0", "airgap-pypi-net-1", "airgap-pypi-net-2")
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
SCENARIO_DIR = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1]))
CONVERGE = SCENARIO_DIR / "converge.yml"
# Paths every running container changes by itself (boot, systemd, Ansible's own temporary files).
IGNORED = re.compile(r"^[ACD] /(root/\.ansible|root/\.ansible_async|tmp|run|var/log|var/tmp|var/lib/systemd)(/|$)")


def on(container: str, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command in a container."""
    return docker("exec", container, *args, check=check)


def addresses(container: str, interface: str) -> list[str]:
    """The IPv4 addresses (with prefix length) on an interface of a container."""
    out = on(container, "ip", "-4", "-o", "address", "show", "dev", interface).stdout
    return re.findall(r"\binet (\S+)", out)


def changes_of(container: str) -> set[str]:
    """docker diff of a container, without what any running container changes by itself."""
    return {line for line in docker("diff", container).stdout.splitlines() if not IGNORED.match(line)}


def scenario_vars() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(vars of group network_hosts, host_vars) as molecule.yml gives them to the converge run."""
    inventory = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["provisioner"]["inventory"]
    group = dict(inventory["group_vars"]["all"], **inventory["group_vars"]["network_hosts"])
    return group, inventory["host_vars"]


def write_inventory(path: Path, hosts: dict[str, dict[str, Any]], group: dict[str, Any]) -> Path:
    """A JSON inventory: the given hosts, with their own vars, in group network_hosts (what converge.yml runs on)."""
    path.write_text(json.dumps({"network_hosts": {"hosts": hosts, "vars": group}}))
    return path


def playbook(inventory: Path, *args: str, playbook_file: Path = CONVERGE) -> subprocess.CompletedProcess[str]:
    """Run a playbook with the JSON callback (one JSON document on stdout)."""
    return subprocess.run(
        playbook_argv(inventory, *args, playbook_file=playbook_file),
        check=False,
        capture_output=True,
        text=True,
        env=playbook_env(),
        cwd=PROJECT_DIR,
        timeout=900,
    )


def playbook_argv(inventory: Path, *args: str, playbook_file: Path = CONVERGE) -> list[str]:
    return ["ansible-playbook", "-i", str(inventory), str(playbook_file), *args]


def playbook_env() -> dict[str, str]:
    return dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )


def report(stdout: str) -> dict[str, Any]:
    """The JSON callback's document (the text before it, if any, is warnings)."""
    return json.loads(stdout[stdout.index("{") :])


def failures(document: dict[str, Any]) -> dict[str, str]:
    """{host: message} of every failed task, whitespace folded."""
    found: dict[str, str] = {}
    for play in document["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if result.get("failed"):
                    found[host] = " ".join(str(result.get("msg", "")).split())
    return found


def task_results(document: dict[str, Any], name_part: str) -> dict[str, dict[str, Any]]:
    """{host: result} of the last task whose name contains name_part."""
    found: dict[str, dict[str, Any]] = {}
    for play in document["plays"]:
        for task in play["tasks"]:
            if name_part in task["task"]["name"]:
                found.update(task["hosts"])
    return found
