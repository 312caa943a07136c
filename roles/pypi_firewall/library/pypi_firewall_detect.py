#!/usr/bin/python
"""Find out which firewall a host runs, in one call (read-only)."""

from __future__ import annotations

import os
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pypi_firewall_record import PURPOSE, RecordError, read_record, stale_ports

DOCUMENTATION = r"""
module: pypi_firewall_detect
short_description: Which firewall the host runs (firewalld, an iptables rules file, nftables, none)
description:
  - Asks C(firewall-cmd --state) whether firewalld runs, looks for the iptables rules file and the nftables
    configuration, and asks C(systemctl is-enabled nftables.service). The first that applies, in that order, is
    C(firewall). Changes nothing.
options:
  iptables_rules:
    description: The iptables rules file of the platform (e.g. /etc/iptables/rules.v4).
    type: path
    required: true
  nftables_config:
    description: The nftables configuration.
    type: path
    required: true
  ports:
    description:
      - TCP ports to look for when firewalld runs; those open both now and permanently (in I(zone)) are returned
        in C(firewalld_open), so the role skips them. Two C(firewall-cmd --list-ports) calls, whatever the count.
    type: list
    elements: int
    default: []
  zone:
    description: The firewalld zone; empty for the default zone.
    type: str
    default: ""
  rules:
    description:
      - The rule lines the role writes, by file (C(iptables) for I(iptables_rules), C(nftables) for
        I(nftables_config)); those already in their file (as a whole line, surrounding blanks aside) are returned in
        C(rules_present), so the role skips them. The first 1 MiB of each file is read.
    type: dict
    default: {}
  record:
    description:
      - The record of the ports the role opened, by purpose (read bounded, never through a link); empty to read none.
        Its ports for I(purpose) that I(ports) no longer has, and that no other purpose holds, are returned in
        C(stale), for the firewall the role configures (I(backend), or the one found).
    type: path
    default: ""
  purpose:
    description: What the ports are for (C(index), C(replica), ...), the record's key.
    type: str
    default: index
  retired:
    description:
      - Purposes the host no longer serves; their recorded ports that I(purpose) does not serve and no other purpose
        holds are in C(stale) too.
    type: list
    elements: str
    default: []
  backend:
    description: The firewall the role was told to configure (C(auto) for the one found).
    type: str
    default: auto
author: airgap-pypi
"""

RETURN = r"""
firewall:
  description: firewalld, iptables, nftables or none.
  type: str
  returned: always
firewalld_running:
  description: C(firewall-cmd --state) succeeded.
  type: bool
  returned: always
iptables_rules:
  description: The iptables rules file exists.
  type: bool
  returned: always
nftables_config:
  description: The nftables configuration exists.
  type: bool
  returned: always
nftables_enabled:
  description: C(systemctl is-enabled nftables.service) says enabled.
  type: bool
  returned: always
rules_present:
  description: By file (C(iptables), C(nftables)), the lines of I(rules) that file already has.
  type: dict
  returned: always
firewalld_open:
  description: Those of I(ports) that firewalld has open for TCP, both in its runtime and its permanent configuration.
  type: list
  elements: int
  returned: always
firewalld_seen:
  description: Those of I(ports) that firewalld has open for TCP in its runtime or its permanent configuration.
  type: list
  elements: int
  returned: always
firewalld_listed:
  description: firewalld runs and its ports could be listed (else the record is neither used nor written).
  type: bool
  returned: always
firewalld_zone:
  description: The zone asked (I(zone), or firewalld's default zone); empty when firewalld's ports were not listed.
  type: str
  returned: always
recorded:
  description: The record read from I(record), by purpose.
  type: dict
  returned: always
iptables_table:
  description:
    - The table of the iptables rules file that the role's line goes into (C(filter) in a usual file; the table
      of the first C(-A INPUT) or C(COMMIT) line); empty when there is no such line.
  type: str
  returned: always
stale:
  description: The ports to close (see I(record)).
  type: list
  elements: int
  returned: always
"""


def choose(firewalld_running: bool, iptables_rules: bool, nftables_config: bool, nftables_enabled: bool) -> str:
    """The firewall to configure: firewalld when it runs, then an iptables rules file, then nftables enabled at boot."""
    if firewalld_running:
        return "firewalld"
    if iptables_rules:
        return "iptables"
    if nftables_config and nftables_enabled:
        return "nftables"
    return "none"


def succeeds(module: AnsibleModule, *argv: str) -> tuple[bool, str]:
    """Whether the command exits 0, and its output; False when the program is not installed."""
    program = module.get_bin_path(argv[0])
    if program is None:
        return False, ""
    rc, out, _ = module.run_command([program, *argv[1:]])
    return rc == 0, out.strip()


def tcp_ports(listing: str) -> set[int]:
    """The TCP ports of `firewall-cmd --list-ports` output ("8080/tcp 53/udp 6000-6005/tcp": single ports only)."""
    found = set()
    for item in listing.split():
        port, _, proto = item.partition("/")
        if proto == "tcp" and port.isdigit():
            found.add(int(port))
    return found


def seen(ports: list[int], now: set[int], saved: set[int], zone: str) -> dict[str, Any]:
    """What the detection says of firewalld's ports: those of ports open both now and permanently (the role skips
    them), those open in either (never recorded as the role's), and the zone they were asked in."""
    return {
        "listed": True,
        "zone": zone,
        "both": [port for port in ports if port in now & saved],
        "either": [port for port in ports if port in now | saved],
    }


UNLISTED: dict[str, Any] = {"listed": False, "zone": "", "both": [], "either": []}


