#!/usr/bin/python
"""Record which ports role pypi_firewall holds open for one purpose (check mode, diff)."""

from __future__ import annotations

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pypi_firewall_record import (
    PURPOSE,
    RecordError,
    owned_peers,
    owned_ports,
    peer_list,
    read_record,
    updated,
    write_record,
)

DOCUMENTATION = r"""
module: pypi_firewall_record
short_description: Record the ports role pypi_firewall holds open for one purpose
description:
  - Updates one purpose's entry of the record (a small JSON file), so that a later run closes a port this purpose
    opened and no longer serves (M(pypi_firewall_detect) returns those as C(stale)).
  - The purpose holds the ports of I(wanted) it opened (not in I(found_open)), those it held before, and those
    another purpose holds; a port of I(found_open) (one the operator may have opened) is never recorded, so never
    closed.
  - Reads without following a link, writes a temporary file and renames it over the record. Check mode and diff.
options:
  path:
    description: The record.
    type: path
    required: true
  purpose:
    description: The entry to update (C(index), C(replica), ...).
    type: str
    required: true
  firewall:
    description: The firewall the ports were opened in; C(none) removes the entry (nothing was opened).
    type: str
    required: true
    choices: [firewalld, iptables, nftables, none]
  zone:
    description: The firewalld zone (empty for the default zone or another firewall).
    type: str
    default: ""
  wanted:
    description: The ports this purpose serves now (all open after this run).
    type: list
    elements: int
    required: true
  found_open:
    description: Those of I(wanted) that were open before this run opened anything.
    type: list
    elements: int
    default: []
  retired:
    description: Purposes the host no longer serves; their entries of this firewall (and zone) are dropped.
    type: list
    elements: str
    default: []
  peers:
    description:
      - For VRRP rules (entry point vrrp, firewalld) instead of ports, the IPv4 addresses whose rule this purpose
        wants now; I(wanted) is then empty. The entry holds those the role added and those it held and still wants.
    type: list
    elements: str
  peers_found:
    description: Those of I(peers) whose rule was there before this run added any (the operator's, never recorded).
    type: list
    elements: str
    default: []
author: airgap-pypi
"""

RETURN = r"""
peers:
  description: The peers whose VRRP rule the purpose holds now (empty without I(peers)).
  type: list
  elements: str
  returned: always
ports:
  description: The ports the purpose holds now.
  type: list
  elements: int
  returned: always
purposes:
  description: The purposes the record holds now.
  type: list
  elements: str
  returned: always
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "purpose": {"type": "str", "required": True},
            "firewall": {"type": "str", "required": True, "choices": ["firewalld", "iptables", "nftables", "none"]},
            "zone": {"type": "str", "default": ""},
            "wanted": {"type": "list", "elements": "int", "required": True},
            "found_open": {"type": "list", "elements": "int", "default": []},
            "retired": {"type": "list", "elements": "str", "default": []},
            "peers": {"type": "list", "elements": "str"},
            "peers_found": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    path, purpose, firewall, zone = (module.params[key] for key in ("path", "purpose", "firewall", "zone"))
    if not PURPOSE.match(purpose):
        module.fail_json(msg=f"purpose {purpose[:40]!r} is not a purpose name ([a-z][a-z0-9-], at most 32 characters)")
    try:
        before = read_record(path)
    except RecordError as error:
        module.fail_json(msg=f"The record of the ports this role opened is unusable: {error}. Remove it.")
    retired = [name for name in module.params["retired"] if name != purpose]
    entry = None
    if firewall != "none":
        ports = owned_ports(
            before,
            purpose,
            firewall,
            zone,
            wanted=module.params["wanted"],
            found_open=module.params["found_open"],
        )
        entry = {"firewall": firewall, "zone": zone, "ports": ports}
        if module.params["peers"] is not None:
            try:
                entry["peers"] = owned_peers(
                    before,
                    purpose,
                    firewall,
                    zone,
                    wanted=peer_list(module.params["peers"]),
                    found=peer_list(module.params["peers_found"]),
                )
            except ValueError as error:
                module.fail_json(msg=f"pypi_firewall_vrrp_peers: {error}. Nothing was recorded.")
    after = updated(before, purpose, entry, retired, zone)
    changed = after != before
    if changed and not module.check_mode:
        try:
            write_record(path, after)
        except OSError as error:
            module.fail_json(msg=f"Could not write {path}: {error}")
    diff = {
        name: json.dumps(value, indent=2, sort_keys=True) + "\n"
        for name, value in (("before", before), ("after", after))
    }
    module.exit_json(
        changed=changed,
        purposes=sorted(after),
        ports=entry["ports"] if entry else [],
        peers=entry.get("peers", []) if entry else [],
        diff=diff if changed else {},
        path=os.path.abspath(path),
    )


if __name__ == "__main__":
    main()
