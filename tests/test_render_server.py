"""Rendered descriptions in the real stack, on loopback: an upload through twine, pypiserver and gunicorn from the
bundle's wheels (readme_renderer among them) is on its project page as text with a note when twine returns, and
rendered shortly after (by a render process the worker starts), under the page's Content-Security-Policy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, ROLE, Stack, extract_site, serve, twine_upload

README = """# Rendered here

A [link](https://docs.example.org/) and a badge:
![build](https://img.example.org/build.svg)

```python
print("hello")
```
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # One CPU second per rendering: an ordinary README takes a few hundredths.
    with serve(tmp_path_factory.mktemp("render-server"), render_cpu_seconds=1) as running:
        yield running


def project_page(url: str) -> tuple[dict[str, str], str]:
    with OPENER.open(urllib.request.Request(url), timeout=20) as response:
        return dict(response.headers.items()), response.read().decode()


BEING_RENDERED = "this description is being rendered; it is shown as text until then"


def rendered_page(url: str, done: str, seconds: float = 30) -> tuple[dict[str, str], str]:
    """The page once it no longer says its description is being rendered and done (a pattern) is found in it (a
    bounded poll)."""
    deadline = time.monotonic() + seconds
    while True:
        headers, page = project_page(url)
        if BEING_RENDERED not in page and re.search(done, page):
            return headers, page
        assert time.monotonic() < deadline, f"not rendered within {seconds} s: {page[-3000:]}"
        time.sleep(0.1)


def test_an_upload_is_on_its_page_rendered(stack: Stack, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "rendered-demo", "1.0", description=README, content_type="text/markdown")
    done = twine_upload(stack.url, wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    headers, page = rendered_page(f"{stack.url}/project/rendered-demo/", r"<h1[^>]*>Rendered here")
    assert re.search(r"<h1[^>]*>Rendered here", page), page
    assert '<a href="https://docs.example.org/" rel="nofollow">link</a>' in page
    assert '<a href="https://img.example.org/build.svg" rel="nofollow">build</a>' in page
    assert not re.search(r"src=\"\s*(https?:|//)", page), "nothing loads from outside the index"
    policy = headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in policy and "img-src 'self'" in policy and "unsafe-inline" not in policy
    assert (stack.tree / "descriptions" / f"{wheel.name}.html").is_file()


def test_an_oversized_description_is_stored_unrendered_and_the_upload_works(stack: Stack, tmp_path: Path) -> None:
    big = "# Too big\n\n" + "word " * 220_000
    wheel = build_wheel(tmp_path, "big-readme", "1.0", description=big, content_type="text/markdown")
    done = twine_upload(stack.url, wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (stack.packages / wheel.name).is_file()
    _, page = project_page(f"{stack.url}/project/big-readme/")
    assert "this description could not be rendered: it is 1,100,011 bytes, more than 1 MiB" in page
    assert "Too big" not in page and "word word" not in page


def test_a_hostile_description_does_not_hold_the_upload_and_ends_as_text(stack: Stack, tmp_path: Path) -> None:
    """100,000 nested quotes take about a minute to render: the upload's response does not wait for it, the next
    upload neither, and the description ends as text with the note naming the CPU limit."""
    deep = build_wheel(
        tmp_path, "deep-quotes", "1.0", description=">" * 100_000 + " deep", content_type="text/markdown"
    )
    started = time.monotonic()
    done = twine_upload(stack.url, deep)
    assert done.returncode == 0, done.stdout + done.stderr
    _, page = project_page(f"{stack.url}/project/deep-quotes/")
    assert BEING_RENDERED in page, "the response waited for the rendering"
    assert "&gt;&gt;&gt;&gt; deep</pre>" in page, "shown as text meanwhile"
    other = build_wheel(tmp_path, "next-upload", "1.0", description="# Next", content_type="text/markdown")
    done = twine_upload(stack.url, other)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    _, page = rendered_page(f"{stack.url}/project/deep-quotes/", "could not be rendered")
    assert "this description could not be rendered: its rendering took more than 1 CPU seconds (the limit)" in page
    assert "<blockquote" not in page and "&gt;&gt;&gt;&gt; deep</pre>" in page
    rendered_page(f"{stack.url}/project/next-upload/", r"<h1[^>]*>Next")


def test_descriptions_queued_before_a_restart_are_rendered_after_it(tmp_path: Path) -> None:
    """A worker that starts renders what was queued and not rendered (the index stopped meanwhile)."""
    base = tmp_path / "restarted"
    packages = base / "packages"
    wheel = build_wheel(packages, "queued-demo", "1.0", description=README, content_type="text/markdown")
    site = extract_site(tmp_path / "site")
    for path in (wheel, packages):  # settled long ago: the pages' stamp alone starts no sync when a worker starts
        os.utime(path, (time.time() - 3600,) * 2)
    queued = subprocess.run(
        [
            *(sys.executable, str(ROLE / "files" / "airgap_pypi_index.py"), "--packages", str(packages)),
            *("--tree", str(base / "static"), "--yanked", str(base / "yanked.json"), "--no-render"),
        ],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert queued.stdout.startswith("changed: 1 project(s)"), queued.stdout + queued.stderr
    assert BEING_RENDERED in (base / "static" / "browse" / "queued-demo.html").read_text()
    with serve(base, packages=packages) as restarted:
        rendered_page(f"{restarted.url}/project/queued-demo/", r"<h1[^>]*>Rendered here")
    assert (base / "static" / "descriptions" / f"{wheel.name}.html").is_file()
