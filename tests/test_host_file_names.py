"""Files of a host on the controller are named after its inventory name (the internal CA's hosts/<name>.crt, the
backups' <name>-<digest>.tar.gz): a name that is no plain file name would write outside their directory. The
replica's preflight (read-only, on the controller: it reads the inventory) and the backup playbook stop on it and
name it. The cluster scenario runs the whole preflight on real hosts; this covers names no container can have.
(The index host's TLS preflight: tests/test_tls_preflight.py; tls_cert itself: tests/test_tls_ca.py.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_playbook

WRITER = "writer.example.internal"
ROOT = Path(__file__).resolve().parent.parent
REFUSED = "cannot name this host's files on the controller"


def preflight(tmp_path: Path, replica: str, tls: bool) -> str:
    """The replica preflight for one replica of a writer (HTTPS from the internal CA when tls); the run's output."""
    inventory = {
        "pypi_servers": {"hosts": {WRITER: {"pypi_server_tls": tls}}},
        "pypi_replicas": {"hosts": {replica: {}}},
        "all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    play = {
        "hosts": "pypi_replicas",
        "gather_facts": False,
        "tasks": [
            {"name": "Preflight", "ansible.builtin.include_role": {"name": "pypi_replica", "tasks_from": "preflight"}}
        ],
    }
    done = run_playbook([play], tmp_path / "play.json", inventory=str(path))
    return f"rc={done.returncode}\n" + " ".join((done.stdout + done.stderr).split())


@pytest.mark.parametrize("name", ["../escape", ".hidden"])
def test_a_replica_name_that_is_no_file_name_stops_the_https_preflight(tmp_path: Path, name: str) -> None:
    out = preflight(tmp_path, name, tls=True)
    assert out.startswith("rc=2"), out[-3000:]
    assert f"{json.dumps(name)} " + REFUSED in out, out[-3000:]


def test_the_name_is_no_file_name_only_with_https(tmp_path: Path) -> None:
    assert preflight(tmp_path, "../escape", tls=False).startswith("rc=0")


def test_an_underscore_name_passes_the_https_preflight(tmp_path: Path) -> None:
    out = preflight(tmp_path, "replica_1.example.internal", tls=True)
    assert out.startswith("rc=0"), out[-3000:]


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
