"""The pypi_server role's preflight filter: each bad value named alone with its fix, the defaults and a converged
host accepted, dangerous paths (system directories, overlaps, directories of someone else) refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import load_module

ROOT = Path(__file__).resolve().parent.parent
filters = load_module("pypi_server_filters", ROOT / "roles" / "pypi_server" / "filter_plugins" / "pypi_server.py")
ROLE = ROOT / "roles" / "pypi_server"
path_check = load_module("pypi_server_path_check", ROLE / "library" / "pypi_server_path_check.py")
COMMON = yaml.safe_load((ROOT / "roles" / "pypi_common" / "defaults" / "main.yml").read_text())
DEFAULTS = yaml.safe_load((ROOT / "roles" / "pypi_server" / "defaults" / "main.yml").read_text())

GOOD: dict[str, Any] = {
    "pypi_server_port": 8080,
    "pypi_server_workers": 2,
    "pypi_server_timeout": 120,
    "pypi_server_health_timeout": 60,
    "pypi_server_threads": 4,
    "pypi_server_releases_keep": 3,
    "pypi_server_user": "pypiserver",
    "pypi_server_group": "pypiserver",
    "pypi_server_program_name": "pypiserver",
    "pypi_server_rollback_to": "",
    "pypi_server_users": [{"name": "ci", "password": "secret"}],
    **filters.PATHS,
}


def facts(path: str, **seen: Any) -> dict[str, Any]:
    """What pypi_server_path_check reports for path; by default nothing is there."""
    return path_check.missing(path) | seen


def pristine() -> dict[str, dict[str, Any]]:
    return {name: facts(path) for name, path in filters.PATHS.items()}


def converged() -> dict[str, dict[str, Any]]:
    """A host after a run of site.yml with the defaults, as the role leaves it."""
    release = "/opt/airgap-pypi/releases/cp311-0123456789ab"
    directory = {"exists": True, "kind": "directory"}
    return {
        "pypi_server_data_dir": facts(
            "/srv/pypi", **directory, owner="root", group="pypiserver", entries=["packages", "static"]
        ),
        "pypi_server_packages_dir": facts(
            "/srv/pypi/packages", **directory, owner="pypiserver", group="pypiserver", entries=["a-1.0.tar.gz"]
        ),
        "pypi_server_static_dir": facts(
            "/srv/pypi/static", **directory, owner="pypiserver", group="pypiserver", entries=["simple"]
        ),
        "pypi_server_config_dir": facts(
            "/etc/airgap-pypi",
            **directory,
            owner="root",
            group="pypiserver",
            entries=["gunicorn.conf.py", "htpasswd", "pypiserver_wsgi.py"],
        ),
        "pypi_server_releases_dir": facts(
            "/opt/airgap-pypi/releases",
            **directory,
            owner="root",
            group="root",
            entries=["cp311-0123456789ab", "cp311-ba9876543210", "previous"],
        ),
        "pypi_server_venv": facts(
            "/opt/airgap-pypi/pypiserver",
            **directory,
            link=True,
            link_target=release,
            realpath=release,
            owner="root",
            group="root",
            entries=["bin", "lib", "pyvenv.cfg", ".airgap-pypi-lock-0123456789ab"],
            present=["bin/pypi-server"],
        ),
    }


def problems(host: dict[str, Any] | None = None, **changes: Any) -> list[str]:
    return filters.pypi_server_problems(GOOD | changes, pristine() if host is None else host)


def test_the_examples_are_the_defaults() -> None:
    data_dir = DEFAULTS["pypi_server_data_dir"].replace("{{ pypi_common_data_dir }}", COMMON["pypi_common_data_dir"])
    for name, example in filters.PATHS.items():
        value = str(DEFAULTS[name]).replace("{{ pypi_server_data_dir }}", data_dir)
        assert value.replace("{{ pypi_common_data_dir }}", COMMON["pypi_common_data_dir"]) == example, name


def test_defaults_on_a_pristine_and_on_a_converged_host_pass() -> None:
    assert problems() == []
    assert problems(converged()) == []
    assert filters.pypi_server_problems(GOOD) == []  # without a look at the host


def test_a_legacy_virtualenv_directory_is_the_index_s_own() -> None:
    host = converged()
    host["pypi_server_venv"] |= {"link": False, "link_target": "", "realpath": "/opt/airgap-pypi/pypiserver"}
    host["pypi_server_releases_dir"] = facts("/opt/airgap-pypi/releases")
    assert problems(host) == []


def test_another_virtualenv_of_the_toolkit_is_not_the_index_s() -> None:
    """supervisord's virtualenv has a lock marker too, but not pypiserver: the role would move it away."""
    host = pristine()
    host["pypi_server_venv"] = facts(
        "/opt/airgap-pypi/supervisor",
        exists=True,
        kind="directory",
        owner="root",
        group="root",
        entries=["bin", "lib", "pyvenv.cfg", ".airgap-pypi-lock-0123456789ab"],
    )
    found = problems(host, pypi_server_venv="/opt/airgap-pypi/supervisor")
    assert len(found) == 1 and "is not a virtualenv of the index" in found[0], found


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("pypi_server_port", 0, "pypi_server_port=0: must be 1-65535 (a TCP port)"),
        ("pypi_server_port", 70000, "pypi_server_port=70000: must be 1-65535 (a TCP port)"),
        ("pypi_server_port", "http", "pypi_server_port='http': must be a whole number, 1-65535 (a TCP port)"),
        ("pypi_server_port", True, "pypi_server_port=True: must be a whole number, 1-65535 (a TCP port)"),
        ("pypi_server_workers", 0, "pypi_server_workers=0: must be 1-64 (gunicorn worker processes)"),
        ("pypi_server_workers", "65", "pypi_server_workers=65: must be 1-64 (gunicorn worker processes)"),
        ("pypi_server_timeout", 0, "pypi_server_timeout=0: must be 1 or more (seconds)"),
        ("pypi_server_health_timeout", -5, "pypi_server_health_timeout=-5: must be 1 or more (seconds)"),
        ("pypi_server_threads", 65, "pypi_server_threads=65: must be 1-64 (threads per worker)"),
        ("pypi_server_releases_keep", 1, "pypi_server_releases_keep=1: must be 2 or more"),
    ],
)
def test_each_bad_number_is_reported_alone(name: str, value: Any, message: str) -> None:
    found = problems(**{name: value})
    assert len(found) == 1 and found[0].startswith(message), found
    others = set(filters.NUMBERS) - {name}
    assert not any(other in found[0] for other in others), found


