"""Filters of role pypi_server: the preflight's checks of the inventory's values (on the controller).

pypi_server_problems takes the role's settings and what module pypi_server_path_check saw at the index's paths on
the host, and returns one message per bad value, each naming that value and its fix; empty when all is well.
pypi_server_admins gives the names of the upload accounts with admin: true.
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

# Directories of the operating system: the role would re-own them, fill them, or (releases) prune them.
SYSTEM_DIRS = frozenset(
    {
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/lost+found",
        "/media",
        "/mnt",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/snap",
        "/srv",
        "/sys",
        "/tmp",
        "/usr",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/etc",
        "/usr/local/lib",
        "/usr/local/sbin",
        "/usr/local/share",
        "/usr/sbin",
        "/usr/share",
        "/usr/src",
        "/var",
        "/var/cache",
        "/var/lib",
        "/var/local",
        "/var/lock",
        "/var/log",
        "/var/mail",
        "/var/opt",
        "/var/run",
        "/var/spool",
        "/var/tmp",
    }
)
# The index's paths, in the order they are checked, with an example (the default) for the messages.
PATHS = {
    "pypi_server_data_dir": "/srv/pypi",
    "pypi_server_packages_dir": "/srv/pypi/packages",
    "pypi_server_static_dir": "/srv/pypi/static",
    "pypi_server_config_dir": "/etc/airgap-pypi",
    "pypi_server_releases_dir": "/opt/airgap-pypi/releases",
    "pypi_server_venv": "/opt/airgap-pypi/pypiserver",
}
DATA = "pypi_server_data_dir"
RELEASES = "pypi_server_releases_dir"
VENV = "pypi_server_venv"
INSIDE_DATA = frozenset({"pypi_server_packages_dir", "pypi_server_static_dir"})  # may be below the data directory
# (lowest, highest or None, what it counts) of each number.
NUMBERS: dict[str, tuple[int, int | None, str]] = {
    "pypi_server_port": (1, 65535, "a TCP port"),
    "pypi_server_workers": (1, 64, "gunicorn worker processes"),
    "pypi_server_timeout": (1, None, "seconds"),
    "pypi_server_health_timeout": (1, None, "seconds"),
    "pypi_server_threads": (1, 64, "threads per worker"),
    "pypi_server_releases_keep": (2, None, "the current and the previous release always stay"),
    "pypi_server_max_upload_mb": (1, 1048576, "MiB per upload"),
    "pypi_server_audit_max_mb": (1, 4096, "MiB of audit.jsonl before it is rotated"),
    "pypi_server_audit_keep": (1, 100, "rotated audit files kept"),
    "pypi_server_render_cpu_seconds": (1, 3600, "CPU seconds per description rendering"),
    "pypi_server_render_memory_mb": (64, 65536, "MiB of address space per description rendering"),
    "pypi_server_render_wall_seconds": (1, 3600, "seconds per description rendering"),
}
ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # a portable system user or group name
PROGRAM = re.compile(r"^[A-Za-z0-9_-]+$")
RELEASE_ID = re.compile(r"^[A-Za-z0-9._-]*$")
UPLOADER = re.compile(r"^[A-Za-z0-9._@-]+$")
PROJECT = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # a project name (PEP 508)
MAX_PROJECT_CHARS = 200  # as the index takes them
# What a releases directory holds: release virtualenvs (<python tag>-<sha256[:12] of the lock>, or legacy for an
# old virtualenv without a lock marker) and the file naming the previous release.
RELEASE_ENTRY = re.compile(r"^(previous|legacy|cp\d+-[0-9a-f]{12})$")
LOCK_MARKER = ".airgap-pypi-lock-"  # pypi_bootstrap's record of the lock a virtualenv holds (every one it builds)
INDEX_SCRIPT = "bin/pypi-server"  # what tells the index's virtualenv from the others (supervisord's, ...)


def _example(name: str, value: str) -> str:
    """', e.g. <the default>' for a message, unless value is the default."""
    return "" if normalize(value) == PATHS[name] else f", e.g. {PATHS[name]}"


def normalize(path: str) -> str:
    """The path with duplicate slashes, '.' and '..' resolved on paper (no look at any file system)."""
    return posixpath.normpath(re.sub("/+", "/", path))


def inside(child: str, parent: str) -> bool:
    """Whether normalised path child is strictly below normalised path parent."""
    return child != parent and child.startswith(parent.rstrip("/") + "/")


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def number_problems(settings: Mapping[str, Any]) -> list[str]:
    """Each number out of its range, alone: 'pypi_server_workers=0: must be 1-64'."""
    problems = []
    for name, (low, high, unit) in NUMBERS.items():
        if name not in settings:
            continue
        value = settings[name]
        number = _whole(value)
        wanted = f"{low}-{high}" if high is not None else f"{low} or more"
        if number is None:
            problems.append(f"{name}={value!r}: must be a whole number, {wanted} ({unit})")
        elif number < low or (high is not None and number > high):
            problems.append(f"{name}={value}: must be {wanted} ({unit})")
    return problems


def name_problems(settings: Mapping[str, Any]) -> list[str]:
    """The system account, its group, the supervisord program and the release to roll back to."""
    problems = []
    for name, kind in (("pypi_server_user", "user"), ("pypi_server_group", "group")):
        if name not in settings:
            continue
        value = str(settings[name])
        if not ACCOUNT.match(value):
            problems.append(f"{name}={value!r}: must match {ACCOUNT.pattern} (a system {kind} name)")
        elif value == "root":
            problems.append(
                f"{name}='root': must be a {kind} of the index's own, e.g. pypiserver (the role makes the index's "
                "account a system account whose home is pypi_server_data_dir and whose shell is nologin)"
            )
    program = str(settings.get("pypi_server_program_name", "pypiserver"))
    if not PROGRAM.match(program):
        problems.append(f"pypi_server_program_name={program!r}: letters, digits, '-' and '_' only")
    rollback = str(settings.get("pypi_server_rollback_to", ""))
    if not RELEASE_ID.match(rollback):
        problems.append(f"pypi_server_rollback_to={rollback!r}: must be a release id (letters, digits, '.', '_', '-')")
    return problems


def account_problems(users: Any) -> list[str]:
    """Upload accounts: a valid name, a password, each name once (the message never shows a password)."""
    if not isinstance(users, list):
        return [f"pypi_server_users: must be a list of accounts (name, password), not {type(users).__name__}"]
    problems = []
    names = []
    for index, user in enumerate(users):
        if not isinstance(user, Mapping):
            problems.append(f"pypi_server_users[{index}]: must be a mapping with name and password")
            continue
        name = str(user.get("name") or "")
        names.append(name)
        if not UPLOADER.match(name):
            problems.append(
                f"pypi_server_users[{index}]: account name {name!r} must use letters, digits, '.', '_', '@' and '-'"
            )
        if "admin" in user and not _is_flag(user["admin"]):
            problems.append(f"pypi_server_users: account {name!r} has admin: {user['admin']!r}; use true or false")
        if not str(user.get("password") or ""):
            problems.append(
                f"pypi_server_users: account {name!r} is without a password; set it from Ansible Vault or the "
                "environment, e.g. password: \"{{ lookup('ansible.builtin.env', 'PYPI_UPLOAD_PASSWORD') }}\""
            )
    problems += [
        f"pypi_server_users: account {name!r} is listed {count} times; list each account once"
        for name, count in Counter(names).items()
        if count > 1 and name
    ]
    return problems


def _overlap(first: str, second: str, paths: Mapping[str, str]) -> str | None:
    """How settings first and second (checked in that order) overlap, as a message about second; None if fine."""
    a, b = paths[first], paths[second]
    if a == b:
        return f"the same directory as {first}"
    if inside(b, a) and not (first == DATA and second in INSIDE_DATA):
        return f"inside {first}={a}"
    if inside(a, b) and not (second == DATA and first in INSIDE_DATA):
        return f"contains {first}={a}"
    return None


def overlap_problems(settings: Mapping[str, Any], names: list[str], real: Mapping[str, str]) -> dict[str, str]:
    """Settings that share a directory or lie inside one another (packages and static may be inside data), as
    {setting: message}, one for each setting that overlaps one checked before it.

    names are the settings still without a problem; real maps those that exist on the host to their real paths.
    """
    given = {name: normalize(str(settings[name])) for name in names}
    problems: dict[str, str] = {}
    for index, second in enumerate(names):
        found: list[tuple[int, str]] = []
        for first in names[:index]:
            if first in problems:
                continue
            how = _overlap(first, second, given)
            deepest = len(given[first])
            if how is None and first in real and second in real:
                how = _overlap(first, second, real)
                how = how and f"{how} on this host (they lead to {real[second]} and {real[first]})"
                deepest = len(real[first])
            if how is not None:
                found.append((deepest, how))
        if found:
            # The innermost directory it is in (the packages directory rather than the data directory around it).
            problems[second] = f"{second}={settings[second]}: {max(found)[1]}; give each its own directory"
    return problems


def _index_owns(name: str, facts: Mapping[str, Any], settings: Mapping[str, Any], host: Mapping[str, Any]) -> bool:
    """Whether an existing path is the index's own (see the role README): the role may take it as it is."""
    entries = list(facts.get("entries") or [])
    directory = facts.get("kind") == "directory"
    if name == VENV and facts.get("link"):
        # The role re-points it: only its own link to a release, wherever that release is now.
        releases = host.get(RELEASES, {}).get("realpath") or settings.get(RELEASES, "")
        return inside(normalize(str(facts.get("realpath", ""))), normalize(str(releases)))
    if directory and not entries and not facts.get("more"):
        return True
    if name == VENV:
        marked = any(entry.startswith(LOCK_MARKER) for entry in entries)
        return directory and marked and INDEX_SCRIPT in (facts.get("present") or [])
    if name == RELEASES:
        return directory and not facts.get("more") and all(RELEASE_ENTRY.match(entry) for entry in entries)
    # The role leaves these to the index's account: packages and static user:group, data and config root:group.
    user, group = settings.get("pypi_server_user"), settings.get("pypi_server_group")
    return directory and (facts.get("owner") == user or facts.get("group") == group)


