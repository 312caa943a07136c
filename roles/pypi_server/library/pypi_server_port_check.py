#!/usr/bin/python
"""Report which processes listen on a TCP port, from /proc (read-only)."""

from __future__ import annotations

import os
import pwd

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_server_port_check
short_description: Report which processes listen on a TCP port
description:
  - Reads /proc/net/tcp and /proc/net/tcp6 and the open file descriptors in /proc. Changes nothing.
options:
  port:
    description: TCP port to look for.
    type: int
    required: true
author: airgap-pypi
"""

RETURN = r"""
in_use:
  description: Whether any socket listens on the port.
  type: bool
  returned: always
owners:
  description: The listening processes that could be read, each with pid and cmdline.
  type: list
  elements: dict
  returned: always
users:
  description: Names (or uids) of the users owning the listening sockets.
  type: list
  elements: str
  returned: always
"""

LISTEN = "0A"


def listening_sockets(port: int) -> dict[str, int]:
    """Map the inode of every socket listening on port to the uid that owns it."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes[fields[9]] = int(fields[7])
    return inodes


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owners_of(inodes: dict[str, int]) -> list[dict[str, object]]:
    """Processes holding the sockets (those of other users stay hidden without CAP_SYS_PTRACE)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    owners: list[dict[str, object]] = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        owners.append({"pid": int(pid), "cmdline": cmdline})
    return owners


def main() -> None:
    module = AnsibleModule(argument_spec={"port": {"type": "int", "required": True}}, supports_check_mode=True)
    inodes = listening_sockets(module.params["port"])
    module.exit_json(
        changed=False,
        in_use=bool(inodes),
        owners=owners_of(inodes) if inodes else [],
        users=sorted({user_name(uid) for uid in inodes.values()}),
    )


if __name__ == "__main__":
    main()