def test_two_bad_numbers_are_two_messages() -> None:
    assert problems(pypi_server_port=0, pypi_server_workers=0) == [
        "pypi_server_port=0: must be 1-65535 (a TCP port)",
        "pypi_server_workers=0: must be 1-64 (gunicorn worker processes)",
    ]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"pypi_server_user": "Bad User"}, "pypi_server_user='Bad User': must match"),
        ({"pypi_server_group": "x" * 40}, "pypi_server_group='xxxx"),
        ({"pypi_server_user": "root"}, "pypi_server_user='root': must be a user of the index's own"),
        ({"pypi_server_group": "root"}, "pypi_server_group='root': must be a group of the index's own"),
        ({"pypi_server_program_name": "a b"}, "pypi_server_program_name='a b': letters, digits"),
        ({"pypi_server_rollback_to": "../x"}, "pypi_server_rollback_to='../x': must be a release id"),
        ({"pypi_server_users": [{"name": "al ice", "password": "x"}]}, "account name 'al ice' must use letters"),
        ({"pypi_server_users": [{"name": "alice", "password": ""}]}, "account 'alice' is without a password"),
        ({"pypi_server_users": [{"name": "alice"}]}, "account 'alice' is without a password"),
        ({"pypi_server_users": ["alice"]}, "pypi_server_users[0]: must be a mapping"),
        ({"pypi_server_users": "alice"}, "pypi_server_users: must be a list"),
    ],
)
def test_each_bad_name_is_named(changes: dict[str, Any], needle: str) -> None:
    found = problems(**changes)
    assert len(found) == 1 and needle in found[0], found


