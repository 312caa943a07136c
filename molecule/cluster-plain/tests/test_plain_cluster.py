"""The cluster without TLS (pypi_server_tls false, the default): a writer, a replica, a balancer and a client whose
pip pypi_client pointed at the balancer. What differs from the HTTPS cluster scenario: every URL is plain HTTP (the
replica's nginx on port 80, HAProxy's servers and health checks without TLS, the client's pip with trusted-host),
and verify.yml checks it all the same."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from scripts.containers import ansible_playbook, docker, recap
from scripts.demo_wheel import build_wheel

WRITER, REPLICA, BALANCER, CLIENT = (
    f"airgap-pypi-plain-{name}" for name in ("writer", "replica", "balancer", "client")
)
BALANCER_URL = f"http://{BALANCER}:8080"  # the index's port, plain
REPLICA_URL = f"http://{REPLICA}"  # the replica's nginx: port 80 without TLS
WRITER_URL = f"http://{WRITER}:8080"
USER, PASSWORD = "tester", "molecule-test-only"  # the scenario's throwaway account (molecule.yml)
CLIENT_BIN = "/opt/clients/bin"
# As the cluster scenario's bound: a loaded CI machine may take longer than the 2 s goal, which `make bench` reports.
REPLICATION_BOUND = 20.0
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))

# Runs on the client: GET or POST a URL; prints the status, a newline and the body.
FETCH = """
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], method=sys.argv[2], data=b"x" if sys.argv[2] == "POST" else None)
try:
    answer = urllib.request.urlopen(request, timeout=5)
except urllib.error.HTTPError as error:
    answer = error
print(answer.status)
print(answer.read().decode("utf-8", "replace"))
"""


def on(container: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return docker("exec", container, *args, check=False, timeout=timeout)


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    """(status, body) of a request from the client."""
    done = on(CLIENT, "/usr/bin/python3", "-c", FETCH, url, method)
    assert done.returncode == 0, done.stdout + done.stderr
    status, _, body = done.stdout.partition("\n")
    return int(status), body


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fresh wheel uploaded with twine through the balancer; the seconds until the replica served its file."""
    project = f"plain-{time.time_ns() % 10**12}"
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"), project, "1.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    # /tmp is a tmpfs in the container: docker cp would write beneath it, out of sight.
    docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
    twine = on(
        CLIENT,
        f"{CLIENT_BIN}/twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        f"{BALANCER_URL}/",
        "-u",
        USER,
        "-p",
        PASSWORD,
        f"/var/tmp/{wheel.name}",
    )
    assert twine.returncode == 0, twine.stdout + twine.stderr
    start, seen = time.monotonic(), None
    while seen is None and time.monotonic() - start < REPLICATION_BOUND:
        status, page = fetch(f"{REPLICA_URL}/simple/{project}/")
        if status == 200 and wheel.name in page:
            body = on(CLIENT, "/usr/bin/python3", "-c", SHA256, f"{REPLICA_URL}/packages/{wheel.name}").stdout
            if body.strip() == digest:
                seen = round(time.monotonic() - start, 2)
        time.sleep(0.1)
    print(f"seconds from twine's answer until the replica served the file: {seen}")
    return {"project": project, "wheel": wheel.name, "seen": seen}


# Run on a host: the sha256 of what a URL serves; what it serves.
SHA256 = (
    "import hashlib, sys, urllib.request; print(hashlib.sha256(urllib.request.urlopen(sys.argv[1]).read()).hexdigest())"
)
READ = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"


def test_an_upload_through_the_balancer_reaches_the_writer_and_the_replica(uploaded: dict) -> None:
    assert uploaded["seen"] is not None, f"the replica did not serve the upload within {REPLICATION_BOUND} s"
    assert on(WRITER, "test", "-s", f"/srv/pypi/packages/{uploaded['wheel']}").returncode == 0


def test_pip_installs_it_from_the_replica_over_plain_http(uploaded: dict) -> None:
    project = uploaded["project"]
    done = on(
        CLIENT,
        f"{CLIENT_BIN}/pip",
        "install",
        "--isolated",
        "--no-deps",
        "--no-cache-dir",
        "--index-url",
        f"{REPLICA_URL}/simple/",
        "--trusted-host",
        REPLICA,
        "--target",
        f"/var/tmp/target-replica-{project}",
        f"{project}==1.0",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_client_host_installs_through_the_balancer_with_no_flags(uploaded: dict) -> None:
    # pypi_client pointed pip at the balancer over plain HTTP: its URL and the host named as trusted.
    config = on(CLIENT, f"{CLIENT_BIN}/pip", "config", "list").stdout
    assert f"global.index-url='{BALANCER_URL}/simple/'" in config, config
    assert f"global.trusted-host='{BALANCER}'" in config, config
    project = uploaded["project"]
    target = f"/var/tmp/target-configured-{project}"
    done = on(
        CLIENT, f"{CLIENT_BIN}/pip", "install", "--no-deps", "--no-cache-dir", "--target", target, f"{project}==1.0"
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_replica_refuses_an_upload_and_names_the_writer() -> None:
    status, body = fetch(f"{REPLICA_URL}/", method="POST")
    assert status == 405 and f"upload to the writer, {WRITER}" in body, (status, body)


def test_the_balancer_and_the_replica_answer_health_over_plain_http() -> None:
    for url in (f"{BALANCER_URL}/health", f"{REPLICA_URL}/health"):
        status, body = fetch(url)
        assert status == 200, (url, status, body)
    # HAProxy checks both servers over plain HTTP and finds them UP (its statistics, on the balancer's loopback).
    stats = on(BALANCER, "/usr/bin/python3", "-c", READ, "http://127.0.0.1:8404/stats;csv").stdout.splitlines()
    header = stats[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in stats[1:]]
    states = {(row["pxname"], row["svname"]): row["status"] for row in rows if "status" in row}
    assert states.get(("airgap_pypi_reads", REPLICA)) == "UP", states
    assert states.get(("airgap_pypi_reads", WRITER)) == "UP", states
    assert states.get(("airgap_pypi_writer", WRITER)) == "UP", states


def test_verify_checks_the_plain_cluster() -> None:
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    result = ansible_playbook(PROJECT_DIR / "playbooks" / "verify.yml", inventory, project=PROJECT_DIR)
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 0, said[-3000:]
    for host, numbers in recap(result.stdout).items():
        assert numbers.get("changed", 0) == 0, (host, numbers)
    for check in (
        "PASS | replica serves its writer",
        "PASS | every server of the read pool and the writer is UP in HAProxy",
    ):
        assert check in said, (check, said[-3000:])
    assert "FAIL |" not in said, said[-3000:]
