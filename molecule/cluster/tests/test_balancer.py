"""One name in front (role pypi_balancer): HAProxy spreads reads over the healthy replicas and the writer, sends
uploads to the writer alone, keeps installs working while a replica stops or falls behind, and refuses uploads with
a message while the writer is down.

How soon an upload reaches the replicas is a goal (issue 15: 2 s), not an assertion: see test_cluster.py."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
import urllib.parse

import pytest
from conftest import (
    BALANCER,
    BALANCER2,
    BALANCER_URL,
    CLIENT,
    CLIENT_BIN,
    DATA_DIR,
    INDEX_PROGRAM,
    PASSWORD,
    PULL_PROGRAM,
    READ_URL,
    REPLICA_TLS,
    REPLICAS,
    SUPERVISORCTL,
    USER,
    VIP,
    VIP_URL,
    WRITER,
    holders,
    on,
    pip_from,
    replica_url,
    server_rows,
    twine_upload,
    upload_and_watch,
    wait_for_holders,
    wait_for_state,
)

from scripts.pki import pem_pair

READS = "airgap_pypi_reads"
WRITES = "airgap_pypi_writer"
INSTALLS = 200
# The install at which the test stops a replica's nginx: traffic reached it before, and goes on after.
STOP_AT = 40


@pytest.fixture(scope="module")
def uploaded(wheel_on_client) -> str:
    """A project uploaded through the balancer, served by every replica: its name."""
    wheel, project = wheel_on_client("cluster-balanced")
    watched = upload_and_watch(wheel, project, limit=30, upload_to=BALANCER_URL)
    assert watched["upload"] == 0, watched["said"]
    print(f"seconds from the upload's answer (through the balancer) until each replica served it: {watched['seen']}")
    assert None not in watched["seen"].values(), watched
    return project


def test_the_balancer_spreads_reads_over_the_replicas_and_the_writer(uploaded: str) -> None:
    # A replica's catch-up after the upload may have taken it out for a moment (longer than the scenario's 3 s
    # bound): every server is back in the pool within seconds.
    for server in (*REPLICAS, WRITER):
        wait_for_state(READS, server, "UP", limit=30)
    wait_for_state(WRITES, WRITER, "UP", limit=30)
    done = pip_from(
        BALANCER, "install", "--no-deps", "--target", f"/var/tmp/target-balanced-{uploaded}", f"{uploaded}==1.0"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Round robin over three servers: of twelve reads, some reach each replica (its nginx's access log).
    marker = f"spread-{time.time_ns()}"
    read = "import sys, urllib.request\nfor _ in range(12): urllib.request.urlopen(sys.argv[1], timeout=5).read()"
    assert on(CLIENT, "/usr/bin/python3", "-c", read, f"{BALANCER_URL}/simple/?{marker}").returncode == 0
    for replica in REPLICAS:
        assert wait_for_log(replica, marker), f"no read reached {replica}"


# pypi_balancer_cache_max_age of the scenario (molecule.yml): seconds HAProxy serves a kept package file.
CACHE_MAX_AGE = 5
# Runs on the client: GET argv[1] argv[2] times (with the Authorization header argv[3] when not empty); prints the
# sha256 of each answer's body.
CLIENT_READS = r"""
import hashlib, json, sys, urllib.request
url, count, authorization = sys.argv[1], int(sys.argv[2]), sys.argv[3]
digests = []
for _ in range(count):
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        digests.append(hashlib.sha256(answer.read()).hexdigest())
print(json.dumps(digests))
"""


def client_reads(url: str, count: int, authorization: str = "") -> list[str]:
    done = on(CLIENT, "/usr/bin/python3", "-c", CLIENT_READS, url, str(count), authorization)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def reads_answered() -> int:
    """The 2xx answers the servers of the reads backend have given through HAProxy (its statistics; health checks
    are not counted)."""
    return sum(int(row["hrsp_2xx"] or 0) for row in server_rows() if row["pxname"] == READS)


def test_a_package_file_reaches_the_servers_once_per_max_age_and_a_page_every_time(uploaded: str) -> None:
    page_url = f"{BALANCER_URL}/simple/{uploaded}/"
    hrefs = re.findall(r'href="([^"]+)"', client_page(page_url))
    assert len(hrefs) == 1 and "#sha256=" in hrefs[0], hrefs
    href, digest = hrefs[0].split("#sha256=")
    file_url = urllib.parse.urljoin(page_url, href)
    assert urllib.parse.urlsplit(file_url).path.startswith("/packages/"), file_url
    # Whatever an earlier read kept has expired.
    time.sleep(CACHE_MAX_AGE + 0.5)

    # Five clients read the file: one read reaches a server, the other four are answered from HAProxy's memory,
    # with the same bytes (the page's sha256).
    before = reads_answered()
    assert client_reads(file_url, 5) == [digest] * 5
    assert reads_answered() - before == 1

    # A page changes with each upload: every read of it reaches a server. (The project's browse page: the replicas'
    # nginx sends it with a validator and without `Vary`, so HAProxy would keep it if the role let it.)
    before = reads_answered()
    assert len(client_reads(f"{BALANCER_URL}/project/{uploaded}/", 5)) == 5
    assert reads_answered() - before == 5

    # A read with credentials is never answered from the cache (nor kept): it reaches a server each time. (HAProxy
    # 2.6 already keeps its cache from such reads; the role's rule says so in the configuration as well.)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    before = reads_answered()
    assert client_reads(file_url, 3, f"Basic {token}") == [digest] * 3
    assert reads_answered() - before == 3

    # Once the kept file is older than pypi_balancer_cache_max_age, the next read reaches a server again: how long
    # a file removed from the index may still be served.
    time.sleep(CACHE_MAX_AGE + 0.5)
    before = reads_answered()
    assert client_reads(file_url, 2) == [digest] * 2
    assert reads_answered() - before == 1


def client_page(url: str) -> str:
    done = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, url)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_log(replica: str, needle: str, limit: float = 10) -> bool:
    """Whether nginx's access log on replica names needle within limit seconds (it writes in batches, 5 s late)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if needle in on(replica, "cat", "/var/log/nginx/access.log").stdout:
            return True
        time.sleep(0.5)
    return False


