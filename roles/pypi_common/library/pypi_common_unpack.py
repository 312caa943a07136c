#!/usr/bin/python
"""Unpack a tar of known files into a directory: each file checked against its sha256, written under a temporary
name and renamed into place; optionally remove the files of some directories that are not listed."""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import os
import pwd
import re
import secrets
import stat
import tarfile
from typing import BinaryIO, Tuple

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_common_unpack
short_description: Files from a tar, each verified and renamed into place, in one round trip
description:
  - Used through the action plugin of the same name, which packs the files on the controller and sends the tar.
  - Every member of I(archive) must be a regular file listed in I(files); anything else (links, devices,
    directories, absolute paths, C(..), a NUL byte, unlisted or repeated names) stops the module before that
    member is written.
  - Each file is written to a temporary name in its directory (C(.airgap-unpack-), the pid, a random part, then as
    much of the name as fits), hashed while written, compared with its listed sha256, given I(owner), I(group)
    and I(mode) and flushed to disk. Only when every file is whole are they renamed over the old names, so a
    reader sees the old file or the new one, never part of one.
  - A bad file (a wrong sha256, a refused member, a missing file) stops the module before any file is renamed;
    the old files stay and the temporary files are removed. Directories created on the way stay, and so does
    the removal of stale temporary files (below).
  - A rename that fails (for example a directory where a file goes) leaves the files renamed before it in place;
    the temporary files of the others are removed and the message names the files renamed. Running again
    finishes the copy.
  - No link below I(dest) is followed. I(dest) itself must not be a symbolic link (the directories above it are
    resolved as usual); a directory on the way that is a link stops the module, named in the message. Directories
    missing on the way are created with I(dir_mode). The final names are replaced by rename, so a link there is
    replaced, not followed.
  - In I(dest) and each directory on the way to a file, temporary files that an earlier run left when it was
    killed are removed first - regular files only, whose names match this module's temporary names and whose
    writing process is gone (links and directories are left alone).
  - Then, in each directory of I(prune), files (and links) whose paths are not in I(files) are removed. A failure
    there names the files already removed; all files were renamed into place before it.
