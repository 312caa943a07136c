#!/usr/bin/python
"""The inventory's owner map in a file of its own for the index's pages, and what changed in it."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from typing import Any, Callable

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_server_owner_map
short_description: Write pypi_server_project_owners for the index's pages and say which owners changed
description:
  - Writes the map as C({"format": 1, "projects": {normalised project: [account, ...]}}) (PEP 503 names, two
    spellings of one project merged, accounts in the inventory's order without repeats), the way the upload checks
    read it; the index's page generator reads this file (bounded, checked) to show each project's owners.
  - The file is written under a temporary name and renamed, with owner, group and mode as given; a link at the
    path is never followed (it is replaced). Check mode reports the change without writing.
  - Returns the owners added and removed per project against the file it replaces, for the audit trail. A file
    that cannot be used (missing, not this format, over 4 MiB) counts as an empty map.
options:
  path:
    description: The owner map file.
    type: path
    required: true
  owners:
    description: pypi_server_project_owners (project in any spelling to a list of accounts); the preflight has
      checked the names.
    type: dict
    default: {}
extends_documentation_fragment: [files]
author: airgap-pypi
"""

RETURN = r"""
added:
  description: C(PROJECT:ACCOUNT) for each account the map now lists for a project and the old file did not.
  type: list
  elements: str
  returned: always
removed:
  description: C(PROJECT:ACCOUNT) for each account the old file listed for a project and the map no longer does.
  type: list
  elements: str
  returned: always
"""

FORMAT = 1
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


def write_atomic(path: str, data: bytes, prepare: Callable[[str], Any]) -> None:
    """Write data under a temporary name, give it its owner and mode (prepare), then rename it into place."""
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        prepare(temporary)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True}, "owners": {"type": "dict", "default": {}}},
        add_file_common_args=True,
        supports_check_mode=True,
    )
    path = module.params["path"]
    data = document(module.params["owners"])
    old_data, old = read_old(path)
    added, removed = changes(old, normalized(module.params["owners"]))
    is_changed = data != old_data or os.path.islink(path)
    file_args = module.load_file_common_arguments(module.params)
    if is_changed and not module.check_mode:
        write_atomic(
            path, data, lambda temporary: module.set_fs_attributes_if_different({**file_args, "path": temporary}, True)
        )
    elif os.path.exists(path) and not os.path.islink(path):
        is_changed = module.set_fs_attributes_if_different(file_args, is_changed)
    module.exit_json(changed=is_changed, added=added, removed=removed)


if __name__ == "__main__":
    main()
