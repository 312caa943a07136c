#!/usr/bin/python
"""After a switch: record the release that served before, and prune the releases beyond the count kept."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_server_releases
short_description: Record the previous release and remove the releases beyond the count kept, in one call
description:
  - When I(before) is set and differs from I(current), writes it to I(previous_file) (under a temporary name,
    renamed into place), for playbooks/rollback.yml.
  - Then keeps the newest I(keep) directories of I(releases_dir) (by modification time), and always I(current)
    and the release named in I(previous_file); removes the others. Entries that are not directories (a link, a
    file) are never followed nor removed.
  - One round trip instead of a task each for the record, the read, the listing and the removals. Check mode
    reports what would be removed.
options:
  releases_dir:
    description: The releases directory.
    type: path
    required: true
  current:
    description: The release the index now runs.
    type: str
    required: true
  before:
    description: The release that served before this run ('' on a new host).
    type: str
    default: ""
  previous_file:
    description: Where the release that served before is recorded.
    type: path
    required: true
  keep:
    description: How many releases to keep, at least 1.
    type: int
    required: true
author: airgap-pypi
"""

RETURN = r"""
previous:
  description: The release recorded as the one that served before ('' when none).
  type: str
  returned: always
removed:
  description: The release directories removed (or that check mode would remove).
  type: list
  elements: str
  returned: always
"""

MAX_RECORD = 4096


def read_previous(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_RECORD).decode("utf-8", "replace").strip()


def write_previous(path: str, release: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pypi_server_releases.")
    with os.fdopen(handle, "w") as out:
        out.write(release + "\n")
    os.chmod(temporary, 0o644)
    os.rename(temporary, path)


def release_dirs(directory: str) -> list[tuple[float, str]]:
    """(mtime, name) of each real directory in directory, newest first."""
    found: list[tuple[float, str]] = []
    if not os.path.isdir(directory):  # check mode on a new host: not created yet
        return found
    with os.scandir(directory) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                found.append((info.st_mtime, entry.name))
    return sorted(found, reverse=True)


def prunable(releases: list[tuple[float, str]], kept: list[str], keep: int) -> list[str]:
    """The release names beyond keep, newest first, never one of kept."""
    others = [name for _, name in releases if name not in kept]
    return others[max(keep - len(kept), 0) :]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "releases_dir": {"type": "path", "required": True},
            "current": {"type": "str", "required": True},
            "before": {"type": "str", "default": ""},
            "previous_file": {"type": "path", "required": True},
            "keep": {"type": "int", "required": True},
        },
        supports_check_mode=True,
    )
    params: dict[str, Any] = module.params
    if params["keep"] < 1:
        module.fail_json(msg=f"keep={params['keep']}: at least 1 release is kept")
    changed = False
    previous = read_previous(params["previous_file"])
    before = params["before"]
    if before and before != params["current"] and before != previous:
        if not module.check_mode:
            write_previous(params["previous_file"], before)
        previous = before
        changed = True
    kept = [name for name in dict.fromkeys([params["current"], previous]) if name]
    removed = prunable(release_dirs(params["releases_dir"]), kept, params["keep"])
    for name in removed:
        if not module.check_mode:
            shutil.rmtree(os.path.join(params["releases_dir"], name))
        changed = True
    module.exit_json(changed=changed, previous=previous, removed=removed)


if __name__ == "__main__":
    main()
