#!/usr/bin/python
"""Directories, files with given contents, and absent paths, in one call (idempotent, check mode, diff)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_common_files
short_description: Several directories, files and absent paths in one call
description:
  - Brings each path of I(paths), in order, to its state, as M(ansible.builtin.file) (C(directory), C(absent)) and
    M(ansible.builtin.copy) with C(content) (C(file)) would, one round trip instead of one per path. Missing parent
    directories of a directory are created with its owner, group and mode, as M(ansible.builtin.file) does.
    Supports check mode and diff mode.
options:
  paths:
    description: The paths, handled in the order given.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path.
        type: path
        required: true
      state:
        description: C(directory), C(file) (with I(content)) or C(absent) (removed, a directory with its contents).
        type: str
        choices: [directory, file, absent]
        required: true
      content:
        description: The file's contents (C(file) only).
        type: str
      force:
        description: For C(file), replace contents that differ; false writes the file only when it is missing.
        type: bool
        default: true
      owner:
        description: Owner (name or uid).
        type: str
      group:
        description: Group (name or gid).
        type: str
      mode:
        description: Permissions, an octal string such as C("0644").
        type: str
  verify:
    description:
      - After the paths, check the files listed in this C(sha256sum) file (C(<sha256>  <relative path>) lines,
        relative to its directory) as C(sha256sum --check --strict) would, in the same round trip. When the file
        is one of I(paths), its wanted content is used (so check mode sees what a real run would write).
    type: path
  probe:
    description:
      - Paths reported in C(present) when they are plain files (lstat, nothing followed: a link, even to a file, or
        a directory is not reported), in the same round trip. Markers of work done are probed this way.
    type: list
    elements: path
    default: []
  compare:
    description:
      - After the paths, compare the files of a directory with C(sha256sum) lines, in the same round trip; reported
        in C(compared) as the names that are missing and those present with other bytes (or not a plain file).
        A name with a C(/) or that is C(.) or C(..) fails the call.
    type: dict
    suboptions:
      dir:
        description: The directory.
        type: path
        required: true
      sums:
        description: Lines C(<sha256>  <file name>).
        type: str
        required: true
author: airgap-pypi
"""

RETURN = r"""
changed_paths:
  description: The paths that changed (or would change in check mode), in order.
  type: list
  elements: str
  returned: always
verified:
  description: Whether every file listed in I(verify) is there with its sha256 (true when I(verify) is not given).
  type: bool
  returned: always
mismatched:
  description: The first ten listed files that are missing or whose sha256 differs.
  type: list
  elements: str
  returned: always
present:
  description: The paths of I(probe) that are plain files (not links).
  type: list
  elements: str
  returned: always
compared:
  description: For I(compare) - C(missing) and C(differ), lists of file names.
  type: dict
  returned: when compare is given
"""

ENTRY_SPEC: dict[str, Any] = {
    "path": {"type": "path", "required": True},
    "state": {"type": "str", "required": True, "choices": ["directory", "file", "absent"]},
    "content": {"type": "str"},
    "force": {"type": "bool", "default": True},
    "owner": {"type": "str"},
    "group": {"type": "str"},
    "mode": {"type": "str"},
}


def set_attributes(module: AnsibleModule, path: str, entry: dict[str, Any]) -> bool:
    """Owner, group and mode of an existing path; True when one of them differs."""
    changed = False
    if entry.get("owner") is not None:
        changed = module.set_owner_if_different(path, entry["owner"], changed)
    if entry.get("group") is not None:
        changed = module.set_group_if_different(path, entry["group"], changed)
    if entry.get("mode") is not None:
        changed = module.set_mode_if_different(path, entry["mode"], changed)
    return changed


def ensure_absent(module: AnsibleModule, path: str) -> bool:
    if not os.path.lexists(path):
        return False
    if not module.check_mode:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    return True


def ensure_directory(module: AnsibleModule, path: str, entry: dict[str, Any]) -> bool:
    if os.path.lexists(path):
        if not os.path.isdir(path):
            module.fail_json(msg=f"{path} exists and is not a directory")
        return set_attributes(module, path, entry)
    if module.check_mode:
        return True
    missing = [path]
    parent = os.path.dirname(path)
    while parent and parent != "/" and not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        os.mkdir(directory)
        set_attributes(module, directory, entry)
    return True


