"""site.yml runs of their own: check mode on the converged cluster, and bad replica layouts, which stop every host
before anything changes (the never-converged host's `docker diff` is the same before and after)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    BALANCER,
    BALANCER2,
    CLIENT,
    INVENTORY_DIR,
    PRISTINE,
    PROJECT_DIR,
    PULL_PROGRAM,
    REPLICAS,
    SUPERVISORCTL,
    WRITER,
    ansible_playbook,
    changed_tasks,
    changes_of,
    on,
    recap,
    site,
    wait_for_state,
)

from scripts.pki import issue


def test_check_mode_on_the_converged_cluster_changes_nothing() -> None:
    result = site(INVENTORY_DIR, "--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = recap(result.stdout)
    assert set(counts) == {WRITER, *REPLICAS, BALANCER, BALANCER2, CLIENT}, counts
    for host, numbers in counts.items():
        assert numbers["changed"] == 0 and numbers["failed"] == 0, (host, numbers, changed_tasks(result.stdout))


DOCKER = {"ansible_connection": "community.docker.docker"}
# The operator's own PKI for the bad layouts (scripts/pki.py): a writer's certificate of the operator's CA, a
# certificate for the never-converged host from that CA, and one from another CA.
OWN_CA, _, OWN_CA_NAME, OWN_CA_KEY = issue(["test operator CA"], ca=True)
WRITER_CERT, WRITER_KEY, _, _ = issue([WRITER], issuer=(OWN_CA_NAME, OWN_CA_KEY))
PRISTINE_CERT, PRISTINE_KEY, _, _ = issue([PRISTINE], issuer=(OWN_CA_NAME, OWN_CA_KEY))
_, _, OTHER_CA_NAME, OTHER_CA_KEY = issue(["another CA"], ca=True)
OTHER_CERT, OTHER_KEY, _, _ = issue([PRISTINE], issuer=(OTHER_CA_NAME, OTHER_CA_KEY))
OWN_PKI_WRITER = {
    "pypi_server_tls": True,
    "pypi_server_tls_source": "inventory",
    "pypi_server_tls_cert": WRITER_CERT,
    "pypi_server_tls_key": WRITER_KEY,
    "pypi_server_tls_ca_cert": OWN_CA,
}

# No container has it: docker gives the scenario's containers the first addresses of its subnet (molecule.yml).
UNUSED_ADDRESS = "10.213.47.250"
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
    # A writer whose downloads need a password: a replica's nginx would hand them out without one.
    "replica-of-a-writer-that-guards-downloads": (
        {
            "pypi_servers": {"hosts": {WRITER: {"pypi_server_auth_downloads": True}}},
            "pypi_replicas": {"hosts": {PRISTINE: {}}},
        },
        [
            f"Replica {PRISTINE}: its writer {WRITER} has pypi_server_auth_downloads true",
            "Set pypi_server_auth_downloads: false for the writer",
        ],
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
    # A replica whose writer's address no host of its network answers (the converged writer is in the run: it must
    # not change): an unused address of the scenario's fixed subnet, so the connection fails in the 3 s ARP takes
    # (a name that does not resolve costs the resolver's 10 s each time on a network with no DNS server).
    "replica-without-reach": (
        {
            "pypi_servers": {"hosts": {WRITER: {}}},
            "pypi_replicas": {"hosts": {PRISTINE: {"pypi_replica_writer_address": UNUSED_ADDRESS}}},
        },
        [f"Replica {PRISTINE} cannot reach its writer {WRITER} at {UNUSED_ADDRESS} port 22", "No route to host"],
    ),
    # A kept file larger than half the cache, which HAProxy would refuse to start with.
    "balancer-cache-object-too-large": (
        {
            "pypi_servers": {"hosts": {WRITER: {}}},
            "pypi_balancers": {
                "hosts": {PRISTINE: {"pypi_balancer_cache_mb": 16, "pypi_balancer_cache_max_object_mb": 16}}
            },
        },
        [
            f"Bad cache setting for balancer {PRISTINE}: pypi_balancer_cache_mb=16",
            "pypi_balancer_cache_max_object_mb=16 at least 1 and at most half of pypi_balancer_cache_mb",
        ],
    ),
    # A shared address outside every network of the balancer (keepalived could never hold it there).
    "balancer-vip-outside": (
        {
            "pypi_servers": {"hosts": {WRITER: {}}},
            "pypi_balancers": {"hosts": {PRISTINE: {"pypi_balancer_vip": "172.16.99.10/24"}}},
        },
        [
            f"Bad shared address on balancer {PRISTINE}: no interface has an address in 172.16.99.0/24",
            # One balancer alone would send its VRRP adverts by multicast.
            "a shared address needs two or more balancers",
            "Set them in the group_vars of pypi_balancers",
        ],
    ),
    # A writer with certificates of the operator's own PKI: a replica's certificate of another CA, and a balancer's
    # that does not cover the name clients use.
    "replica-with-a-certificate-of-another-ca": (
        {
            "pypi_servers": {"hosts": {WRITER: OWN_PKI_WRITER}},
            "pypi_replicas": {
                "hosts": {PRISTINE: {"pypi_replica_tls_cert": OTHER_CERT, "pypi_replica_tls_key": OTHER_KEY}}
            },
        },
        [
            f"so replica {PRISTINE} needs one too",
            "the writer's pypi_server_tls_ca_cert is not the issuer of pypi_replica_tls_cert",
        ],
    ),
    "balancer-certificate-not-covering-its-names": (
        {
            "pypi_servers": {"hosts": {WRITER: OWN_PKI_WRITER}},
            "pypi_balancers": {
                "hosts": {
                    PRISTINE: {
                        "pypi_balancer_tls_names": ["pypi.example.internal"],
                        "pypi_balancer_tls_cert": PRISTINE_CERT,
                        "pypi_balancer_tls_key": PRISTINE_KEY,
                    }
                }
            },
        },
        [
            f"so balancer {PRISTINE} needs one too",
            f"pypi_balancer_tls_cert does not cover pypi.example.internal (its names: {PRISTINE.lower()})",
        ],
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
    # No play that changes anything started; a layout stops in the very first play.
    assert "PLAY [Install and serve the private package index]" not in result.stdout
    if case != "replica-without-reach":
        assert "PLAY [Check inputs, bundle and host before changing anything]" not in result.stdout


def test_a_balancer_whose_statistics_port_is_taken_stops_before_any_change(tmp_path: Path) -> None:
    """Another program on 8404 (pypi_balancer_stats_port) would make HAProxy fail to start after the install."""
    holder = "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 8404))\ns.listen()\ntime.sleep(600)"
    started = on(PRISTINE, "sh", "-c", f'python3 -c "{holder}" >/dev/null 2>&1 & echo $!')
    pid = started.stdout.strip()
    assert started.returncode == 0 and pid.isdigit(), started.stdout + started.stderr
    try:
        inventory = tmp_path / "hosts.json"
        groups = {"pypi_servers": {"hosts": {WRITER: {}}}, "pypi_balancers": {"hosts": {PRISTINE: {}}}}
        inventory.write_text(json.dumps({"all": {"vars": DOCKER}, **groups}))
        before = changes_of(PRISTINE)
        result = site(inventory)
        said = " ".join((result.stdout + result.stderr).split())
        assert result.returncode != 0, said[-3000:]
        assert f"Port 8404 on {PRISTINE} (pypi_balancer_stats_port) is already in use by python3" in said, said[-3000:]
        assert "choose another pypi_balancer_stats_port (0: no statistics page)" in said, said[-3000:]
        assert "Nothing was changed on any host" in said
        assert changes_of(PRISTINE) == before
        assert "PLAY [Install and serve the private package index]" not in result.stdout
    finally:
        on(PRISTINE, "kill", pid)


def verify() -> tuple[int, str]:
    """playbooks/verify.yml on the cluster: its exit code and its output, on one line."""
    result = ansible_playbook(PROJECT_DIR / "playbooks" / "verify.yml", INVENTORY_DIR, project=PROJECT_DIR)
    for host, numbers in recap(result.stdout).items():
        assert numbers.get("changed", 0) == 0, (host, numbers)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_verify_checks_the_replicas_and_the_balancer() -> None:
    code, said = verify()
    assert code == 0, said[-3000:]
    # (The report is YAML: a quote in a check's text is doubled there, so the texts below stop before one.)
    for check in (
        "PASS | replica serves its writer",
        "PASS | replica refuses an upload (405)",
        "PASS | an upload without credentials through the balancer reaches the writer (401)",
        "PASS | every server of the read pool and the writer is UP in HAProxy",
        "PASS | exactly one balancer holds the shared address 10.213.47.200/24",
    ):
        assert check in said, (check, said[-3000:])
    # A replica whose pull stopped fails its check, and the balancer's (the replica is DOWN there).
    assert on(REPLICAS[0], *SUPERVISORCTL, "stop", PULL_PROGRAM).returncode == 0
    try:
        wait_for_state("airgap_pypi_reads", REPLICAS[0], "DOWN", limit=20)
        code, said = verify()
    finally:
        assert on(REPLICAS[0], *SUPERVISORCTL, "start", PULL_PROGRAM).returncode == 0
    assert code != 0
    assert "FAIL | replica serves its writer" in said, said[-3000:]
    assert "FAIL | every server of the read pool and the writer is UP in HAProxy" in said, said[-3000:]
    wait_for_state("airgap_pypi_reads", REPLICAS[0], "UP", limit=30)
