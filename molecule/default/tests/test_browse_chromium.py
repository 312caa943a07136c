"""The browse and search page in a real browser: Debian's headless Chromium on this machine, driven over the
DevTools protocol (its --remote-debugging-pipe: null-separated JSON on fds 3 and 4, standard library only), pointed
at the index container's address on the scenario's internal network. Screenshots go to .test-results/."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLIENT, NETWORK, PORT, PROJECT_DIR, docker, twine_upload

from scripts.demo_wheel import build_wheel

SERVER = "airgap-pypi-deb12"
RESULTS = PROJECT_DIR / ".test-results"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1280,900",
]


class Browser:
    """A headless Chromium and one page of it, over the DevTools protocol on a pipe."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="airgap-pypi-chromium-")
        # Chromium reads commands from fd 3 and writes answers to fd 4: our stdin and stdout pipes, moved there.
        command = ["sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "sh", binary, *FLAGS]
        command.append(f"--user-data-dir={self.profile}")
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable", session=True)

    def read(self, deadline: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 1 << 20)
                assert chunk, f"Chromium closed the pipe (exit {self.process.poll()})"
                self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\0")
        self.process.stdin.flush()
        deadline = time.monotonic() + 30
        while True:
            answer = self.read(deadline)
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer
                return answer["result"]
            self.events.append(answer)

    def wait_for_event(self, method: str, seconds: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self.read(deadline))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("NOT RUN: no chromium on this machine (scripts/test.sh installs Debian's chromium; it could not)")
    started = Browser(binary)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(URL of the index on its container's address, this run's stamp): three projects named with the stamp,
    whose summaries the search can tell apart."""
    address = docker(
        "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}', SERVER
    ).stdout.strip()
    assert address, f"{SERVER} has no address on {NETWORK}"
    stamp = str(time.time_ns() % 10**9)
    directory = tmp_path_factory.mktemp("browse")
    wheels = [
        build_wheel(directory, f"browse-zebra-{stamp}", "1.0", summary="Striped animals <b>not bold</b>"),
        build_wheel(
            directory,
            f"browse-lion-{stamp}",
            "2.0",
            summary="Big cats of the savanna",
            description="Lions <script>alert(1)</script> live in prides.",
        ),
        build_wheel(directory, f"browse-okapi-{stamp}", "0.3", summary="A forest giraffe, also striped"),
        build_wheel(
            directory,
            f"browse-gecko-{stamp}",
            "1.1",
            summary="Lizards, described in Markdown",
            description=MARKDOWN,
            content_type="text/markdown",
        ),
    ]
    remote = []
    for wheel in wheels:
        docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
        remote.append(f"/var/tmp/{wheel.name}")
    url = f"http://{SERVER}:{PORT}/"
    done = twine_upload(url, *remote)
    assert done.returncode == 0, done.stdout + done.stderr
    for project in ("lion", "gecko"):  # descriptions are rendered after the upload's response: wait for them
        wait_rendered(f"http://{address}:{PORT}/project/browse-{project}-{stamp}/")
    # So is the front page (the lists command): wait until it names the last project uploaded.
    wait_rendered(f"http://{address}:{PORT}/", needle=f"browse-gecko-{stamp}".encode())
    return f"http://{address}:{PORT}", stamp


def wait_rendered(url: str, seconds: float = 60, needle: bytes | None = None) -> None:
    """Until the page no longer says its description is being rendered, or until it holds needle (a bounded
    poll)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + seconds
    while True:
        with opener.open(url, timeout=10) as response:
            body = response.read()
        if (needle in body) if needle is not None else b"this description is being rendered" not in body:
            return
        assert time.monotonic() < deadline, f"{url}: not rendered within {seconds} s"
        time.sleep(0.2)


# A README as projects write them: a heading, code, a badge from the internet and a script that must never run.
MARKDOWN = """# Gecko

Sticky feet. Install with `pip install gecko`.

![build status](https://ci.example.invalid/badge.svg)

<script>document.title = "owned"</script>
<img src="x" onerror="document.title = 'owned'">
"""
ROWS = "Array.from(document.querySelectorAll('#projects tbody tr'))"
VISIBLE = f"{ROWS}.filter(r => !r.hidden).map(r => r.cells[0].textContent)"


def test_the_page_loads_offline_and_search_narrows_the_list(browser: Browser, index: tuple[str, str]) -> None:
    index_url, stamp = index
    browser.navigate(f"{index_url}/")
    assert browser.evaluate("document.title") == "airgap-pypi packages"
    everything = browser.evaluate(VISIBLE)
    assert len(everything) >= 3 and any(name.startswith("browse-zebra-") for name in everything)
    assert f"pip install --index-url {index_url}/simple/ --trusted-host" in browser.evaluate("document.body.innerText")
    browser.screenshot(RESULTS / "browse-all.png")
    # Type into the search box as a person would: the input event narrows the list (every word must match).
    browser.evaluate("document.getElementById('search').focus()")
    browser.call("Input.insertText", {"text": f"Striped {stamp}"}, session=True)
    # The first word fetches the compact search index (search.json, from the index itself): "searching" until then.
    deadline = time.monotonic() + 15
    while browser.evaluate("document.getElementById('count').textContent").startswith("searching"):
        assert time.monotonic() < deadline, "the search index was not read within 15 s"
        time.sleep(0.05)
    narrowed = browser.evaluate(VISIBLE)
    assert sorted(name.split("-")[1] for name in narrowed) == ["okapi", "zebra"], narrowed
    assert browser.evaluate("document.getElementById('count').textContent").startswith("2 of ")
    browser.screenshot(RESULTS / "browse-search.png")
    zebra = f"{ROWS}.find(r => r.cells[0].textContent.startsWith('browse-zebra-'))"
    assert browser.evaluate(f"{zebra}.cells[2].textContent") == "Striped animals <b>not bold</b>"
    assert browser.evaluate(f"{zebra}.cells[2].children.length") == 0, "a summary is text, never markup"
    requested = [
        e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(url.startswith(index_url) for url in requested), requested


def test_a_project_page_shows_files_hashes_and_description(browser: Browser, index: tuple[str, str]) -> None:
    index_url, stamp = index
    browser.navigate(f"{index_url}/")
    link = browser.evaluate(f"document.querySelector('#projects a[href*=\"browse-lion-{stamp}\"]').href")
    browser.navigate(link)
    text = browser.evaluate("document.body.innerText")
    assert "Big cats of the savanna" in text and "2.0" in text and "Requires-Python" in text
    host = index_url.split("//", 1)[1].split(":", 1)[0]
    assert f"pip install --index-url {index_url}/simple/ --trusted-host {host} browse-lion-" in text
    description = browser.evaluate("document.getElementById('description').textContent")
    assert description == "Lions <script>alert(1)</script> live in prides.", "shown as text, never run"
    hashes = browser.evaluate("Array.from(document.querySelectorAll('td.hash')).map(td => td.textContent)")
    assert hashes and all(len(value) == 64 for value in hashes)
    browser.screenshot(RESULTS / "browse-project.png")


def yank_on_server(project: str, version: str, reason: str) -> None:
    """The index's own command, as playbooks/yank.yml runs it (audit record included), on the scenario's host."""
    argv = [
        "/opt/airgap-pypi/pypiserver/bin/python",
        "/etc/airgap-pypi/airgap_pypi_index.py",
        "yank",
        "--packages=/srv/pypi/packages",
        "--tree=/srv/pypi/static",
        "--yanked=/srv/pypi/yanked.json",
        "--user=pypiserver",
        "--audit=/srv/pypi/audit",
        "--client=ansible",
        "--account=browse-test",
        f"--project={project}",
        f"--version={version}",
        f"--reason={reason}",
    ]
    done = docker("exec", SERVER, *argv, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_yanked_releases_and_their_uploaders_show_in_the_browser(browser: Browser, index: tuple[str, str]) -> None:
    index_url, stamp = index
    project = f"browse-okapi-{stamp}"
    reason = "withdrawn: <em>broken</em> wheel"
    yank_on_server(project, "0.3", reason)
    browser.navigate(f"{index_url}/")
    okapi = f"{ROWS}.find(r => r.cells[0].textContent.startsWith('{project}'))"
    assert browser.evaluate(f"{okapi}.querySelector('.yanked').textContent") == f"yanked: {reason}"
    browser.navigate(f"{index_url}/project/{project}/")
    marks = browser.evaluate("Array.from(document.querySelectorAll('.yanked')).map(e => e.textContent)")
    assert marks and all(mark == f"yanked: {reason}" for mark in marks), marks
    assert browser.evaluate("document.querySelectorAll('em').length") == 0, "a reason is text, never markup"
    uploaded = browser.evaluate("Array.from(document.querySelectorAll('.uploaded')).map(e => e.textContent)")
    assert uploaded and all(note.startswith("uploaded by tester on ") for note in uploaded), uploaded
    browser.screenshot(RESULTS / "browse-yanked.png")


def test_a_markdown_description_is_rendered_and_loads_nothing_from_outside(
    browser: Browser, index: tuple[str, str]
) -> None:
    index_url, stamp = index
    browser.events.clear()
    browser.navigate(f"{index_url}/project/browse-gecko-{stamp}/")
    description = "document.getElementById('description')"
    assert browser.evaluate(f"{description}.querySelector('h1').textContent") == "Gecko"
    assert browser.evaluate(f"{description}.querySelector('code').textContent") == "pip install gecko"
    assert browser.evaluate(f"{description}.querySelectorAll('script, [onerror]').length") == 0
    sources = browser.evaluate(f"Array.from({description}.querySelectorAll('img')).map(i => i.src)")
    assert all(source.startswith(index_url) for source in sources), sources
    badge = browser.evaluate(f"{description}.querySelector('a[href^=\"https://ci.example.invalid/\"]').textContent")
    assert badge == "build status", "the remote image became a link with its alt text"
    assert browser.evaluate("document.title") != "owned", "no script of the description ran"
    requested = [
        e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(url.startswith(index_url) for url in requested), requested
    browser.screenshot(RESULTS / "browse-markdown.png")