def test_a_duplicate_account_is_named_once_and_no_password_is_shown() -> None:
    users = [
        {"name": "alice", "password": "pw-1"},
        {"name": "bob", "password": "pw-2"},
        {"name": "alice", "password": "pw-3"},
    ]
    found = problems(pypi_server_users=users)
    assert found == ["pypi_server_users: account 'alice' is listed 2 times; list each account once"]
    assert "pw-" not in " ".join(problems(pypi_server_users=[*users, {"name": "bad name", "password": "pw-4"}]))


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("pypi_server_packages_dir", "/etc", "/etc"),
        ("pypi_server_data_dir", "/", "/"),
        ("pypi_server_data_dir", "//srv/../", "/"),
        ("pypi_server_config_dir", "/etc/.", "/etc"),
        ("pypi_server_config_dir", "/usr/local/", "/usr/local"),
        ("pypi_server_releases_dir", "/opt", "/opt"),
        ("pypi_server_venv", "/usr/bin/../lib", "/usr/lib"),
        ("pypi_server_static_dir", "/var//lib", "/var/lib"),
    ],
)
def test_a_system_directory_is_refused(name: str, value: str, shown: str) -> None:
    found = problems(**{name: value})
    assert found[0].startswith(f"{name}={value}: {shown} is a system directory"), found
    assert f"e.g. {filters.PATHS[name]}" in found[0]
    # The data directory at / would contain every other path: that is not reported again.
    assert len(found) == 1, found


def test_a_symlink_to_a_system_directory_on_the_host_is_refused() -> None:
    host = pristine()
    host["pypi_server_data_dir"] = facts("/srv/pypi", exists=True, link=True, link_target="/etc", realpath="/etc")
    host["pypi_server_data_dir"] |= {"kind": "directory", "owner": "root", "group": "root", "entries": ["passwd"]}
    found = problems(host)
    assert found == [
        "pypi_server_data_dir=/srv/pypi: on this host it leads to /etc through a symlink, a system directory, which "
        "the role would take over; choose a directory of the index's own"
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"pypi_server_static_dir": "/srv/pypi/packages"},
            "pypi_server_static_dir=/srv/pypi/packages: the same directory as pypi_server_packages_dir",
        ),
        (
            {"pypi_server_config_dir": "/srv/pypi/packages/conf"},
            "pypi_server_config_dir=/srv/pypi/packages/conf: inside pypi_server_packages_dir=/srv/pypi/packages",
        ),
        (
            {"pypi_server_static_dir": "/srv/pypi/packages/static"},
            "pypi_server_static_dir=/srv/pypi/packages/static: inside pypi_server_packages_dir=/srv/pypi/packages",
        ),
        (
            {"pypi_server_packages_dir": "/srv/pypi"},
            "pypi_server_packages_dir=/srv/pypi: the same directory as pypi_server_data_dir",
        ),
        (
            {"pypi_server_config_dir": "/srv/pypi/etc"},
            "pypi_server_config_dir=/srv/pypi/etc: inside pypi_server_data_dir=/srv/pypi",
        ),
        (
            {"pypi_server_releases_dir": "/srv/pypi/static/"},
            "pypi_server_releases_dir=/srv/pypi/static/: the same directory as pypi_server_static_dir",
        ),
        (
            {"pypi_server_venv": "/opt/airgap-pypi/releases/current"},
            "pypi_server_venv=/opt/airgap-pypi/releases/current: inside pypi_server_releases_dir",
        ),
        (
            {"pypi_server_releases_dir": "/opt/airgap-pypi"},
            "pypi_server_venv=/opt/airgap-pypi/pypiserver: inside pypi_server_releases_dir=/opt/airgap-pypi",
        ),
        (
            {"pypi_server_data_dir": "/srv/pypi/packages/data"},
            "pypi_server_packages_dir=/srv/pypi/packages: contains pypi_server_data_dir=/srv/pypi/packages/data",
        ),
        (
            {
                "pypi_server_data_dir": "/srv/x",
                "pypi_server_packages_dir": "/srv/x/y",
                "pypi_server_config_dir": "/srv",
            },
            "pypi_server_config_dir=/srv: /srv is a system directory",
        ),
        (
            {"pypi_server_config_dir": "/srv/pypi2/conf", "pypi_server_data_dir": "/srv/pypi2"},
            "pypi_server_config_dir=/srv/pypi2/conf: inside pypi_server_data_dir=/srv/pypi2",
        ),
    ],
)
def test_overlapping_paths_are_refused(changes: dict[str, Any], message: str) -> None:
    found = problems(**changes)
    assert len(found) == 1 and found[0].startswith(message), found
    assert found[0].endswith("give each its own directory") or "system directory" in found[0]


