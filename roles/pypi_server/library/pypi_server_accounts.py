#!/usr/bin/python
"""Who may upload what, in one call: the index's upload accounts (every listed account set with a sha512_crypt
hash, the rest removed) and the project owner map the pages and the upload checks read."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_server_accounts
short_description: Keep the index's htpasswd file to exactly the listed upload accounts, and write the owner map
description:
  - Each listed account whose password does not verify, or whose hash is not sha512_crypt with O(rounds) rounds
    (an apr1/MD5 hash of an older release, say), gets a new sha512_crypt hash; accounts not listed are removed.
    A password that verifies against a current hash leaves its line as it is, so a re-run changes nothing.
  - The file is written under a temporary name and renamed; owner, group and mode are applied as given.
  - Runs with the index's virtualenv Python (passlib, which pypiserver reads the file with).
  - With I(owner_map), also writes pypi_server_project_owners there as
    C({"format": 1, "projects": {normalised project: [account, ...]}}) (PEP 503 names, two spellings of one project
    merged, accounts in the inventory's order without repeats), the way the upload checks read it; the index's page
    generator reads it (bounded, checked) to show each project's owners. A link at that path is never followed (it
    is replaced). Returns the owners added and removed per project against the file it replaces, for the audit
    trail; a file that cannot be used (missing, not this format, over 4 MiB) counts as an empty map.
  - One round trip for both: the accounts and the owners are who may upload what.
options:
  path:
    description: The htpasswd file; with I(users). Without them the accounts are left alone (passlib is then not
      needed).
    type: path
  users:
    description: The accounts, as {name, password}; an admin flag may be given too (the upload checks read it, not
      this module).
    type: list
    elements: dict
  owner_map:
    description: Where to write the owner map; none when not given.
    type: path
  owners:
    description: pypi_server_project_owners (project in any spelling to a list of accounts); the preflight has
      checked the names.
    type: dict
    default: {}
  rounds:
    description: sha512_crypt rounds of new hashes (the index caches a verified password, so reads stay fast).
    type: int
    default: 100000
extends_documentation_fragment: [files]
author: airgap-pypi
"""

RETURN = r"""
set:
  description: Accounts given a new hash (new, new password, or an old hash scheme).
  type: list
  elements: str
  returned: always
added:
  description: The accounts of I(set) that the file did not have before.
  type: list
  elements: str
  returned: always
removed:
  description: Accounts removed because the inventory no longer lists them.
  type: list
  elements: str
  returned: always
owners_added:
  description: C(PROJECT:ACCOUNT) for each account the owner map now lists for a project and the old file did not.
  type: list
  elements: str
  returned: always
owners_removed:
  description: C(PROJECT:ACCOUNT) for each account the old owner map listed for a project and the map no longer does.
  type: list
  elements: str
  returned: always
"""

LINE = re.compile(r"^([^:#\s]+):(\S+)$")

FORMAT = 1  # of the owner map
MAX_BYTES = 4 << 20  # as the index reads it


