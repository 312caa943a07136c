"""pypi_firewall_live's reading of the nftables configuration and of the running firewall's listings: which chain the
role's lines are in, which of its rules the firewall has, and which to take out. The module's runs against a real
iptables and nftables are in the default scenario (molecule/default/tests/test_firewall_ports.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import load_module, run_playbook

ROOT = Path(__file__).resolve().parent.parent
live = load_module("pypi_firewall_live", ROOT / "roles" / "pypi_firewall" / "library" / "pypi_firewall_live.py")
filters = load_module("pypi_firewall_filters", ROOT / "roles" / "pypi_firewall" / "filter_plugins" / "pypi_firewall.py")

VRRP = "airgap-pypi balancers (VRRP)"
INDEX = "airgap-pypi index"

# Debian's own /etc/nftables.conf (the package's), and the default scenario's (its table alone flushed).
DEBIAN = """#!/usr/sbin/nft -f

flush ruleset

table inet filter {
\tchain input {
\t\ttype filter hook input priority filter;
\t}
\tchain forward {
\t\ttype filter hook forward priority filter;
\t}
\tchain output {
\t\ttype filter hook output priority filter;
\t}
}
"""
SCENARIO = """#!/usr/sbin/nft -f
table inet filter
flush table inet filter
table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tiif "lo" accept
\t\tmeta l4proto { icmp, ipv6-icmp } accept
\t}
}
"""
# As `nft --handle list chain inet filter input` lists it.
LISTING = """table inet filter {
\tchain input { # handle 1
\t\ttype filter hook input priority filter; policy drop;
\t\tip saddr 192.0.2.11 ip protocol vrrp accept comment "airgap-pypi balancers (VRRP)" # handle 9
\t\tip saddr 192.0.2.13 ip protocol vrrp accept # handle 10
\t\ttcp dport 8080 accept comment "airgap-pypi index" # handle 8
\t\tiif "lo" accept # handle 4
\t\tmeta l4proto { icmp, ipv6-icmp } accept # handle 7
\t}
}
"""


@pytest.mark.parametrize("config", [DEBIAN, SCENARIO])
def test_the_input_chain_is_the_one_the_hook_line_is_in(config: str) -> None:
    assert live.input_chain(config) == ("inet", "filter", "input")


def test_the_input_chain_of_other_tables_families_and_layouts() -> None:
    # A table of the default family (ip), a chain before the input one, comments with braces and the hook word.
    config = """table firewall {  # the operator's { own } table
    chain other { type filter hook output priority 0; }
    # type filter hook input is named in a comment only
    chain forward_too {
        type filter hook forward priority 0;
        ip saddr 192.0.2.1 drop comment "type filter hook input {"
    }
    chain in_put {
        type filter hook input priority 0; policy drop;
    }
}"""
    assert live.input_chain(config) == ("ip", "firewall", "in_put")
    assert live.input_chain(DEBIAN.replace("inet filter", "ip6 fw/v6")) == ("ip6", "fw/v6", "input")


@pytest.mark.parametrize(
    "config",
    [
        "",
        "flush ruleset\n",
        # The hook outside a chain of a table, or in a table or chain whose name needs quotes.
        "type filter hook input priority 0;\n",
        'table inet "my table" {\n chain input {\n  type filter hook input priority 0;\n }\n}\n',
        "table inet filter {\n chain input {\n }\n}\n}\n type filter hook input priority 0;\n",
        # The hook on the chain's own line (lineinfile would write after the chain's end), or after a comment.
        "table ip6 t {\n chain c { type filter hook input priority 0; }\n}\n",
        "table ip6 t {\n chain c {\n  # x\n }\n  type filter hook input priority 0;\n}\n",
        # Commands, not tables of chains.
        "add table inet filter\nadd chain inet filter input { type filter hook input priority 0; }\n",
    ],
)
def test_a_configuration_not_read_as_tables_of_chains_has_no_input_chain(config: str) -> None:
    assert live.input_chain(config) is None


def test_the_rules_are_read_from_the_listing_with_their_handles() -> None:
    assert live.nft_rules(LISTING) == [
        (f'ip saddr 192.0.2.11 ip protocol vrrp accept comment "{VRRP}"', 9),
        ("ip saddr 192.0.2.13 ip protocol vrrp accept", 10),
        (f'tcp dport 8080 accept comment "{INDEX}"', 8),
        ('iif "lo" accept', 4),
        ("meta l4proto { icmp, ipv6-icmp } accept", 7),
    ]


def test_a_rule_line_is_compared_as_the_firewall_lists_it() -> None:
    assert live.canonical('  ip saddr 192.0.2.11  ip protocol 112 accept comment "x" # handle 3 ') == (
        'ip saddr 192.0.2.11 ip protocol vrrp accept comment "x"'
    )
    assert live.canonical('-A INPUT -s 192.0.2.11/32 -p 112 -m comment --comment "x" -j ACCEPT') == (
        '-A INPUT -s 192.0.2.11/32 -p vrrp -m comment --comment "x" -j ACCEPT'
    )
    # Blanks within a quoted comment are the comment's: an operator's "airgap-pypi  index" is not the role's.
    assert live.canonical('tcp dport 8080 accept comment "airgap-pypi  index"') != live.canonical(
        'tcp dport 8080 accept comment "airgap-pypi index"'
    )
    # Only the protocol word: a port 112 stays a number.
    assert live.canonical("tcp dport 112 accept") == "tcp dport 112 accept"


def test_the_plan_adds_what_the_firewall_lacks_and_removes_only_the_roles_stale_rules() -> None:
    listed = [line for line, _ in live.nft_rules(LISTING)]
    wanted = filters.port_lines([8080, 8443], "nftables", INDEX) + filters.vrrp_lines(["192.0.2.12"], "nftables", VRRP)
    regexp = re.compile(filters.vrrp_stale_regexp(["192.0.2.12"], "nftables", VRRP))
    to_add, drop = live.plan(listed, wanted, filters.port_lines([9000], "nftables", INDEX), regexp)
    assert to_add == [
        f'tcp dport 8443 accept comment "{INDEX}"',
        f'ip saddr 192.0.2.12 ip protocol 112 accept comment "{VRRP}"',
    ]
    # The role's VRRP rule of an address no longer a peer (listed as vrrp); never the operator's rule without the
    # comment, nor a port rule of the role's that is not stale.
    assert [listed[index] for index in drop] == [f'ip saddr 192.0.2.11 ip protocol vrrp accept comment "{VRRP}"']


def test_the_plan_of_a_run_with_nothing_to_do_is_empty() -> None:
    listed = [line for line, _ in live.nft_rules(LISTING)]
    wanted = filters.port_lines([8080], "nftables", INDEX) + filters.vrrp_lines(["192.0.2.11"], "nftables", VRRP)
    regexp = re.compile(filters.vrrp_stale_regexp(["192.0.2.11"], "nftables", VRRP))
    assert live.plan(listed, wanted, [], regexp) == ([], [])


def test_a_stale_port_is_removed_unless_also_wanted() -> None:
    listed = filters.port_lines([8080, 9000], "iptables", INDEX)
    assert live.plan(listed, [], filters.port_lines([9000], "iptables", INDEX), None) == ([], [1])
    assert live.plan(listed, listed, listed, None) == ([], [])


def test_the_iptables_vrrp_rules_iptables_lists_by_name_are_the_roles() -> None:
    listed = ['-A INPUT -s 192.0.2.11/32 -p vrrp -m comment --comment "airgap-pypi balancers (VRRP)" -j ACCEPT']
    wanted = filters.vrrp_lines(["192.0.2.11"], "iptables", VRRP)
    assert live.plan(listed, wanted, [], None) == ([], [])
    regexp = re.compile(filters.vrrp_stale_regexp([], "iptables", VRRP))
    assert live.plan(listed, [], [], regexp) == ([], [0])


def test_only_a_rule_of_the_input_chain_is_read_as_iptables_rule() -> None:
    assert live.iptables_spec('-A INPUT -p tcp --dport 1 -m comment --comment "a b" -j ACCEPT')[-3:] == [
        "a b",
        "-j",
        "ACCEPT",
    ]
    for line in ("-A FORWARD -j ACCEPT", "-A INPUT", "tcp dport 1 accept"):
        with pytest.raises(ValueError, match="not a rule of the INPUT chain"):
            live.iptables_spec(line)


def test_the_module_finds_the_chain_the_roles_lineinfile_writes_in(tmp_path: Path) -> None:
    """The role's own lineinfile task's pattern (vars/main.yml), run by Ansible: the line lands in the chain the
    module reads, also when an earlier chain names the input hook in a comment or a string."""
    hook = yaml.safe_load((ROOT / "roles" / "pypi_firewall" / "vars" / "main.yml").read_text())[
        "__pypi_firewall_nft_hook"
    ]
    config = tmp_path / "nftables.conf"
    config.write_text(
        "table inet filter {\n"
        "\tchain forward {\n"
        "\t\t# like the input chain (type filter hook input), for routed packets\n"
        "\t\ttype filter hook forward priority 0; policy drop;\n"
        '\t\tip saddr 192.0.2.1 drop comment "type filter hook input"\n'
        "\t}\n"
        "\tchain in {\n"
        "\t\ttype  filter hook input priority 0; policy drop;\n"
        "\t}\n"
        "}\n"
    )
    task = {"ansible.builtin.lineinfile": {"path": str(config), "line": "\t\ttcp dport 1 accept", "insertafter": hook}}
    done = run_playbook(
        [
            {
                "hosts": "localhost",
                "connection": "local",
                "vars": {"ansible_python_interpreter": sys.executable},
                "gather_facts": False,
                "tasks": [task],
            }
        ],
        tmp_path / "play.json",
    )
    assert done.returncode == 0, done.stdout[-2000:]
    lines = config.read_text().splitlines()
    written = lines.index("\t\ttcp dport 1 accept")
    assert lines[written - 2].strip() == "chain in {", lines
    assert live.input_chain(config.read_text(), hook) == ("inet", "filter", "in")
    assert hook == live.HOOK, "the module's default pattern is the role's"


detect = load_module("pypi_firewall_detect", ROOT / "roles" / "pypi_firewall" / "library" / "pypi_firewall_detect.py")


@pytest.mark.parametrize(
    ("text", "table"),
    [
        ("*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n", "filter"),
        ("*filter\n:INPUT DROP [0:0]\nCOMMIT\n*nat\n:INPUT ACCEPT [0:0]\nCOMMIT\n", "filter"),
        # iptables-save may write the nat table first: the role's line would go there, filtering nothing at boot.
        ("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT DROP [0:0]\nCOMMIT\n", "nat"),
        ("# nothing yet\n", ""),
    ],
)
def test_the_table_the_roles_iptables_line_goes_into(tmp_path: Path, text: str, table: str) -> None:
    rules = tmp_path / "rules.v4"
    rules.write_text(text)
    assert detect.insert_table(str(rules)) == table
    assert detect.insert_table(str(tmp_path / "none")) == ""
