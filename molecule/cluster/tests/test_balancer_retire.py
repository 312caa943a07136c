"""playbooks/retire_balancer.yml: a balancer taken out of service before it leaves pypi_balancers hands the shared
address to another balancer and stops serving; without the confirmation, in check mode, or for a host that is not a
balancer, nothing changes; the next site.yml run brings back a retired balancer still in the group.

Runs right after test_balancer.py (by file name), while the balancers share their address."""

from __future__ import annotations

import subprocess

from conftest import (
    BALANCER,
    BALANCER2,
    CLIENT,
    INVENTORY_DIR,
    PROJECT_DIR,
    READ_URL,
    VIP_URL,
    WRITER,
    ansible_playbook,
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
    wait_for_holders([BALANCER])


def test_a_host_that_is_not_a_balancer_is_refused() -> None:
    result, said = retire("-e", f"balancer={WRITER}", "-e", "confirm=true")
    assert result.returncode != 0, said[-3000:]
    assert f"{WRITER} is not a balancer of this index: /etc/haproxy/haproxy.cfg cannot be read" in said, said[-3000:]
    assert "Nothing was changed on this host" in said
    assert all(numbers.get("changed", 0) == 0 for numbers in recap(result.stdout).values())
    result, said = retire("-e", "balancer=pypi_balancers", "-e", "confirm=true")
    assert result.returncode != 0 and "Name the balancer to retire with -e balancer=NAME" in said, said[-3000:]


def test_a_retired_balancer_hands_the_address_over_and_stops_serving() -> None:
    wait_for_holders([BALANCER])
    result, said = retire("-e", f"balancer={BALANCER}", "-e", "confirm=true")
    assert result.returncode == 0, said[-3000:]
    assert f"{BALANCER} is no longer a balancer. Take it out of pypi_balancers" in said, said[-3000:]
    assert set(recap(result.stdout)) == {"localhost", BALANCER}, recap(result.stdout)
    for unit in UNITS:
        assert unit_state(BALANCER, unit) == ("inactive", "disabled"), unit
    # The other balancer holds the shared address, and clients read through it.
    print(f"the address moved to {BALANCER2} {wait_for_holders([BALANCER2], limit=20):.1f} s after the run")
    done = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{VIP_URL}/simple/")
    assert done.returncode == 0, done.stderr
    # A second run changes nothing.
    result, said = retire("-e", f"balancer={BALANCER}", "-e", "confirm=true")
    assert result.returncode == 0, said[-3000:]
    assert recap(result.stdout)[BALANCER]["changed"] == 0, said[-3000:]


def test_site_yml_brings_back_a_retired_balancer_still_in_the_group() -> None:
    # The operator changed their mind (or the tests need the balancer again): it is still in pypi_balancers.
    result = site(INVENTORY_DIR)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, said[-3000:]
    for unit in UNITS:
        assert unit_state(BALANCER, unit) == ("active", "enabled"), unit
    print(f"the address back on {BALANCER} {wait_for_holders([BALANCER], limit=30):.1f} s after site.yml")
