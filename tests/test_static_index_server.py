"""The static read path in the real stack, on loopback: pypiserver and gunicorn from the bundle's wheels, with the
role's own templates rendered, and the toolchain's twine and pip as clients.

Concurrent uploads of different projects from several gunicorn workers, a file on its page the moment twine
returns, pip resolving from the PEP 658 metadata files without downloading the wheel, and removal.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scripts.build_bundle import scrubbed_env
from scripts.containers import wait_for
from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, PASSWORD, USER, get, serve, twine_upload


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """gunicorn (2 gthread workers) serving pypiserver behind the static read path, as the role configures it."""
    with serve(tmp_path_factory.mktemp("static-server")) as stack:
        yield {"url": stack.url, "packages": stack.packages, "log": stack.log, "base": stack.base, "env": stack.env}


def test_concurrent_uploads_are_on_their_pages_when_twine_returns(server: dict[str, object], tmp_path: Path) -> None:
    url = str(server["url"])
    wheels = [build_wheel(tmp_path / "dist", f"concurrent-{n}", "1.0", requires_python=">=3.8") for n in range(6)]

    def upload_then_look(wheel: Path) -> tuple[subprocess.CompletedProcess[str], int, bytes]:
        done = twine_upload(url, wheel)
        project = wheel.name.split("-", 1)[0].replace("_", "-")
        status, body = get(f"{url}/simple/{project}/")  # at once, no retry
        return done, status, body

    with ThreadPoolExecutor(max_workers=len(wheels)) as pool:
        results = list(pool.map(upload_then_look, wheels))
    for wheel, (done, status, body) in zip(wheels, results, strict=True):
        assert done.returncode == 0, done.stdout + done.stderr
        assert status == 200, (wheel.name, body)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert f"{wheel.name}#sha256={digest}".encode() in body
        assert b'data-requires-python="&gt;=3.8"' in body

    # /simple/ names them once the lists command, started right after each response, has written it.
    def listed() -> set[bytes]:
        return set(re.findall(rb'<a href="([^"]+)/">', get(f"{url}/simple/")[1]))

    assert wait_for(lambda: {f"concurrent-{n}".encode() for n in range(6)} <= listed(), 10, step=0.05), listed()

    def named() -> set[str]:
        document = json.loads(get(f"{url}/simple/", accept="application/vnd.pypi.simple.v1+json")[1])
        return {p["name"] for p in document["projects"]}

    assert wait_for(lambda: {f"concurrent-{n}" for n in range(6)} <= named(), 10, step=0.05), named()
    duplicate = twine_upload(url, wheels[0])
    assert duplicate.returncode != 0, "pypiserver still refuses a second upload of the same file"


def test_pip_resolves_from_the_metadata_files_alone(server: dict[str, object], tmp_path: Path) -> None:
    url = str(server["url"])
    wheel = build_wheel(tmp_path, "metadata-only", "2.0")
    assert twine_upload(url, wheel).returncode == 0
    report = tmp_path / "report.json"
    env = scrubbed_env(os.environ)  # the machine's pip configuration must not leak in
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--no-cache-dir", "--ignore-installed"),
            *("--index-url", f"{url}/simple/", "--report", str(report), "metadata-only"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(report.read_text())["install"][0]["metadata"]["version"] == "2.0"
    time.sleep(0.5)  # gunicorn's access log is written after the response
    log = Path(str(server["log"])).read_text()
    metadata_at = log.find(f'GET /packages/{wheel.name}.metadata HTTP/1.1" 200')
    assert metadata_at >= 0, "pip fetched the PEP 658 metadata file (and checked it against the page's hash)"
    wheel_at = log.find(f"GET /packages/{wheel.name} HTTP")
    # pip 24.2 still fetches the chosen wheel after resolving, even with --dry-run; it resolves first.
    assert wheel_at == -1 or metadata_at < wheel_at
    status, body = get(f"{url}/packages/{wheel.name}")
    assert status == 200 and body == wheel.read_bytes()


def test_a_removed_file_leaves_its_page_before_the_response(server: dict[str, object], tmp_path: Path) -> None:
    url = str(server["url"])
    keep = build_wheel(tmp_path, "removable", "1.0")
    drop = build_wheel(tmp_path, "removable", "1.1")
    assert twine_upload(url, keep).returncode == 0
    assert twine_upload(url, drop).returncode == 0
    assert drop.name.encode() in get(f"{url}/simple/removable/")[1]
    form = urllib.parse.urlencode({":action": "remove_pkg", "name": "removable", "version": "1.1"}).encode()
    request = urllib.request.Request(f"{url}/", data=form, method="POST")
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    with OPENER.open(request, timeout=20) as response:
        assert response.status == 200
    status, body = get(f"{url}/simple/removable/")
    assert status == 200 and keep.name.encode() in body and drop.name.encode() not in body
    assert get(f"{url}/packages/{drop.name}.metadata")[0] == 404
    assert get(f"{url}/packages/{drop.name}")[0] == 404


def test_the_browse_page_lists_uploads_and_pypiserver_keeps_the_rest(server: dict[str, object]) -> None:
    url = str(server["url"])
    status, body = get(f"{url}/")
    assert status == 200 and b'id="search"' in body and b"concurrent-0" in body
    assert get(f"{url}/project/Concurrent_0")[0] == 200  # redirected to /project/concurrent-0/
    assert b"Welcome to pypiserver" not in body
    assert get(f"{url}/health")[0] == 200
    assert get(f"{url}/packages/")[0] == 200  # pypiserver's own listing
    anonymous = urllib.request.Request(f"{url}/", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        OPENER.open(anonymous, timeout=20)
    assert refused.value.code == 401


def test_a_file_and_its_metadata_carry_last_modified(server: dict[str, object], tmp_path: Path) -> None:
    # The balancers' HAProxy keeps only answers with a validator, as nginx (a replica, the front server) sends.
    url = str(server["url"])
    wheel = build_wheel(tmp_path, "validated", "1.0")
    assert twine_upload(url, wheel).returncode == 0
    stored = Path(str(server["packages"])) / wheel.name
    for path, expected in ((wheel.name, stored.stat().st_mtime), (f"{wheel.name}.metadata", None)):
        with OPENER.open(f"{url}/packages/{path}", timeout=10) as answer:
            assert answer.status == 200
            modified = answer.headers["Last-Modified"]
        assert modified and modified.endswith(" GMT"), (path, modified)
        seconds = email.utils.parsedate_to_datetime(modified).timestamp()
        if expected is not None:
            assert seconds == int(expected), (path, modified, expected)
