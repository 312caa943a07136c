"""Filters of role pypi_firewall: the rules that accept VRRP (IP protocol 112) from given peers."""

from __future__ import annotations

import ipaddress
from typing import Any

from ansible.errors import AnsibleFilterError


def vrrp_lines(peers: Any, firewall: str, comment: str = "airgap-pypi balancers") -> list[str]:
    """One rule per peer accepting VRRP from that IPv4 address alone, as the firewall's file or firewalld writes it.

    peers: an address or a list of them; firewall: iptables, nftables or firewalld (a rich rule)."""
    items = [peers] if isinstance(peers, str) else list(peers or [])
    lines = []
    for peer in items:
        try:
            address = ipaddress.IPv4Address(str(peer).strip())
        except ValueError as error:
            raise AnsibleFilterError(f"VRRP peer {str(peer)[:80]!r} is not an IPv4 address") from error
        if firewall == "iptables":
            lines.append(f'-A INPUT -s {address}/32 -p 112 -m comment --comment "{comment}" -j ACCEPT')
        elif firewall == "nftables":
            lines.append(f'ip saddr {address} ip protocol 112 accept comment "{comment}"')
        elif firewall == "firewalld":
            lines.append(f'rule family="ipv4" source address="{address}" protocol value="vrrp" accept')
        else:
            raise AnsibleFilterError(f"no VRRP rule for firewall {firewall!r}")
    return lines


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"pypi_firewall_vrrp_lines": vrrp_lines}