def _foreign(name: str, facts: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """Why an existing path that is not the index's is refused, and the way out."""
    path = settings[name]
    seen = f"{path} on this host"
    if facts.get("link"):
        seen += f" (a symlink to {facts.get('link_target')})"
    user, group = settings.get("pypi_server_user"), settings.get("pypi_server_group")
    if name == VENV:
        what = (
            "is not the index's symlink to a release in pypi_server_releases_dir"
            if facts.get("link")
            else f"is not a virtualenv of the index (without {LOCK_MARKER}* and {INDEX_SCRIPT})"
        )
        return f"{name}={path}: {seen} {what}; choose a path that does not exist yet{_example(name, path)}"
    if facts.get("kind") != "directory":
        return f"{name}={path}: {seen} is not a directory; choose a new or empty directory{_example(name, path)}"
    if name == RELEASES:
        return (
            f"{name}={path}: {seen} holds more than the index's releases, and the role deletes old releases "
            f"there; choose a new or empty directory{_example(name, path)}"
        )
    owner = f"{facts.get('owner')}:{facts.get('group')}"
    return (
        f"{name}={path}: {seen} is not empty and belongs to {owner}, not to the index ({user} or group {group}); "
        f"the role would take it over. Choose a new or empty directory, or, if it is meant for the index, give it "
        f"to {user}:{group} first"
    )


def path_problems(settings: Mapping[str, Any], host: Mapping[str, Any] | None) -> list[str]:
    """The index's paths: absolute, not a system directory (also through symlinks on the host), apart from each
    other, and either missing, empty or the index's own on the host. At most one problem per setting."""
    names = [name for name in PATHS if name in settings]
    host = host or {}
    problems: list[str] = []
    clean: list[str] = []
    real: dict[str, str] = {}
    for name in names:
        value = str(settings[name])
        facts = host.get(name) or {}
        realpath = normalize(str(facts.get("realpath") or value)) if value.startswith("/") else ""
        if not value.startswith("/"):
            problems.append(f"{name}={value}: must be an absolute path{_example(name, value)}")
        elif normalize(value) in SYSTEM_DIRS:
            problems.append(
                f"{name}={value}: {normalize(value)} is a system directory, which the role would take over; "
                f"choose a directory of the index's own{_example(name, value)}"
            )
        elif realpath in SYSTEM_DIRS:
            problems.append(
                f"{name}={value}: on this host it leads to {realpath} through a symlink, a system directory, which "
                f"the role would take over; choose a directory of the index's own{_example(name, value)}"
            )
        else:
            clean.append(name)
            # The index's symlink lies beside the releases directory, its target inside it.
            if facts.get("exists") and name != VENV:
                real[name] = realpath
    overlaps = overlap_problems(settings, clean, real)
    for name in clean:
        facts = host.get(name) or {}
        if name in overlaps:
            problems.append(overlaps[name])
        elif facts.get("exists") and not _index_owns(name, facts, settings, host):
            problems.append(_foreign(name, facts, settings))
    return problems


TRUE = ("true", "yes", "on", "y", "t", "1")
FALSE = ("false", "no", "off", "n", "f", "0")


def _flag(value: Any) -> bool:
    """A boolean setting as Ansible takes it: true, "true", "yes", "on", 1 ..."""
    if isinstance(value, str):
        return value.strip().lower() in TRUE
    return bool(value)


def _is_flag(value: Any) -> bool:
    """Whether value is a boolean as Ansible reads one (true, false, "yes", "off", 1, 0 ...)."""
    if isinstance(value, str):
        return value.strip().lower() in TRUE + FALSE
    return isinstance(value, bool) or value in (0, 1)


def admins(users: Any) -> list[str]:
    """The names of the upload accounts with admin: true (they may upload to every project)."""
    if not isinstance(users, list):
        return []
    return [str(user["name"]) for user in users if isinstance(user, Mapping) and _flag(user.get("admin", False))]


def _pep503(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def owner_problems(owners: Any, users: Any) -> list[str]:
    """pypi_server_project_owners: a mapping of project names (any spelling, each project once) to lists of
    accounts of pypi_server_users. One message per bad project or account, naming it and the fix."""
    setting = "pypi_server_project_owners"
    if not isinstance(owners, Mapping):
        return [
            f"{setting}: must be a mapping of project name to a list of upload accounts, e.g. {{demo: [alice]}}, "
            f"not {type(owners).__name__}"
        ]
    known = {str(user.get("name")) for user in users if isinstance(user, Mapping)} if isinstance(users, list) else set()
    problems = []
    spellings: dict[str, list[str]] = {}
    for key, accounts in owners.items():
        project = str(key)
        if len(project) > MAX_PROJECT_CHARS or not PROJECT.match(project):
            problems.append(
                f"{setting}: {project[:80]!r} is not a project name; use letters, digits, '.', '_' and '-', starting "
                "and ending with a letter or digit (any spelling: Demo_Pkg is demo-pkg)"
            )
            continue
        spellings.setdefault(_pep503(project), []).append(project)
        if not isinstance(accounts, list):
            problems.append(
                f"{setting}[{project!r}]: must be a list of upload accounts, e.g. [alice, bob], not "
                f"{type(accounts).__name__} {str(accounts)[:80]!r}"
            )
            continue
        for account in accounts:
            if not isinstance(account, str) or account not in known:
                problems.append(
                    f"{setting}[{project!r}]: account {str(account)[:80]!r} is not in pypi_server_users; add the "
                    "account there (name, password) or take it off the list"
                )
    problems += [
        f"{setting}: {', '.join(map(repr, names))} are the same project (PEP 503 spelling {name!r}); list it once"
        for name, names in spellings.items()
        if len(names) > 1
    ]
    return problems


METRICS_DIR = "metrics"  # in pypi_server_data_dir: the workers' metrics files (vars/main.yml)
OWNERS_DIR = "owners"  # in pypi_server_data_dir: the claims of first uploads (vars/main.yml)
AUDIT_DIR = "audit"  # in pypi_server_data_dir: the audit trail (vars/main.yml)


def metrics_problems(settings: Mapping[str, Any]) -> list[str]:
    """/metrics open to anyone while every other read needs a password; packages or pages where the workers keep
    their metrics files, the owners file or the audit trail."""
    problems = []
    public = _flag(settings.get("pypi_server_metrics_public", False))
    if public and _flag(settings.get("pypi_server_auth_downloads", False)):
        problems.append(
            "pypi_server_metrics_public=true with pypi_server_auth_downloads=true: every read of the index needs a "
            "password, but /metrics (its project and file counts, its upload activity) would not; set "
            "pypi_server_metrics_public: false and give Prometheus an upload account's user name and password "
            "(basic_auth), or set pypi_server_auth_downloads: false if reads may be anonymous"
        )
    data = str(settings.get(DATA, ""))
    if data.startswith("/"):
        kept_apart = (
            (METRICS_DIR, "its workers' metrics"),
            (OWNERS_DIR, "the owners of projects"),
            (AUDIT_DIR, "its audit trail"),
        )
        for kept, what in kept_apart:
            reserved = normalize(f"{data}/{kept}")
            for name in sorted(INSIDE_DATA & set(settings)):
                value = str(settings[name])
                if value.startswith("/") and (normalize(value) == reserved or inside(normalize(value), reserved)):
                    problems.append(
                        f"{name}={value}: the index keeps {what} in {reserved} "
                        f"(pypi_server_data_dir/{kept}); choose another directory{_example(name, value)}"
                    )
    return problems


def pypi_server_problems(settings: Mapping[str, Any], host: Mapping[str, Any] | None = None) -> list[str]:
    """Every bad value of the role's settings, one message each (numbers, names, paths, metrics, accounts, owners).

    settings maps variable names to their values; host is what pypi_server_path_check saw at each path (by
    setting name). A setting missing from settings is not checked.
    """
    problems = number_problems(settings) + name_problems(settings) + path_problems(settings, host)
    problems += metrics_problems(settings)
    if "pypi_server_users" in settings:
        problems += account_problems(settings["pypi_server_users"])
    if "pypi_server_project_owners" in settings:
        problems += owner_problems(settings["pypi_server_project_owners"], settings.get("pypi_server_users", []))
    return problems


class FilterModule:
    """Filters of role pypi_server."""

    def filters(self) -> dict[str, Any]:
        return {
            "pypi_server_problems": pypi_server_problems,
            "pypi_server_admins": admins,
        }
