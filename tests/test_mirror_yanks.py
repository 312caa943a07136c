"""build_mirror.py's yank state: the public index's PEP 592 marks of the carried files, read from recorded simple-API
pages (tests/fixtures/simple/: a PEP 691 JSON page and a PEP 503 HTML one), written to yanked.json and listed in
SHA256SUMS. No network: the page fetcher is replaced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from scripts import build_mirror as mirror

PAGES = Path(__file__).resolve().parent / "fixtures" / "simple"
BASE = "/recorded/simple"  # no host: the fetcher is replaced


def recorded(url: str) -> tuple[str, bytes]:
    """The recorded page of the project the URL names: JSON for demo, HTML for other."""
    project = url.removeprefix(BASE + "/").strip("/")
    if project == "demo":
        return mirror.SIMPLE_JSON, (PAGES / "demo.json").read_bytes()
    if project == "other":
        return "text/html", (PAGES / "other.html").read_bytes()
    raise AssertionError(f"no recorded page for {url}")


CARRIED = [
    "demo-1.0-py3-none-any.whl",
    "demo-1.0.tar.gz",
    "demo-2.0-py3-none-any.whl",
    "demo-2.1-py3-none-any.whl",
    "other-0.1-py3-none-any.whl",
    "other-0.2-py3-none-any.whl",
    "other-0.3-py3-none-any.whl",
]


def test_json_page_yanked_key_true_or_a_reason() -> None:
    marks = mirror.yanked_in_json((PAGES / "demo.json").read_bytes())
    assert marks == {
        "demo-2.0-py3-none-any.whl": "broken\nmetadata\u0007 on 3.12",
        "demo-2.1-py3-none-any.whl": "",
        "demo-3.0-py3-none-any.whl": "not carried",
    }


def test_html_page_data_yanked_with_or_without_a_reason() -> None:
    marks = mirror.yanked_in_html((PAGES / "other.html").read_bytes())
    assert marks == {"other-0.2-py3-none-any.whl": "security & data loss", "other-0.3-py3-none-any.whl": ""}


def test_yank_state_of_the_carried_files_only_one_page_a_project_reasons_made_one_line() -> None:
    asked: list[str] = []

    def fetch(url: str) -> tuple[str, bytes]:
        asked.append(url)
        return recorded(url)

    state = mirror.yank_state(CARRIED, fetch, BASE)
    assert asked == [f"{BASE}/demo/", f"{BASE}/other/"], "one page a project, by canonical name"
    assert state == {
        "demo-2.0-py3-none-any.whl": "broken metadata on 3.12",  # one line, no control character
        "demo-2.1-py3-none-any.whl": "",
        "other-0.2-py3-none-any.whl": "security & data loss",
        "other-0.3-py3-none-any.whl": "",
    }, "demo 3.0 is yanked upstream but not carried: not in the state"


def test_a_page_that_is_not_the_simple_api_fails_the_build() -> None:
    with pytest.raises(mirror.BuildError, match="not JSON"):
        mirror.yank_state(["demo-1.0.tar.gz"], lambda url: (mirror.SIMPLE_JSON, b"<html>"), BASE)
    with pytest.raises(mirror.BuildError, match='no "files" list'):
        mirror.yank_state(["demo-1.0.tar.gz"], lambda url: (mirror.SIMPLE_JSON, b"{}"), BASE)


def test_a_page_larger_than_the_bound_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    class Response:
        headers = type("H", (), {"get_content_type": staticmethod(lambda: mirror.SIMPLE_JSON)})()

        def __init__(self) -> None:
            self.asked: list[int] = []

        def read(self, size: int) -> bytes:
            self.asked.append(size)
            return b"x" * size

        def __enter__(self) -> Response:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    response = Response()
    monkeypatch.setattr(mirror.urllib.request, "urlopen", lambda request, timeout: response)
    with pytest.raises(mirror.BuildError, match="larger than 1 MiB"):
        mirror.fetch_page("file:///recorded/simple/demo/", limit=1 << 20)
    assert response.asked == [(1 << 20) + 1], "one bounded read"


def test_yanked_json_is_listed_in_sha256sums_and_checked(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for name in CARRIED:
        (files / name).write_bytes(name.encode())
    path = mirror.write_yanked(tmp_path, mirror.yank_state(CARRIED, recorded, BASE))
    assert not list(tmp_path.glob(".*.tmp")), "written under a temporary name, then renamed"
    sums = mirror.sums_text(tmp_path, [path])
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"{digest}  yanked.json\n" in sums
    (tmp_path / "SHA256SUMS").write_text(sums)
    assert not [p for p in mirror.check(tmp_path) if "yanked" in p]
    path.write_text(json.dumps({"gone-1.0-py3-none-any.whl": ""}))
    problems = mirror.check(tmp_path)
    assert "yanked.json: sha256 mismatch" in problems
    assert "yanked.json: names 'gone-1.0-py3-none-any.whl', not in files/" in problems
