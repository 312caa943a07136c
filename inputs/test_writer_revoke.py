"""A writer whose inventory no longer lists replicas (roles/pypi_replica/tasks/writer_revoke.yml): the keys of the
replicas it had are dropped from the role's keys file and their open SSH sessions ended, by the replicas' user's
uid and sshd's process names only; a keys file that is not the role's, an account that is not the role's and
check mode change nothing.

Each case is a pristine container (scripts/pristine.py) that a case's preparation gives what a writer with
replicas had: the role's account, its keys file and, as stand-ins for the replicas' sshd sessions, processes
named `sshd` (a copy of sleep: pkill -x matches the process name) of that account and of root. One playbook run
includes the task file on all of them; a play of its own runs one case in check mode.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from scripts.containers import docker, role_play, wait_for
from scripts.pristine import PREFIX, Case, Outcome, bad_input_runs

PROJECT_DIR = Path(__file__).resolve().parents[1]
ROLE_VARS = PROJECT_DIR / "roles" / "pypi_replica" / "vars" / "main.yml"
IGNORED = re.compile(r"^[ACD] /(root/\.ansible|tmp|run|var/log)(/|$)")
USER = "pypi-replica"  # pypi_replica_user's default
HOME = "/var/lib/pypi-replica"  # pypi_replica_home's default
KEYS = f"{HOME}/.ssh/authorized_keys"
KEY_LINE = (
    'command="rsync --server --daemon ." ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qtb25seS1ub3QtYS1rZXk replica1'
)
CHECK_CASE = "revoke-check"
# The stand-ins: the replicas' sessions (the user's sshd), root's sshd and another process of the user.
STARTED = ((USER, "/usr/local/sbin/sshd"), ("root", "/usr/local/sbin/sshd"), (USER, "sleep"))
ALL = {(USER, "sshd"), ("root", "sshd"), (USER, "sleep")}


def keys_header() -> str:
    """The role's first line of its keys file, from its vars (the one place it is written)."""
    role_vars = yaml.safe_load(ROLE_VARS.read_text())
    header = role_vars["__pypi_replica_keys_header"].replace(
        "{{ __pypi_replica_written_by }}", role_vars["__pypi_replica_written_by"]
    )
    assert "{{" not in header, header
    return header


def as_writer(keys: str | None, name: str) -> None:
    """Give a pristine container what a writer with replicas had: the role's account, keys (None: no file) and
    processes named sshd of that account and of root, and another process of the account."""
    setup = [
        f"useradd --system --home-dir {HOME} --no-create-home --shell /bin/sh {USER}",
        "cp /bin/sleep /usr/local/sbin/sshd",
    ]
    if keys is not None:
        setup += [f"mkdir -p {HOME}/.ssh", f'printf %s "$1" >{KEYS}', f"chmod 0644 {KEYS}"]
    docker("exec", name, "sh", "-c", " && ".join(setup), "sh", keys or "")
    for user, program in STARTED:
        docker("exec", "-d", "-u", user, name, program, "3600")
    assert wait_for(lambda: processes(name) == ALL, 10, step=0.2), processes(name)


def processes(name: str) -> set[tuple[str, str]]:
    """(user, process name) of the container's stand-in processes (sshd and sleep)."""
    done = docker("exec", name, "ps", "-eo", "user:32=,comm=")
    rows = {tuple(line.split(None, 1)) for line in done.stdout.splitlines() if line.strip()}
    return {(user, comm.strip()) for user, comm in rows if comm.strip() in {"sshd", "sleep"}}


def changes(outcome: Outcome) -> list[str]:
    """docker diff's entries that the run changed, but for /root: Ansible's first file transfer (the copy
    module's, also in check mode) makes /root/.ansible, whose contents IGNORED leaves out."""
    return sorted(entry for entry in outcome.after ^ outcome.before if entry != "C /root")


def keys_file(name: str) -> str:
    done = docker("exec", name, "sh", "-c", f"stat -c '%U %G %a' {KEYS} && cat {KEYS}", check=False)
    return done.stdout if done.returncode == 0 else "(no file)"


