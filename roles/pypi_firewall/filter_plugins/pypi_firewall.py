"""Filters of role pypi_firewall: the rule lines it writes (a TCP port, VRRP from given peers), and which of the
ports were open before it opened any."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError

# The rule line of each kind, by firewall: {item} is the port or the peer's address, {comment} the role's comment.
RULES = {
    "port": {
        "iptables": '-A INPUT -p tcp -m tcp --dport {item} -m comment --comment "{comment}" -j ACCEPT',
        "nftables": 'tcp dport {item} accept comment "{comment}"',
    },
    "vrrp": {
        "iptables": '-A INPUT -s {item}/32 -p 112 -m comment --comment "{comment}" -j ACCEPT',
        "nftables": 'ip saddr {item} ip protocol 112 accept comment "{comment}"',
        "firewalld": 'rule family="ipv4" source address="{item}" protocol value="vrrp" accept',
    },
}


def rule_lines(kind: str, items: list[Any], firewall: str, comment: str) -> list[str]:
    """One line of the kind per item, as the firewall's file (or firewalld, a rich rule) has it."""
    template = RULES[kind].get(firewall)
    if template is None:
        raise AnsibleFilterError(f"no {kind} rule for firewall {firewall!r}")
    return [template.format(item=item, comment=comment) for item in items]


def vrrp_lines(peers: Any, firewall: str, comment: str = "airgap-pypi balancers") -> list[str]:
    """One rule per peer accepting VRRP from that IPv4 address alone, as the firewall's file or firewalld writes it.

    peers: an address or a list of them; firewall: iptables, nftables or firewalld (a rich rule)."""
    return rule_lines("vrrp", _addresses(peers), firewall, comment)


def vrrp_stale_regexp(peers: Any, firewall: str, comment: str = "airgap-pypi balancers") -> str:
    """A regular expression for lineinfile that matches the role's VRRP lines (its comment names them) of every
    address but the peers', in the iptables rules file or the nftables configuration; with no peers, all of them.
    The protocol may be written by its name, as iptables-save and nft write it back (-p vrrp, ip protocol vrrp)."""
    before, after = (part.format(comment=comment) for part in RULES["vrrp"][firewall].split("{item}"))
    tail = re.escape(after).replace(re.escape(" 112 "), re.escape(" ") + "(?:112|vrrp)" + re.escape(" ")) + r"\s*$"
    keep = "|".join(re.escape(str(address)) for address in _addresses(peers))
    others = f"(?!(?:{keep}){tail})" if keep else ""
    return r"^\s*" + re.escape(before) + others + r"[0-9.]{7,15}" + tail


def vrrp_stale_peers(detected: Any, purpose: str, peers: Any) -> list[dict[str, str]]:
    """The firewalld rich rules to remove, [{"address", "zone"}]: those the record holds for purpose whose address is a
    peer no more, in the zone the record names; all of them when firewalld's zone changed since (the rules stay in
    the old zone otherwise). None when firewalld could not list its configuration."""
    detected = detected or {}
    if not detected.get("firewalld_listed"):
        return []
    entry = (detected.get("recorded") or {}).get(purpose) or {}
    if entry.get("firewall") != "firewalld":
        return []
    zone = str(entry.get("zone") or "")
    wanted = set(vrrp_addresses(peers)) if zone == detected.get("firewalld_zone") else set()
    return [{"address": peer, "zone": zone} for peer in entry.get("peers") or [] if peer not in wanted]


def vrrp_rich_found(listing: Any, peers: Any) -> list[str]:
    """Those of peers whose rich rule, as the role writes it, firewalld's listing (--list-rich-rules) has; listing
    may be a list of listings (the permanent and the runtime one): in any of them."""
    text = "\n".join(str(part or "") for part in listing) if isinstance(listing, (list, tuple)) else str(listing or "")
    have = {line.strip() for line in text.splitlines()}
    return [str(address) for address in _addresses(peers) if rule_lines("vrrp", [address], "firewalld", "")[0] in have]


