"""Filters of role pypi_balancer: HAProxy's statistics, read; where keepalived puts the shared address; which
services a host runs (service_facts), for retiring a balancer."""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from typing import Any

BACKENDS = ("airgap_pypi_reads", "airgap_pypi_writer")


def server_states(text: str) -> list[dict[str, str]]:
    """{backend, server, status} of every server of the balancer's two backends, from HAProxy's CSV statistics
    (`/stats;csv`; its header line starts with '# '). Status is its first word (UP, DOWN, MAINT, no ...)."""
    lines = (text or "").splitlines()
    if not lines or not lines[0].startswith("# "):
        return []
    rows = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    return [
        {"backend": row["pxname"], "server": row["svname"], "status": (row.get("status") or "").split(" ")[0]}
        for row in rows
        if row.get("pxname") in BACKENDS and row.get("svname") not in ("FRONTEND", "BACKEND")
    ]


# A line of `ip -o -4 addr show`: "2: eth0    inet 172.18.0.5/16 brd 172.18.255.255 scope global eth0\ ..."
_ADDR_LINE = re.compile(r"^\d+:\s+(?P<name>[A-Za-z0-9_.:@-]{1,32})\s+inet\s+(?P<cidr>[0-9.]{7,15}/\d{1,2})\s")


def vrrp_interface(vip: str, ip_addr_output: str) -> dict[str, Any]:
    """Where keepalived holds the shared address vip (IPv4 CIDR, e.g. 10.0.0.100/24) on this host: the interface
    whose own IPv4 network holds vip, and that interface's address (the source of its unicast VRRP adverts).

    Returns {"ok": True, "interface", "address", "network", "vip" (vip as parsed, the only form written into a
    configuration)} or {"ok": False, "error": why, naming the values}."""
    try:
        shared = ipaddress.IPv4Interface(str(vip).strip())
    except ValueError:
        why = "is not an IPv4 address with its prefix length (10.0.0.100/24)"
        return {"ok": False, "error": f"pypi_balancer_vip={str(vip)[:80]!r} {why}"}
    if shared.network.prefixlen > 30 or shared.ip in (shared.network.network_address, shared.network.broadcast_address):
        return {
            "ok": False,
            "error": f"pypi_balancer_vip={shared} is not a host address of a network of at least 4 addresses",
        }
    if shared.ip.is_loopback or shared.ip.is_link_local or shared.ip.is_multicast or shared.ip.is_reserved:
        return {"ok": False, "error": f"pypi_balancer_vip={shared} is a loopback, link-local or reserved address"}
    seen, found = [], None
    for line in (ip_addr_output or "").splitlines()[:1000]:
        match = _ADDR_LINE.match(line.strip())
        if not match:
            continue
        name = match["name"].split("@", 1)[0]
        try:
            own = ipaddress.IPv4Interface(match["cidr"])
        except ValueError:
            continue
        seen.append(f"{name} {own}")
        if own.ip == shared.ip:
            # Held here now by keepalived (a secondary address); as a primary address it is the host's own.
            if " secondary " not in f" {line} ":
                why = "choose an unused address of that network"
                return {"ok": False, "error": f"pypi_balancer_vip={shared} is the address of {name} itself: {why}"}
            continue
        if own.network == shared.network and found is None:
            found = {
                "ok": True,
                "interface": name,
                "address": str(own.ip),
                "network": str(own.network),
                "vip": str(shared),
            }
    if found is not None:
        return found
    return {
        "ok": False,
        "error": (
            f"no interface has an address in {shared.network}, the network of pypi_balancer_vip={vip}"
            f" (its IPv4 addresses: {', '.join(seen[:8]) or 'none'})"
        ),
    }


def service_state(services: Any, name: str) -> str:
    """A service's state in service_facts' ansible_facts.services ("running", "stopped", ...), under its systemd
    name (name.service) or its init script's (name); "missing" only when the services were read and the host has no
    such service (systemd still lists a unit whose package was removed while it was loaded, with the status
    not-found: missing unless it still runs); "unknown" when the services could not be read."""
    if not isinstance(services, dict) or not services:
        return "unknown"
    found = services.get(f"{name}.service", services.get(name))
    if not isinstance(found, dict):
        return "missing"
    state = str(found.get("state") or "unknown")[:40]
    if found.get("status") == "not-found" and state != "running":
        return "missing"
    return state


def retire_successors(results: Any, units: tuple[str, ...] = ("haproxy", "keepalived")) -> dict[str, list[str]]:
    """The other balancers that can take the shared address, from service_facts run on each of them (a loop's
    registered results): {"ready": names whose units all run, "not_ready": "name (why)" for each other one}."""
    ready: list[str] = []
    not_ready: list[str] = []
    for result in (results or {}).get("results", []) if isinstance(results, dict) else []:
        if not isinstance(result, dict):
            continue
        name = str(result.get("item", "?"))[:253]
        if result.get("unreachable"):
            not_ready.append(f"{name} (unreachable)")
            continue
        services = (result.get("ansible_facts") or {}).get("services")
        if result.get("failed") or result.get("skipped") or not isinstance(services, dict) or not services:
            not_ready.append(f"{name} (its services could not be read)")
            continue
        down = [f"{unit} {state}" for unit in units if (state := service_state(services, unit)) != "running"]
        if down:
            not_ready.append(f"{name} ({', '.join(down)})")
        else:
            ready.append(name)
    return {"ready": ready, "not_ready": not_ready}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "pypi_balancer_server_states": server_states,
            "pypi_balancer_vrrp_interface": vrrp_interface,
            "pypi_balancer_service_state": service_state,
            "pypi_balancer_retire_successors": retire_successors,
        }
