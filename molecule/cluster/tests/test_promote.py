"""Writer failover (playbooks/promote.yml): a replica becomes the writer, and nothing acknowledged is lost.

Runs last (the file's name sorts after the others): it moves the writer for good. The upload just before the
promotion is not waited for: the playbook itself must wait until the replica holds it. The operator's edit of the
inventory after the move also drops the balancers' shared address and moves the cluster from the internal CA to the
operator's own PKI (each of those then has a test of its own, on the state that one site.yml run left). The last
test loses the new writer for good and promotes the other replica from its own last generation."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from conftest import (
    BALANCER,
    BALANCER2,
    BALANCER_URL,
    CLIENT,
    CLIENT_BIN,
    DATA_DIR,
    INDEX_PROGRAM,
    INVENTORY_DIR,
    PASSWORD,
    PORT,
    PROJECT_DIR,
    PULL_PROGRAM,
    REPLICA_PORT,
    REPLICA_ROOT,
    REPLICAS,
    SUPERVISORCTL,
    USER,
    VIP,
    WRITER,
    ansible_playbook,
    docker,
    on,
    recap,
    replica_url,
    site,
    twine_upload,
    wait_for,
    wait_for_state,
)

from scripts.pki import issue

NEW_WRITER = REPLICAS[1]
FOLLOWER = REPLICAS[0]
PROMOTE = PROJECT_DIR / "playbooks" / "promote.yml"
# The task during which promote.yml waits for the replica to hold the writer's last generation.
WAITING = "TASK [pypi_replica : Wait until the replica serves the writer's last generation]"


def promote(*args: str):
    return ansible_playbook(PROMOTE, INVENTORY_DIR, *args, project=PROJECT_DIR, timeout=900)


def digests(container: str, directory: str) -> dict[str, str]:
    """{file name: sha256} of the plain files in a directory of a container."""
    done = on(container, "sh", "-c", f"cd {directory} && find . -maxdepth 1 -type f -exec sha256sum {{}} +")
    assert done.returncode == 0, done.stderr
    pairs = (line.split(None, 1) for line in done.stdout.splitlines())
    return {name.removeprefix("./"): digest for digest, name in pairs}


def file_bytes(container: str, path: str) -> str:
    done = on(container, "cat", path)
    assert done.returncode == 0, done.stderr
    return done.stdout


def promote_while_behind(wheel: str, name: str, log: Path) -> tuple[int, str]:
    """Upload wheel while the replicas cannot fetch package files, run promote.yml, and make the packages
    readable again only once the playbook waits for the replica to promote, which still lacks the file then.
    Returns promote.yml's exit code and output."""
    mode = on(WRITER, "stat", "-c", "%a", f"{DATA_DIR}/packages").stdout.strip()
    assert mode.isdigit(), mode
    assert on(WRITER, "chmod", "0750", f"{DATA_DIR}/packages").returncode == 0
    running = None
    try:
        done = twine_upload(wheel)
        assert done.returncode == 0, done.stdout + done.stderr  # acknowledged: it must survive the move
        env = dict(os.environ, ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles"), ANSIBLE_NOCOLOR="1")
        argv = ["ansible-playbook", "-i", str(INVENTORY_DIR), str(PROMOTE), "-e", f"pypi_replica_promote={NEW_WRITER}"]
        with log.open("w") as out:
            running = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=PROJECT_DIR)
        assert wait_for(lambda: WAITING in log.read_text() or running.poll() is not None, 300)
        assert WAITING in log.read_text(), "promote.yml never waited for the replica: " + log.read_text()[-3000:]
        time.sleep(2)
        assert name not in on(NEW_WRITER, "ls", f"{REPLICA_ROOT}/current/packages").stdout, "the replica is not behind"
    finally:
        on(WRITER, "chmod", mode, f"{DATA_DIR}/packages")
        if running is not None:
            running.wait(timeout=900)
    return running.returncode, log.read_text()


