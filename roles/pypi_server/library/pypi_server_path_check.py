#!/usr/bin/python
"""Report what is at each of the index's paths on the host (read-only): real path, kind, owner, first entries."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pypi_common_port import who_listens

DOCUMENTATION = r"""
module: pypi_server_path_check
short_description: Report what is at the index's paths on the host
description:
  - For each path, without changing anything - whether something is there, whether it is a symlink (and to what),
    its real path, whether it is a directory, file or other, its owner and group, and the first names in it.
  - Symlinks are resolved only to find the real path; what is reported is read from that real path with lstat and
    one bounded scandir, so no further link is followed and no file is opened.
options:
  paths:
    description: The paths to look at, by name (the names come back as the keys of I(paths) in the result).
    type: dict
    required: true
  probes:
    description:
      - By name, relative paths (such as C(bin/pypi-server)) of regular files to look for below the path's real
        path, with lstat alone - one with a symlink or a file on its way, or that is not a regular file, counts as
        absent. Reported as I(present).
    type: dict
    default: {}
  max_entries:
    description: At most this many names are read from a directory (one more tells whether there are more).
    type: int
    default: 64
  port:
    description: A TCP port to report the listeners of, in the same round trip (as M(pypi_common_port_check)).
    type: int
  account:
    description:
      - The index's system account as the role creates it - C(user), C(group), C(home), C(shell) and C(comment).
        Reported as I(account) - whether the group exists, and whether the user exists with that primary group,
        home, shell and comment - so the role runs its group and user tasks only when something differs.
    type: dict
author: airgap-pypi
"""

RETURN = r"""
paths:
  description:
    - By name - path, exists (something is there, a dangling symlink too), link, link_target, link_owner and
      link_group (of the symlink itself), realpath,
      kind (directory, file, other or missing), owner and group (names, or ids without a name), entries (the
      first max_entries names, sorted), more (whether there are more names, or the directory cannot be read) and
      present (those of its probes that are there).
    - A relative path is not looked at (kind missing).
  type: dict
  returned: always
port:
  description: For I(port) - in_use, owners (pid, cmdline) and users of the sockets listening on it.
  type: dict
  returned: when port is given
account:
  description: For I(account) - group (the group exists) and user (the user exists exactly as described).
  type: dict
  returned: when account is given
"""


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def first_entries(path: str, limit: int) -> tuple[list[str], bool]:
    """The first limit names in directory path, sorted, and whether there are more; reads at most limit + 1."""
    names: list[str] = []
    with os.scandir(path) as found:
        for entry in found:
            if len(names) == limit:
                return sorted(names), True
            # A name that is not UTF-8 is reported with replacement characters (the result is JSON).
            names.append(entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return sorted(names), False


def present(root: str, relative: str) -> bool:
    """Whether relative (e.g. bin/pypi-server) is a regular file below directory root; lstat only, so a symlink or
    a file on the way, or anything but a regular file at the end, means no."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return False
    path = root
    for index, part in enumerate(parts):
        path = os.path.join(path, part)
        try:
            info = os.lstat(path)
        except OSError:
            return False
        if index < len(parts) - 1 and not stat.S_ISDIR(info.st_mode):
            return False
    return stat.S_ISREG(info.st_mode)


def missing(path: str) -> dict[str, Any]:
    """The facts of a path where nothing is (what look() starts from)."""
    return {
        "path": path,
        "exists": False,
        "link": False,
        "link_target": "",
        "link_owner": "",
        "link_group": "",
        "realpath": path,
        "kind": "missing",
        "owner": "",
        "group": "",
        "entries": [],
        "more": False,
        "present": [],
    }


def look(path: str, limit: int, probes: list[str] | None = None) -> dict[str, Any]:
    """What is at path: see RETURN."""
    facts = missing(path)
    if not os.path.isabs(path):
        return facts
    facts["exists"] = os.path.lexists(path)
    facts["realpath"] = os.path.realpath(path)
    if os.path.islink(path):
        facts["link"] = True
        facts["link_target"] = os.readlink(path)
        link = os.lstat(path)
        facts["link_owner"], facts["link_group"] = user_name(link.st_uid), group_name(link.st_gid)
    try:
        info = os.lstat(facts["realpath"])
    except OSError:
        return facts  # nothing there, or a dangling symlink
    facts["owner"] = user_name(info.st_uid)
    facts["group"] = group_name(info.st_gid)
    if stat.S_ISDIR(info.st_mode):
        facts["kind"] = "directory"
        try:
            facts["entries"], facts["more"] = first_entries(facts["realpath"], limit)
        except OSError:
            facts["more"] = True  # unreadable: not known to be empty
        facts["present"] = [probe for probe in probes or [] if present(facts["realpath"], probe)]
    else:
        facts["kind"] = "file" if stat.S_ISREG(info.st_mode) else "other"
    return facts


def account_state(wanted: dict[str, Any]) -> dict[str, bool]:
    """Whether the group exists, and whether the user exists with exactly the primary group, home, shell and
    comment the role gives it (from the account databases, as the user and group modules read them)."""
    try:
        gid = grp.getgrnam(str(wanted.get("group", ""))).gr_gid
    except KeyError:
        return {"group": False, "user": False}
    try:
        user = pwd.getpwnam(str(wanted.get("user", "")))
    except KeyError:
        return {"group": True, "user": False}
    same = (user.pw_gid, user.pw_dir, user.pw_shell, user.pw_gecos) == (
        gid,
        wanted.get("home"),
        wanted.get("shell"),
        wanted.get("comment"),
    )
    return {"group": True, "user": same}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "dict", "required": True},
            "probes": {"type": "dict", "default": {}},
            "max_entries": {"type": "int", "default": 64},
            "port": {"type": "int"},
            "account": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    limit = max(1, module.params["max_entries"])
    probes = module.params["probes"]
    extra: dict[str, Any] = {} if module.params["port"] is None else {"port": who_listens(module.params["port"])}
    if module.params["account"] is not None:
        extra["account"] = account_state(module.params["account"])
    module.exit_json(
        changed=False,
        **extra,
        paths={
            str(name): look(str(path), limit, [str(probe) for probe in probes.get(name) or []])
            for name, path in module.params["paths"].items()
        },
    )


if __name__ == "__main__":
    main()
