#!/usr/bin/python
"""Verify a backup archive against the manifest it carries, without unpacking it (read-only)."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import PurePosixPath
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_backup_verify
short_description: Check every file of a backup archive against its MANIFEST.sha256
description:
  - Reads the tar.gz archive once; every file the manifest lists must be in it with that sha256, and the archive
    may hold nothing else but MANIFEST.sha256 and INFO.json. Members with absolute paths, C(..), links or devices
    fail the check. Changes nothing.
options:
  path:
    description: The archive.
    type: path
    required: true
author: airgap-pypi
"""

RETURN = r"""
files:
  description: "The manifest as {path: sha256}."
  type: dict
  returned: success
count:
  description: Number of files in the manifest.
  type: int
  returned: success
digest:
  description: sha256 of the manifest text.
  type: str
  returned: success
accounts:
  description: Account names in the archive's config/htpasswd (no password hashes).
  type: list
  elements: str
  returned: success
info:
  description: INFO.json of the archive.
  type: dict
  returned: success
"""

MANIFEST = "MANIFEST.sha256"
INFO = "INFO.json"
LINE = re.compile(r"^([0-9a-f]{64})  (\S.*)$")


class BadArchive(Exception):
    """The archive fails verification; the message says why."""


def parse_manifest(text: str) -> dict[str, str]:
    files: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = LINE.match(line)
        if match is None:
            raise BadArchive(f"{MANIFEST} line {number} is not '<sha256>  <path>': {line!r}")
        files[match.group(2)] = match.group(1)
    return files


def safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise BadArchive(f"member {name!r} would be written outside the restore directory")
    return path.as_posix().removeprefix("./")


def verify(archive: str) -> dict[str, Any]:
    """Hash every member; the manifest, its digest, the accounts in config/htpasswd and INFO.json."""
    hashes: dict[str, str] = {}
    manifest_raw = b""
    info: dict[str, Any] = {}
    htpasswd = b""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = safe_name(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BadArchive(f"member {name!r} is not a regular file")
                handle = tar.extractfile(member)
                assert handle is not None
                data = hashlib.sha256()
                content = b""
                while block := handle.read(1 << 20):
                    data.update(block)
                    if name in (MANIFEST, INFO, "config/htpasswd"):
                        content += block
                hashes[name] = data.hexdigest()
                if name == MANIFEST:
                    manifest_raw = content
                elif name == INFO:
                    info = json.loads(content or b"{}")
                elif name == "config/htpasswd":
                    htpasswd = content
    except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
        raise BadArchive(f"cannot read it as a tar.gz archive: {exc}") from exc
    if MANIFEST not in hashes:
        raise BadArchive(f"it holds no {MANIFEST}")
    files = parse_manifest(manifest_raw.decode())
    missing = sorted(set(files) - set(hashes))
    differ = sorted(path for path, digest in files.items() if path in hashes and hashes[path] != digest)
    extra = sorted(set(hashes) - set(files) - {MANIFEST, INFO})
    problems = [f"{len(missing)} listed file(s) missing: {', '.join(missing[:5])}"] if missing else []
    problems += [f"{len(differ)} file(s) with another sha256 than listed: {', '.join(differ[:5])}"] if differ else []
    problems += [f"{len(extra)} file(s) the manifest does not list: {', '.join(extra[:5])}"] if extra else []
    if problems:
        raise BadArchive("; ".join(problems))
    accounts = sorted(set(re.findall(r"(?m)^([^:#\s]+):", htpasswd.decode(errors="replace"))))
    return {
        "files": files,
        "count": len(files),
        "digest": hashlib.sha256(manifest_raw).hexdigest(),
        "accounts": accounts,
        "info": info,
    }


def main() -> None:
    module = AnsibleModule(argument_spec={"path": {"type": "path", "required": True}}, supports_check_mode=True)
    try:
        result = verify(module.params["path"])
    except BadArchive as exc:
        module.fail_json(msg=f"{module.params['path']} failed verification: {exc}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