def vrrp_rich_missing(peers: Any, permanent: Any, runtime: Any) -> list[str]:
    """Those of peers whose rich rule firewalld's permanent or runtime listing lacks: those to add (every peer when
    firewalld's rules could not be listed, both listings empty)."""
    have = set(vrrp_rich_found(permanent, peers)) & set(vrrp_rich_found(runtime, peers))
    return [address for address in vrrp_addresses(peers) if address not in have]


MAX_PEERS = 256  # as the record's (module_utils/pypi_firewall_record.py)


def _addresses(peers: Any) -> list[ipaddress.IPv4Address]:
    """The peers as addresses, blanks around them dropped, each once, in order (AnsibleFilterError naming a bad one)."""
    items = [peers] if isinstance(peers, str) else list(peers or [])
    if len(items) > MAX_PEERS:
        raise AnsibleFilterError(f"pypi_firewall_vrrp_peers lists {len(items)} addresses: at most {MAX_PEERS}")
    addresses: list[ipaddress.IPv4Address] = []
    for peer in items:
        try:
            address = ipaddress.IPv4Address(str(peer).strip())
        except ValueError as error:
            raise AnsibleFilterError(f"VRRP peer {str(peer)[:80]!r} is not an IPv4 address") from error
        if address not in addresses:
            addresses.append(address)
    return addresses


def vrrp_addresses(peers: Any) -> list[str]:
    """The peers, checked and normalised once (blanks dropped, each once, sorted): what every VRRP task uses."""
    return [str(address) for address in sorted(_addresses(peers))]


def _port_problem(value: Any) -> str:
    """Why value is not a TCP port (an integer 1-65535, or its digits), or ''."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"{str(value)[:40]!r} is not a port number"
    if isinstance(value, str) and not value.strip().isdigit():
        return f"{value[:40]!r} is not a port number"
    if not 1 <= int(value) <= 65535:
        return f"{int(value)} is not a TCP port (1-65535)"
    return ""


def ports_problem(port: Any, extra: Any) -> str:
    """Why pypi_firewall_port and pypi_firewall_extra_ports are not a port and a list of ports, or '' (a string
    given for the list would otherwise be read digit by digit: "8443" as ports 8, 4 and 3)."""
    if problem := _port_problem(port):
        return f"pypi_firewall_port: {problem}"
    if isinstance(extra, (str, bytes, dict)) or not isinstance(extra, (list, tuple)):
        return f"pypi_firewall_extra_ports must be a list of ports, such as [8443], not {str(extra)[:60]!r}"
    for item in extra:
        if problem := _port_problem(item):
            return f"pypi_firewall_extra_ports: {problem}"
    return ""


def port_lines(ports: Any, firewall: str, comment: str) -> list[str]:
    """One rule line per TCP port accepting it, as the iptables rules file or the nftables configuration has it."""
    return rule_lines("port", [int(port) for port in ports or []], firewall, comment)


def found_open(detected: Any, firewall: str, ports: Any) -> list[int]:
    """Those of ports that may be the operator's, so never recorded as the role's (pypi_firewall_detect's answer):
    in firewalld, whose ports carry no mark, those open now or permanently before the role opened any (all of them
    when firewalld could not list its ports). In an iptables rules file or the nftables configuration none: the role
    writes, and removes, only its own lines (its comment names them, those of an earlier version too), never the
    operator's rule for the same port."""
    numbers = [int(port) for port in ports or []]
    if firewall != "firewalld":
        return []
    detected = detected or {}
    if not detected.get("firewalld_listed"):
        return numbers
    return [port for port in numbers if port in (detected.get("firewalld_seen") or [])]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "pypi_firewall_vrrp_lines": vrrp_lines,
            "pypi_firewall_vrrp_addresses": vrrp_addresses,
            "pypi_firewall_ports_problem": ports_problem,
            "pypi_firewall_vrrp_rich_missing": vrrp_rich_missing,
            "pypi_firewall_vrrp_stale_regexp": vrrp_stale_regexp,
            "pypi_firewall_vrrp_stale_peers": vrrp_stale_peers,
            "pypi_firewall_vrrp_rich_found": vrrp_rich_found,
            "pypi_firewall_port_lines": port_lines,
            "pypi_firewall_found_open": found_open,
        }
