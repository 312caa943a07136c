"""Filters of role pypi_network: check and normalise the inventory's interface list (on the controller).

Python's ipaddress does the address arithmetic, so no library beyond the standard one is needed
(ansible.utils' ip filters would need netaddr).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")  # a Linux interface name that is also a safe file name
CIDR = re.compile(r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$")
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN = re.compile(rf"^(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*$")
MTU_MIN, MTU_MAX = 68, 65535  # RFC 791's minimum for IPv4; the largest 16-bit value
MAX_DNS = 3  # resolv.conf uses the first three nameservers
KEYS = {"name", "method", "address", "gateway", "dns", "search", "mtu", "onboot"}
UUID_NAMESPACE = uuid.UUID("6f1c7a4e-43c4-5f4e-9c55-6e8b1b0d2a51")  # fixed: the same name gives the same profile


def _v4(value: Any) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        return None


def _interface_problems(index: int, item: Any, names: set[str], host_interfaces: Iterable[str] | None) -> list[str]:
    if not isinstance(item, Mapping):
        return [f"pypi_network_interfaces[{index}] is not a mapping (name, method, address, ...): {item!r}"]
    name = item.get("name")
    where = f"pypi_network_interfaces[{index}] ({name})"
    problems: list[str] = []
    unknown = sorted(set(item) - KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})")
    if not isinstance(name, str) or not NAME.match(name):
        problems.append(
            f"{where}: name {name!r} is not an interface name (1-15 letters, digits, '.', '_', '-'; no '/' or ':')"
        )
        return problems
    if name in names:
        problems.append(f"{where}: interface {name} is listed twice")
    names.add(name)
    if host_interfaces is not None and name not in host_interfaces:
        have = ", ".join(sorted(host_interfaces)) or "none"
        problems.append(f"{where}: interface {name} does not exist on this host (it has: {have})")

    method = item.get("method", "static")
    address = item.get("address")
    gateway = item.get("gateway")
    if method not in ("static", "dhcp"):
        problems.append(f"{where}: method {method!r} is neither static nor dhcp")
    elif method == "dhcp":
        for key in ("address", "gateway"):
            if item.get(key):
                problems.append(f"{where}: {key} {item[key]!r} is only for method static (DHCP provides it)")
    else:
        problems.extend(_static_problems(where, address, gateway))

    problems.extend(_option_problems(where, item))
    return problems


def _option_problems(where: str, item: Mapping[str, Any]) -> list[str]:
    """dns, search, mtu and onboot of one interface."""
    problems: list[str] = []
    dns = item.get("dns") or []
    if not isinstance(dns, list):
        problems.append(f"{where}: dns must be a list of IPv4 addresses, not {dns!r}")
    else:
        problems.extend(f"{where}: DNS server {server!r} is not an IPv4 address" for server in dns if not _v4(server))
        if len(dns) > MAX_DNS:
            problems.append(f"{where}: {len(dns)} DNS servers given; resolv.conf uses at most {MAX_DNS}")
    search = item.get("search") or []
    if not isinstance(search, list):
        problems.append(f"{where}: search must be a list of domain names, not {search!r}")
    else:
        problems.extend(
            f"{where}: search domain {domain!r} is not a domain name"
            for domain in search
            if not (isinstance(domain, str) and DOMAIN.match(domain))
        )
    mtu = item.get("mtu")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_MAX):
        problems.append(f"{where}: mtu {mtu!r} is out of range ({MTU_MIN}-{MTU_MAX})")
    if not isinstance(item.get("onboot", True), bool):
        problems.append(f"{where}: onboot must be true or false, not {item.get('onboot')!r}")
    return problems


def _static_problems(where: str, address: Any, gateway: Any) -> list[str]:
    if not address:
        return [f"{where}: method static needs an address with its prefix length, e.g. 192.0.2.10/24"]
    if not isinstance(address, str) or not CIDR.match(address.strip()):
        return [f"{where}: address {address!r} is not an IPv4 address with a prefix length, e.g. 192.0.2.10/24"]
    try:
        iface = ipaddress.IPv4Interface(address.strip())
    except ValueError as error:
        return [f"{where}: address {address!r} is not a valid IPv4 address with a prefix length ({error})"]
    net, ip = iface.network, iface.ip
    problems: list[str] = []
    if net.prefixlen == 0:
        problems.append(f"{where}: address {address} has prefix length 0 (use 1-32)")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        problems.append(f"{where}: address {address} is not a unicast host address")
    elif net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
        kind = "network" if ip == net.network_address else "broadcast"
        problems.append(f"{where}: address {address} is the {kind} address of {net}")
    if gateway in (None, ""):
        return problems
    gw = _v4(gateway)
    if gw is None:
        problems.append(f"{where}: gateway {gateway!r} is not an IPv4 address")
    elif gw not in net:
        problems.append(f"{where}: gateway {gw} is outside {net} (the subnet of address {address})")
    elif gw == ip:
        problems.append(f"{where}: gateway {gw} is the interface's own address")
    elif net.prefixlen <= 30 and gw in (net.network_address, net.broadcast_address):
        problems.append(f"{where}: gateway {gw} is the network or broadcast address of {net}")
    return problems


def pypi_network_problems(
    interfaces: Any,
    host_interfaces: Iterable[str] | None = None,
    connection_interface: str = "",
    connection_address: str = "",
) -> list[str]:
    """Every problem of the interface list, each naming the entry and the bad value; empty when all is well."""
    if not isinstance(interfaces, list):
        return [f"pypi_network_interfaces must be a list of interfaces, not {interfaces!r}"]
    names: set[str] = set()
    hosts = list(host_interfaces) if host_interfaces is not None else None
    problems: list[str] = []
    for index, item in enumerate(interfaces):
        problems.extend(_interface_problems(index, item, names, hosts))
    if problems:
        return problems
    with_gateway = [item["name"] for item in interfaces if item.get("gateway")]
    if len(with_gateway) > 1:
        problems.append(
            f"a gateway is set on {', '.join(with_gateway)}: a host has one default route, set it on one interface"
        )
    for item in interfaces:
        if item["name"] != connection_interface:
            continue
        where = f"{item['name']} (the interface Ansible connects through)"
        if not item.get("onboot", True):
            problems.append(f"{where}: onboot false would leave the host unreachable after its next boot")
        wanted = item.get("address", "").split("/")[0] if item.get("method", "static") == "static" else ""
        if connection_address and wanted and wanted != connection_address:
            problems.append(
                f"{where}: Ansible reaches this host at {connection_address}, but the address given is "
                f"{item['address']}; after applying it the host would stop answering and revert. Change the "
                "address Ansible uses from the host's console or through another interface"
            )
    return problems


def pypi_network_normalize(interfaces: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The interface list with every key set and the address split up, for the templates (run after the checks)."""
    result = []
    for item in interfaces:
        entry: dict[str, Any] = {
            "name": item["name"],
            "method": item.get("method", "static"),
            "address": "",
            "ip": "",
            "prefix": "",
            "netmask": "",
            "gateway": str(item.get("gateway") or ""),
            "dns": [str(server) for server in item.get("dns") or []],
            "search": [str(domain) for domain in item.get("search") or []],
            "mtu": item.get("mtu"),
            "onboot": item.get("onboot", True),
            "uuid": str(uuid.uuid5(UUID_NAMESPACE, item["name"])),
        }
        if entry["method"] == "static":
            iface = ipaddress.IPv4Interface(item["address"].strip())
            entry.update(
                address=iface.with_prefixlen,
                ip=str(iface.ip),
                prefix=iface.network.prefixlen,
                netmask=str(iface.netmask),
            )
        result.append(entry)
    return result


def pypi_network_connection(facts: Mapping[str, Any], target: Any) -> dict[str, str]:
    """How Ansible reaches the host: {interface, address}.

    The interface holding the address Ansible connects to (address is then that address); else the interface of
    the default IPv4 route (address empty: Ansible's address is not on this host, e.g. behind NAT, or a name).
    """
    address = _v4(target)
    if address is not None:
        for name in facts.get("interfaces", []):
            fact = facts.get(name) or facts.get(re.sub(r"[-:]", "_", name)) or {}
            ipv4 = fact.get("ipv4") or {}
            addresses = [ipv4.get("address")] + [extra.get("address") for extra in fact.get("ipv4_secondaries") or []]
            if str(address) in addresses:
                return {"interface": name, "address": str(address)}
    return {"interface": (facts.get("default_ipv4") or {}).get("interface", ""), "address": ""}


class FilterModule:
    """Filters of role pypi_network."""

    def filters(self) -> dict[str, Any]:
        return {
            "pypi_network_problems": pypi_network_problems,
            "pypi_network_normalize": pypi_network_normalize,
            "pypi_network_connection": pypi_network_connection,
        }
