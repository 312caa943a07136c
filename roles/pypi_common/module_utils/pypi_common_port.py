"""Which processes listen on a TCP port, read from /proc (no ss or netstat needed)."""

from __future__ import annotations

import os
import pwd
from typing import Any

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


def who_listens(port: int) -> dict[str, Any]:
    """in_use, owners (pid, cmdline) and users (names or uids) of the sockets listening on port."""
    inodes = listening_sockets(port)
    return {
        "in_use": bool(inodes),
        "owners": owners_of(inodes) if inodes else [],
        "users": sorted({user_name(uid) for uid in inodes.values()}),
    }