def normalize(name: str) -> str:
    """A project's PEP 503 name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def normalized(owners: dict[str, Any]) -> dict[str, list[str]]:
    """{normalised project: accounts}: spellings merged, accounts without repeats, as the upload checks read the
    map (a project with no account stays: only an admin may upload to it)."""
    result: dict[str, list[str]] = {}
    for project, accounts in owners.items():
        listed = result.setdefault(normalize(str(project)), [])
        listed += [str(account) for account in accounts or [] if str(account) not in listed]
    return dict(sorted(result.items()))


def document(owners: dict[str, Any]) -> bytes:
    """The file's bytes for the inventory's map (the index's read_owner_map reads them)."""
    return (json.dumps({"format": FORMAT, "projects": normalized(owners)}, indent=1, sort_keys=True) + "\n").encode()


def read_old(path: str) -> tuple[bytes, dict[str, list[str]]]:
    """The file's bytes and its map; (b"", {}) when there is none or it cannot be used. Never through a link."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return b"", {}
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return b"", {}
        data = handle.read(MAX_BYTES + 1)
    try:
        document = json.loads(data) if len(data) <= MAX_BYTES else None
    except ValueError:
        document = None
    projects = document.get("projects") if isinstance(document, dict) and document.get("format") == FORMAT else None
    if not isinstance(projects, dict):
        return data, {}
    return data, {
        str(project): [str(account) for account in accounts]
        for project, accounts in projects.items()
        if isinstance(accounts, list)
    }


def changes(old: dict[str, list[str]], new: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(added, removed) as PROJECT:ACCOUNT, sorted."""
    before = {(project, account) for project, accounts in old.items() for account in accounts}
    after = {(project, account) for project, accounts in new.items() for account in accounts}
    return [f"{p}:{a}" for p, a in sorted(after - before)], [f"{p}:{a}" for p, a in sorted(before - after)]


def parse(text: str) -> dict[str, str]:
    """{name: hash} of an htpasswd file (comments and blank lines dropped)."""
    return {m.group(1): m.group(2) for m in map(LINE.match, text.splitlines()) if m}


def plan(
    entries: dict[str, str],
    users: list[dict[str, str]],
    current: Callable[[str, str], bool],
    new_hash: Callable[[str], str],
) -> tuple[dict[str, str], list[str], list[str]]:
    """The file's new entries, the names given a new hash, and the names removed."""
    wanted = {user["name"]: user["password"] for user in users}
    result: dict[str, str] = {}
    changed: list[str] = []
    for name, password in wanted.items():
        old = entries.get(name)
        if old is not None and current(password, old):
            result[name] = old
        else:
            result[name] = new_hash(password)
            changed.append(name)
    removed = sorted(set(entries) - set(wanted))
    return result, changed, removed


def write_atomic(path: str, data: bytes, prepare: Callable[[str], Any]) -> None:
    """Write data under a temporary name, give it its owner and mode (prepare), then rename it into place: the
    index never reads a partial file or one it may not open."""
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        prepare(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def set_accounts(module: AnsibleModule) -> dict[str, Any]:
    """The htpasswd file to exactly module.params["users"]: (changed, set, added, removed)."""
    try:
        from passlib.hash import sha512_crypt  # noqa: PLC0415 - in the index's virtualenv
    except ImportError:
        module.fail_json(msg="passlib is missing: run this module with the index's virtualenv Python")
    path, rounds = module.params["path"], module.params["rounds"]
    file_args = module.load_file_common_arguments(module.params, path=path)
    try:
        with open(path) as handle:
            entries = parse(handle.read())
    except FileNotFoundError:
        entries = {}

    def current(password: str, stored: str) -> bool:
        if not sha512_crypt.identify(stored) or sha512_crypt.from_string(stored).rounds != rounds:
            return False
        return bool(sha512_crypt.verify(password, stored))

    hasher = sha512_crypt.using(rounds=rounds)
    result, changed, removed = plan(entries, module.params["users"], current, hasher.hash)
    is_changed = bool(changed or removed) or not os.path.exists(path)
    if is_changed and not module.check_mode:
        write_atomic(
            path,
            "".join(f"{name}:{value}\n" for name, value in result.items()).encode(),
            lambda temporary: module.set_fs_attributes_if_different({**file_args, "path": temporary}, True),
        )
    elif os.path.exists(path):
        is_changed = module.set_fs_attributes_if_different(file_args, is_changed)
    added = [name for name in changed if name not in entries]
    return {"changed": is_changed, "set": changed, "added": added, "removed": removed}


def write_owner_map(module: AnsibleModule) -> dict[str, Any]:
    """The owner map file to module.params["owners"]: (changed, owners_added, owners_removed)."""
    path, owners = module.params["owner_map"], module.params["owners"]
    file_args = module.load_file_common_arguments(module.params, path=path)
    data = document(owners)
    old_data, old = read_old(path)
    added, removed = changes(old, normalized(owners))
    is_changed = data != old_data or os.path.islink(path)
    if is_changed and not module.check_mode:
        write_atomic(
            path, data, lambda temporary: module.set_fs_attributes_if_different({**file_args, "path": temporary}, True)
        )
    elif os.path.exists(path) and not os.path.islink(path):
        is_changed = module.set_fs_attributes_if_different(file_args, is_changed)
    return {"changed": is_changed, "owners_added": added, "owners_removed": removed}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path"},
            "users": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "name": {"type": "str", "required": True},
                    "password": {"type": "str", "required": True, "no_log": True},
                    "admin": {"type": "bool", "default": False},  # for the upload checks (pypiserver_wsgi.py)
                },
            },
            "rounds": {"type": "int", "default": 100000},
            "owner_map": {"type": "path"},
            "owners": {"type": "dict", "default": {}},
        },
        required_together=[("path", "users")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    result: dict[str, Any] = {"set": [], "added": [], "removed": [], "owners_added": [], "owners_removed": []}
    changed = False
    for wanted, step in (("path", set_accounts), ("owner_map", write_owner_map)):
        if module.params[wanted] is not None:
            done = step(module)
            changed = done.pop("changed") or changed
            result.update(done)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
