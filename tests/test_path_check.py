"""The path check module reports what is at a path without changing it: real path through symlinks, kind, owner,
a bounded list of names; and, run as Ansible runs it, in check mode too."""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
from pathlib import Path

from conftest import load_module, module_argv

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "roles" / "pypi_server" / "library" / "pypi_server_path_check.py"
path_check = load_module("pypi_server_path_check", MODULE)
filters = load_module("pypi_server_filters", ROOT / "roles" / "pypi_server" / "filter_plugins" / "pypi_server.py")
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name
NOBODY = 65534


def test_nothing_there(tmp_path: Path) -> None:
    facts = path_check.look(str(tmp_path / "none" / "deeper"), 8)
    assert facts["exists"] is False and facts["kind"] == "missing"
    assert facts["realpath"] == str(tmp_path / "none" / "deeper")


def test_a_relative_path_is_not_looked_at() -> None:
    assert path_check.look("etc", 8)["exists"] is False


def test_a_symlink_to_a_system_like_directory_is_resolved(tmp_path: Path) -> None:
    system = tmp_path / "etc"
    system.mkdir()
    (system / "passwd").write_text("root:x:0:0\n")
    (tmp_path / "srv").mkdir()
    link = tmp_path / "srv" / "pypi"
    link.symlink_to(system)
    facts = path_check.look(str(link), 8)
    assert facts["exists"] and facts["link"] and facts["link_target"] == str(system)
    assert facts["realpath"] == str(system) and facts["kind"] == "directory"
    assert facts["entries"] == ["passwd"] and facts["owner"] == OWNER
    # Below the link: the real path of a path that does not exist yet.
    assert path_check.look(str(link / "packages"), 8)["realpath"] == str(system / "packages")
    assert system.is_dir() and not (system / "packages").exists()


def test_the_names_read_are_bounded(tmp_path: Path) -> None:
    for index in range(10):
        (tmp_path / f"f{index}").touch()
    facts = path_check.look(str(tmp_path), 3)
    assert len(facts["entries"]) == 3 and facts["more"] is True
    assert path_check.first_entries(str(tmp_path), 10) == (sorted(f"f{index}" for index in range(10)), False)


def test_empty_file_and_dangling_link(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    empty = path_check.look(str(tmp_path / "empty"), 8)
    assert empty["kind"] == "directory" and empty["entries"] == [] and empty["more"] is False
    assert path_check.look(str(tmp_path / "file"), 8)["kind"] == "file"
    dangling = path_check.look(str(tmp_path / "dangling"), 8)
    assert dangling["exists"] and dangling["link"] and dangling["kind"] == "missing"


def test_probes_do_not_follow_symlinks_on_the_way(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pypi-server").touch()
    (tmp_path / "elsewhere" / "bin").mkdir(parents=True)
    (tmp_path / "elsewhere" / "bin" / "pypi-server").touch()
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "bin").symlink_to(tmp_path / "elsewhere" / "bin")
    probes = ["bin/pypi-server", "bin/gunicorn", "../venv/bin/pypi-server", ""]
    assert path_check.look(str(venv), 8, probes)["present"] == ["bin/pypi-server"]
    assert path_check.look(str(tmp_path / "linked"), 8, probes)["present"] == []
    assert path_check.look(str(tmp_path / "none"), 8, probes)["present"] == []


def test_unknown_ids_are_reported_as_numbers() -> None:
    assert path_check.user_name(2**31 - 7) == str(2**31 - 7)
    assert path_check.group_name(2**31 - 7) == str(2**31 - 7)


def test_the_filter_decides_from_what_the_module_saw(tmp_path: Path) -> None:
    """Owned by the index's account: taken. Someone else's and not empty: refused."""
    owned = tmp_path / "owned"
    owned.mkdir()
    (owned / "a-1.0.tar.gz").touch()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "report.csv").touch()
    index_user = OWNER
    if os.getuid() == 0:  # root is never the index's account: give the directory to another one
        os.chown(owned, NOBODY, -1)
        index_user = path_check.user_name(NOBODY)
    settings = {"pypi_server_user": index_user, "pypi_server_group": "pypiserver"}
    host = {"pypi_server_packages_dir": path_check.look(str(owned), 8)}
    assert filters.pypi_server_problems(settings | {"pypi_server_packages_dir": str(owned)}, host) == []
    host = {"pypi_server_packages_dir": path_check.look(str(foreign), 8)}
    other = {"pypi_server_user": "pypiserver", "pypi_server_packages_dir": str(foreign)}
    found = filters.pypi_server_problems(settings | other, host)
    assert len(found) == 1 and f"belongs to {OWNER}:{GROUP}" in found[0]


def test_runs_as_ansible_runs_it_in_check_mode(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    args = tmp_path / "args.json"
    (tmp_path / "dir" / "bin").mkdir()
    (tmp_path / "dir" / "bin" / "pypi-server").touch()
    params = {
        "paths": {"a": str(tmp_path / "dir"), "b": str(tmp_path / "none")},
        "probes": {"a": ["bin/pypi-server"]},
        "_ansible_check_mode": True,
    }
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)
    assert not result.get("failed") and result["changed"] is False, result
    assert result["paths"]["a"]["kind"] == "directory" and result["paths"]["b"]["exists"] is False
    assert result["paths"]["a"]["present"] == ["bin/pypi-server"] and result["paths"]["b"]["present"] == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["args.json", "dir"]


def test_the_account_is_reported_as_described_only_when_every_field_matches() -> None:
    me = pwd.getpwuid(os.getuid())
    wanted = {
        "user": me.pw_name,
        "group": grp.getgrgid(me.pw_gid).gr_name,
        "home": me.pw_dir,
        "shell": me.pw_shell,
        "comment": me.pw_gecos,
    }
    assert path_check.account_state(wanted) == {"group": True, "user": True}
    for field, other in (("home", "/srv/elsewhere"), ("shell", "/bin/false"), ("comment", "someone else")):
        assert path_check.account_state({**wanted, field: other}) == {"group": True, "user": False}, field
    assert path_check.account_state({**wanted, "user": "airgap-no-such-user"}) == {"group": True, "user": False}
    assert path_check.account_state({**wanted, "group": "airgap-no-such-group"}) == {"group": False, "user": False}
    other_group = next(group.gr_name for group in grp.getgrall() if group.gr_gid != me.pw_gid)
    assert path_check.account_state({**wanted, "group": other_group}) == {"group": True, "user": False}


def test_a_probe_counts_only_a_regular_file_at_its_end(tmp_path: Path) -> None:
    """A release's marker planted as a link or made a directory does not count as a built release."""
    releases = tmp_path / "releases"
    (releases / "cp311-abc").mkdir(parents=True)
    (releases / "cp311-abc" / ".marker-1").touch()
    (releases / "cp311-abc" / ".marker-2").symlink_to(releases / "cp311-abc" / ".marker-1")
    (releases / "cp311-abc" / ".marker-3").mkdir()
    probes = ["cp311-abc/.marker-1", "cp311-abc/.marker-2", "cp311-abc/.marker-3"]
    assert path_check.look(str(releases), 8, probes)["present"] == ["cp311-abc/.marker-1"]