def test_packages_and_static_may_be_anywhere_inside_data() -> None:
    assert problems(pypi_server_packages_dir="/srv/pypi/a/b", pypi_server_static_dir="/srv/pypi/c") == []
    assert problems(pypi_server_packages_dir="/data/packages", pypi_server_static_dir="/data/static") == []


def test_overlap_through_symlinks_on_the_host_is_refused() -> None:
    host = pristine()
    host["pypi_server_packages_dir"] = facts(
        "/srv/pypi/packages", exists=True, link=True, link_target="/etc/airgap-pypi", realpath="/etc/airgap-pypi"
    ) | {"kind": "directory", "owner": "root", "group": "pypiserver"}
    host["pypi_server_config_dir"] = facts("/etc/airgap-pypi", exists=True, kind="directory", owner="root")
    found = problems(host)
    assert found == [
        "pypi_server_config_dir=/etc/airgap-pypi: the same directory as pypi_server_packages_dir on this host (they "
        "lead to /etc/airgap-pypi and /etc/airgap-pypi); give each its own directory"
    ]


def test_a_non_empty_directory_of_someone_else_is_refused() -> None:
    host = pristine()
    host["pypi_server_packages_dir"] = facts(
        "/srv/pypi/packages", exists=True, kind="directory", owner="alice", group="staff", entries=["report.csv"]
    )
    assert problems(host) == [
        "pypi_server_packages_dir=/srv/pypi/packages: /srv/pypi/packages on this host is not empty and belongs to "
        "alice:staff, not to the index (pypiserver or group pypiserver); the role would take it over. Choose a new "
        "or empty directory, or, if it is meant for the index, give it to pypiserver:pypiserver first"
    ]
    host["pypi_server_packages_dir"]["entries"] = []
    assert problems(host) == [], "an empty directory is taken"
    host["pypi_server_packages_dir"]["more"] = True
    assert len(problems(host)) == 1, "an unreadable directory is not known to be empty"


@pytest.mark.parametrize(
    ("name", "seen", "needle"),
    [
        ("pypi_server_config_dir", {"kind": "file", "owner": "root"}, "is not a directory"),
        ("pypi_server_data_dir", {"link": True, "link_target": "/gone"}, "(a symlink to /gone) is not a directory"),
        ("pypi_server_releases_dir", {"kind": "directory", "entries": ["cp311-0123456789ab", "backup"]}, "deletes"),
        ("pypi_server_releases_dir", {"kind": "directory", "entries": ["previous"], "more": True}, "deletes"),
        ("pypi_server_venv", {"kind": "directory", "entries": ["bin", "data"]}, "not a virtualenv of the index"),
        (
            "pypi_server_venv",
            {"link": True, "link_target": "/opt/app-1.2", "realpath": "/opt/app-1.2", "kind": "directory"},
            "(a symlink to /opt/app-1.2) is not the index's symlink to a release",
        ),
        ("pypi_server_config_dir", {"kind": "directory", "owner": "root", "group": "root", "entries": ["x"]}, "root"),
    ],
)
def test_what_the_role_would_take_over_is_refused(name: str, seen: dict[str, Any], needle: str) -> None:
    host = pristine()
    host[name] = facts(filters.PATHS[name], exists=True) | seen
    found = problems(host)
    assert len(found) == 1 and found[0].startswith(f"{name}={filters.PATHS[name]}: ") and needle in found[0], found


def test_a_dangling_link_to_a_release_is_the_index_s() -> None:
    host = pristine()
    gone = "/opt/airgap-pypi/releases/cp311-0123456789ab"
    host["pypi_server_venv"] = facts(filters.PATHS["pypi_server_venv"], exists=True, link=True, realpath=gone)
    assert problems(host) == []


def test_the_static_directory_is_checked_only_when_given() -> None:
    settings = {key: value for key, value in GOOD.items() if key != "pypi_server_static_dir"}
    assert filters.pypi_server_problems(settings | {"pypi_server_packages_dir": "/srv/pypi/static"}, pristine()) == []
