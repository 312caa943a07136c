#!/usr/bin/python
"""Verify a backup archive against the manifest it carries; with dest, unpack it in the same single read."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import zlib
from pathlib import PurePosixPath
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_backup_verify
short_description: Check every file of a backup archive against its MANIFEST.sha256
description:
  - Reads the tar.gz archive once, as one gzip stream of one tar; every file the manifest lists must be in it with
    that sha256, and the archive may hold nothing else but MANIFEST.sha256 and INFO.json. Members with absolute
    paths, C(..), links or devices fail the check, and so does anything after the tar's end (another archive
    appended, which other readers would pick instead).
  - With O(dest), the same read writes each member into that empty directory as a new regular file (never through
    a link); when the check fails, what was written is removed. Restores unpack with this, so what is restored is
    exactly what was verified.
options:
  path:
    description: The archive.
    type: path
    required: true
  dest:
    description: An empty directory to unpack the verified archive into (created with mode 0700 when missing).
    type: path
  digest:
    description: >-
      The manifest digest this archive had when it was verified elsewhere (on the controller); another one fails
      the check, so the archive unpacked is the one verified.
    type: str
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


def open_new(dest: str, name: str) -> int:
    """A new regular file dest/name, its directories made as needed; never through a link (O_NOFOLLOW, O_EXCL)."""
    directory = dest
    for part in name.split("/")[:-1]:
        directory = os.path.join(directory, part)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if os.path.islink(directory) or not os.path.isdir(directory):
                raise BadArchive(f"member {name!r} is below something that is not a directory") from None
    try:
        return os.open(os.path.join(dest, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise BadArchive(f"member {name!r} is in the archive twice") from None


KEPT = (MANIFEST, INFO, "config/htpasswd")


def only_zeros(stream: Any) -> None:
    """Read stream to its end; anything but zero bytes is another archive appended."""
    while rest := stream.read(1 << 20):
        if rest.strip(b"\0"):
            raise BadArchive("data follows the end of the tar archive")


def read_members(archive: str, dest: str | None) -> tuple[dict[str, str], dict[str, bytes]]:
    """{name: sha256 hex} of every regular member, and the bytes of the manifest, INFO.json and htpasswd; written
    into dest too when it is given."""
    found: dict[str, str] = {}
    kept: dict[str, bytes] = {}
    with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
        with tarfile.open(fileobj=unzipped, mode="r|") as tar:
            for member in tar:
                name = safe_name(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BadArchive(f"member {name!r} is not a regular file")
                if name in found:
                    raise BadArchive(f"member {name!r} is in the archive twice")
                handle = tar.extractfile(member)
                assert handle is not None
                out = open_new(dest, name) if dest is not None else None
                data = hashlib.sha256()
                content = b""
                try:
                    while block := handle.read(1 << 20):
                        data.update(block)
                        if out is not None:
                            os.write(out, block)
                        if name in KEPT:
                            content += block
                finally:
                    if out is not None:
                        os.close(out)
                found[name] = data.hexdigest()
                if name in KEPT:
                    kept[name] = content
            # The rest of the tar's last record (already buffered by tarfile) holds zero blocks only.
            only_zeros(tar.fileobj)
        # Only the tar's zero blocks may follow its end, up to the end of the one gzip stream.
        only_zeros(unzipped)
    return found, kept


def verify(archive: str, dest: str | None = None, expect_digest: str | None = None) -> dict[str, Any]:
    """Hash every member; the manifest, its digest, the accounts in config/htpasswd and INFO.json. With dest,
    the members are written there in the same read, and removed again when the check fails."""
    if dest is not None:
        os.makedirs(dest, mode=0o700, exist_ok=True)
        if os.listdir(dest):
            raise BadArchive(f"{dest} is not empty")
    try:
        result = check(*read_members(archive, dest))
        if expect_digest and result["digest"] != expect_digest:
            raise BadArchive(f"its manifest is {result['digest']}, not {expect_digest} as verified before")
        return result
    # zlib.error is no OSError: a damaged byte in the deflate data ("invalid block type") is a bad archive too.
    except (OSError, tarfile.TarError, EOFError, ValueError, zlib.error) as exc:
        clear(dest)
        message = "something follows the gzip stream" if isinstance(exc, gzip.BadGzipFile) else str(exc)
        raise BadArchive(f"cannot read it as one tar.gz archive: {message}") from exc
    except BadArchive:
        clear(dest)
        raise


def clear(dest: str | None) -> None:
    if dest is None:
        return
    for item in os.scandir(dest):
        if item.is_dir(follow_symlinks=False):
            shutil.rmtree(item.path)
        else:
            os.unlink(item.path)


def check(hashes: dict[str, str], kept: dict[str, bytes]) -> dict[str, Any]:
    """The manifest against the members' hashes."""
    manifest_raw, htpasswd = kept.get(MANIFEST, b""), kept.get("config/htpasswd", b"")
    info: dict[str, Any] = json.loads(kept.get(INFO) or b"{}")
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
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True}, "dest": {"type": "path"}, "digest": {"type": "str"}},
        supports_check_mode=True,
    )
    dest = None if module.check_mode else module.params["dest"]
    try:
        result = verify(module.params["path"], dest, module.params["digest"])
    except BadArchive as exc:
        module.fail_json(msg=f"{module.params['path']} failed verification: {exc}")
    module.exit_json(changed=dest is not None, **result)


if __name__ == "__main__":
    main()
