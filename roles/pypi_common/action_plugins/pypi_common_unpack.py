"""Copy known files from the controller into a directory of the host, in one task: packed into one tar on the
controller, sent, then unpacked by the module of the same name (each file checked against its sha256 and renamed
into place only when all are whole; files of the I(prune) directories that are not listed removed).

Replaces a chain of five tasks (a temporary file, tar, unarchive, removal of the temporary file, and a sha256sum
check on the host), each a round trip of its own, with one transfer and one module run.
"""

from __future__ import annotations

import os
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

DOCUMENTATION = r"""
module: pypi_common_unpack
short_description: Copy known files from the controller into a host directory, verified, in one task
options:
  src: {description: The directory on the controller the files are relative to., type: path, required: true}
  files: {description: The files to copy, relative to I(src)., type: list, elements: str, required: true}
  sums:
    description:
      - Their sha256 - a dict (relative path to hex digest) or the text of a SHA256SUMS file
        (C(<sha256>  <relative path>) lines). Every file of I(files) must have one.
    type: raw
    required: true
  dest: {description: The directory on the host (it must exist)., type: path, required: true}
  owner: {description: Owner of the files on the host., type: str, required: true}
  group: {description: Group of the files on the host., type: str, required: true}
  mode: {description: Their permissions., type: str, default: "0644"}
  prune: {description: Directories below I(dest) whose files not in I(files) are removed., type: list, default: []}
"""

PASSED_ON = ("dest", "owner", "group", "mode", "prune")


def digests(sums: Any, files: list[str]) -> dict[str, str]:
    """The sha256 of each file, from a dict or SHA256SUMS text; AnsibleActionFail naming a file without one."""
    if isinstance(sums, str):
        table = {}
        for line in sums.splitlines():
            digest, _, path = line.strip().partition("  ")
            if path:
                table[path.lstrip("*")] = digest
        sums = table
    if not isinstance(sums, dict):
        raise AnsibleActionFail("sums must be a dict or the text of a SHA256SUMS file")
    if missing := [path for path in files if path not in sums]:
        raise AnsibleActionFail(f"No sha256 is listed for {', '.join(missing[:5])}: the bundle is incomplete.")
    return {path: str(sums[path]) for path in files}


def pack(src: Path, files: list[str], archive: Path) -> None:
    """Write the files (regular files only, no links followed) into one uncompressed tar."""
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for relative in files:
            if relative.startswith("/") or ".." in relative.split("/") or "\x00" in relative:
                raise AnsibleActionFail(f"{relative!r} is not a path relative to {src}")
            path = src / relative
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as error:
                raise AnsibleActionFail(f"Cannot read {path} on the controller: {error.strerror}") from error
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise AnsibleActionFail(f"{path} on the controller is not a regular file")
                member = tarfile.TarInfo(relative)
                member.size, member.mode, member.mtime = info.st_size, 0o644, int(info.st_mtime)
                tar.addfile(member, handle)


class ActionModule(ActionBase):
    """See the module docstring."""

    TRANSFERS_FILES = True

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        try:
            result.update(self.copy(dict(self._task.args), task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def copy(self, args: dict[str, Any], task_vars: dict[str, Any] | None) -> dict[str, Any]:
        files = [str(path) for path in args.get("files") or []]
        if not files:
            return {"changed": False, "written": [], "pruned": [], "msg": "no files to copy"}
        if self._task.check_mode:
            return {"changed": True, "msg": f"{len(files)} file(s) would be copied to {args.get('dest')}"}
        module_args = {key: args[key] for key in PASSED_ON if key in args}
        module_args["files"] = digests(args.get("sums"), files)
        with tempfile.TemporaryDirectory(prefix="airgap-pypi-unpack-") as work:
            archive = Path(work) / "files.tar"
            pack(Path(str(args["src"])), files, archive)
            remote = self._connection._shell.join_path(self._connection._shell.tmpdir, "files.tar")
            self._transfer_file(str(archive), remote)
            self._fixup_perms2((self._connection._shell.tmpdir, remote))
            module_args["archive"] = remote
            return self._execute_module(module_name="pypi_common_unpack", module_args=module_args, task_vars=task_vars)
