"""The pypi_network role's filters: every bad value is named, good values are normalised for the templates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import load_module

ROOT = Path(__file__).resolve().parent.parent
filters = load_module("pypi_network_filters", ROOT / "roles" / "pypi_network" / "filter_plugins" / "pypi_network.py")

HOST = ["lo", "eth0", "eth1", "ens192"]


def problems(*interfaces: dict, **kwargs: str) -> list[str]:
    return filters.pypi_network_problems(list(interfaces), HOST, **kwargs)


def test_good_settings_have_no_problems() -> None:
    assert (
        problems(
            {
                "name": "eth1",
                "method": "static",
                "address": "192.0.2.10/24",
                "gateway": "192.0.2.1",
                "dns": ["192.0.2.53", "192.0.2.54"],
                "search": ["example.internal"],
                "mtu": 9000,
                "onboot": True,
            },
            {"name": "ens192", "method": "dhcp", "dns": ["192.0.2.53"]},
            {"name": "eth0", "address": "10.0.0.2/31"},
        )
        == []
    )


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ({"name": "eth1", "address": "192.0.2.300/24"}, "'192.0.2.300/24' is not a valid IPv4 address"),
        ({"name": "eth1", "address": "192.0.2.10"}, "'192.0.2.10' is not an IPv4 address with a prefix length"),
        ({"name": "eth1", "address": "192.0.2.10/33"}, "'192.0.2.10/33' is not a valid IPv4 address"),
        ({"name": "eth1", "address": "2001:db8::1/64"}, "is not an IPv4 address with a prefix length"),
        ({"name": "eth1", "address": "192.0.2.10/0"}, "has prefix length 0"),
        ({"name": "eth1", "address": "192.0.2.0/24"}, "is the network address of 192.0.2.0/24"),
        ({"name": "eth1", "address": "192.0.2.255/24"}, "is the broadcast address of 192.0.2.0/24"),
        ({"name": "eth1", "address": "127.0.0.2/8"}, "is not a unicast host address"),
        ({"name": "eth1"}, "method static needs an address"),
        ({"name": "eth9", "address": "192.0.2.10/24"}, "interface eth9 does not exist on this host (it has: ens192"),
        ({"name": "../etc/passwd", "address": "192.0.2.10/24"}, "is not an interface name"),
        ({"name": "eth1", "address": "192.0.2.10/24", "gateway": "198.51.100.1"}, "outside 192.0.2.0/24"),
        ({"name": "eth1", "address": "192.0.2.10/24", "gateway": "192.0.2.10"}, "the interface's own address"),
        ({"name": "eth1", "address": "192.0.2.10/24", "gateway": "192.0.2.255"}, "network or broadcast address"),
        ({"name": "eth1", "address": "192.0.2.10/24", "gateway": "gw.example"}, "'gw.example' is not an IPv4"),
        ({"name": "eth1", "method": "dhcp", "gateway": "192.0.2.1"}, "gateway '192.0.2.1' is only for method static"),
        ({"name": "eth1", "method": "bootp"}, "'bootp' is neither static nor dhcp"),
        ({"name": "eth1", "method": "dhcp", "dns": ["dns.example"]}, "DNS server 'dns.example' is not an IPv4"),
        ({"name": "eth1", "method": "dhcp", "dns": ["192.0.2.1"] * 4}, "4 DNS servers given"),
        ({"name": "eth1", "method": "dhcp", "search": ["bad_domain!"]}, "'bad_domain!' is not a domain name"),
        ({"name": "eth1", "method": "dhcp", "mtu": 67}, "mtu 67 is out of range (68-65535)"),
        ({"name": "eth1", "method": "dhcp", "mtu": 65536}, "mtu 65536 is out of range"),
        ({"name": "eth1", "method": "dhcp", "mtu": True}, "mtu True is out of range"),
        ({"name": "eth1", "method": "dhcp", "onboot": "yes"}, "onboot must be true or false"),
        ({"name": "eth1", "method": "dhcp", "vlan": 5}, "unknown keys vlan"),
    ],
)
def test_each_bad_value_is_named(item: dict, needle: str) -> None:
    found = problems(item)
    assert any(needle in problem for problem in found), found
    assert all(
        problem.startswith(("pypi_network_interfaces[0] (", "pypi_network_interfaces[0] is")) for problem in found
    )


def test_list_level_problems() -> None:
    assert "listed twice" in " ".join(problems({"name": "eth1", "method": "dhcp"}, {"name": "eth1", "method": "dhcp"}))
    two_gateways = problems(
        {"name": "eth0", "address": "192.0.2.10/24", "gateway": "192.0.2.1"},
        {"name": "eth1", "address": "198.51.100.10/24", "gateway": "198.51.100.1"},
    )
    assert two_gateways == ["a gateway is set on eth0, eth1: a host has one default route, set it on one interface"]
    assert filters.pypi_network_problems({"name": "eth1"}, HOST)[0].startswith("pypi_network_interfaces must be a list")


def test_the_connection_interface_is_protected() -> None:
    moved = problems(
        {"name": "eth0", "address": "192.0.2.20/24"}, connection_interface="eth0", connection_address="192.0.2.10"
    )
    assert "Ansible reaches this host at 192.0.2.10, but the address given is 192.0.2.20/24" in moved[0]
    down = problems({"name": "eth0", "method": "dhcp", "onboot": False}, connection_interface="eth0")
    assert "onboot false would leave the host unreachable" in down[0]
    same = problems(
        {"name": "eth0", "address": "192.0.2.10/24"}, connection_interface="eth0", connection_address="192.0.2.10"
    )
    assert same == []


def test_normalize_fills_every_key() -> None:
    static, dhcp = filters.pypi_network_normalize(
        [
            {"name": "eth1", "address": " 192.0.2.10/24", "gateway": "192.0.2.1", "mtu": 1400},
            {"name": "eth2", "method": "dhcp", "dns": ["192.0.2.53"], "onboot": False},
        ]
    )
    assert static == {
        "name": "eth1",
        "method": "static",
        "address": "192.0.2.10/24",
        "ip": "192.0.2.10",
        "prefix": 24,
        "netmask": "255.255.255.0",
        "gateway": "192.0.2.1",
        "dns": [],
        "search": [],
        "mtu": 1400,
        "onboot": True,
        "uuid": static["uuid"],
    }
    assert dhcp["address"] == "" and dhcp["dns"] == ["192.0.2.53"] and dhcp["onboot"] is False
    # The profile's uuid depends on the interface name only, so a re-run rewrites the same profile.
    assert filters.pypi_network_normalize([{"name": "eth1", "method": "dhcp"}])[0]["uuid"] == static["uuid"]
    assert static["uuid"] != dhcp["uuid"]


def test_connection_interface_from_facts() -> None:
    facts = {
        "interfaces": ["lo", "eth0", "br-lan"],
        "eth0": {"ipv4": {"address": "10.0.0.5"}},
        "br_lan": {"ipv4": {"address": "192.0.2.10"}, "ipv4_secondaries": [{"address": "192.0.2.11"}]},
        "default_ipv4": {"interface": "eth0"},
    }
    connection = filters.pypi_network_connection
    assert connection(facts, "192.0.2.11") == {"interface": "br-lan", "address": "192.0.2.11"}
    assert connection(facts, "10.0.0.5") == {"interface": "eth0", "address": "10.0.0.5"}
    # A name, or an address that is not on the host (NAT, a jump host): the default route's interface.
    assert connection(facts, "pypi01.example.internal") == {"interface": "eth0", "address": ""}
    assert connection(facts, "203.0.113.7") == {"interface": "eth0", "address": ""}
    assert connection({"interfaces": ["lo"]}, "pypi01") == {"interface": "", "address": ""}


def test_readme_lists_every_interface_key() -> None:
    """role_docs.py renders top-level options only: the README's key table must follow the specs by hand."""
    specs = yaml.safe_load((ROOT / "roles/pypi_network/meta/argument_specs.yml").read_text())
    keys = specs["argument_specs"]["main"]["options"]["pypi_network_interfaces"]["options"]
    readme = (ROOT / "roles/pypi_network/README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines() if line.startswith("| `")}
    for key, option in keys.items():
        assert key in rows, f"{key} missing from the README's interface keys"
        assert f"| {option['type']}" in rows[key], rows[key]
        if option.get("required"):
            assert "| required |" in rows[key]
        elif "default" in option:
            shown = str(option["default"]).lower() if isinstance(option["default"], bool) else option["default"]
            assert f"`{shown}`" in rows[key], rows[key]
