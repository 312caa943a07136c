"""Rendered descriptions in the real stack, on loopback: an upload through twine, pypiserver and gunicorn from the
bundle's wheels (readme_renderer among them) is on its project page rendered when twine returns, under the page's
Content-Security-Policy."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, Stack, serve, twine_upload

README = """# Rendered here

A [link](https://docs.example.org/) and a badge:
![build](https://img.example.org/build.svg)

```python
print("hello")
```
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve(tmp_path_factory.mktemp("render-server")) as running:
        yield running


def project_page(url: str) -> tuple[dict[str, str], str]:
    with OPENER.open(urllib.request.Request(url), timeout=20) as response:
        return dict(response.headers.items()), response.read().decode()


def test_an_upload_is_on_its_page_rendered(stack: Stack, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "rendered-demo", "1.0", description=README, content_type="text/markdown")
    done = twine_upload(stack.url, wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    headers, page = project_page(f"{stack.url}/project/rendered-demo/")
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