# Runs on the client: `count` pip installs in a row through the balancer, each into a directory of its own,
# writing how many are done to `progress` after each. pip's own retries are off: a request the balancer fails
# fails the install. Prints {"failed": [[n, output], ...], "seconds": [...]}.
INSTALL_LOOP = r"""
import json, shutil, subprocess, sys, time
pip, index, spec, count, progress = sys.argv[1:6]
failed, seconds = [], []
for n in range(int(count)):
    target = f"/var/tmp/loop-{n}"
    start = time.monotonic()
    done = subprocess.run([pip, "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check", "--quiet",
                           "--retries", "0", "--target", target, "--index-url", index, spec],
                          capture_output=True, text=True, timeout=120)
    seconds.append(round(time.monotonic() - start, 3))
    if done.returncode:
        failed.append([n, (done.stdout + done.stderr)[-1500:]])
    shutil.rmtree(target, ignore_errors=True)
    with open(progress + ".new", "w") as out:
        out.write(str(n + 1))
    shutil.move(progress + ".new", progress)
print(json.dumps({"failed": failed, "seconds": seconds}))
"""


def installs_done(progress: str) -> int:
    done = on(CLIENT, "cat", progress)
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip().isdigit() else 0


def test_a_stopped_replica_costs_no_failed_install_through_the_balancer(uploaded: str) -> None:
    replica = REPLICAS[0]
    progress = f"/var/tmp/installs-{time.time_ns()}"
    argv = [f"{CLIENT_BIN}/pip", f"{BALANCER_URL}/simple/", f"{uploaded}==1.0", str(INSTALLS), progress]
    loop = subprocess.Popen(
        ["docker", "exec", CLIENT, "/usr/bin/python3", "-c", INSTALL_LOOP, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped = False
    try:
        deadline = time.monotonic() + 300
        while installs_done(progress) < STOP_AT and loop.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert loop.poll() is None, "the installs ended before the replica was stopped"
        assert on(replica, "systemctl", "stop", "nginx").returncode == 0
        stopped = True
        print(f"nginx stopped on {replica} after {installs_done(progress)} installs")
        # HAProxy takes it out of the pool while the installs go on.
        print(f"{replica} out of the read pool after {wait_for_state(READS, replica, 'DOWN', limit=20):.1f} s")
        out, err = loop.communicate(timeout=900)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.communicate()
        if stopped:
            on(replica, "systemctl", "start", "nginx")
    assert loop.returncode == 0, err[-3000:]
    result = json.loads(out)
    seconds = sorted(result["seconds"])
    print(f"{len(seconds)} installs, median {seconds[len(seconds) // 2]} s, slowest {seconds[-1]} s")
    assert len(seconds) == INSTALLS
    assert result["failed"] == [], result["failed"][:3]
    # The replica is back in the pool once it serves again.
    wait_for_state(READS, replica, "UP", limit=30)


def test_a_stopped_writer_leaves_reads_working_and_refuses_uploads_with_the_message(
    uploaded: str, wheel_on_client
) -> None:
    wheel, _ = wheel_on_client("cluster-writer-down")
    assert on(WRITER, *SUPERVISORCTL, "stop", INDEX_PROGRAM).returncode == 0
    try:
        wait_for_state(WRITES, WRITER, "DOWN", limit=20)
        target = f"/var/tmp/target-writer-down-{uploaded}"
        done = pip_from(BALANCER, "install", "--no-deps", "--target", target, f"{uploaded}==1.0")
        assert done.returncode == 0, done.stdout + done.stderr
        refused = twine_upload(wheel)
        said = " ".join((refused.stdout + refused.stderr).split())
        assert refused.returncode != 0, said
        assert "503" in said, said
        # twine names the status; the body, as a client without twine gets it:
        status, body = post(BALANCER_URL + "/")
        assert status == 503, (status, body)
        assert f"The package index's writer ({WRITER}) is down" in body, body
        assert "Installs go on from the read replicas" in body, body
    finally:
        assert on(WRITER, *SUPERVISORCTL, "start", INDEX_PROGRAM).returncode == 0
    wait_for_state(WRITES, WRITER, "UP", limit=60)
    done = twine_upload(wheel)
    assert done.returncode == 0, done.stdout + done.stderr


def post(url: str) -> tuple[int, str]:
    """(status, body) of an empty POST from the client."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "request = urllib.request.Request(sys.argv[1], method='POST', data=b'x')\n"
        "try:\n"
        "    answer = urllib.request.urlopen(request, timeout=10)\n"
        "except urllib.error.HTTPError as error:\n"
        "    answer = error\n"
        "print(answer.status if hasattr(answer, 'status') else answer.code)\n"
        "print(answer.read().decode('utf-8', 'replace'))\n"
    )
    done = on(CLIENT, "/usr/bin/python3", "-c", code, url)
    assert done.returncode == 0, done.stderr
    status, _, body = done.stdout.partition("\n")
    return int(status), body


def replica_status(replica: str) -> dict:
    done = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{replica_url(replica)}/replica-status.json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_replica_that_falls_behind_leaves_the_read_pool_until_it_catches_up(wheel_on_client) -> None:
    # The replicas' user may no longer read the writer's package files: the manifest still arrives, the files not.
    packages = f"{DATA_DIR}/packages"
    mode = on(WRITER, "stat", "-c", "%a", packages).stdout.strip()
    assert mode.isdigit(), mode
    wheel, project = wheel_on_client("cluster-behind")
    assert on(WRITER, "chmod", "0750", packages).returncode == 0
    try:
        done = twine_upload(wheel)
        assert done.returncode == 0, done.stdout + done.stderr
        for replica in REPLICAS:
            wait_for_state(READS, replica, "DOWN", limit=30)
            status = replica_status(replica)
            assert status["healthy"] is False, status
            assert status["lag_seconds"] > status["max_lag_seconds"], status
        # Reads go on from the writer, which has the new file.
        done = pip_from(
            BALANCER, "install", "--no-deps", "--target", f"/var/tmp/target-behind-{project}", f"{project}==1.0"
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        on(WRITER, "chmod", mode, packages)
    for replica in REPLICAS:
        print(f"{replica} back in the read pool after {wait_for_state(READS, replica, 'UP', limit=60):.1f} s")
        assert replica_status(replica)["healthy"] is True
    # Back in the pool with the new file.
    wheel_name = wheel.rsplit("/", 1)[1]
    for replica in REPLICAS:
        assert wheel_name in replica_page(replica, project)


def replica_page(replica: str, project: str) -> str:
    done = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{replica_url(replica)}/simple/{project}/")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_stopped_pull_takes_the_replica_out_of_the_pool() -> None:
    replica = REPLICAS[1]
    assert on(replica, *SUPERVISORCTL, "stop", PULL_PROGRAM).returncode == 0
    try:
        wait_for_state(READS, replica, "DOWN", limit=20)
        status = replica_status(replica)
        assert status["healthy"] is False and "not running" in status["reason"], status
    finally:
        assert on(replica, *SUPERVISORCTL, "start", PULL_PROGRAM).returncode == 0
    wait_for_state(READS, replica, "UP", limit=30)


def test_a_client_host_installs_through_the_balancer_with_no_flags(uploaded: str) -> None:
    # pypi_client pointed pip at the balancer (the first host of pypi_balancers), and only at it.
    config = on(CLIENT, f"{CLIENT_BIN}/pip", "config", "list")
    # At the balancers' shared address (pypi_balancer_vip), which survives either balancer.
    assert f"global.index-url='{VIP_URL}/simple/'" in config.stdout, config.stdout + config.stderr
    target = f"/var/tmp/target-configured-{uploaded}"
    done = on(
        CLIENT, f"{CLIENT_BIN}/pip", "install", "--no-deps", "--no-cache-dir", "--target", target, f"{uploaded}==1.0"
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Runs on the client: GET url every 0.1 s for at most `seconds`, or until every answer in the 3 s since the file
# `stop` appeared was 200; prints {"changes": [[seconds since start, status or error name], ...] at each change of the
# answer, "failed": how many GETs failed}.
WATCH = r"""
import json, os, sys, time, urllib.request, urllib.error
url, seconds, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
start, last, since, stopped, changes, failed = time.monotonic(), None, 0.0, None, [], 0
while time.monotonic() - start < seconds:
    try:
        now = urllib.request.urlopen(url, timeout=2).status
    except Exception as error:
        now, failed = type(error).__name__, failed + 1
    if now != last:
        changes.append([round(time.monotonic() - start, 2), now])
        last, since = now, time.monotonic()
    if stopped is None and os.path.exists(stop):
        stopped = time.monotonic()
    if stopped is not None and now == 200 and time.monotonic() - max(since, stopped) >= 3:
        break
    time.sleep(0.1)
print(json.dumps({"changes": changes, "failed": failed}))
"""


def test_the_shared_address_moves_to_the_other_balancer_when_haproxy_stops() -> None:
    # The first balancer of pypi_balancers holds it while its HAProxy answers; the client reads through it.
    assert holders() == [BALANCER]
    done = on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{VIP_URL}/simple/")
    assert done.returncode == 0, done.stderr
    stop = f"/var/tmp/watch-stop-{time.time_ns()}"
    watch = subprocess.Popen(
        ["docker", "exec", CLIENT, "/usr/bin/python3", "-c", WATCH, f"{VIP_URL}/simple/", "25", stop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)
        assert on(BALANCER, "systemctl", "stop", "haproxy").returncode == 0
        print(f"the address moved to {BALANCER2} {wait_for_holders([BALANCER2], limit=20):.1f} s after HAProxy stopped")
        # The reads go on through the second balancer: the watch ends once they have been answered for 3 s more.
        assert on(CLIENT, "touch", stop).returncode == 0
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == 0, err[-2000:]
    finally:
        on(BALANCER, "systemctl", "start", "haproxy")
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    result = json.loads(out)
    print(f"reads through {VIP} while it moved: {result}")
    # Served before, and again after the move: the last answer is a page, from the second balancer.
    assert result["changes"][0][1] == 200 and result["changes"][-1][1] == 200, result
    # Back to the first balancer once its HAProxy answers again (it has the higher priority).
    print(f"back on {BALANCER} after {wait_for_holders([BALANCER], limit=30):.1f} s")
    assert on(CLIENT, "/usr/bin/python3", "-c", READ_URL, f"{VIP_URL}/simple/").returncode == 0


def put_file(container: str, path: str, content: bytes, mode: str) -> None:
    """Replace a file in a container under a temporary name, then rename it (root-owned, mode)."""
    done = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            container,
            "sh",
            "-c",
            f'cat > "$1.new" && chmod {mode} "$1.new" && mv "$1.new" "$1"',
            "-",
            path,
        ],
        input=content,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_a_replica_whose_certificate_the_ca_did_not_issue_leaves_the_read_pool(uploaded: str) -> None:
    # The balancer verifies each server's certificate against the internal CA (verify required): a replica that
    # presents one for its right name, but of another issuer, is never read from, and reads go on elsewhere.
    replica = REPLICAS[1]
    wait_for_state(READS, replica, "UP", limit=30)
    certfile, keyfile = f"{REPLICA_TLS}/server.crt", f"{REPLICA_TLS}/server.key"
    kept = {
        path: subprocess.run(["docker", "exec", replica, "cat", path], capture_output=True, check=True).stdout
        for path in (certfile, keyfile)
    }
    cert_pem, key_pem = (text.encode() for text in pem_pair([replica]))
    try:
        put_file(replica, keyfile, key_pem, "600")
        put_file(replica, certfile, cert_pem, "644")
        assert on(replica, "systemctl", "reload", "nginx").returncode == 0
        wait_for_state(READS, replica, "DOWN", limit=30)
        done = pip_from(
            BALANCER, "install", "--no-deps", "--target", f"/var/tmp/target-untrusted-{uploaded}", f"{uploaded}==1.0"
        )
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        put_file(replica, keyfile, kept[keyfile], "600")
        put_file(replica, certfile, kept[certfile], "644")
        assert on(replica, "systemctl", "reload", "nginx").returncode == 0
    wait_for_state(READS, replica, "UP", limit=60)
