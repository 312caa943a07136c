"""The record of the ports role pypi_firewall opened on a host, by purpose, so that a port no longer served is closed.

One small JSON file, {"<purpose>": {"firewall": ..., "zone": ..., "ports": [...]}}: read bounded and without
following a link, written under a temporary name and renamed into place. The entry of the VRRP rules (entry point
vrrp, in firewalld, whose rich rules carry no comment of the role's) holds the peers whose rule the role added, as
"peers": [...] beside its empty ports."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tempfile
from collections.abc import Sequence
from typing import Any

MAX_RECORD = 64 * 1024
FIREWALLS = ("firewalld", "iptables", "nftables")
PURPOSE = re.compile(r"[a-z][a-z0-9-]{0,31}\Z")
KEYS = {"firewall", "zone", "ports"}
MAX_PEERS = 256


class RecordError(Exception):
    """The record is unreadable or not what this role writes."""


def check_entry(path: str, purpose: Any, entry: Any) -> dict[str, Any]:
    """One purpose's entry, checked: {"firewall", "zone", "ports"} and, for VRRP rules, "peers"."""
    where = f"{path}: entry {str(purpose)[:40]!r}"
    if not isinstance(purpose, str) or not PURPOSE.match(purpose):
        raise RecordError(f"{where} is not a purpose name ([a-z][a-z0-9-], at most 32 characters)")
    if not isinstance(entry, dict) or set(entry) - {"peers"} != KEYS:
        raise RecordError(f"{where} must have exactly the keys firewall, zone and ports (and peers, for VRRP)")
    if entry["firewall"] not in FIREWALLS:
        raise RecordError(f"{where}: firewall {str(entry['firewall'])[:40]!r} is not one of {', '.join(FIREWALLS)}")
    if not isinstance(entry["zone"], str) or len(entry["zone"]) > 64:
        raise RecordError(f"{where}: zone must be a string of at most 64 characters")
    ports = entry["ports"]
    if not isinstance(ports, list) or any(type(port) is not int or not 0 < port < 65536 for port in ports):
        raise RecordError(f"{where}: ports must be a list of TCP ports (1-65535)")
    checked = {"firewall": entry["firewall"], "zone": entry["zone"], "ports": sorted(set(ports))}
    if "peers" in entry:
        try:
            checked["peers"] = peer_list(entry["peers"])
        except ValueError as error:
            raise RecordError(f"{where}: {error}") from error
    return checked


def peer_list(peers: Any) -> list[str]:
    """IPv4 addresses, checked and sorted (ValueError naming the first that is not one)."""
    if not isinstance(peers, list) or len(peers) > MAX_PEERS:
        raise ValueError(f"peers must be a list of at most {MAX_PEERS} IPv4 addresses")
    addresses = set()
    for peer in peers:
        try:
            addresses.add(ipaddress.IPv4Address(peer if isinstance(peer, str) else ""))
        except ValueError:
            raise ValueError(f"peer {str(peer)[:40]!r} is not an IPv4 address") from None
    return [str(address) for address in sorted(addresses)]


def read_record(path: str) -> dict[str, dict[str, Any]]:
    """The record at path, checked; empty when there is none. A link, a non-regular file or a file over 64 KiB is
    refused (RecordError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise RecordError(f"{path} cannot be read ({error.strerror}); a link there is refused") from error
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise RecordError(f"{path} is not a regular file")
        data = handle.read(MAX_RECORD + 1)
    if len(data) > MAX_RECORD:
        raise RecordError(f"{path} is larger than {MAX_RECORD} bytes")
    try:
        loaded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RecordError(f"{path} is not JSON: {str(error)[:120]}") from error
    if not isinstance(loaded, dict):
        raise RecordError(f"{path} is not a JSON object")
    return {purpose: check_entry(path, purpose, entry) for purpose, entry in loaded.items()}


def write_record(path: str, record: dict[str, dict[str, Any]]) -> None:
    """Write record to path: a temporary file beside it, then renamed over it (a link at path is replaced, never
    followed)."""
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".airgap-pypi-firewall.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def held(record: dict[str, dict[str, Any]], purposes: set[str], firewall: str, zone: str, *, inside: bool) -> set[int]:
    """The ports the record holds, in this firewall (and zone), for the given purposes (inside) or all others."""
    return {
        port
        for name, entry in record.items()
        if (name in purposes) == inside and entry["firewall"] == firewall and entry["zone"] == zone
        for port in entry["ports"]
    }


def stale_ports(
    record: dict[str, dict[str, Any]],
    purpose: str,
    firewall: str,
    zone: str,
    *,
    wanted: list[int],
    retired: Sequence[str] = (),
) -> list[int]:
    """The ports to close: those this purpose, or a purpose the host no longer serves (retired), opened earlier in
    this firewall, that this purpose does not serve now and no other purpose holds."""
    closing = {purpose, *retired}
    mine = held(record, closing, firewall, zone, inside=True)
    return sorted(mine - set(wanted) - held(record, closing, firewall, zone, inside=False))


def owned_ports(
    record: dict[str, dict[str, Any]],
    purpose: str,
    firewall: str,
    zone: str,
    *,
    wanted: list[int],
    found_open: list[int],
) -> list[int]:
    """The ports this purpose holds after this run: those it opened (wanted and not open before this run), those it
    held before and still serves, and those another purpose of this role holds (so that one closing it leaves it
    open). A port that was open before the role opened it is the operator's and is never recorded."""
    before = held(record, {purpose}, firewall, zone, inside=True)
    # Every other purpose's, a retired one's too: a port the role opened for it that this purpose serves moves here.
    shared = held(record, {purpose}, firewall, zone, inside=False)
    wanted_set = set(wanted)
    return sorted((before & wanted_set) | (wanted_set - set(found_open)) | (wanted_set & shared))


def recorded_peers(record: dict[str, dict[str, Any]], purpose: str, firewall: str, zone: str) -> list[str]:
    """The peers whose VRRP rule the role added for purpose in this firewall and zone."""
    entry = record.get(purpose) or {}
    if entry.get("firewall") != firewall or entry.get("zone") != zone:
        return []
    return list(entry.get("peers") or [])


def owned_peers(
    record: dict[str, dict[str, Any]], purpose: str, firewall: str, zone: str, *, wanted: list[str], found: list[str]
) -> list[str]:
    """The peers whose rule purpose holds after this run: those it added (wanted and not there before this run) and
    those it held before and still wants. A rule that was there before the role added it is the operator's."""
    before = set(recorded_peers(record, purpose, firewall, zone))
    wanted_set = set(peer_list(wanted))
    return peer_list(sorted((before & wanted_set) | (wanted_set - set(found))))


def updated(
    record: dict[str, dict[str, Any]], purpose: str, entry: dict[str, Any] | None, retired: Sequence[str], zone: str
) -> dict[str, dict[str, Any]]:
    """The record with this purpose's entry replaced (dropped when None), and the retired purposes' entries of this
    firewall and zone dropped (their ports were closed)."""
    firewall = entry["firewall"] if entry else None
    after = {
        name: value
        for name, value in record.items()
        if name != purpose and not (name in retired and value["firewall"] == firewall and value["zone"] == zone)
    }
    if entry and (entry["ports"] or entry.get("peers")):
        after[purpose] = entry
    return after