# The operator's own PKI: a root, an issuing CA below it, and from that a certificate for each host of the promoted
# cluster, given with its chain in the inventory (pypi_server_tls_source: inventory on the writer).
OPERATOR_ISSUER = "airgap-pypi test operator issuing CA"
OPERATOR_ROOT, _, _ROOT_NAME, _ROOT_KEY = issue(["airgap-pypi test operator root CA"], ca=True)
_ISSUING, _, _ISSUING_NAME, _ISSUING_KEY = issue([OPERATOR_ISSUER], issuer=(_ROOT_NAME, _ROOT_KEY), ca=True)


def operator_pki() -> dict[str, dict[str, object]]:
    """host_vars of the promoted cluster with the operator's own PKI."""
    found: dict[str, dict[str, object]] = {}
    for host, prefix in (
        (NEW_WRITER, "pypi_server"),
        (FOLLOWER, "pypi_replica"),
        (BALANCER, "pypi_balancer"),
        (BALANCER2, "pypi_balancer"),
    ):
        cert, key, _, _ = issue([host], issuer=(_ISSUING_NAME, _ISSUING_KEY))
        found[host] = {f"{prefix}_tls_cert": cert + _ISSUING, f"{prefix}_tls_key": key}
    found[NEW_WRITER] |= {"pypi_server_tls_source": "inventory", "pypi_server_tls_ca_cert": OPERATOR_ROOT}
    return found


OPERATOR_PKI = operator_pki()


def promoted_inventory(
    tmp_path: Path,
    writer_host: str = NEW_WRITER,
    replicas: tuple[str, ...] = (FOLLOWER,),
    host_vars: dict[str, dict[str, object]] | None = None,
) -> Path:
    """The operator's inventory after the move: the replica is the writer, the old writer is gone, the balancers no
    longer share an address, and HTTPS comes from the operator's own PKI (host_vars; by default OPERATOR_PKI). The
    internal CA stays named (the scenario's is next to its inventory; this one is elsewhere)."""
    inventory = tmp_path / f"promoted-{writer_host}.json"
    more = OPERATOR_PKI if host_vars is None else host_vars
    writer = {
        "pypi_server_tls": True,
        "pypi_server_users": [{"name": USER, "password": PASSWORD}],
        **more.get(writer_host, {}),
    }
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "vars": {
                        "ansible_connection": "community.docker.docker",
                        "pypi_common_tls_ca_dir": str(INVENTORY_DIR / "pki"),
                    }
                },
                "pypi_servers": {"hosts": {writer_host: writer}},
                "pypi_replicas": {
                    "hosts": {replica: {"pypi_replica_max_lag": 3, **more.get(replica, {})} for replica in replicas}
                },
                # In the same edit the operator drops the balancers' shared address (pypi_balancer_vip unset): the
                # keepalived the role set up is stopped for good (test_the_shared_address_dropped_stops_keepalived).
                "pypi_balancers": {"hosts": {name: more.get(name, {}) for name in (BALANCER, BALANCER2)}},
                # The client follows: its URL stays the first balancer's, the CA it trusts is the writer's.
                "clients": {"hosts": {CLIENT: {}}},
            }
        )
    )
    return inventory


def test_promote_without_a_replica_named_stops_before_any_change() -> None:
    result = promote()
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, said[-2000:]
    assert 'pypi_replica_promote="" must name the host of pypi_replicas that becomes the writer' in said, said[-2000:]
    for host, numbers in recap(result.stdout).items():
        assert numbers.get("changed", 0) == 0, (host, numbers)
    assert "RUNNING" in on(WRITER, *SUPERVISORCTL, "status", INDEX_PROGRAM).stdout