options:
  archive:
    description: The tar on the host (the action plugin's transfer).
    type: path
    required: true
  dest:
    description: The directory the files go into (it must exist and not be a symlink).
    type: path
    required: true
  files:
    description: Relative path to sha256 (hex), for every file of the tar.
    type: dict
    required: true
  owner:
    description: Owner of the files and of directories created.
    type: str
    required: true
  group:
    description: Group of the files and of directories created.
    type: str
    required: true
  mode:
    description: Permissions of the files, an octal string.
    type: str
    default: "0644"
  dir_mode:
    description: Permissions of directories created, an octal string.
    type: str
    default: "0755"
  prune:
    description: Directories, relative to I(dest), whose files not in I(files) are removed.
    type: list
    elements: str
    default: []
author: airgap-pypi
"""

RETURN = r"""
written:
  description: The relative paths written.
  type: list
  returned: always
pruned:
  description: The relative paths removed by I(prune).
  type: list
  returned: always
stale:
  description: The relative paths of stale temporary files removed (left by a killed earlier run).
  type: list
  returned: success
"""

TEMP_PREFIX = ".airgap-unpack-"
# This module's temporary names: the prefix, the writer's pid, a random part, the file's name (cut to fit). The
# pattern takes names without the random part too, which earlier versions wrote.
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"([0-9]{1,10})-.+", re.DOTALL)
NAME_MAX = 255  # bytes in one file name (Linux)
CHUNK = 1 << 20
SHA256_HEX = frozenset("0123456789abcdef")
NAMES_SHOWN = 10


class UnpackError(Exception):
    """A member, path or checksum that stops the unpacking (its message names it)."""


class RenameError(Exception):
    """A rename into place failed (the message names the file) after the files of done were renamed."""

    def __init__(self, message: str, done: list[str], total: int) -> None:
        super().__init__(message)
        self.done, self.total = done, total


def some(names: list[str]) -> str:
    """names for a message: the first NAMES_SHOWN, then how many more."""
    shown = ", ".join(names[:NAMES_SHOWN])
    return f"{shown} and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else shown


def parts_of(relative: str, what: str = "the listed path") -> list[str]:
    """The components of a relative path, refused when it could leave the destination or cannot be a file name."""
    if "\x00" in relative:
        raise UnpackError(f"{what} {relative!r} holds a NUL byte")
    try:
        os.fsencode(relative)
    except UnicodeEncodeError as error:
        raise UnpackError(f"{what} {relative!r} cannot be a file name ({error.reason})") from error
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise UnpackError(f"{what} {relative!r} is not a plain relative path")
    if any(part.startswith(TEMP_PREFIX) for part in parts):
        raise UnpackError(f"{what} {relative!r} uses the module's temporary prefix")
    return parts


def not_a_directory(parent: int | None, name: str, what: str, error: OSError) -> UnpackError:
    """The refusal of name below parent, which could not be opened as a directory without following a link."""
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
            return UnpackError(f"{what} is a symbolic link, which is not followed")
    return UnpackError(f"{what} cannot be opened as a directory: {error.strerror}")


def open_dir(parent: int, name: str, create_mode: int | None, ids: tuple[int, int], what: str) -> int:
    """Open directory name below parent without following a link; create it when missing and create_mode is set."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except FileNotFoundError:
        if create_mode is None:
            raise
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            raise not_a_directory(parent, name, what, error) from error
        raise
    os.mkdir(name, create_mode, dir_fd=parent)
    fd = os.open(name, flags, dir_fd=parent)
    os.fchown(fd, *ids)
    os.fchmod(fd, create_mode)
    return fd


def open_dest(dest: str) -> int:
    """Open the destination directory, refused when it is a symbolic link."""
    try:
        return os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno in (errno.ENOTDIR, errno.ELOOP):
            raise not_a_directory(None, dest, f"the destination {dest}", error) from error
        raise


def writer_gone(pid: int) -> bool:
    """Whether the process that wrote a temporary name is gone: no such process, or this one (which has not yet
    written in the directory being cleaned, so the name is from an earlier process with the same pid)."""
    if pid == os.getpid() or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except OSError:  # another user's live process
        return False
    return False


def remove_stale(directory: int, relative: str) -> list[str]:
    """Remove the temporary files a killed earlier run left in directory: regular files (never links) whose names
    are this module's temporary names, when their writer is gone. Returns their paths relative to dest."""
    removed = []
    with os.scandir(directory) as entries:
        names = [entry.name for entry in entries if entry.name.startswith(TEMP_PREFIX)]
    for name in sorted(names):
        match = TEMP_NAME.fullmatch(name)
        if not match or not writer_gone(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(name, dir_fd=directory).st_mode):
                os.unlink(name, dir_fd=directory)
                removed.append(f"{relative}/{name}" if relative else name)
    return removed


class Directories:
    """Directories below dest, each opened once without following links (created with dir_mode when missing); the
    stale temporary files of each are removed when it is first opened."""

    def __init__(self, dest: str, ids: tuple[int, int], mode: int | None) -> None:
        self.fds = {"": open_dest(dest)}
        self.dest, self.ids, self.mode = dest, ids, mode
        self.stale: list[str] = []
        try:
            self.stale += remove_stale(self.fds[""], "")
        except BaseException:
            self.close()
            raise

    def fd(self, parts: list[str]) -> int:
        key = ""
        for part in parts:
            child = f"{key}/{part}" if key else part
            if child not in self.fds:
                what = f"{child} in {self.dest}"
                self.fds[child] = open_dir(self.fds[key], part, self.mode, self.ids, what)
                self.stale += remove_stale(self.fds[child], child)
            key = child
        return self.fds[key]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def temporary_name(name: str) -> str:
    """A temporary name for name in its directory: the prefix, this pid and a random part, then as much of name as
    fits in NAME_MAX bytes (cut by bytes, never inside a UTF-8 character)."""
    head = f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}-"
    room = NAME_MAX - len(head.encode())
    return head + os.fsencode(name)[:room].decode("utf-8", "ignore")


