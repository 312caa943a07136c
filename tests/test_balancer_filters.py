"""The balancer's filters (HAProxy's statistics as its verify reads them, where keepalived holds the shared address)
and pypi_firewall's VRRP rules."""

from __future__ import annotations

import re

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from conftest import ROOT, load_module

filters = load_module("pypi_balancer_filters", ROOT / "roles" / "pypi_balancer" / "filter_plugins" / "pypi_balancer.py")

CSV = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n"
    "airgap_pypi,FRONTEND,,,0,1,4096,5,0,0,0,0,0,,,,,OPEN,\n"
    "airgap_pypi_reads,replica1,0,0,0,1,,2,1,2,,0,,0,0,0,0,UP,1\n"
    "airgap_pypi_reads,writer,0,0,0,1,,2,1,2,,0,,0,0,0,0,DOWN 1/2,1\n"
    "airgap_pypi_reads,BACKEND,0,0,0,1,,2,1,2,,0,,0,0,0,0,UP,1\n"
    "airgap_pypi_writer,writer,0,0,0,1,,2,1,2,,0,,0,0,0,0,no check,1\n"
    "airgap_pypi_stats,FRONTEND,,,0,1,4096,5,0,0,0,0,0,,,,,OPEN,\n"
)


def test_server_states_lists_the_servers_of_both_pools_with_the_first_word_of_their_status() -> None:
    assert filters.server_states(CSV) == [
        {"backend": "airgap_pypi_reads", "server": "replica1", "status": "UP"},
        {"backend": "airgap_pypi_reads", "server": "writer", "status": "DOWN"},
        {"backend": "airgap_pypi_writer", "server": "writer", "status": "no"},
    ]


def test_server_states_of_an_html_page_or_nothing_is_empty() -> None:
    assert filters.server_states("<html><body>stats</body></html>") == []
    assert filters.server_states("") == []


IP_ADDR = (
    "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
    "17: eth0@if18    inet 10.213.47.3/24 brd 10.213.47.255 scope global eth0\\       valid_lft forever\n"
    "17: eth0@if18    inet 10.213.47.200/24 scope global secondary eth0\\       valid_lft forever\n"
    "19: eth1    inet 192.0.2.7/24 brd 192.0.2.255 scope global eth1\\       valid_lft forever\n"
)


def test_vrrp_interface_is_the_one_whose_network_holds_the_shared_address() -> None:
    found = filters.vrrp_interface("10.213.47.200/24", IP_ADDR)
    # The shared address itself (held here now by keepalived) is not taken for the interface's own.
    assert found == {
        "ok": True,
        "interface": "eth0",
        "address": "10.213.47.3",
        "network": "10.213.47.0/24",
        "vip": "10.213.47.200/24",
    }
    # What goes into keepalived.conf is the address as parsed, never the inventory's text.
    assert filters.vrrp_interface(" 10.213.47.200/24\n", IP_ADDR)["vip"] == "10.213.47.200/24"
    assert filters.vrrp_interface("192.0.2.50/24", IP_ADDR)["interface"] == "eth1"


def test_vrrp_interface_refuses_a_bad_address_naming_it() -> None:
    for bad, said in (
        ("10.213.47.200", "not a host address of a network of at least 4 addresses"),
        ("10.213.47.0/24", "not a host address"),
        ("10.213.47.300/24", "is not an IPv4 address with its prefix length"),
        ("fe80::1/64", "is not an IPv4 address with its prefix length"),
        ("x" * 500, "is not an IPv4 address"),
    ):
        result = filters.vrrp_interface(bad, IP_ADDR)
        assert result["ok"] is False and said in result["error"], (bad, result)
        assert len(result["error"]) < 300
    # The host's own (primary) address, a loopback one, and a line ip would never print (skipped).
    own = filters.vrrp_interface("10.213.47.3/24", IP_ADDR)
    assert own["ok"] is False and "is the address of eth0 itself" in own["error"], own
    assert "loopback" in filters.vrrp_interface("127.0.0.100/8", IP_ADDR)["error"]
    odd = "9: eth2    inet 10.9.9.9/33 scope global eth2\n" + IP_ADDR
    assert filters.vrrp_interface("10.213.47.200/24", odd)["interface"] == "eth0"
    elsewhere = filters.vrrp_interface("172.16.0.10/24", IP_ADDR)
    assert elsewhere["ok"] is False
    assert "no interface has an address in 172.16.0.0/24" in elsewhere["error"]
    assert "eth0 10.213.47.3/24" in elsewhere["error"]


