#!/usr/bin/python
"""Add and remove the role's rules in the running iptables or nftables firewall, one rule at a time."""

from __future__ import annotations

import re
import shlex
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: pypi_firewall_live
short_description: The role's rules added to, and removed from, the running iptables or nftables firewall
description:
  - The rules file (iptables) or the configuration (nftables) is what the host loads at boot; the role edits it
    with lineinfile. This module makes the same change in the running firewall, rule by rule, in one atomic
    transaction (C(iptables-restore --noflush), C(nft --file -)). The file is not loaded, so what other programs
    (docker, fail2ban, libvirt) or the operator added at run time stays.
  - In nftables the chain is the one the configuration's first line matching I(hook) is in (where the role's
    lineinfile writes its lines, with the same pattern). When the configuration cannot be read that way, or that
    chain is not in the running firewall (nftables stopped, the configuration never loaded), the running firewall
    is left as it is, with a warning that says so: the configuration is never loaded (Debian's begins with
    C(flush ruleset)).
  - Supports check mode (lists, changes nothing).
options:
  firewall:
    description: The firewall the role configures.
    type: str
    required: true
    choices: [iptables, nftables]
  nftables_config:
    description: The nftables configuration (read, at most 1 MiB, to find the input chain).
    type: path
    default: /etc/nftables.conf
  add:
    description:
      - Rule lines as the role writes them in the file (iptables C(-A INPUT ...), nftables a rule of the input
        chain). Those the running firewall lacks are put first in the input chain.
    type: list
    elements: str
    default: []
  remove:
    description: Rule lines (as in I(add)) to take out of the running input chain, wherever they are.
    type: list
    elements: str
    default: []
  remove_regexp:
    description:
      - Also take out the running rules whose line, written as in the file, this regular expression matches
        (the role's VRRP lines of addresses no longer peers).
    type: str
    default: ""
  hook:
    description: The regular expression of the input chain's hook line, as the role's lineinfile finds it.
    type: str
    default: '^\s*type\s+filter\s+hook\s+input\b'
author: airgap-pypi
"""

RETURN = r"""
added:
  description: The lines of I(add) put into the running firewall (or that would be, in check mode).
  type: list
  elements: str
  returned: always
removed:
  description: The running rules taken out, as the firewall lists them.
  type: list
  elements: str
  returned: always
chain:
  description: The nftables input chain (family, table, chain); empty for iptables or when none was found.
  type: list
  elements: str
  returned: always
unchecked:
  description: The running nftables firewall was left as it is (see the description), with a warning.
  type: bool
  returned: always
"""

MAX_READ = 1 << 20  # of the nftables configuration, as pypi_firewall_detect reads it
MAX_LINES = 1024  # of add and remove: 256 peers or a few ports in practice
# A table or chain name nft reads without quotes (never a blank, ";" or a line break: safe in a script).
NAME = r"[A-Za-z_][A-Za-z0-9_./-]{0,255}"
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
TABLE = re.compile(rf"^table\s+(?:({'|'.join(FAMILIES)})\s+)?({NAME})\s*\{{")
CHAIN = re.compile(rf"^chain\s+({NAME})\s*\{{")
# Where the role's lineinfile writes its nftables lines: after the first line that is the input hook.
HOOK = r"^\s*type\s+filter\s+hook\s+input\b"
HANDLE = re.compile(r"\s+#\s+handle\s+\d+\s*$")
# How the firewalls list IP protocol 112 (the role's VRRP rules): by its name.
PROTOCOL = (
    (re.compile(r"(^|\s)-p 112(\s|$)"), r"\1-p vrrp\2"),
    (re.compile(r"(^|\s)ip protocol 112(\s|$)"), r"\1ip protocol vrrp\2"),
)


def canonical(line: str) -> str:
    """A rule line as the running firewall lists it: blanks around and between words folded (not within a quoted
    comment), no nftables handle, protocol 112 by its name."""
    parts = re.split(r'("[^"]*")', HANDLE.sub("", line).strip())
    text = "".join(part if part.startswith('"') else re.sub(r"\s+", " ", part) for part in parts)
    for pattern, name in PROTOCOL:
        text = pattern.sub(name, text)
    return text


def uncomment(line: str) -> str:
    """The line without an nftables comment (# to the end, outside double quotes)."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def input_chain(config: str, hook: str = HOOK) -> tuple[str, str, str] | None:
    """(family, table, chain) of the chain the configuration's first line matching hook is in (whatever that line
    is: lineinfile inserts after it); None when that line is not in a chain of a table, or the configuration does
    not read as tables of chains."""
    depth = 0
    table: tuple[str, str] | None = None
    chain: str | None = None
    for raw in config.splitlines():
        if re.search(hook, raw):
            return (table[0], table[1], chain) if depth == 2 and table and chain else None
        # Strings (a rule's comment) and comments neither open nor close a block.
        line = re.sub(r'"[^"]*"', '""', uncomment(raw)).strip()
        if depth == 0 and (match := TABLE.match(line)):
            table = (match.group(1) or "ip", match.group(2))
        elif depth == 1 and table and (match := CHAIN.match(line)):
            chain = match.group(1)
        depth += line.count("{") - line.count("}")
        if depth < 0:
            return None
        if depth < 2:
            chain = None
        if depth < 1:
            table = None
    return None


def matches(listed: str, lines: set[str], regexp: re.Pattern[str] | None) -> bool:
    return canonical(listed) in lines or bool(regexp and regexp.search(canonical(listed)))


def nft_rules(listing: str) -> list[tuple[str, int]]:
    """(line, handle) of each rule of `nft --handle list chain` output (not the chain's and table's own lines)."""
    rules = []
    for raw in listing.splitlines():
        match = re.search(r"\s#\s+handle\s+(\d+)\s*$", raw)
        if match and not raw.strip().startswith(("chain ", "table ")):
            rules.append((canonical(raw), int(match.group(1))))
    return rules


def plan(
    listed: list[str], add: list[str], remove: list[str], regexp: re.Pattern[str] | None
) -> tuple[list[str], list[int]]:
    """The lines of add the listing lacks, and the indexes in listed of the rules to take out (a rule to take out
    that is also wanted stays)."""
    wanted = {canonical(line) for line in add}
    gone = {canonical(line) for line in remove} - wanted
    have = {canonical(line) for line in listed}
    to_add = [line for line in dict.fromkeys(add) if canonical(line) not in have]
    drop = [index for index, line in enumerate(listed) if canonical(line) not in wanted and matches(line, gone, regexp)]
    return to_add, drop


def iptables_spec(line: str) -> list[str]:
    """The words after `-A INPUT` of a rule line (ValueError for any other line)."""
    words = shlex.split(line)
    if words[:2] != ["-A", "INPUT"] or len(words) < 3:
        raise ValueError(f"not a rule of the INPUT chain: {line[:120]!r}")
    return words[2:]


def run(module: AnsibleModule, argv: list[str], data: str | None = None) -> str:
    rc, out, err = module.run_command(argv, data=data)
    if rc != 0:
        module.fail_json(msg=f"{' '.join(argv)[:200]} failed ({rc}): {(err or out).strip()[-1000:]}", rc=rc)
    return out


def iptables_has(module: AnsibleModule, binary: str, line: str) -> bool:
    """Whether the running INPUT chain has the rule (iptables -C: 0 it has, 1 it has not, else an error)."""
    rc, out, err = module.run_command([binary, "-w", "-C", "INPUT", *iptables_spec(line)])
    if rc not in (0, 1):
        module.fail_json(msg=f"iptables -C INPUT failed ({rc}): {(err or out).strip()[-1000:]}", rc=rc)
    return rc == 0


def iptables(module: AnsibleModule, add: list[str], remove: list[str], regexp: re.Pattern[str] | None) -> dict:
    binary = module.get_bin_path("iptables", required=True)
    restore = module.get_bin_path("iptables-restore", required=True)
    # -w: wait for the lock another program (docker, fail2ban) may hold.
    listed = [line for line in run(module, [binary, "-w", "-S", "INPUT"]).splitlines() if line.startswith("-A INPUT ")]
    to_add, drop = plan(listed, add, remove, regexp)
    # A rule listed otherwise than the role writes it (another iptables' spelling): iptables itself compares.
    to_add = [line for line in to_add if not iptables_has(module, binary, line)]
    removed = [listed[index] for index in drop]
    if (to_add or removed) and not module.check_mode:
        script = ["*filter"]
        # The lines as written (iptables-save's quoting, which iptables-restore reads), not re-quoted.
        script += ["-D INPUT " + line.split(None, 2)[2] for line in removed]
        script += ["-I INPUT 1 " + line.split(None, 2)[2] for line in reversed(to_add)]
        run(module, [restore, "-w", "--noflush"], data="\n".join([*script, "COMMIT", ""]))
    return {"added": to_add, "removed": removed, "chain": [], "unchecked": False}


def nftables(
    module: AnsibleModule, add: list[str], remove: list[str], regexp: re.Pattern[str] | None, config: str
) -> dict:
    binary = module.get_bin_path("nft", required=True)
    try:
        with open(config, "rb") as handle:
            text = handle.read(MAX_READ).decode("utf-8", "replace")
    except OSError as error:
        module.fail_json(msg=f"cannot read the nftables configuration {config}: {error.strerror}")
    chain = input_chain(text, module.params["hook"])
    rc, listing = 1, ""
    if chain is not None:
        rc, listing, err = module.run_command([binary, "--handle", "list", "chain", *chain])
        if rc != 0 and "No such file or directory" not in err:
            module.fail_json(msg=f"nft list chain {' '.join(chain)} failed ({rc}): {err.strip()[-1000:]}", rc=rc)
    if chain is None or rc != 0:
        why = (
            "has no input chain this module can find (a table or chain whose name needs quotes, commands, include)"
            if chain is None
            else f"has its input chain ({' '.join(chain)}), which is not in the running firewall (nftables stopped?)"
        )
        module.warn(
            f"The nftables configuration {config} {why}: the running firewall was left as it is. The configuration "
            f"has the role's rules for the next boot; load it with nft --file {config} when that is safe (it may "
            "flush the rules other programs added)."
        )
        return {"added": [], "removed": [], "chain": list(chain or []), "unchecked": True}
    rules = nft_rules(listing)
    to_add, drop = plan([line for line, _ in rules], add, remove, regexp)
    removed = [rules[index][0] for index in drop]
    if (to_add or removed) and not module.check_mode:
        where = " ".join(chain)
        script = [f"delete rule {where} handle {rules[index][1]}" for index in drop]
        script += [f"insert rule {where} {line}" for line in reversed(to_add)]
        run(module, [binary, "--file", "-"], data="\n".join([*script, ""]))
    return {"added": to_add, "removed": removed, "chain": list(chain), "unchecked": False}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "firewall": {"type": "str", "required": True, "choices": ["iptables", "nftables"]},
            "nftables_config": {"type": "path", "default": "/etc/nftables.conf"},
            "add": {"type": "list", "elements": "str", "default": []},
            "remove": {"type": "list", "elements": "str", "default": []},
            "remove_regexp": {"type": "str", "default": ""},
            "hook": {"type": "str", "default": HOOK},
        },
        supports_check_mode=True,
    )
    add, remove = module.params["add"], module.params["remove"]
    for line in add + remove:
        if "\n" in line or "\r" in line or ";" in line:
            module.fail_json(msg=f"a rule line must be one rule on one line: {line[:120]!r}")
    if len(add) > MAX_LINES or len(remove) > MAX_LINES:
        module.fail_json(msg=f"at most {MAX_LINES} rule lines to add and to remove, not {max(len(add), len(remove))}")
    try:
        regexp = re.compile(module.params["remove_regexp"]) if module.params["remove_regexp"] else None
        if module.params["firewall"] == "iptables":
            result: dict[str, Any] = iptables(module, add, remove, regexp)
        else:
            result = nftables(module, add, remove, regexp, module.params["nftables_config"])
    except (re.error, ValueError) as error:
        module.fail_json(msg=f"pypi_firewall_live: {error}")
    module.exit_json(changed=bool(result["added"] or result["removed"]), **result)


if __name__ == "__main__":
    main()
