"""The converged hosts: static addresses live, persisted in the backend's files, and back after a restart."""

from __future__ import annotations

import ipaddress
import os
import re

import pytest
import testinfra.utils.ansible_runner
from conftest import IFUPDOWN, NETWORKS, NM, addresses, changes_of, docker, on, scenario_vars, wait_for

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "network_hosts"
)
FILES = {
    NM: "/etc/NetworkManager/system-connections/{}.nmconnection",
    IFUPDOWN: "/etc/network/interfaces.d/{}",
}


def name_of(host) -> str:
    return host.backend.get_hostname()


def interfaces_of(host) -> list[dict]:
    return scenario_vars()[1][name_of(host)]["pypi_network_interfaces"]


def mtu_of(container: str, interface: str) -> int:
    out = on(container, "ip", "-o", "link", "show", "dev", interface).stdout
    return int(re.search(r"\bmtu (\d+)", out).group(1))


def live(container: str, interfaces: list[dict]) -> bool:
    """Every configured address (and MTU) is on its interface."""
    return all(
        item["address"] in addresses(container, item["name"])
        and ("mtu" not in item or mtu_of(container, item["name"]) == item["mtu"])
        for item in interfaces
    )


def test_test_networks_have_no_egress() -> None:
    for network in NETWORKS:
        internal = docker("network", "inspect", "--format", "{{.Internal}}", network).stdout.strip()
        assert internal == "true", f"{network} must be an internal docker network"


def test_static_addresses_are_live(host) -> None:
    container = name_of(host)
    for item in interfaces_of(host):
        assert item["address"] in addresses(container, item["name"]), item
        if "mtu" in item:
            assert mtu_of(container, item["name"]) == item["mtu"]
        assert "UP" in host.check_output(f"ip -brief link show dev {item['name']}")


def test_settings_are_persisted_in_the_backends_file(host) -> None:
    container = name_of(host)
    for item in interfaces_of(host):
        path = FILES[container].format(item["name"])
        config = host.file(path)
        assert config.user == "root" and config.group == "root"
        content = config.content_string
        net = ipaddress.ip_interface(item["address"])
        if container == NM:
            assert config.mode == 0o600, "NetworkManager ignores keyfiles others can read"
            assert f"interface-name={item['name']}" in content
            assert f"address1={item['address']}" in content
            profile = host.check_output(
                f"nmcli -t -g ipv4.method,ipv4.addresses,ipv4.gateway,ipv4.dns,ipv4.dns-search,"
                f"802-3-ethernet.mtu,connection.autoconnect connection show {item['name']}"
            ).splitlines()
            assert profile[:2] == ["manual", item["address"]]
            assert profile[2] == item.get("gateway", "")
            assert profile[3] == ",".join(item.get("dns", []))
            assert profile[4] == ",".join(item.get("search", []))
            assert profile[5] == str(item.get("mtu", "auto"))
            assert profile[6] == "yes"
        else:
            assert config.mode == 0o644
            assert f"auto {item['name']}\n" in content
            assert f"iface {item['name']} inet static" in content
            # ifupdown's own reading of the whole configuration (interfaces + interfaces.d).
            parsed = dict(
                line.split(": ", 1)
                for line in host.check_output(f"ifquery {item['name']}").splitlines()
                if ": " in line
            )
            assert parsed["address"] == str(net.ip)
            assert parsed["netmask"] == str(net.netmask)
            if "mtu" in item:
                assert parsed["mtu"] == str(item["mtu"])
            if item.get("dns"):
                assert parsed["dns-nameservers"] == " ".join(item["dns"])


def test_backend_runs_the_interfaces(host) -> None:
    container = name_of(host)
    for item in interfaces_of(host):
        if container == NM:
            state = host.check_output(f"nmcli -t -g GENERAL.STATE,GENERAL.CONNECTION device show {item['name']}")
            assert state.splitlines() == ["100 (connected)", item["name"]]
        else:
            assert host.check_output(f"ifquery --state {item['name']}").strip() == f"{item['name']}={item['name']}"
    gateways = [item for item in interfaces_of(host) if item.get("gateway")]
    for item in gateways:
        routes = host.check_output(f"ip -4 route show default dev {item['name']}")
        assert f"default via {item['gateway']}" in routes


def test_only_the_interfaces_files_were_added_under_etc(host) -> None:
    """Write what is needed and nothing else: no other file under /etc is new."""
    container = name_of(host)
    added = {line[2:] for line in changes_of(container) if line.startswith("A /etc/")}
    assert added == {FILES[container].format(item["name"]) for item in interfaces_of(host)}


@pytest.mark.parametrize("container", [NM, IFUPDOWN])
def test_settings_come_back_after_a_restart(container: str) -> None:
    """NetworkManager (keyfiles) and networking.service (ifupdown) apply the files at boot."""
    interfaces = scenario_vars()[1][container]["pypi_network_interfaces"]
    docker("restart", "--time", "20", container, timeout=180)
    assert wait_for(
        lambda: on(container, "systemctl", "is-system-running").stdout.strip() in ("running", "degraded"), 90
    )
    assert wait_for(lambda: live(container, interfaces), 60), on(container, "ip", "-brief", "address").stdout