@pytest.fixture(scope="module")
def revoked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case's container after one run of writer_revoke.yml (the check case's in check mode)."""
    workdir = tmp_path_factory.mktemp("writer-revoke")
    header = keys_header()
    role_keys = f"{header}\n{KEY_LINE}\n"
    cases = [
        Case("revoke-keys", prepare=functools.partial(as_writer, role_keys)),
        Case(CHECK_CASE, prepare=functools.partial(as_writer, role_keys)),
        Case("revoke-foreign", prepare=functools.partial(as_writer, f"{KEY_LINE}\n")),
        Case("revoke-done", prepare=functools.partial(as_writer, f"{header}\n")),
        Case("revoke-never", prepare=functools.partial(as_writer, None)),
        Case("revoke-root", {"pypi_replica_user": "root"}, prepare=functools.partial(as_writer, role_keys)),
    ]
    playbook = workdir / "revoke.yml"
    plays = [
        role_play("pypi_replica", "writer_revoke", {}, hosts=f"pypi_servers:!{PREFIX}{CHECK_CASE}"),
        {**role_play("pypi_replica", "writer_revoke", {}, hosts=f"{PREFIX}{CHECK_CASE}"), "check_mode": True},
    ]
    playbook.write_text(json.dumps(plays, indent=1))
    with bad_input_runs(
        cases,
        playbook=playbook,
        project=PROJECT_DIR,
        workdir=workdir,
        group="pypi_servers",
        group_vars={"ansible_connection": "community.docker.docker"},
        image="airgap-pypi/debian12-sysv:latest",
        init="sysv",
        ignored=IGNORED,
        timeout=300,
    ) as outcomes:
        yield {
            case: {"outcome": outcome, "keys": keys_file(outcome.host), "processes": processes(outcome.host)}
            for case, outcome in outcomes.items()
        }


def test_dropped_keys_leave_only_the_header_and_end_only_the_users_sshd(revoked: dict) -> None:
    case = revoked["revoke-keys"]
    tail = case["outcome"].output[-3000:]
    assert case["outcome"].counts.get("failed") == 0, tail
    assert case["keys"] == f"root root 644\n{keys_header()}\n", case["keys"]
    # Only the replicas' user's sshd ended: root's process of that name and the user's other process stay.
    assert case["processes"] == {("root", "sshd"), (USER, "sleep")}, (case["processes"], tail)
    assert case["outcome"].counts.get("changed", 0) >= 2, tail  # the keys file and the sessions


def test_check_mode_reports_the_change_and_changes_nothing(revoked: dict) -> None:
    case = revoked[CHECK_CASE]
    tail = case["outcome"].output[-3000:]
    assert case["outcome"].counts.get("failed") == 0, tail
    assert case["outcome"].counts.get("changed", 0) >= 1, tail
    assert case["keys"] == f"root root 644\n{keys_header()}\n{KEY_LINE}\n", case["keys"]
    assert case["processes"] == ALL, (case["processes"], tail)
    assert not changes(case["outcome"]), changes(case["outcome"])


@pytest.mark.parametrize(
    ("case", "keys"),
    [
        ("revoke-foreign", f"root root 644\n{KEY_LINE}\n"),  # no header: not the role's file
        ("revoke-done", None),  # the header alone: nothing left to drop
        ("revoke-never", "(no file)"),  # an index that never had replicas
    ],
)
def test_nothing_to_drop_changes_nothing(revoked: dict, case: str, keys: str | None) -> None:
    found = revoked[case]
    tail = found["outcome"].output[-3000:]
    assert found["outcome"].counts.get("failed") == 0, tail
    assert found["outcome"].counts.get("changed") == 0, tail
    assert found["keys"] == (keys if keys is not None else f"root root 644\n{keys_header()}\n"), found["keys"]
    assert found["processes"] == ALL, (found["processes"], tail)
    assert not changes(found["outcome"]), changes(found["outcome"])


def test_an_account_of_the_hosts_own_is_refused_before_any_change(revoked: dict) -> None:
    found = revoked["revoke-root"]
    tail = found["outcome"].output[-3000:]
    assert found["outcome"].counts.get("failed") == 1, tail
    assert 'pypi_replica_user="root" is an account' in found["outcome"].text, found["outcome"].text
    assert found["keys"] == f"root root 644\n{keys_header()}\n{KEY_LINE}\n", found["keys"]
    assert found["processes"] == ALL, (found["processes"], tail)
    assert not changes(found["outcome"]), changes(found["outcome"])