firewall = load_module(
    "pypi_firewall_filters", ROOT / "roles" / "pypi_firewall" / "filter_plugins" / "pypi_firewall.py"
)


def test_vrrp_lines_accept_protocol_112_from_each_peer_alone() -> None:
    peers = ["10.213.47.4", "10.213.47.5"]
    assert firewall.vrrp_lines(peers, "iptables", "c") == [
        '-A INPUT -s 10.213.47.4/32 -p 112 -m comment --comment "c" -j ACCEPT',
        '-A INPUT -s 10.213.47.5/32 -p 112 -m comment --comment "c" -j ACCEPT',
    ]
    assert firewall.vrrp_lines("10.213.47.4", "nftables", "c") == [
        'ip saddr 10.213.47.4 ip protocol 112 accept comment "c"'
    ]
    assert firewall.vrrp_lines(peers[:1], "firewalld") == [
        'rule family="ipv4" source address="10.213.47.4" protocol value="vrrp" accept'
    ]


def test_vrrp_lines_refuse_what_is_not_an_address() -> None:
    for bad in (["10.0.0.1; reboot"], ['10.0.0.1" accept'], ["host.example"]):
        with pytest.raises(AnsibleFilterError, match="is not an IPv4 address"):
            firewall.vrrp_lines(bad, "iptables")


def test_the_platforms_version_patterns_read_haproxy_and_keepalived_alike() -> None:
    """One pattern per platform for every package the preflight asks about (no package name in it)."""
    vars_dir = ROOT / "roles" / "pypi_balancer" / "vars"
    pattern = {
        name: yaml.safe_load((vars_dir / f"{name}.yml").read_text())["__pypi_balancer_version_pattern"]
        for name in ("Debian", "RedHat")
    }
    apt = "haproxy:\n  Installed: (none)\n  Candidate: 2.6.12-1+deb12u1\n"
    assert re.search(pattern["Debian"], apt).group(1) == "2.6"
    assert re.search(pattern["Debian"], "keepalived:\n  Installed: 1:2.2.7-1+b2\n").group(1) == "2.2"
    assert re.search(pattern["Debian"], "keepalived:\n  Installed: (none)\n  Candidate: (none)\n") is None
    for package, version in (("haproxy", "2.4"), ("keepalived", "2.2")):
        dnf = f"Available Packages\n{package}.x86_64    {version}.8-1.el9    appstream\n"
        assert re.search(pattern["RedHat"], dnf).group(1) == version
    assert re.search(pattern["RedHat"], "Error: No matching Packages to list\n") is None


BALANCER_VARS = yaml.safe_load((ROOT / "roles" / "pypi_balancer" / "vars" / "main.yml").read_text())


def kept_by_the_cache(path: str) -> bool:
    """Whether the balancer's ACLs let HAProxy keep a read of path (no credentials): the role's regular expression,
    case-insensitive (path_reg -i), and no '/.' or '%' in the path (path_sub)."""
    pattern = re.compile(BALANCER_VARS["__pypi_balancer_cache_path"], re.IGNORECASE)
    return bool(pattern.search(path)) and not any(part in path for part in ("/.", "%"))


@pytest.mark.parametrize(
    "path",
    [
        "/packages/demo-1.0-py3-none-any.whl",
        "/packages/demo-1.0-py3-none-any.whl.metadata",
        "/packages/Demo-1.0.tar.gz",
        "/packages/demo-1.0.ZIP",
        "/packages/sub/demo-1.0.tar.bz2",
    ],
)
def test_the_cache_keeps_package_files_and_their_metadata(path: str) -> None:
    assert kept_by_the_cache(path)


