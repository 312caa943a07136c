"""roles/pypi_replica/tasks/user_check.yml: the replicas' user is never an account the host already has."""

from __future__ import annotations

import pwd
import sys
from pathlib import Path

import pytest
from conftest import run_playbook

from scripts.containers import role_play

HOME = "/var/lib/pypi-replica"


def check(tmp_path: Path, user: str) -> str:
    """Run the role's user check on this machine (read-only: getent and an assert); what it said."""
    settings = {"pypi_replica_user": user, "pypi_replica_home": HOME}
    play = role_play("pypi_replica", "user_check", settings, python=sys.executable)
    play["connection"] = "local"
    done = run_playbook([play], tmp_path / "play.json")
    said = " ".join((done.stdout + done.stderr).split())
    return ("ok " if done.returncode == 0 else "failed ") + said


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_an_account_of_the_hosts_own_is_refused_naming_it(tmp_path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    assert entry.pw_dir != HOME
    said = check(tmp_path, user)
    assert said.startswith("failed "), said[-2000:]
    assert f'pypi_replica_user="{user}" is an account localhost already has (uid {entry.pw_uid}' in said, said[-2000:]
    assert "Set pypi_replica_user to a name of its own" in said, said[-2000:]


def test_a_name_no_account_has_passes(tmp_path: Path) -> None:
    name = "airgap-test-no-such-user"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    said = check(tmp_path, name)
    assert said.startswith("ok "), said[-2000:]


@pytest.mark.parametrize("user", ["0", "nobody,root", "Root"])
def test_a_uid_or_a_list_of_users_is_refused_as_no_user_name(tmp_path: Path, user: str) -> None:
    # getent files an entry under the account's name: "0" would be looked up as root and found under no key.
    said = check(tmp_path, user)
    assert said.startswith("failed "), said[-2000:]
    assert f'pypi_replica_user="{user}" on localhost must be a user name' in said, said[-2000:]
