"""site.yml runs of their own: check mode on the converged cluster, and bad replica layouts, which stop every host
before anything changes (the never-converged host's `docker diff` is the same before and after)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BALANCER, CLIENT, INVENTORY_DIR, PRISTINE, REPLICAS, WRITER, changes_of, recap, site


def test_check_mode_on_the_converged_cluster_changes_nothing() -> None:
    result = site(INVENTORY_DIR, "--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = recap(result.stdout)
    assert set(counts) == {WRITER, *REPLICAS, BALANCER, CLIENT}, counts
    for host, numbers in counts.items():
        assert numbers["changed"] == 0 and numbers["failed"] == 0, (host, numbers)


DOCKER = {"ansible_connection": "community.docker.docker"}
BAD_LAYOUTS = {
    # A host cannot be the writer and a replica of it.
    "both-groups": (
        {"pypi_servers": {"hosts": {PRISTINE: {}}}, "pypi_replicas": {"hosts": {PRISTINE: {}}}},
        [f"{PRISTINE} is in both pypi_servers and pypi_replicas", "Remove it from one of the two groups"],
    ),
    # No host in pypi_servers: the default writer is empty.
    "no-writer": (
        {"pypi_servers": {"hosts": {}}, "pypi_replicas": {"hosts": {PRISTINE: {}}}},
        [f"Replica {PRISTINE} has no writer", "Set pypi_replica_writer to one host of pypi_servers"],
    ),
    # A writer that is not a host of pypi_servers (the converged writer is in the run: it must not change either).
    "unknown-writer": (
        {
            "pypi_servers": {"hosts": {WRITER: {}}},
            "pypi_replicas": {"hosts": {PRISTINE: {"pypi_replica_writer": "nope.example.internal"}}},
        },
        ['pypi_replica_writer="nope.example.internal" is not a host of pypi_servers', WRITER],
    ),
    # A balancer runs HAProxy and nothing of the index.
    "balancer-and-writer": (
        {"pypi_servers": {"hosts": {PRISTINE: {}}}, "pypi_balancers": {"hosts": {PRISTINE: {}}}},
        [f"{PRISTINE} is in pypi_balancers and in pypi_servers", "Remove it from one of the groups"],
    ),
    "balancer-without-writer": (
        {"pypi_servers": {"hosts": {}}, "pypi_balancers": {"hosts": {PRISTINE: {}}}},
        [f"Balancer {PRISTINE} has no writer", "Put the index host in pypi_servers"],
    ),
    # The never-converged host's apt knows no repository: no HAProxy (the converged writer must not change either).
    "no-haproxy": (
        {"pypi_servers": {"hosts": {WRITER: {}}}, "pypi_balancers": {"hosts": {PRISTINE: {}}}},
        ["The balancer needs the OS package 'haproxy'", "neither has installed nor offers"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LAYOUTS))
def test_a_bad_replica_or_balancer_layout_stops_before_any_change(case: str, tmp_path: Path) -> None:
    groups, messages = BAD_LAYOUTS[case]
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"all": {"vars": DOCKER}, **groups}))
    before = changes_of(PRISTINE)
    result = site(inventory)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, said[-3000:]
    for message in messages:
        assert message in said, (message, said[-3000:])
    assert "Nothing was changed on any host" in said
    assert changes_of(PRISTINE) == before
    for host, numbers in recap(result.stdout).items():
        assert numbers.get("changed", 0) == 0, (host, numbers)
    # The play that checks the layout is the first: no other play started.
    assert "PLAY [Check inputs, bundle and host before changing anything]" not in result.stdout
