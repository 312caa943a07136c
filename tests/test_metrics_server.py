"""/metrics in the real stack on loopback: gunicorn with 2 workers, pypiserver behind the upload checks and the
static read path, the role's own templates rendered (scripts/index_stack.py), twine as the client.

Reads, an upload and refused uploads raise the counts by exactly what was done, summed over both workers' files;
/metrics needs an upload account (401 otherwise) unless pypi_server_metrics_public; promtool accepts the output.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, PASSWORD, USER, Stack, auth_header, get, serve, twine_upload

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
Series = tuple[str, tuple[tuple[str, str], ...]]


def scrape(url: str, authorization: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of GET /metrics."""
    request = urllib.request.Request(
        f"{url}/metrics", headers={"Authorization": authorization} if authorization else {}
    )
    try:
        with OPENER.open(request, timeout=20) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def parse(body: bytes) -> dict[Series, float]:
    values: dict[Series, float] = {}
    for line in body.decode().splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            values[(match.group(1), tuple(LABEL.findall(match.group(2) or "")))] = float(match.group(3))
    return values


def value(values: dict[Series, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(labels.items())), 0.0)


def counts(stack: Stack) -> dict[Series, float]:
    status, _, body = scrape(stack.url, auth_header())
    assert status == 200, body[:500]
    return parse(body)


