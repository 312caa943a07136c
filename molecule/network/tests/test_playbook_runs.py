"""Playbook runs of their own: check mode, site.yml, apply-and-confirm's revert, ifcfg rendering, bad input.

Every bad input must fail before anything is written: `docker diff` of the pristine host is the same
before and after.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    IFUPDOWN,
    NM,
    PRISTINE,
    PROJECT_DIR,
    addresses,
    changes_of,
    docker,
    failures,
    on,
    playbook,
    playbook_argv,
    playbook_env,
    report,
    scenario_vars,
    task_results,
    wait_for,
    write_inventory,
)

BASH_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}  # what bash itself puts in an empty environment
FILES = {
    NM: "/etc/NetworkManager/system-connections/eth2.nmconnection",
    IFUPDOWN: "/etc/network/interfaces.d/eth2",
}


@pytest.fixture(scope="module")
def converged_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converged hosts with the vars converge.yml gave them."""
    group, host_vars = scenario_vars()
    return write_inventory(tmp_path_factory.mktemp("inv") / "hosts.json", host_vars, group)


def test_check_mode_on_converged_hosts_changes_nothing(converged_inventory: Path) -> None:
    before = {host: changes_of(host) for host in (NM, IFUPDOWN)}
    result = playbook(converged_inventory, "--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    document = report(result.stdout)
    assert set(document["stats"]) == {NM, IFUPDOWN}
    for host, numbers in document["stats"].items():
        assert numbers["changed"] == 0 and numbers["failures"] == 0, (host, numbers)
    assert {host: changes_of(host) for host in (NM, IFUPDOWN)} == before
    # The article's ifconfig step: the play shows each host's addresses.
    shown = task_results(document, "Show the resulting addresses")
    for host, item in ((NM, "192.0.2.10/24"), (IFUPDOWN, "192.0.2.20/24")):
        assert any(item in line and line.startswith("eth1") for line in shown[host]["msg"]), shown[host]


def test_site_yml_runs_the_role_before_the_index() -> None:
    # The index servers' plays (site.yml's replica layout check comes before them, on pypi_replicas).
    plays = [play for play in yaml.safe_load((PROJECT_DIR / "site.yml").read_text()) if play["hosts"] == "pypi_servers"]
    # pypi_bootstrap's preflight chooses the host's Python and gathers facts: every other check comes after it.
    preflights = [task["ansible.builtin.import_role"] for task in plays[0]["tasks"]]
    assert [entry["name"] for entry in preflights[:2]] == ["pypi_bootstrap", "pypi_network"]
    assert all(entry["tasks_from"] == "preflight" for entry in preflights)
    roles = [task["ansible.builtin.import_role"]["name"] for task in plays[1]["tasks"]]
    assert roles.index("pypi_network") < roles.index("pypi_bootstrap")


def test_site_yml_check_mode_reaches_the_role(tmp_path: Path) -> None:
    """site.yml itself, limited to this role's tag, on a converged host: preflight of every role, then this one."""
    if not (PROJECT_DIR / "offline_artifacts" / "SHA256SUMS").exists():
        pytest.skip("no offline bundle (make bundle): site.yml's preflight stops before the network role")
    group, host_vars = scenario_vars()
    inventory = tmp_path / "hosts.json"
    group_vars = dict(group, pypi_server_users=[{"name": "tester", "password": "molecule-test-only"}])
    inventory.write_text(json.dumps({"pypi_servers": {"hosts": {NM: host_vars[NM]}, "vars": group_vars}}))
    result = playbook(inventory, "--check", "--tags", "pypi_network", playbook_file=PROJECT_DIR / "site.yml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    document = report(result.stdout)
    assert document["stats"][NM]["changed"] == 0, document["stats"]
    assert task_results(document, "Parse every rendered file")[NM]["results"], "the network role did not run"


def test_revert_when_the_host_stops_answering(tmp_path: Path) -> None:
    """apply-and-confirm: the connection interface gets a new address, then the host is frozen (docker pause) so
    Ansible cannot reach it; the host restores the old file and address by itself and the play says so."""
    timeout = 15
    group, host_vars = scenario_vars()
    new = {NM: "198.51.100.91/24", IFUPDOWN: "198.51.100.92/24"}
    hosts = copy.deepcopy(host_vars)
    old: dict[str, str] = {}
    for host, address in new.items():
        eth2 = next(item for item in hosts[host]["pypi_network_interfaces"] if item["name"] == "eth2")
        old[host], eth2["address"] = eth2["address"], address
    old_files = {host: on(host, "cat", FILES[host], check=True).stdout for host in new}
    # A longer wait before the first confirmation attempt gives the test time to freeze the host first.
    inventory = write_inventory(tmp_path / "hosts.json", hosts, dict(group, pypi_network_confirm_timeout=timeout))
    output = tmp_path / "playbook.json"
    paused: dict[str, float] = {}
    errors = tmp_path / "playbook.err"
    with output.open("w") as stdout_file, errors.open("w") as stderr_file:
        run = subprocess.Popen(
            playbook_argv(inventory, "-e", '{"__pypi_network_confirm_delay": 8}'),
            stdout=stdout_file,
            stderr=stderr_file,
            text=True,
            env=playbook_env(),
            cwd=PROJECT_DIR,
        )
        try:
            deadline = time.monotonic() + 120
            while len(paused) < len(new) and time.monotonic() < deadline and run.poll() is None:
                for host, address in new.items():
                    if host not in paused and address in addresses(host, "eth2"):
                        docker("pause", host)
                        paused[host] = time.monotonic()
                time.sleep(0.1)
            assert len(paused) == len(new), f"the new address never showed up: {paused}"
            # Past the controller's last attempt and the host's deadline (timeout s after it applied).
            for host, since in paused.items():
                time.sleep(max(0.0, since + timeout + 4 - time.monotonic()))
                docker("unpause", host)
            run.wait(timeout=300)
        finally:
            for host in paused:
                docker("unpause", host, check=False)
            if run.poll() is None:
                run.kill()
    stdout = output.read_text()
    assert run.returncode != 0, stdout[-3000:] + errors.read_text()[-2000:]
    messages = failures(report(stdout))
    for host, address in new.items():
        assert f"{host} did not answer within {timeout} s after eth2" in messages[host], messages
        assert "restored the previous file and settings of eth2" in messages[host], messages
        assert on(host, "cat", FILES[host], check=True).stdout == old_files[host]
        assert wait_for(lambda host=host: old[host] in addresses(host, "eth2"), 30)
        assert address not in addresses(host, "eth2")


def test_ifcfg_file_renders_and_parses(tmp_path: Path) -> None:
    """The ifcfg backend (EL network-scripts) cannot run here: render its files without applying them, then
    read them as the shell-variable files they are."""
    directory = "/etc/sysconfig/network-scripts"
    group, _ = scenario_vars()
    # eth2 is not started at boot here: it must not be taken for the interface Ansible connects through.
    group = {key: value for key, value in group.items() if key != "pypi_network_connection_interface"}
    interfaces: list[dict[str, Any]] = [
        {
            "name": "eth1",
            "address": "192.0.2.30/24",
            "gateway": "192.0.2.1",
            "dns": ["192.0.2.53", "192.0.2.54"],
            "search": ["example.internal", "lab.example.internal"],
            "mtu": 1400,
        },
        {"name": "eth2", "method": "dhcp", "dns": ["192.0.2.53"], "onboot": False},
    ]
    host_vars = {
        "pypi_network_backend": "ifcfg",
        "pypi_network_apply": False,
        "pypi_network_interfaces": interfaces,
    }
    inventory = write_inventory(tmp_path / "hosts.json", {IFUPDOWN: host_vars}, group)
    on(IFUPDOWN, "mkdir", "-p", directory, check=True)
    try:
        before = on(IFUPDOWN, "ip", "-4", "-o", "address").stdout
        result = playbook(inventory)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        assert on(IFUPDOWN, "ip", "-4", "-o", "address").stdout == before, "pypi_network_apply false applied"
        files = {name: on(IFUPDOWN, "cat", f"{directory}/ifcfg-{name}", check=True).stdout for name in ("eth1", "eth2")}
        for name in files:
            path = f"{directory}/ifcfg-{name}"
            assert on(IFUPDOWN, "bash", "-n", path).returncode == 0
            assert on(IFUPDOWN, "stat", "-c", "%a %U", path).stdout.split() == ["644", "root"]
        sourced = {
            name: dict(
                line.split("=", 1)
                for line in on(
                    IFUPDOWN, "env", "-i", "bash", "-c", f"set -a; . {directory}/ifcfg-{name}; env"
                ).stdout.splitlines()
                if line.split("=", 1)[0] not in BASH_OWN
            )
            for name in files
        }
    finally:
        on(IFUPDOWN, "rm", "-rf", "/etc/sysconfig")
    assert sourced["eth1"] == {
        "DEVICE": "eth1",
        "NAME": "eth1",
        "TYPE": "Ethernet",
        "ONBOOT": "yes",
        "NM_CONTROLLED": "no",
        "BOOTPROTO": "none",
        "IPADDR": "192.0.2.30",
        "PREFIX": "24",
        "GATEWAY": "192.0.2.1",
        "DNS1": "192.0.2.53",
        "DNS2": "192.0.2.54",
        "DOMAIN": "example.internal lab.example.internal",
        "MTU": "1400",
    }
    assert sourced["eth2"] == {
        "DEVICE": "eth2",
        "NAME": "eth2",
        "TYPE": "Ethernet",
        "ONBOOT": "no",
        "NM_CONTROLLED": "no",
        "BOOTPROTO": "dhcp",
        "PEERDNS": "no",
        "DNS1": "192.0.2.53",
    }
    # Nothing but comments and KEY=value lines (NetworkManager's ifcfg-rh reader accepts no more).
    for text in files.values():
        assert all(line.startswith("#") or "=" in line for line in text.splitlines() if line)


# --- bad input on the never-converged host: one "host" per case, all of them that one container --------------

BAD = {
    "bad-cidr": (
        [{"name": "eth1", "address": "192.0.2.300/24"}],
        ["pypi_network_interfaces[0] (eth1)", "'192.0.2.300/24'", "not a valid IPv4 address"],
    ),
    "no-prefix": ([{"name": "eth1", "address": "192.0.2.10"}], ["'192.0.2.10'", "with a prefix length"]),
    "unknown-interface": (
        [{"name": "eth9", "address": "192.0.2.10/24"}],
        ["interface eth9 does not exist on this host", "eth0, eth1, lo"],
    ),
    "gateway-outside": (
        [{"name": "eth1", "address": "192.0.2.10/24", "gateway": "198.51.100.1"}],
        ["gateway 198.51.100.1 is outside 192.0.2.0/24"],
    ),
    "network-address": ([{"name": "eth1", "address": "192.0.2.0/24"}], ["is the network address of 192.0.2.0/24"]),
    "dns-not-ip": (
        [{"name": "eth1", "address": "192.0.2.10/24", "dns": ["dns.example.internal"]}],
        ["DNS server 'dns.example.internal' is not an IPv4 address"],
    ),
    "mtu-range": ([{"name": "eth1", "address": "192.0.2.10/24", "mtu": 40}], ["mtu 40 is out of range (68-65535)"]),
    "dhcp-with-address": (
        [{"name": "eth1", "method": "dhcp", "address": "192.0.2.10/24"}],
        ["address '192.0.2.10/24' is only for method static"],
    ),
    "listed-twice": (
        [{"name": "eth1", "address": "192.0.2.10/24"}, {"name": "eth1", "address": "192.0.2.11/24"}],
        ["interface eth1 is listed twice"],
    ),
    "method": ([{"name": "eth1", "method": "bootp"}], ["Validation of arguments failed", "method", "bootp"]),
    "mtu-type": (
        [{"name": "eth1", "address": "192.0.2.10/24", "mtu": "big"}],
        ["Validation of arguments failed", "mtu"],
    ),
}
BAD_SETTINGS = {"confirm-timeout": ({"pypi_network_confirm_timeout": 5}, ["pypi_network_confirm_timeout=5", "15-3600"])}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Run every bad case at once against the pristine host; {case: failure message}. Asserts the host is unchanged."""
    group, _ = scenario_vars()
    group = {key: value for key, value in group.items() if key != "pypi_network_connection_interface"}
    hosts: dict[str, dict[str, Any]] = {
        case: {"ansible_host": PRISTINE, "pypi_network_interfaces": interfaces} for case, (interfaces, _) in BAD.items()
    }
    for case, (settings, _) in BAD_SETTINGS.items():
        hosts[case] = {"ansible_host": PRISTINE, "pypi_network_interfaces": [], **settings}
    inventory = write_inventory(tmp_path_factory.mktemp("inv") / "hosts.json", hosts, group)
    # Ansible's first contact leaves /root/.ansible behind; that is not the role's doing.
    subprocess.run(["docker", "exec", PRISTINE, "true"], check=True)
    before = changes_of(PRISTINE)
    result = playbook(inventory)
    assert changes_of(PRISTINE) == before, "a failed check must leave the host as it was"
    assert result.returncode != 0
    return failures(report(result.stdout))


@pytest.mark.parametrize("case", [*BAD, *BAD_SETTINGS])
def test_bad_value_fails_before_anything_is_written(bad_runs: dict[str, str], case: str) -> None:
    message = bad_runs.get(case, "")
    needles = (BAD.get(case) or BAD_SETTINGS[case])[1]
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert "Nothing was changed on this host" in message or "Validation of arguments failed" in message


def test_disabled_role_does_nothing(tmp_path: Path) -> None:
    """Off by default: with pypi_network_enabled false the role changes nothing and runs no command."""
    group, _ = scenario_vars()
    group = dict(group, pypi_network_enabled=False)
    bad = {"name": "eth9", "address": "not an address"}  # would fail every check if the role looked at it
    inventory = write_inventory(tmp_path / "hosts.json", {PRISTINE: {"pypi_network_interfaces": [bad]}}, group)
    before = changes_of(PRISTINE)
    result = playbook(inventory)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    document = report(result.stdout)
    assert document["stats"][PRISTINE]["changed"] == 0
    ran = [
        task["task"]["name"]
        for play in document["plays"]
        for task in play["tasks"]
        if not task["hosts"].get(PRISTINE, {}).get("skipped")
    ]
    ran = [name.split(" : ", 1)[-1] for name in ran]
    assert [name for name in ran if not name.startswith(("Gathering Facts", "Validating arguments"))] == [], ran
    assert changes_of(PRISTINE) == before


def test_another_ifupdown_definition_stops_the_role(tmp_path: Path) -> None:
    """ifupdown reads /etc/network/interfaces too: a stanza for the same interface there stops the role."""
    group, _ = scenario_vars()
    group = {key: value for key, value in group.items() if key != "pypi_network_connection_interface"}
    inventory = write_inventory(
        tmp_path / "hosts.json",
        {PRISTINE: {"pypi_network_interfaces": [{"name": "eth1", "address": "192.0.2.10/24"}]}},
        group,
    )
    on(PRISTINE, "cp", "-p", "/etc/network/interfaces", "/root/interfaces.orig", check=True)
    on(
        PRISTINE,
        "sh",
        "-c",
        "printf 'allow-hotplug eth1\\niface eth1 inet dhcp\\n' >>/etc/network/interfaces",
        check=True,
    )
    try:
        before = changes_of(PRISTINE)
        result = playbook(inventory)
        assert changes_of(PRISTINE) == before
    finally:
        on(PRISTINE, "mv", "/root/interfaces.orig", "/etc/network/interfaces", check=True)
    assert result.returncode != 0
    message = failures(report(result.stdout))[PRISTINE]
    assert "/etc/network/interfaces line 7 has iface eth1 inet dhcp" in message, message
