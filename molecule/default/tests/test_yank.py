"""Yanking (PEP 592) as a team meets it: playbooks/yank.yml on the front server's host, then real pip on the client
container, through nginx and gunicorn: an unpinned install skips the yanked release, a pinned one takes it and prints
the reason, and the undo brings it back."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CLIENT_BIN, PORT, PROJECT_DIR, on_client, twine_upload
from test_static_index import local_wheel, unique

from scripts.containers import ansible_playbook, recap

HOST = "airgap-pypi-deb12"  # the host with the front server: nginx serves the pages the yank rewrote
INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
REASON = "broken build <do not use>"


def run_yank(*extra: str, **names: object) -> subprocess.CompletedProcess[str]:
    """playbooks/yank.yml on HOST with the -e names given (as JSON: a reason with spaces stays whole)."""
    limit = ("--limit", HOST, "-e", json.dumps(names))
    return ansible_playbook(PROJECT_DIR / "playbooks" / "yank.yml", INVENTORY_DIR, *limit, *extra, project=PROJECT_DIR)


def yank_playbook(*extra: str, **names: object) -> str:
    """run_yank, which must succeed: its output."""
    done = run_yank(*extra, **names)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


def wheel_name(project: str) -> str:
    return project.replace("-", "_")


def pip_download(requirement: str, port: int) -> tuple[int, str]:
    """pip download of requirement (no dependencies) on the client, from HOST's index on port; (rc, output)."""
    done = on_client(
        f"{CLIENT_BIN}/pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--dest",
        "/var/tmp/yank-downloads",
        "--index-url",
        f"http://{HOST}:{port}/simple/",
        requirement,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A project with releases 1.0 and 2.0, uploaded with twine."""
    name = unique("yank-demo")
    wheels = [local_wheel(tmp_path_factory.mktemp(version), name, version)[1] for version in ("1.0", "2.0")]
    done = twine_upload(f"http://{HOST}:{PORT}/", *wheels)
    assert done.returncode == 0, done.stdout + done.stderr
    return name


@pytest.mark.parametrize("port", [PORT, 80], ids=["gunicorn", "nginx"])
def test_pip_skips_a_yanked_release_unless_pinned_and_prints_the_reason(project: str, port: int) -> None:
    yank_playbook(project=project, version="2.0", reason=REASON)
    rc, output = pip_download(project, port)
    assert rc == 0 and f"{wheel_name(project)}-1.0-" in output and "-2.0-" not in output, output
    rc, output = pip_download(f"{project}==2.0", port)
    assert rc == 0 and f"{wheel_name(project)}-2.0-" in output, output
    assert "yanked" in output and f"Reason for being yanked: {REASON}" in output, output


def test_the_undo_brings_the_release_back_and_a_second_run_changes_nothing(project: str) -> None:
    yank_playbook(project=project, version="2.0", reason=REASON)
    output = yank_playbook(project=project, version="2.0", undo=True)
    assert recap(output)[HOST]["changed"] == 1, output[-2000:]
    for port in (PORT, 80):
        rc, output = pip_download(project, port)
        assert rc == 0 and f"{wheel_name(project)}-2.0-" in output, (port, output)
    again = yank_playbook(project=project, version="2.0", undo=True)
    assert recap(again)[HOST]["changed"] == 0, again[-2000:]


def test_a_yank_of_a_version_that_does_not_exist_stops_and_names_it(project: str) -> None:
    done = run_yank(project=project, version="9.9")
    assert done.returncode != 0
    # The failed task's message is on stdout or stderr, depending on the callback and the ansible-core version.
    output = done.stdout + done.stderr
    assert "'9.9'" in output and "Nothing was changed" in output, output[-2000:]
    assert recap(done.stdout)[HOST]["failed"] == 1, done.stdout[-2000:]
