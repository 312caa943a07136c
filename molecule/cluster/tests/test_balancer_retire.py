"""playbooks/retire_balancer.yml: a balancer taken out of service before it leaves pypi_balancers hands the shared
address to another balancer, stops serving and closes its port and VRRP rules; without the confirmation, in check
mode, for a host that is not a balancer (or whose HAProxy configuration is the operator's), or while no other balancer
can take the address, nothing changes; a second run changes nothing, even with HAProxy's package gone; the next
site.yml run brings back a retired balancer still in the group, and changes nothing on the other hosts (the scenario's
idempotence run).

Runs right after test_balancer.py (by file name), while the balancers share their address."""

from __future__ import annotations

import json
import subprocess

from conftest import (
    BALANCER,
    BALANCER2,
    CLIENT,
    INVENTORY_DIR,
    PORT,
    PROJECT_DIR,
    READ_URL,
    REPLICAS,
    VIP_URL,
    WRITER,
    ansible_playbook,
    changed_tasks,
    on,
    recap,
    site,
    wait_for_holders,
)

UNITS = ("haproxy", "keepalived")


def retire(*args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    result = ansible_playbook(
        PROJECT_DIR / "playbooks" / "retire_balancer.yml", INVENTORY_DIR, *args, project=PROJECT_DIR
    )
    return result, " ".join((result.stdout + result.stderr).split())


def unit_state(host: str, unit: str) -> tuple[str, str]:
    """(systemctl is-active, is-enabled) of unit on host."""
    return tuple(on(host, "systemctl", verb, unit).stdout.strip() for verb in ("is-active", "is-enabled"))


def firewall(host: str) -> dict[str, object]:
    """What pypi_firewall keeps for the balancer on host: its port and VRRP rich rules in firewalld (now and at
    boot), and the role's record."""
    listing = {
        name: on(host, "firewall-cmd", *flag, f"--list-{what}").stdout.split("\n" if what == "rich-rules" else None)
        for name, flag, what in (
            ("ports", (), "ports"),
            ("ports at boot", ("--permanent",), "ports"),
            ("vrrp", (), "rich-rules"),
            ("vrrp at boot", ("--permanent",), "rich-rules"),
        )
    }
    state: dict[str, object] = {
        name: (f"{PORT}/tcp" in lines) if name.startswith("ports") else any('value="vrrp"' in line for line in lines)
        for name, lines in listing.items()
    }
    record = on(host, "cat", "/var/lib/airgap-pypi-firewall.json").stdout
    state["recorded"] = sorted(json.loads(record or "{}"))
    return state


SERVING = {"ports": True, "ports at boot": True, "vrrp": True, "vrrp at boot": True, "recorded": ["balancer", "vrrp"]}


def test_without_the_confirmation_or_in_check_mode_nothing_changes() -> None:
    result, said = retire("-e", f"balancer={BALANCER}")
    assert result.returncode != 0, said[-3000:]
    assert f"This would stop HAProxy and keepalived on {BALANCER}" in said, said[-3000:]
    assert "Run again with -e confirm=true" in said and "Nothing was changed on any host" in said
    result, said = retire("-e", f"balancer={BALANCER}", "-e", "confirm=true", "--check")
    assert result.returncode == 0, said[-3000:]
    assert recap(result.stdout)[BALANCER]["changed"] > 0, said[-3000:]  # it says what it would change
    # A --limit without localhost skips the first play's checks: the second makes them again, on the hosts.
    for args in (
        ("-e", f"balancer={BALANCER}", "--limit", BALANCER),
        ("-e", "balancer=pypi_balancers", "-e", "confirm=true", "--limit", "pypi_balancers"),
    ):
        result, said = retire(*args)
        assert result.returncode != 0, said[-3000:]
        assert "Retiring needs one inventory host in -e balancer=NAME" in said, said[-3000:]
        assert all(numbers.get("changed", 0) == 0 for numbers in recap(result.stdout).values()), said[-3000:]
    for unit in UNITS:
        assert unit_state(BALANCER, unit) == ("active", "enabled"), unit
        assert unit_state(BALANCER2, unit)[0] == "active", unit
    assert firewall(BALANCER) == SERVING
    wait_for_holders([BALANCER])


def test_a_host_that_is_not_a_balancer_is_refused() -> None:
    result, said = retire("-e", f"balancer={WRITER}", "-e", "confirm=true")
    assert result.returncode != 0, said[-3000:]
    assert f"{WRITER} is not a balancer of this index: /etc/haproxy/haproxy.cfg cannot be read" in said, said[-3000:]
    assert "Nothing was changed on this host" in said
    assert all(numbers.get("changed", 0) == 0 for numbers in recap(result.stdout).values())
    result, said = retire("-e", "balancer=pypi_balancers", "-e", "confirm=true")
    assert result.returncode != 0 and "Name the balancer to retire with -e balancer=NAME" in said, said[-3000:]


def test_a_haproxy_configuration_of_the_operators_own_is_left_alone() -> None:
    # The client stands in for a host whose HAProxy the operator set up by hand.
    own = "# written by hand\nglobal\n    daemon\n"
    write = "mkdir /etc/haproxy && printf '%s\\n' '# written by hand' global '    daemon' > /etc/haproxy/haproxy.cfg"
    assert on(CLIENT, "sh", "-c", write).returncode == 0
    try:
        result, said = retire("-e", f"balancer={CLIENT}", "-e", "confirm=true")
        assert result.returncode != 0, said[-3000:]
        expected = "/etc/haproxy/haproxy.cfg is not one role pypi_balancer wrote"
        assert f"{CLIENT} is not a balancer of this index: {expected}" in said, said[-3000:]
        assert recap(result.stdout)[CLIENT].get("changed", 0) == 0
        assert on(CLIENT, "cat", "/etc/haproxy/haproxy.cfg").stdout == own
    finally:
        on(CLIENT, "rm", "-rf", "/etc/haproxy")


def test_a_balancer_is_not_retired_while_no_other_can_take_the_address() -> None:
    assert on(BALANCER2, "systemctl", "stop", "haproxy").returncode == 0
    try:
        result, said = retire("-e", f"balancer={BALANCER}", "-e", "confirm=true")
        assert result.returncode != 0, said[-3000:]
        assert "No other balancer can take the shared address 10.213.47.200/24" in said, said[-3000:]
        assert f"{BALANCER2} (haproxy stopped)" in said, said[-3000:]
        assert "-e leave_unserved=true. Nothing was changed on any host" in said, said[-3000:]
        assert all(numbers.get("changed", 0) == 0 for numbers in recap(result.stdout).values()), said[-3000:]
        for unit in UNITS:
            assert unit_state(BALANCER, unit) == ("active", "enabled"), unit
        assert firewall(BALANCER) == SERVING
    finally:
        on(BALANCER2, "systemctl", "start", "haproxy")
    wait_for_holders([BALANCER])


def test_a_retired_balancer_hands_the_address_over_and_stops_serving() -> None:
    wait_for_holders([BALANCER])
    result, said = retire("-e", f"balancer={BALANCER}", "-e", "confirm=true")
    assert result.returncode == 0, said[-3000:]
    assert f"{BALANCER} is no longer a balancer. Take it out of pypi_balancers" in said, said[-3000:]
    assert set(recap(result.stdout)) == {"localhost", BALANCER}, recap(result.stdout)
    for unit in UNITS:
        assert unit_state(BALANCER, unit) == ("inactive", "disabled"), unit
    # Its port and its VRRP rules are closed, now and at boot, and the record holds neither.
    assert firewall(BALANCER) == {**dict.fromkeys(SERVING, False), "recorded": []}
    # The other balancer holds the shared address, and clients read through it.
    print(f"the address moved to {BALANCER2} {wait_for_holders([BALANCER2], limit=20):.1f} s after the run")
    done = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{VIP_URL}/simple/")
    assert done.returncode == 0, done.stderr
    # A second run changes nothing, even after HAProxy's package is gone with its unit (and, as an RPM removal leaves
    # it, with no init script: Debian's keeps /etc/init.d/haproxy, which ansible's service module would still find).
    gone = "apt-get remove -y -q haproxy && rm -f /etc/init.d/haproxy && systemctl daemon-reload"
    removed = on(BALANCER, "env", "DEBIAN_FRONTEND=noninteractive", "sh", "-c", gone, timeout=300)
    assert removed.returncode == 0, removed.stdout[-2000:] + removed.stderr[-2000:]
    result, said = retire("-e", f"balancer={BALANCER}", "-e", "confirm=true")
    assert result.returncode == 0, said[-3000:]
    assert recap(result.stdout)[BALANCER]["changed"] == 0, said[-3000:]


def test_site_yml_brings_back_a_retired_balancer_and_changes_nothing_on_the_other_hosts() -> None:
    # The operator changed their mind (or the tests need the balancer again): it is still in pypi_balancers.
    # This is also the scenario's idempotence run (molecule.yml has no idempotence step): the second site.yml run
    # over the converged cluster changes nothing but the retired balancer.
    result = site(INVENTORY_DIR)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, said[-3000:]
    counts = recap(result.stdout)
    assert set(counts) == {WRITER, *REPLICAS, BALANCER, BALANCER2, CLIENT}, counts
    assert counts[BALANCER]["changed"] > 0, counts
    for host, numbers in counts.items():
        if host != BALANCER:
            assert numbers["changed"] == 0, (host, numbers, changed_tasks(result.stdout))
    for unit in UNITS:
        assert unit_state(BALANCER, unit) == ("active", "enabled"), unit
    assert firewall(BALANCER) == SERVING
    print(f"the address back on {BALANCER} {wait_for_holders([BALANCER], limit=30):.1f} s after site.yml")