@pytest.mark.parametrize(
    "path",
    [
        "/packages/",  # pypiserver's listing of the writer's files: a page
        "/packages/../index.html",
        "/packages/../project/demo-1.0.whl",  # nginx resolves the dot segment: a page under a file's name
        "/packages/%2e%2e/project/demo/x.whl",
        "/packages/demo-1.0.whl/",
        "/packages/demo-1.0.whl.html",
        "/simple/demo/",
        "/project/demo/",
        "/",
        "/health",
        "/x/packages/demo-1.0.whl",
    ],
)
def test_the_cache_keeps_no_page(path: str) -> None:
    assert not kept_by_the_cache(path)


def cache_on(cache_mb: object, writer: dict[str, object]) -> bool:
    """__pypi_balancer_cache as Ansible renders it (jinja2 with Ansible's own bool filter)."""
    import jinja2  # noqa: PLC0415 - Jinja2 comes with ansible-core
    from ansible.plugins.filter.core import to_bool  # noqa: PLC0415

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    env.filters["bool"] = to_bool
    rendered = env.from_string(BALANCER_VARS["__pypi_balancer_cache"]).render(
        pypi_balancer_cache_mb=cache_mb, __pypi_balancer_writer_vars=writer
    )
    return to_bool(rendered.strip())


def test_the_cache_is_off_while_the_writer_overwrites_files() -> None:
    assert cache_on(128, {}) and cache_on("16", {"pypi_server_overwrite": False})
    # A file uploaded again with other bytes would be served with its old ones until it expired.
    assert not cache_on(128, {"pypi_server_overwrite": True}) and not cache_on(128, {"pypi_server_overwrite": "yes"})
    assert not cache_on(0, {})


def test_service_state_reads_systemd_and_init_script_names_and_calls_a_removed_unit_missing() -> None:
    services = {
        "haproxy.service": {"name": "haproxy.service", "state": "running", "status": "enabled", "source": "systemd"},
        "keepalived.service": {"state": "stopped", "status": "not-found", "source": "systemd"},
        "nginx": {"name": "nginx", "state": "stopped", "status": "disabled", "source": "sysv"},
    }
    assert filters.service_state(services, "haproxy") == "running"
    assert filters.service_state(services, "nginx") == "stopped"
    assert filters.service_state(services, "keepalived") == "missing"
    assert filters.service_state(services, "rsync") == "missing"
    # Not read (service_facts found none, or failed): never "missing", so the stop is tried.
    assert filters.service_state(None, "haproxy") == "unknown"
    assert filters.service_state({}, "haproxy") == "unknown"
    # A unit whose file is gone but whose daemon still runs is not missing.
    running = {"keepalived.service": {"state": "running", "status": "not-found"}}
    assert filters.service_state(running, "keepalived") == "running"


def test_retire_successors_are_the_other_balancers_running_haproxy_and_keepalived() -> None:
    def ran(item: str, **states: str) -> dict:
        services = {f"{unit}.service": {"state": state, "status": "enabled"} for unit, state in states.items()}
        return {"item": item, "ansible_facts": {"services": services}}

    results = {
        "results": [
            ran("b2", haproxy="running", keepalived="running"),
            ran("b3", haproxy="stopped", keepalived="running"),
            ran("b4", haproxy="running"),
            {"item": "b5", "unreachable": True, "msg": "timed out"},
            {"item": "b6", "failed": True, "msg": "no python"},
            {"item": "b7", "skipped": True, "msg": "Failed to find any services."},
        ]
    }
    assert filters.retire_successors(results) == {
        "ready": ["b2"],
        "not_ready": [
            "b3 (haproxy stopped)",
            "b4 (keepalived missing)",
            "b5 (unreachable)",
            "b6 (its services could not be read)",
            "b7 (its services could not be read)",
        ],
    }
    # The task skipped (no shared address), or no other balancer: nobody is ready.
    assert filters.retire_successors({"skipped": True}) == {"ready": [], "not_ready": []}
    assert filters.retire_successors({"results": []}) == {"ready": [], "not_ready": []}
