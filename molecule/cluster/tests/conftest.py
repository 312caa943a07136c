"""Shared helpers for the cluster scenario's verify step: a writer, two read replicas, a balancer, a client (real pip
and twine)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from scripts.containers import ansible_playbook, changed_tasks, docker, recap, wait_for  # noqa: F401 - the tests import these
from scripts.demo_wheel import build_wheel

WRITER = "airgap-pypi-cluster-writer"
REPLICAS = ("airgap-pypi-cluster-replica1", "airgap-pypi-cluster-replica2")
CLIENT = "airgap-pypi-cluster-client"
BALANCER = "airgap-pypi-cluster-balancer"
# The writer serves HTTPS (molecule.yml's pypi_server_tls), so the replicas and balancers do too, with certificates of
# the one internal CA that pypi_client put into the client's trust store: every request below verifies them.
BALANCER_URL = f"https://{BALANCER}:8080"
BALANCER2 = "airgap-pypi-cluster-balancer2"
# The address the balancers share with keepalived (molecule.yml's pypi_balancer_vip, on the network's fixed subnet).
VIP = "10.213.47.200"
VIP_URL = f"https://{VIP}:8080"
STATS_URL = "http://127.0.0.1:8404/stats;csv"
INDEX_PROGRAM = "pypiserver"
PRISTINE = "airgap-pypi-cluster-pristine"
USER = "tester"
PASSWORD = "molecule-test-only"  # the scenario's throwaway account (molecule.yml)
PORT = 8080
REPLICA_PORT = 443
WRITER_URL = f"https://{WRITER}:8080"
# The client's system bundle, with the internal CA that pypi_client added (twine reads certifi's otherwise).
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CLIENT_BIN = "/opt/clients/bin"
SUPERVISORCTL = ("/opt/airgap-pypi/supervisor/bin/supervisorctl", "-c", "/etc/supervisor/supervisord.conf")
PULL_PROGRAM = "airgap-pypi-pull"
REPLICA_ROOT = "/srv/pypi-replica"
# Where a replica's nginx reads its certificate and key (role pypi_replica).
REPLICA_TLS = "/etc/airgap-pypi-replica/tls"
REPLICA_HOME = "/var/lib/pypi-replica"
DATA_DIR = "/srv/pypi"
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent if "MOLECULE_INVENTORY_FILE" in os.environ else None
# Paths every running container changes by itself (boot, systemd, Ansible's own temporary files).
IGNORED = re.compile(r"^[ACD] /(root/\.ansible|root/\.ansible_async|tmp|run|var/log|var/tmp|var/lib/systemd)(/|$)")


def on(container: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command in a container (never raises on a non-zero exit)."""
    return docker("exec", container, *args, check=False, timeout=timeout)


def changes_of(container: str) -> set[str]:
    """docker diff of a container, without what any running container changes by itself."""
    return {line for line in docker("diff", container).stdout.splitlines() if not IGNORED.match(line)}