def test_promote_moves_the_writer_and_loses_no_acknowledged_file(wheel_on_client, tmp_path: Path) -> None:
    # The last upload is acknowledged while the replicas cannot fetch package files (their user may not read the
    # writer's packages directory): the replica to promote lacks it when promote.yml starts, and gets it only once
    # the directory is readable again, while the playbook waits.
    # The replica's nginx port is open in its firewall (firewalld) before the move.
    assert "443/tcp" in on(NEW_WRITER, "firewall-cmd", "--permanent", "--list-ports").stdout.split()
    wheel, project = wheel_on_client("cluster-last-before-promotion")
    name = wheel.rsplit("/", 1)[1]
    code, said = promote_while_behind(wheel, name, tmp_path / "promote.log")
    assert code == 0, said[-4000:]
    assert f"Now move {NEW_WRITER} from pypi_replicas to pypi_servers" in " ".join(said.split())

    # The old writer is retired: its index stopped, so uploads get the balancer's answer until site.yml moves it.
    packages = digests(WRITER, f"{DATA_DIR}/packages")
    assert name in packages
    records = {area: digests(WRITER, f"{DATA_DIR}/{area}") for area in ("owners", "audit")}
    audit = file_bytes(WRITER, f"{DATA_DIR}/audit/audit.jsonl")
    # Its programs are gone for good: supervisorctl update (as at a reboot) starts nothing.
    assert on(WRITER, *SUPERVISORCTL, "update").returncode == 0
    assert on(WRITER, *SUPERVISORCTL, "avail").stdout.strip() == ""
    refused = twine_upload(wheel_on_client("cluster-during-promotion")[0])
    assert refused.returncode != 0 and "503" in refused.stdout + refused.stderr

    moved = site(promoted_inventory(tmp_path))
    assert moved.returncode == 0, moved.stdout[-4000:] + moved.stderr[-2000:]
    assert "PRIVATE KEY" not in moved.stdout + moved.stderr  # the operator's keys, given in the inventory
    # The new writer serves as a replica no more: the port the role opened for its replica's nginx (443) is closed in
    # its firewall, now and at boot; the index's port is open.
    # It serves SSH to its replica now (FOLLOWER): that port stays open and recorded.
    for listing in (("firewall-cmd", "--list-ports"), ("firewall-cmd", "--permanent", "--list-ports")):
        ports = on(NEW_WRITER, *listing).stdout.split()
        assert "443/tcp" not in ports and "8080/tcp" in ports and "22/tcp" in ports, (listing, ports)
    recorded = json.loads(on(NEW_WRITER, "cat", "/var/lib/airgap-pypi-firewall.json").stdout)
    assert set(recorded) == {"index", "replica-ssh"}, recorded

    # Every acknowledged file, byte for byte, on the new writer and on the replica that follows it.
    assert digests(NEW_WRITER, f"{DATA_DIR}/packages") == packages
    assert wait_for(lambda: digests(FOLLOWER, f"{REPLICA_ROOT}/current/packages") == packages, 60)
    for area, files in records.items():
        now = digests(NEW_WRITER, f"{DATA_DIR}/{area}")
        for name, digest in files.items():
            if name != "audit.jsonl":
                assert now.get(name) == digest, (area, name)
    assert file_bytes(NEW_WRITER, f"{DATA_DIR}/audit/audit.jsonl").startswith(audit)

    # The balancer follows: installs of what was uploaded before, and uploads to the new writer.
    target = f"/var/tmp/target-promoted-{project}"
    pip = (f"{CLIENT_BIN}/pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check")
    index = ("--index-url", f"{BALANCER_URL}/simple/")
    done = on(CLIENT, *pip, "--target", target, *index, f"{project}==1.0", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after, _ = wheel_on_client("cluster-after-promotion")
    done = twine_upload(after)
    assert done.returncode == 0, done.stdout + done.stderr
    assert after.rsplit("/", 1)[1] in digests(NEW_WRITER, f"{DATA_DIR}/packages")


KEEPALIVED_CHECK = "/etc/keepalived/airgap-pypi-haproxy-check"


def test_the_shared_address_dropped_stops_keepalived_for_good() -> None:
    # After the previous test's site.yml run, with pypi_balancer_vip no longer set: on both balancers keepalived is
    # stopped and disabled (a reboot does not bring the address back), the role's check is gone, and neither holds
    # the address.
    for balancer in (BALANCER, BALANCER2):
        assert on(balancer, "systemctl", "is-active", "keepalived").stdout.strip() != "active", balancer
        assert on(balancer, "systemctl", "is-enabled", "keepalived").stdout.strip() == "disabled", balancer
        assert on(balancer, "test", "-e", KEEPALIVED_CHECK).returncode == 1, balancer
        assert f" inet {VIP}/" not in on(balancer, "ip", "-o", "-4", "addr", "show").stdout, balancer


# Python on the client: the issuer's common name of the certificate a server presents, verified against the client's
# trust store and for the server's name (argv: host, port).
PEER_ISSUER = """
import socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.create_connection((host, port), timeout=5) as raw:
    with ssl.create_default_context().wrap_socket(raw, server_hostname=host) as tls:
        print(dict(pair[0] for pair in tls.getpeercert()["issuer"])["commonName"])
"""


def test_the_move_put_the_cluster_on_the_operators_own_pki(wheel_on_client) -> None:
    # The promotion's site.yml run also moved HTTPS from the internal CA to the operator's own PKI: a certificate of
    # an issuing CA below the operator's root for the writer, the replica and each balancer, from the inventory. The
    # client role made the client trust the root the writer names (pypi_server_tls_ca_cert), with no client
    # setting; HAProxy checks every server against it.
    for host, port in ((BALANCER, PORT), (BALANCER2, PORT), (FOLLOWER, REPLICA_PORT), (NEW_WRITER, PORT)):
        done = on(CLIENT, "/usr/bin/python3", "-c", PEER_ISSUER, host, str(port))
        assert done.stdout.strip() == OPERATOR_ISSUER, (host, done.stdout + done.stderr)
    # HAProxy verifies the writer and the replica against the operator's root: both in the read pool.
    for server in (NEW_WRITER, FOLLOWER):
        wait_for_state("airgap_pypi_reads", server, "UP", limit=30)
    # Uploads through the balancer reach the replica and install from it.
    wheel, project = wheel_on_client("cluster-operator-pki")
    done = twine_upload(wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    name = wheel.rsplit("/", 1)[1]
    assert wait_for(lambda: name in digests(FOLLOWER, f"{REPLICA_ROOT}/current/packages"), 60)
    pip = (f"{CLIENT_BIN}/pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check")
    index = ("--index-url", f"{replica_url(FOLLOWER)}/simple/")
    done = on(
        CLIENT, *pip, "--target", f"/var/tmp/target-operator-pki-{project}", *index, f"{project}==1.0", timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promote_with_the_writer_lost_makes_the_replicas_last_generation_the_index(
    wheel_on_client, tmp_path: Path
) -> None:
    # After the planned move, NEW_WRITER writes and FOLLOWER copies it. An upload reaches the follower; then the
    # writer is lost for good (its container killed, no stop). promote.yml with pypi_replica_promote_writer_lost
    # never touches it: the follower's last verified generation becomes the data of the next writer, byte for byte.
    # (What site.yml then makes of that data is what it makes of a planned move's, tested above.)
    wheel, _ = wheel_on_client("cluster-before-the-writer-is-lost")
    name = wheel.rsplit("/", 1)[1]
    done = twine_upload(wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert wait_for(lambda: name in digests(FOLLOWER, f"{REPLICA_ROOT}/current/packages"), 60)
    held = digests(FOLLOWER, f"{REPLICA_ROOT}/current/packages")
    assert held == digests(NEW_WRITER, f"{DATA_DIR}/packages"), "the follower does not hold the writer's files"
    docker("kill", NEW_WRITER)

    lost = ("-e", f"pypi_replica_promote={FOLLOWER}", "-e", "pypi_replica_promote_writer_lost=true")
    result = ansible_playbook(PROMOTE, promoted_inventory(tmp_path), *lost, project=PROJECT_DIR, timeout=900)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, said[-4000:]
    assert "its last verified generation; the writer was lost" in said, said[-2000:]
    lost_writer = recap(result.stdout).get(NEW_WRITER, {})
    assert lost_writer.get("unreachable", 0) == 0 and lost_writer.get("failed", 0) == 0, "promote.yml reached for it"
    # The new writer's data: exactly the files the follower served, and its pull stopped for good.
    assert digests(FOLLOWER, f"{DATA_DIR}/packages") == held
    assert on(FOLLOWER, *SUPERVISORCTL, "status", PULL_PROGRAM).returncode != 0
