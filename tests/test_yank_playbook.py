"""playbooks/yank.yml and the pypi_server role's `yank` entry point, run for real on localhost against an index
laid out as the role lays it out (the module copied into the configuration directory, a virtualenv whose python
is the tests' own): the -e names, changed reporting, check mode, a refusal, the undo, and a missing name."""

from __future__ import annotations

import getpass
import grp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from scripts.demo_wheel import build_wheel

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"


def make_host(base: Path, *versions: str) -> dict[str, Path]:
    """An index host's layout under base (demo's wheels of versions, an empty htpasswd), its pages written by the
    sync as site.yml runs it, and an inventory of one pypi_servers host (this machine) that points the role's
    variables at it."""
    data, config, venv = base / "data", base / "etc", base / "venv"
    packages, static = data / "packages", data / "static"
    packages.mkdir(parents=True)
    (data / "audit").mkdir(mode=0o750)  # the audit trail's directory, as site.yml makes it
    config.mkdir()
    (config / "htpasswd").write_text("")
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"  # the tests' Python, with its packages (a bare link would lose them)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    shutil.copy(MODULE, config)
    for version in versions:
        build_wheel(packages, "demo", version)
    subprocess.run(
        [sys.executable, str(MODULE), "--packages", str(packages), "--tree", str(static)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    layout = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "pypi_server_data_dir": str(data),
        "pypi_server_packages_dir": str(packages),
        "pypi_server_static_dir": str(static),
        "pypi_server_config_dir": str(config),
        "pypi_server_venv": str(venv),
        "pypi_server_user": getpass.getuser(),
        "pypi_server_group": grp.getgrgid(os.getgid()).gr_name,
    }
    inventory = base / "inventory.json"
    inventory.write_text(json.dumps({"all": {"children": {"pypi_servers": {"hosts": {"localhost": layout}}}}}))
    return {
        "inventory": inventory,
        "packages": packages,
        "static": static,
        "page": static / "simple" / "demo" / "index.html",
        "yanked": data / "yanked.json",
        "audit": data / "audit",
    }


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    return make_host(tmp_path, "1.0", "2.0")


def yank(host: dict[str, Path], *args: str, playbook: str = "playbooks/yank.yml") -> subprocess.CompletedProcess[str]:
    """ansible-playbook playbooks/yank.yml (or another) with args, as an operator runs it (from the repository's
    top)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    command = str(Path(sys.executable).with_name("ansible-playbook"))
    return subprocess.run(
        [command, "-i", str(host["inventory"]), playbook, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )


def changed(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    recap = re.search(r"localhost\s*: ok=\d+\s+changed=(\d+)", done.stdout)
    assert recap, done.stdout[-2000:]
    return int(recap[1])


def audit_records(host: dict[str, Path]) -> list[tuple[str, str, str, str, str]]:
    """(action, account, client, project, version) of each line of the host's audit trail."""
    lines = (host["audit"] / "audit.jsonl").read_text().splitlines()
    return [(r["action"], r["account"], r["client"], r["project"], r["version"]) for r in map(json.loads, lines)]


def test_yank_reports_changed_once_and_check_mode_writes_nothing(host: dict[str, Path]) -> None:
    # Quoted inside the argument, as the playbook says: Ansible splits a bare key=value at spaces.
    what = ("-e", "project=Demo", "-e", "version=2.0", "-e", 'reason="-broken <b>build</b>"')
    assert changed(yank(host, *what, "--check")) == 1, "check mode says it would change"
    assert not host["yanked"].exists() and "data-yanked" not in host["page"].read_text()
    done = yank(host, *what)
    assert changed(done) == 1 and "demo 2.0 is yanked: -broken <b>build</b>" in done.stdout
    assert 'data-yanked="-broken &lt;b&gt;build&lt;/b&gt;"' in host["page"].read_text(), "on the page on return"
    done = yank(host, *what)
    assert changed(done) == 0 and "already yanked" in done.stdout
    assert changed(yank(host, *what, "--check")) == 0
    # The audit trail: the one change, by the controller's user, from ansible; nothing for check mode or "already".
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or getpass.getuser()
    assert audit_records(host) == [("yank", user, "ansible", "demo", "2.0")]


def test_undo_takes_the_mark_off_and_a_second_undo_changes_nothing(host: dict[str, Path]) -> None:
    assert changed(yank(host, "-e", "project=demo", "-e", "version=2.0")) == 1
    assert 'data-yanked=""' in host["page"].read_text()
    done = yank(host, "-e", "project=demo", "-e", "version=2.0.0", "-e", "undo=true")
    assert changed(done) == 1 and "demo 2.0 is no longer yanked" in done.stdout
    assert "data-yanked" not in host["page"].read_text()
    assert changed(yank(host, "-e", "project=demo", "-e", "version=2.0", "-e", "undo=true")) == 0
    assert [record[0] for record in audit_records(host)] == ["yank", "unyank"], "the undo is recorded once"


def test_a_refusal_fails_with_the_index_message_and_changes_nothing(host: dict[str, Path]) -> None:
    done = yank(host, "-e", "project=demo", "-e", "version=9.9", "-e", "reason=x")
    assert done.returncode != 0
    assert "refused: --version '9.9': demo has no file of this version (its versions: 1.0, 2.0)." in done.stdout
    assert "Nothing was changed." in done.stdout
    assert not host["yanked"].exists()


def test_a_refusal_on_one_host_of_a_fleet_changes_no_host(tmp_path: Path) -> None:
    """Every host checks first: one that lacks the version stops the run before the other is changed."""
    hosts = {"has-it": make_host(tmp_path / "a", "1.0", "2.0"), "lacks-it": make_host(tmp_path / "b", "1.0")}
    fleet = {"all": {"children": {"pypi_servers": {"hosts": {}}}}}
    for name, layout in hosts.items():
        one = json.loads(layout["inventory"].read_text())["all"]["children"]["pypi_servers"]["hosts"]["localhost"]
        fleet["all"]["children"]["pypi_servers"]["hosts"][name] = one
    inventory = tmp_path / "fleet.json"
    inventory.write_text(json.dumps(fleet))
    done = yank({"inventory": inventory}, "-e", "project=demo", "-e", "version=2.0")
    assert done.returncode != 0
    assert "lacks-it: refused: --version '2.0': demo has no file of this version" in done.stdout, done.stdout[-3000:]
    assert not hosts["has-it"]["yanked"].exists(), "the host that has the version was not changed either"
    assert "data-yanked" not in hosts["has-it"]["page"].read_text()
    assert re.search(r"has-it\s*: ok=\d+\s+changed=0", done.stdout), done.stdout[-2000:]


def test_a_missing_project_or_version_stops_before_anything_runs(host: dict[str, Path]) -> None:
    done = yank(host, "-e", "version=2.0")
    assert done.returncode != 0
    assert "Name the release: ansible-playbook playbooks/yank.yml" in done.stdout and "-e project=NAME" in done.stdout
    assert "airgap_pypi_index.py" not in done.stdout, "the command never ran"
    assert not host["yanked"].exists()