def site(inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """site.yml itself against an inventory."""
    return ansible_playbook(PROJECT_DIR / "site.yml", inventory, *args, project=PROJECT_DIR, timeout=900)


# Runs on the client: twine uploads the wheel to the writer; then, from the moment twine returned, polls every
# replica until its page lists the file and the file it serves has the wheel's sha256 (at most `limit` seconds).
# Prints {"upload": rc, "said": ..., "seen": {replica: seconds or null}}.
UPLOAD_AND_WATCH = r"""
import hashlib, json, subprocess, sys, time, urllib.error, urllib.request
twine, writer_url, user, password, wheel, project, limit, ca_bundle = sys.argv[1:9]
replicas = sys.argv[9:]
name = wheel.rsplit("/", 1)[1]
digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
done = subprocess.run([twine, "upload", "--non-interactive", "--disable-progress-bar", "--repository-url", writer_url,
                       "--cert", ca_bundle, "-u", user, "-p", password, wheel], capture_output=True, text=True)
if done.returncode:
    print(json.dumps({"upload": done.returncode, "said": done.stdout + done.stderr, "seen": {}}))
    sys.exit(0)
start, seen = time.monotonic(), {}
def has(base):
    try:
        page = urllib.request.urlopen(f"{base}/simple/{project}/", timeout=2).read().decode()
        if name not in page:
            return False
        body = urllib.request.urlopen(f"{base}/packages/{name}", timeout=5).read()
        return hashlib.sha256(body).hexdigest() == digest
    except (urllib.error.URLError, OSError):
        return False
while len(seen) < len(replicas) and time.monotonic() - start < float(limit):
    for base in replicas:
        if base not in seen and has(base):
            seen[base] = round(time.monotonic() - start, 3)
    time.sleep(0.05)
print(json.dumps({"upload": 0, "said": "", "seen": {base: seen.get(base) for base in replicas}}))
"""


def replica_url(replica: str) -> str:
    return f"https://{replica}:{REPLICA_PORT}"


@pytest.fixture(scope="session")
def wheel_on_client(tmp_path_factory: pytest.TempPathFactory):
    """A function: build a fresh wheel of a unique project and copy it onto the client; returns (path, project)."""

    def make(prefix: str) -> tuple[str, str]:
        project = f"{prefix}-{time.time_ns() % 10**12}"
        wheel = build_wheel(tmp_path_factory.mktemp("wheel"), project, "1.0")
        # /tmp is a tmpfs in the container: docker cp would write beneath it, out of sight.
        docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
        return f"/var/tmp/{wheel.name}", project

    return make


def upload_and_watch(wheel: str, project: str, limit: float, upload_to: str = WRITER_URL) -> dict:
    """Upload wheel from the client (to the writer, or the balancer), then time each replica until it serves it."""
    argv = [
        f"{CLIENT_BIN}/twine",
        f"{upload_to}/",
        USER,
        PASSWORD,
        wheel,
        project,
        str(limit),
        CA_BUNDLE,
        *(replica_url(replica) for replica in REPLICAS),
    ]
    done = on(CLIENT, "/usr/bin/python3", "-c", UPLOAD_AND_WATCH, *argv, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def pip_from(host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """pip on the client with a replica, or the balancer, as its only index."""
    base = BALANCER_URL if host == BALANCER else replica_url(host)
    return on(
        CLIENT,
        f"{CLIENT_BIN}/pip",
        *args,
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--index-url",
        f"{base}/simple/",
        timeout=300,
    )


def twine_upload(wheel: str) -> subprocess.CompletedProcess[str]:
    """twine upload of a wheel on the client through the balancer."""
    return on(
        CLIENT,
        f"{CLIENT_BIN}/twine",
        "upload",
        "--non-interactive",
        "--disable-progress-bar",
        "--repository-url",
        f"{BALANCER_URL}/",
        "--cert",
        CA_BUNDLE,
        "-u",
        USER,
        "-p",
        PASSWORD,
        wheel,
        timeout=300,
    )


# Python on a container: print the body of the URL in argv[1].
READ_URL = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"


def server_rows() -> list[dict[str, str]]:
    """The servers' rows of HAProxy's CSV statistics on the balancer (not its FRONTEND and BACKEND rows)."""
    done = on(BALANCER, "/usr/bin/python3", "-c", READ_URL, STATS_URL)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
    return [row for row in rows if row.get("svname") not in ("FRONTEND", "BACKEND", None)]


def server_states() -> dict[tuple[str, str], str]:
    """{(backend, server): status} from HAProxy's statistics on the balancer (UP, DOWN, MAINT, ...)."""
    return {(row["pxname"], row["svname"]): row["status"].split()[0] for row in server_rows()}


def wait_for_state(backend: str, server: str, wanted: str, limit: float = 30) -> float:
    """Seconds until HAProxy reports server of backend in state wanted (AssertionError after limit seconds)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if server_states().get((backend, server)) == wanted:
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"{server} of {backend} not {wanted} within {limit} s: {server_states()}")


def holders() -> list[str]:
    """The balancers that hold the shared address now (keepalived adds it to their eth0)."""
    shows = {host: on(host, "ip", "-o", "-4", "addr", "show").stdout for host in (BALANCER, BALANCER2)}
    return [host for host, addresses in shows.items() if f" inet {VIP}/" in addresses]


def wait_for_holders(wanted: list[str], limit: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if holders() == wanted:
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"not held by {wanted} within {limit} s: held by {holders()}")