def write_temporary(
    directory: int, name: str, source: BinaryIO, *, digest: str, ids: tuple[int, int], mode: int, what: str
) -> str:
    """Write source to a temporary name in directory, owned and moded, flushed; returns that name once its sha256
    is the listed one (otherwise it is removed and UnpackError raised)."""
    temporary = temporary_name(name)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=directory)
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb", closefd=False) as out:
            while chunk := source.read(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
            out.flush()
            os.fchown(fd, *ids)
            os.fchmod(fd, mode)
            os.fsync(fd)
        if hasher.hexdigest() != digest:
            raise UnpackError(f"{what}: sha256 {hasher.hexdigest()} is not the listed {digest}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
        raise
    finally:
        os.close(fd)
    return temporary


Staged = Tuple[int, str, str, str]  # directory fd, temporary name, final name, relative path


def stage(
    archive: str, files: dict[str, str], directories: Directories, ids: tuple[int, int], mode: int
) -> list[Staged]:
    """Every member of archive written and checked under a temporary name; on any failure the temporary files
    written are removed and nothing is renamed."""
    staged: list[Staged] = []
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar:
                parts = parts_of(member.name, "the archive member")
                if member.name not in files or member.name in seen:
                    raise UnpackError(f"the archive holds {member.name!r}, which is not listed or is repeated")
                seen.add(member.name)
                if not member.isreg():
                    raise UnpackError(f"{member.name} in the archive is not a regular file")
                source = tar.extractfile(member)
                if source is None:
                    raise UnpackError(f"{member.name} cannot be read from the archive")
                directory = directories.fd(parts[:-1])
                temporary = write_temporary(
                    directory, parts[-1], source, digest=files[member.name], ids=ids, mode=mode, what=member.name
                )
                staged.append((directory, temporary, parts[-1], member.name))
        if missing := sorted(set(files) - seen):
            raise UnpackError(f"the archive lacks {some(missing)}")
    except BaseException:
        remove_temporary(staged)
        raise
    return staged


def remove_temporary(staged: list[Staged]) -> None:
    for directory, temporary, _, _ in staged:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)


def rename_into_place(staged: list[Staged]) -> list[str]:
    """Rename every staged file over its final name; on a failure the temporary files not yet renamed are removed
    and RenameError names the files already renamed."""
    done: list[str] = []
    try:
        for directory, temporary, final, relative in staged:
            os.rename(temporary, final, src_dir_fd=directory, dst_dir_fd=directory)
            done.append(relative)
    except BaseException as error:
        remove_temporary(staged[len(done) :])
        if isinstance(error, Exception):
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise RenameError(f"{staged[len(done)][3]}: {reason}", done, len(staged)) from error
        raise
    return done


def unpack(
    archive: str, dest: str, files: dict[str, str], ids: tuple[int, int], modes: tuple[int, int]
) -> tuple[list[str], list[str]]:
    """Every member of archive into dest (see DOCUMENTATION); returns the paths written and the stale temporary
    files removed. All files are written and checked under temporary names first; only when every one is whole are
    they renamed into place."""
    for relative, digest in files.items():
        parts_of(relative)
        if len(digest) != 64 or not set(digest) <= SHA256_HEX:
            raise UnpackError(f"{relative}: {digest!r} is not a sha256 in hex")
    directories = Directories(dest, ids, modes[1])
    try:
        staged = stage(archive, files, directories, ids, modes[0])
        return rename_into_place(staged), directories.stale
    finally:
        directories.close()


def prune(dest: str, directories: list[str], keep: set[str], removed: list[str]) -> list[str]:
    """Remove the files and links of each directory (relative to dest) whose relative paths are not in keep,
    appending each to removed as it goes (so a failure part way still tells what was removed)."""
    for directory in directories:
        parts = parts_of(directory, "the prune directory")
        fds = [open_dest(dest)]
        try:
            for index, part in enumerate(parts):
                what = f"{'/'.join(parts[: index + 1])} in {dest}"
                fds.append(open_dir(fds[-1], part, None, (0, 0), what))
            with os.scandir(fds[-1]) as entries:
                names = [entry.name for entry in entries]
            for name in sorted(names):
                info = os.lstat(name, dir_fd=fds[-1])
                relative = f"{directory}/{name}"
                if relative not in keep and not stat.S_ISDIR(info.st_mode):
                    os.unlink(name, dir_fd=fds[-1])
                    removed.append(relative)
        finally:
            for opened in fds:
                os.close(opened)
    return removed


def ids_of(owner: str, group: str) -> tuple[int, int]:
    uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
    gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "archive": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True},
            "owner": {"type": "str", "required": True},
            "group": {"type": "str", "required": True},
            "mode": {"type": "str", "default": "0644"},
            "dir_mode": {"type": "str", "default": "0755"},
            "prune": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=False,
    )
    params = module.params
    files = {str(path): str(digest).lower() for path, digest in params["files"].items()}
    try:
        ids = ids_of(params["owner"], params["group"])
        modes = (int(params["mode"], 8), int(params["dir_mode"], 8))
    except (KeyError, ValueError) as error:
        module.fail_json(msg=f"Bad owner, group or mode for {params['dest']}: {error}")
    dest = params["dest"]
    try:
        written, stale = unpack(params["archive"], dest, files, ids, modes)
    except (UnpackError, OSError, tarfile.TarError) as error:
        module.fail_json(
            msg=f"Unpacking into {dest} stopped while checking the files: {error}. No file was renamed into place."
        )
    except RenameError as error:
        module.fail_json(
            msg=f"Unpacking into {dest} stopped while renaming the files into place: {error}; renamed "
            f"{len(error.done)} of {error.total} files before the failure: {some(error.done) or 'none'}; the "
            "other files' temporary copies were removed; run again to finish."
        )
    removed: list[str] = []
    try:
        prune(dest, params["prune"], set(files), removed)
    except (UnpackError, OSError) as error:
        module.fail_json(
            msg=f"Unpacking into {dest} stopped while pruning unlisted files: {error}; all {len(written)} files "
            f"had been renamed into place; removed {len(removed)} unlisted files before the failure: "
            f"{some(removed) or 'none'}; run again to finish.",
            written=written,
            pruned=removed,
        )
    module.exit_json(changed=bool(written or removed or stale), written=written, pruned=removed, stale=stale)


if __name__ == "__main__":
    main()
