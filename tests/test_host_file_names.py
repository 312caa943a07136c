"""Files of a host on the controller are named after its inventory name (the internal CA's hosts/<name>.crt, the
backups' <name>-<digest>.tar.gz): a name that is no plain file name would write outside their directory. The
replica's preflight (read-only, on the controller: it reads the inventory) and the backup playbook stop on it and
name it. The cluster scenario runs the whole preflight on real hosts; this covers names no container can have.
(The index host's TLS preflight: tests/test_tls_preflight.py; tls_cert itself: tests/test_tls_ca.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import run_playbook

ROOT = Path(__file__).resolve().parent.parent
REFUSED = "cannot name this host's files on the controller"
# Replica cases, each a replica of its own, all in one run: {inventory name: (its writer serves HTTPS, refused)}.
REPLICAS = {
    "../escape": (True, True),
    ".hidden": (True, True),
    "replica_1.example.internal": (True, False),
    "../plain": (False, False),  # no certificate, no file of its own on the controller
}


@pytest.fixture(scope="module")
def replica_preflight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The replica preflight over every case at once (ansible.posix.json): {host: {"stats": ..., "failed": msg}}."""
    work = tmp_path_factory.mktemp("replica-names")
    replicas = {
        name: {"pypi_replica_writer": "tls-writer" if tls else "plain-writer"} for name, (tls, _) in REPLICAS.items()
    }
    inventory = {
        "pypi_servers": {"hosts": {"tls-writer": {"pypi_server_tls": True}, "plain-writer": {}}},
        "pypi_replicas": {"hosts": replicas},
        "all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
    }
    (work / "inventory.json").write_text(json.dumps(inventory))
    play = {
        "hosts": "pypi_replicas",
        "gather_facts": False,
        "tasks": [
            {"name": "Preflight", "ansible.builtin.include_role": {"name": "pypi_replica", "tasks_from": "preflight"}}
        ],
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANSIBLE_STDOUT_CALLBACK", "ansible.posix.json")
        done = run_playbook([play], work / "play.json", inventory=str(work / "inventory.json"))
    report = json.loads(done.stdout)
    found: dict[str, dict[str, Any]] = {host: {"stats": stats, "failed": ""} for host, stats in report["stats"].items()}
    for task in report["plays"][0]["tasks"]:
        for host, result in task["hosts"].items():
            if result.get("failed"):
                found[host]["failed"] += " ".join(str(result.get("msg", "")).split())
    return found


@pytest.mark.parametrize("name", list(REPLICAS))
def test_a_replica_name_that_is_no_file_name_stops_only_the_https_preflight(
    replica_preflight: dict[str, dict[str, Any]], name: str
) -> None:
    refused = REPLICAS[name][1]
    outcome = replica_preflight[name]
    assert outcome["stats"].get("ok", 0) > 0, outcome
    if refused:
        assert f"{json.dumps(name)} " + REFUSED in outcome["failed"], outcome
    else:
        assert outcome["failed"] == "" and outcome["stats"].get("failures", 0) == 0, outcome


def test_a_backup_of_a_host_whose_name_is_no_file_name_stops_and_writes_nothing(tmp_path: Path) -> None:
    # The archive would be <backups>/../escape-<digest>.tar.gz: beside the backup directory.
    backups = tmp_path / "kept" / "backups"
    backups.mkdir(parents=True)
    inventory = tmp_path / "inventory.json"
    hosts = {"../escape": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}
    inventory.write_text(json.dumps({"pypi_servers": {"hosts": hosts, "vars": {"pypi_backup_dir": str(backups)}}}))
    play = [{"ansible.builtin.import_playbook": str(ROOT / "playbooks" / "backup.yml")}]
    done = run_playbook(play, tmp_path / "play.json", inventory=str(inventory))
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, out[-3000:]
    assert '"../escape" ' + REFUSED in out, out[-3000:]
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["backups", "inventory.json", "kept", "play.json"]
