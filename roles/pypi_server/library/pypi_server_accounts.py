#!/usr/bin/python
"""The index's upload accounts in one call: every listed account set with a sha512_crypt hash, the rest removed."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_server_accounts
short_description: Keep the index's htpasswd file to exactly the listed upload accounts
description:
  - Each listed account whose password does not verify, or whose hash is not sha512_crypt with O(rounds) rounds
    (an apr1/MD5 hash of an older release, say), gets a new sha512_crypt hash; accounts not listed are removed.
    A password that verifies against a current hash leaves its line as it is, so a re-run changes nothing.
  - The file is written under a temporary name and renamed; owner, group and mode are applied as given.
  - Runs with the index's virtualenv Python (passlib, which pypiserver reads the file with).
options:
  path:
    description: The htpasswd file.
    type: path
    required: true
  users:
    description: The accounts, as {name, password}; an admin flag may be given too (the upload checks read it, not
      this module).
    type: list
    elements: dict
    required: true
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
"""

LINE = re.compile(r"^([^:#\s]+):(\S+)$")


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


def write_atomic(path: str, text: str, prepare: Callable[[str], Any]) -> None:
    """Write text under a temporary name, give it its owner and mode (prepare), then rename it into place: the
    index never reads a partial file or one it may not open."""
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        prepare(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "users": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "name": {"type": "str", "required": True},
                    "password": {"type": "str", "required": True, "no_log": True},
                    "admin": {"type": "bool", "default": False},  # for the upload checks (pypiserver_wsgi.py)
                },
            },
            "rounds": {"type": "int", "default": 100000},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    try:
        from passlib.hash import sha512_crypt  # noqa: PLC0415 - in the index's virtualenv
    except ImportError:
        module.fail_json(msg="passlib is missing: run this module with the index's virtualenv Python")
    path, rounds = module.params["path"], module.params["rounds"]
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
    file_args = module.load_file_common_arguments(module.params)
    if is_changed and not module.check_mode:
        write_atomic(
            path,
            "".join(f"{name}:{value}\n" for name, value in result.items()),
            lambda temporary: module.set_fs_attributes_if_different({**file_args, "path": temporary}, True),
        )
    elif os.path.exists(path):
        is_changed = module.set_fs_attributes_if_different(file_args, is_changed)
    added = [name for name in changed if name not in entries]
    module.exit_json(changed=is_changed, set=changed, added=added, removed=removed)


if __name__ == "__main__":
    main()