def ensure_file(module: AnsibleModule, path: str, entry: dict[str, Any], diffs: list[dict[str, str]]) -> bool:
    wanted = (entry.get("content") or "").encode()
    exists = os.path.lexists(path)
    if exists and os.path.isdir(path):
        module.fail_json(msg=f"{path} is a directory, not a file")
    current = b""
    if exists:
        with open(path, "rb") as handle:
            current = handle.read()
    write = not exists or (entry["force"] and current != wanted)
    if write:
        if module._diff:
            diffs.append(
                {
                    "before_header": path,
                    "after_header": path,
                    "before": current.decode(errors="replace"),
                    "after": wanted.decode(errors="replace"),
                }
            )
        if module.check_mode:
            return True
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pypi_common_files.")
        with os.fdopen(handle, "wb") as out:
            out.write(wanted)
        module.atomic_move(temporary, path)
    return set_attributes(module, path, entry) or write


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def mismatched(sums_path: str, text: str) -> list[str]:
    """The files listed in a sha256sum file that are missing or differ (relative to its directory)."""
    base = os.path.dirname(sums_path)
    bad: list[str] = []
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if not line.strip():
            continue
        if len(digest) != 64 or not name:
            bad.append(f"{sums_path}: malformed line {line[:80]!r}")
            continue
        path = os.path.join(base, name)
        try:
            if not os.path.isfile(path) or sha256_of(path) != digest:
                bad.append(name)
        except OSError:
            bad.append(name)
        if len(bad) >= 10:
            break
    return bad


def compare_dir(module: AnsibleModule, directory: str, sums: str) -> dict[str, list[str]]:
    """The names of sums missing from directory, and those there with other bytes (or not a plain file)."""
    missing: list[str] = []
    differ: list[str] = []
    for line in sums.splitlines():
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or "/" in name or name in (".", ".."):
            module.fail_json(msg=f"compare with {directory}: bad line {line[:120]!r} (want '<sha256>  <file name>')")
        path = os.path.join(directory, name)
        try:
            # O_NONBLOCK: a FIFO planted under a mirror file's name must not hang the run (it counts as other bytes).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            missing.append(name)
            continue
        except OSError:
            differ.append(name)  # a link, or unreadable: not the mirror's file
            continue
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                differ.append(name)
                continue
            digest_now = hashlib.sha256()
            while chunk := handle.read(1 << 20):
                digest_now.update(chunk)
        if digest_now.hexdigest() != digest:
            differ.append(name)
    return {"missing": missing, "differ": differ}


def plain_file(path: str) -> bool:
    """A plain file at path itself (lstat): a link, even to a plain file, is not one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "dict", "required": True, "options": ENTRY_SPEC},
            "verify": {"type": "path"},
            "probe": {"type": "list", "elements": "path", "default": []},
            "compare": {
                "type": "dict",
                "options": {"dir": {"type": "path", "required": True}, "sums": {"type": "str", "required": True}},
            },
        },
        supports_check_mode=True,
    )
    changed_paths: list[str] = []
    diffs: list[dict[str, str]] = []
    for entry in module.params["paths"]:
        path = entry["path"]
        if not os.path.isabs(path):
            module.fail_json(msg=f"{path} is not an absolute path")
        if entry["state"] == "absent":
            changed = ensure_absent(module, path)
        elif entry["state"] == "directory":
            changed = ensure_directory(module, path, entry)
        else:
            if entry.get("content") is None:
                module.fail_json(msg=f"{path}: state file needs content")
            changed = ensure_file(module, path, entry, diffs)
        if changed:
            changed_paths.append(path)
    bad: list[str] = []
    sums = module.params["verify"]
    if sums:
        wanted = [entry.get("content") for entry in module.params["paths"] if entry["path"] == sums]
        try:
            if wanted and wanted[-1] is not None:
                text = wanted[-1]
            else:
                with open(sums, encoding="utf-8") as handle:
                    text = handle.read()
            bad = mismatched(sums, text)
        except (OSError, UnicodeDecodeError) as error:
            bad = [f"{sums}: {error}"]
    present = [path for path in module.params["probe"] if plain_file(path)]
    extra = {}
    if module.params["compare"]:
        extra["compared"] = compare_dir(module, module.params["compare"]["dir"], module.params["compare"]["sums"])
    module.exit_json(
        **extra,
        changed=bool(changed_paths),
        changed_paths=changed_paths,
        diff=diffs,
        verified=not bad,
        mismatched=bad,
        present=present,
    )


if __name__ == "__main__":
    main()
