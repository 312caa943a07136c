#!/usr/bin/python
"""The sha256 manifest of an index's data, read live or from a hard-link snapshot taken first."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_backup_manifest
short_description: Hash an index's packages and configuration files, optionally into a snapshot
description:
  - Without I(snapshot), reads the live files and changes nothing.
  - With I(snapshot), first hard-links every file of I(packages_dir) into I(snapshot)/packages (same file system:
    uploaded files are never rewritten, so the links are a consistent copy) and copies the configuration files into
    I(snapshot)/config and the data files into I(snapshot)/data, then hashes the snapshot and writes MANIFEST.sha256
    (sha256sum format) and INFO.json there.
  - Manifest paths are C(packages/<relative path>), C(config/<name>), C(data/<name>) and C(data/<dir>/<name>).
options:
  packages_dir:
    description: The index's packages directory.
    type: path
    required: true
  config_dir:
    description: Directory of the configuration files.
    type: path
    required: true
  config_files:
    description: Names of the configuration files in I(config_dir) (missing ones are left out).
    type: list
    elements: str
    default: []
  data_files:
    description:
      - Other files of the index's data, as {name in the archive: path on the host}, e.g. the yank file. A missing
        one, or one that is not a regular file (a link), is left out.
    type: dict
    default: {}
  data_dirs:
    description:
      - Directories of the index's data, as {name in the archive: path on the host}, e.g. the audit trail: each
        regular file directly in it whose name does not start with C(.) (temporary files) travels as
        C(data/<name>/<file>). A missing directory, or one that is a link, is left out, and so are links and
        subdirectories in it.
    type: dict
    default: {}
  snapshot:
    description: Directory to create the snapshot in (must not exist). Empty for a read-only manifest.
    type: path
    default: ""
  info:
    description: Extra data for INFO.json in the snapshot.
    type: dict
    default: {}
author: airgap-pypi
"""

RETURN = r"""
files:
  description: "Manifest as {path: sha256}."
  type: dict
  returned: always
count:
  description: Number of files.
  type: int
  returned: always
bytes:
  description: Their total size.
  type: int
  returned: always
digest:
  description: sha256 of the manifest text (the same data gives the same digest).
  type: str
  returned: always
"""

MANIFEST = "MANIFEST.sha256"
INFO = "INFO.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_files(
    packages_dir: Path,
    config_dir: Path,
    config_files: list[str],
    other: dict[str, str] | None = None,
    data_dirs: dict[str, str] | None = None,
) -> dict[str, Path]:
    """{manifest path: file} of every regular file under packages_dir, the named configuration files, the other
    data files and the files directly in the data directories (regular files only, never through a link)."""
    found: dict[str, Path] = {}
    for root, dirs, names in os.walk(packages_dir):
        dirs.sort()
        for name in names:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                found["packages/" + path.relative_to(packages_dir).as_posix()] = path
    for name in config_files:
        path = config_dir / name
        if path.is_file():
            found[f"config/{name}"] = path
    for name, location in (other or {}).items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"data file name unfit for the archive: {name!r}")
        path = Path(location)
        if path.is_file() and not path.is_symlink():
            found[f"data/{name}"] = path
    found.update(directory_files(data_dirs or {}, found))
    return dict(sorted(found.items()))


def directory_files(data_dirs: dict[str, str], found: dict[str, Path]) -> dict[str, Path]:
    """{data/<name>/<file>: path} of the regular files directly in each data directory, names not starting with
    "." (temporary files); a directory that is a link or missing, and links and subdirectories in one, left out."""
    files: dict[str, Path] = {}
    for name, location in data_dirs.items():
        if "/" in name or name in ("", ".", "..") or f"data/{name}" in found:
            raise ValueError(f"data directory name unfit for the archive: {name!r}")
        directory = Path(location)
        if directory.is_symlink() or not directory.is_dir():
            continue
        for entry in sorted(os.scandir(directory), key=lambda item: item.name):
            if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                files[f"data/{name}/{entry.name}"] = directory / entry.name
    return files


def manifest_text(files: dict[str, str]) -> str:
    """sha256sum's format, sorted by path, so that `sha256sum --check` reads it."""
    for path in files:
        if "\n" in path or "\\" in path:
            raise ValueError(f"file name unfit for a manifest: {path!r}")
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(files.items()))


def take_snapshot(sources: dict[str, Path], snapshot: Path) -> dict[str, Path]:
    """Hard-link packages and copy configuration files into snapshot; {manifest path: snapshot file}."""
    snapshot.mkdir(parents=True)
    (snapshot / "packages").mkdir()
    (snapshot / "config").mkdir()
    (snapshot / "data").mkdir()
    copies: dict[str, Path] = {}
    for rel, source in sources.items():
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith("packages/"):
            try:
                os.link(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(source, target)  # another file system: a copy, still of immutable files
        else:
            shutil.copy2(source, target)
        copies[rel] = target
    return copies


def build(
    packages_dir: Path,
    config_dir: Path,
    config_files: list[str],
    snapshot: Path | None,
    info: dict[str, Any],
    *,
    other: dict[str, str] | None = None,
    dirs: dict[str, str] | None = None,
) -> dict[str, Any]:
    files = data_files(packages_dir, config_dir, config_files, other, dirs)
    if snapshot is not None:
        files = take_snapshot(files, snapshot)
    hashes = {rel: sha256_of(path) for rel, path in files.items()}
    text = manifest_text(hashes)
    size = sum(path.stat().st_size for path in files.values())
    if snapshot is not None:
        (snapshot / MANIFEST).write_text(text)
        (snapshot / INFO).write_text(json.dumps(dict(info, files=len(files), bytes=size), indent=2, sort_keys=True))
    return {
        "files": hashes,
        "count": len(hashes),
        "bytes": size,
        "digest": hashlib.sha256(text.encode()).hexdigest(),
    }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "packages_dir": {"type": "path", "required": True},
            "config_dir": {"type": "path", "required": True},
            "config_files": {"type": "list", "elements": "str", "default": []},
            "data_files": {"type": "dict", "default": {}},
            "data_dirs": {"type": "dict", "default": {}},
            "snapshot": {"type": "path", "default": ""},
            "info": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    params = module.params
    packages_dir = Path(params["packages_dir"])
    if not packages_dir.is_dir():
        module.fail_json(msg=f"{packages_dir} is not a directory: is the index installed on this host?")
    snapshot = Path(params["snapshot"]) if params["snapshot"] and not module.check_mode else None
    if snapshot is not None and snapshot.exists():
        module.fail_json(msg=f"{snapshot} exists already (a backup running in parallel, or one that was killed)")
    try:
        result = build(
            packages_dir,
            Path(params["config_dir"]),
            params["config_files"],
            snapshot,
            params["info"],
            other={str(name): str(path) for name, path in params["data_files"].items()},
            dirs={str(name): str(path) for name, path in params["data_dirs"].items()},
        )
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot read or snapshot the index's data: {exc}")
    # A snapshot is a temporary work copy: the host's state does not change.
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