def upload(url: str, filename: str, data: bytes, authorization: str) -> int:
    """A multipart upload as twine sends it, without twine's own checks of the file; the status."""
    boundary = "airgap-pypi-metrics-test"
    body = io.BytesIO()
    for field, text in ((":action", "file_upload"), ("name", filename.split("-", maxsplit=1)[0]), ("version", "1.0")):
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{text}\r\n'.encode())
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(f"{url}/", data=body.getvalue(), method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    request.add_header("Authorization", authorization)
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def worker_requests(stack: Stack, route: str) -> dict[str, int]:
    """Requests of route in each worker's own file (as the workers last wrote them)."""
    found = {}
    for path in sorted((stack.base / "metrics").glob("w-*.json")):
        document = json.loads(path.read_text())
        found[path.name] = sum(count for r, _, count in document["requests"] if r == route)
    return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve(tmp_path_factory.mktemp("metrics-server"), workers=2) as running:
        yield running


def test_reads_and_uploads_are_counted_once_over_both_workers(stack: Stack, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "counted", "1.0")
    before = counts(stack)
    assert twine_upload(stack.url, wheel).returncode == 0
    assert twine_upload(stack.url, wheel).returncode != 0  # pypiserver's 400: the file is there
    assert upload(stack.url, "garbage-1.0-py3-none-any.whl", b"not a zip" * 100, auth_header()) == 400
    wrong = "Basic " + base64.b64encode(f"{USER}:not-{PASSWORD}".encode()).decode()
    assert upload(stack.url, wheel.name, wheel.read_bytes(), wrong) == 403
    reads = {
        "simple_root": "/simple/",
        "simple_project": "/simple/counted/",
        "file": f"/packages/{wheel.name}",
        "metadata": f"/packages/{wheel.name}.metadata",
        "browse": "/project/counted/",
    }
    # Rounds of concurrent reads until both workers have answered some (the kernel hands connections to either).
    rounds = 0
    per_round = 12
    for rounds in range(1, 6):  # noqa: B007 - the count is used after the loop
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda path: get(f"{stack.url}{path}")[0], list(reads.values()) * per_round))
        assert statuses == [200] * len(statuses)
        time.sleep(1.5)  # each worker writes its file within a second
        if sum(1 for n in worker_requests(stack, "simple_project").values() if n > 0) >= 2:
            break
    spread = worker_requests(stack, "simple_project")
    assert sum(1 for n in spread.values() if n > 0) == 2, f"one worker answered all of {rounds} rounds: {spread}"
    deadline = time.monotonic() + 15
    while True:  # at most 15 s: the other worker's file is at most a second behind
        after = counts(stack)
        done = all(
            value(after, "airgap_pypi_requests_total", route=route, code="200")
            - value(before, "airgap_pypi_requests_total", route=route, code="200")
            == rounds * per_round
            for route in reads
        )
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for route in reads:
        grown = value(after, "airgap_pypi_requests_total", route=route, code="200") - value(
            before, "airgap_pypi_requests_total", route=route, code="200"
        )
        assert grown == rounds * per_round, (route, grown, spread)
        histogram = "airgap_pypi_request_duration_seconds_count"
        assert value(after, histogram, route=route) - value(before, histogram, route=route) == rounds * per_round
    assert value(after, "airgap_pypi_metrics_workers") == 2
    assert value(after, "airgap_pypi_metrics_partial") == 0, "read under the directory's lock"

    def grown(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grown("airgap_pypi_uploads_accepted_total") == 1
    assert grown("airgap_pypi_uploaded_bytes_total") == wheel.stat().st_size
    refused = {
        r: grown("airgap_pypi_uploads_refused_total", reason=r) for r in ("bad_archive", "exists", "unauthorized")
    }
    assert refused == {"bad_archive": 1, "exists": 1, "unauthorized": 1}
    assert grown("airgap_pypi_requests_total", route="upload", code="200") == 1
    assert value(after, "airgap_pypi_index_projects") >= 1 and value(after, "airgap_pypi_index_files") >= 1
    assert time.time() - 300 < value(after, "airgap_pypi_last_sync_timestamp_seconds") <= time.time() + 1


def test_metrics_need_an_upload_account(stack: Stack) -> None:
    for authorization in (None, "Basic " + base64.b64encode(b"uploader:wrong").decode()):
        status, headers, body = scrape(stack.url, authorization)
        assert status == 401, body
        assert headers.get("WWW-Authenticate") == 'Basic realm="pypi"'
        assert b"airgap_pypi" not in body
    status, headers, body = scrape(stack.url, auth_header())
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert get(f"{stack.url}/simple/")[0] == 200, "reads stay anonymous"


def test_promtool_accepts_the_output(stack: Stack) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("NOT RUN: no promtool on this machine (scripts/ensure_deb_tool.sh promtool prometheus)")
    _, _, body = scrape(stack.url, auth_header())
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (done.stdout + done.stderr).decode()


def test_a_held_directory_lock_never_holds_up_a_scrape_or_a_worker(stack: Stack) -> None:
    """Many scrapes while another reader holds the metrics directory's lock (as a stuck one would): each answers
    at once from the files read without the lock, marked partial, and the workers stay free for reads."""
    whole = counts(stack)
    assert value(whole, "airgap_pypi_metrics_partial") == 0
    lock = os.open(stack.base / "metrics" / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)

        def timed_scrape(_: int) -> tuple[float, int, bytes]:
            started = time.monotonic()
            status, _, body = scrape(stack.url, auth_header())
            return time.monotonic() - started, status, body

        with ThreadPoolExecutor(max_workers=16) as pool:
            scrapes = pool.map(timed_scrape, range(16))
            read_started = time.monotonic()
            assert get(f"{stack.url}/simple/")[0] == 200
            read_took = time.monotonic() - read_started
            answered = list(scrapes)
    finally:
        os.close(lock)
    for took, status, body in answered:
        assert status == 200, body[:500]
        values = parse(body)
        assert value(values, "airgap_pypi_metrics_partial") == 1
        assert took < 1.5, f"a scrape waited {took:.1f} s for the lock"
        for route in ("simple_root", "simple_project"):  # both workers' files read, not this worker's counts only
            assert value(values, "airgap_pypi_requests_total", route=route, code="200") >= value(
                whole, "airgap_pypi_requests_total", route=route, code="200"
            )
    assert read_took < 1.5, f"a read waited {read_took:.1f} s behind the scrapes"
    assert value(counts(stack), "airgap_pypi_metrics_partial") == 0


def test_public_metrics_need_no_password(tmp_path: Path) -> None:
    with serve(tmp_path, workers=2, metrics_public=True) as public:
        status, _, body = scrape(public.url)
        assert status == 200 and b"# TYPE airgap_pypi_requests_total counter" in body
        assert upload(public.url, "x-1.0-py3-none-any.whl", b"x", "Basic eDp5") == 403, "uploads still need one"