def firewalld_open(module: AnsibleModule, ports: list[int], zone: str) -> dict[str, Any]:
    """firewalld's ports in zone (empty: its default zone), asked with firewall-cmd; UNLISTED when it cannot tell."""
    if not zone:
        ok_zone, zone = succeeds(module, "firewall-cmd", "--get-default-zone")
        if not ok_zone or not zone:
            return UNLISTED
    ok_now, now = succeeds(module, "firewall-cmd", f"--zone={zone}", "--list-ports")
    ok_saved, saved = succeeds(module, "firewall-cmd", "--permanent", f"--zone={zone}", "--list-ports")
    if not (ok_now and ok_saved):
        return UNLISTED
    return seen(ports, tcp_ports(now), tcp_ports(saved), zone)


def tcp_pairs(pairs: Any) -> set[int]:
    """The single TCP ports of firewalld's (port, protocol) pairs, as its D-Bus client returns them."""
    return tcp_ports(" ".join(f"{port}/{proto}" for port, proto in pairs))


def firewalld_client(ports: list[int], zone: str) -> tuple[bool, dict[str, Any]] | None:
    """Whether firewalld runs and what it has of ports (see seen), asked through firewalld's own Python client (one
    process instead of three firewall-cmd runs, which is what ansible.posix.firewalld uses); None when this Python
    lacks the client or it fails, and the caller asks firewall-cmd instead."""
    try:
        from firewall.client import FirewallClient  # noqa: PLC0415 - only on hosts with firewalld's bindings

        client = FirewallClient(wait=0)
        if not client.connected:
            return False, UNLISTED
        zone = zone or client.getDefaultZone()
        now = tcp_pairs(client.getPorts(zone))
        saved = tcp_pairs(client.config().getZoneByName(zone).getSettings().getPorts())
    except Exception:
        return None
    return True, seen(ports, now, saved, str(zone))


MAX_READ = 1 << 20  # of a rules file: the role's lines are near the top, and a larger file is not a config


def lines_present(path: str, wanted: list[str]) -> list[str]:
    """The lines of wanted that the file at path has (whole lines, blanks around them aside); none when unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_READ)
    except OSError:
        return []
    have = {line.strip() for line in data.decode("utf-8", "replace").splitlines()}
    return [line for line in wanted if line.strip() in have]


def insert_table(path: str) -> str:
    """The table of the iptables rules file the role's line would go into: that of the first line the role's
    lineinfile inserts before (`-A INPUT` or `COMMIT`); empty when the file is unreadable or has no such line."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_READ)
    except OSError:
        return ""
    table = ""
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif re.match(r"(-A INPUT|COMMIT)", line):
            return table
    return ""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "iptables_rules": {"type": "path", "required": True},
            "nftables_config": {"type": "path", "required": True},
            "ports": {"type": "list", "elements": "int", "default": []},
            "zone": {"type": "str", "default": ""},
            "rules": {"type": "dict", "default": {}},
            "record": {"type": "path", "default": ""},
            "purpose": {"type": "str", "default": "index"},
            "backend": {"type": "str", "default": "auto"},
            "retired": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    purpose = module.params["purpose"]
    if not PURPOSE.match(purpose):
        module.fail_json(
            msg=f"pypi_firewall_purpose={purpose[:60]!r} must be a short name of lower-case letters, digits and '-' "
            "(at most 32 characters), such as index. Nothing was changed on this host."
        )
    asked = firewalld_client(module.params["ports"], module.params["zone"])
    if asked is None:
        firewalld_running, _ = succeeds(module, "firewall-cmd", "--state")
        ports = firewalld_open(module, module.params["ports"], module.params["zone"]) if firewalld_running else UNLISTED
    else:
        firewalld_running, ports = asked
    _, enabled = succeeds(module, "systemctl", "is-enabled", "nftables.service")
    facts = {
        "firewalld_running": firewalld_running,
        "iptables_rules": os.path.exists(module.params["iptables_rules"]),
        "nftables_config": os.path.exists(module.params["nftables_config"]),
        "nftables_enabled": enabled == "enabled",
    }
    files = {"iptables": module.params["iptables_rules"], "nftables": module.params["nftables_config"]}
    present = {
        name: lines_present(files[name], [str(line) for line in lines or []])
        for name, lines in module.params["rules"].items()
        if name in files
    }
    firewall = choose(**facts) if module.params["backend"] == "auto" else module.params["backend"]
    try:
        recorded = read_record(module.params["record"]) if module.params["record"] else {}
    except RecordError as error:
        module.fail_json(
            msg=f"The record of the ports this role opened is unusable: {error}. Remove it (ports the role opened "
            "earlier then stay open until closed by hand); the next run writes it anew. Nothing was changed."
        )
    # firewalld's ports that could not be listed: nothing is closed (nor recorded, see the role's main.yml).
    stale = (
        []
        if firewall == "firewalld" and not ports["listed"]
        else stale_ports(
            recorded,
            module.params["purpose"],
            firewall,
            ports["zone"] if firewall == "firewalld" else "",
            wanted=module.params["ports"],
            retired=module.params["retired"],
        )
    )
    module.exit_json(
        changed=False,
        firewall=choose(**facts),
        firewalld_open=ports["both"],
        firewalld_seen=ports["either"],
        firewalld_listed=ports["listed"],
        firewalld_zone=ports["zone"],
        rules_present=present,
        iptables_table=insert_table(module.params["iptables_rules"]),
        recorded=recorded,
        stale=stale,
        **facts,
    )


if __name__ == "__main__":
    main()
