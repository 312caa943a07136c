"""The static read path (roles/pypi_server/files/airgap_pypi_index.py): pages against the PEPs, regeneration,
the hash cache, concurrent writers, escaping, content negotiation and auth."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import html.parser
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import ROOT, load_module

from scripts.demo_wheel import build_wheel

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)

# PEP 691 (v1.0) with PEP 700's additions (v1.1: versions, size), as a JSON Schema.
FILE_SCHEMA = {
    "type": "object",
    "required": ["filename", "url", "hashes"],
    "properties": {
        "filename": {"type": "string"},
        "url": {"type": "string"},
        "hashes": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]+$"}},
        "requires-python": {"type": "string"},
        "core-metadata": {"oneOf": [{"type": "boolean"}, {"type": "object"}]},
        "dist-info-metadata": {"oneOf": [{"type": "boolean"}, {"type": "object"}]},
        "yanked": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
        "size": {"type": "integer", "minimum": 0},
    },
}
PROJECT_SCHEMA = {
    "type": "object",
    "required": ["meta", "name", "files", "versions"],
    "properties": {
        "meta": {"type": "object", "required": ["api-version"], "properties": {"api-version": {"const": "1.1"}}},
        "name": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "files": {"type": "array", "items": FILE_SCHEMA},
    },
}
ROOT_SCHEMA = {
    "type": "object",
    "required": ["meta", "projects"],
    "properties": {
        "meta": {"type": "object", "required": ["api-version"]},
        "projects": {"type": "array", "items": {"type": "object", "required": ["name"]}},
    },
}


class Links(html.parser.HTMLParser):
    """The anchors of a page: (attributes, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[dict[str, str | None], str]] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._open = dict(attrs)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.links.append((self._open, data))
            self._open = None


def links_of(page: Path) -> list[tuple[dict[str, str | None], str]]:
    parser = Links()
    parser.feed(page.read_text())
    return parser.links


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA")))


def build_sdist(directory: Path, name: str, version: str, requires_python: str = ">=3.8") -> Path:
    """A small sdist with PKG-INFO (metadata 2.1)."""
    path = directory / f"{name}-{version}.tar.gz"
    info = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: an sdist\n"
        f"Requires-Python: {requires_python}\n"
    )
    with tarfile.open(path, "w:gz") as archive:
        data = info.encode()
        member = tarfile.TarInfo(f"{name}-{version}/PKG-INFO")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    packages = tmp_path / "packages"
    packages.mkdir()
    return packages, tmp_path / "tree"


def test_pages_follow_peps_503_658_691_and_714(dirs: tuple[Path, Path]) -> None:
    packages, tree_dir = dirs
    old = build_wheel(packages, "Foo.Bar", "1.0", requires_python=">=3.8,<4")
    new = build_wheel(packages, "Foo.Bar", "1.1", requires_python=">=3.9")
    sdist = build_sdist(packages, "foo_bar", "1.1")
    other = build_wheel(packages, "other", "0.1")
    (packages / "notes.txt").write_text("not a distribution")
    (packages / ".hidden-1.0.tar.gz").write_text("hidden")
    changed = index.Tree(str(packages), str(tree_dir)).sync()
    assert changed == ["foo-bar", "other"]

    root = links_of(tree_dir / "simple" / "index.html")
    assert [(a["href"], text) for a, text in root] == [("foo-bar/", "foo-bar"), ("other/", "other")]
    page = tree_dir / "simple" / "foo-bar" / "index.html"
    links = links_of(page)
    assert [text for _, text in links] == [old.name, new.name, sdist.name]
    for attrs, text in links:
        href = attrs["href"] or ""
        url, _, fragment = href.partition("#")
        assert url == f"../../packages/{text}"
        assert fragment == f"sha256={sha256(packages / text)}"
        if text.endswith(".whl"):
            metadata = (tree_dir / "metadata" / f"{text}.metadata").read_bytes()
            assert metadata == wheel_metadata(packages / text)
            assert attrs["data-core-metadata"] == f"sha256={hashlib.sha256(metadata).hexdigest()}"
            assert attrs["data-dist-info-metadata"] == attrs["data-core-metadata"]
        else:
            assert "data-core-metadata" not in attrs, "an sdist's PKG-INFO is not served as core metadata"
    # html.parser unescapes: the attribute holds exactly the file's Requires-Python.
    assert [a.get("data-requires-python") for a, _ in links] == [">=3.8,<4", ">=3.9", ">=3.8"]
    assert "&gt;=3.8,&lt;4" in page.read_text()

    document = json.loads((tree_dir / "simple" / "foo-bar" / "index.json").read_text())
    jsonschema.validate(document, PROJECT_SCHEMA)
    assert document["name"] == "foo-bar"
    assert document["versions"] == ["1.0", "1.1"]
    assert [f["filename"] for f in document["files"]] == [text for _, text in links]
    for item in document["files"]:
        assert item["hashes"]["sha256"] == sha256(packages / item["filename"])
        assert item["size"] == (packages / item["filename"]).stat().st_size
    assert document["files"][2]["core-metadata"] is False
    # PEP 714's key only: pip 23.0 (Debian 12's) crashes on a hash dict under "dist-info-metadata".
    assert not any("dist-info-metadata" in item for item in document["files"])
    jsonschema.validate(json.loads((tree_dir / "simple" / "index.json").read_text()), ROOT_SCHEMA)
    assert other.name in (tree_dir / "simple" / "other" / "index.html").read_text()


def test_hashes_are_cached_by_name_size_and_mtime(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    packages, tree_dir = dirs
    for number in range(5):
        build_wheel(packages, f"proj{number}", "1.0")
    tree = index.Tree(str(packages), str(tree_dir))
    tree.sync()
    hashed: list[str] = []
    real = index.file_entry

    def counting(path: str, *args: Any) -> Any:
        hashed.append(Path(path).name)
        return real(path, *args)

    monkeypatch.setattr(index, "file_entry", counting)
    assert index.Tree(str(packages), str(tree_dir)).sync() == []
    assert index.Tree(str(packages), str(tree_dir)).sync(rebuild=True) == [f"proj{n}" for n in range(5)]
    assert hashed == [], "nothing changed: nothing is hashed again, even for a rebuild"
    os.utime(packages / "proj3-1.0-py3-none-any.whl", ns=(1, 1))
    assert tree.sync() == ["proj3"]
    assert hashed == ["proj3-1.0-py3-none-any.whl"]


def test_a_removed_file_disappears_and_an_empty_project_goes(dirs: tuple[Path, Path]) -> None:
    packages, tree_dir = dirs
    keep = build_wheel(packages, "demo", "1.0")
    gone = build_wheel(packages, "demo", "2.0")
    lone = build_wheel(packages, "lonely", "1.0")
    tree = index.Tree(str(packages), str(tree_dir))
    tree.sync()
    gone.unlink()
    lone.unlink()
    assert tree.sync() == ["demo", "lonely"]
    assert [text for _, text in links_of(tree_dir / "simple" / "demo" / "index.html")] == [keep.name]
    assert not (tree_dir / "metadata" / f"{gone.name}.metadata").exists()
    assert not (tree_dir / "simple" / "lonely").exists()
    assert not (tree_dir / "browse" / "lonely.html").exists()
    assert [text for _, text in links_of(tree_dir / "simple" / "index.html")] == ["demo"]
    assert "lonely" not in (tree_dir / "index.html").read_text()


def test_concurrent_writers_of_different_projects_leave_every_page_correct(dirs: tuple[Path, Path]) -> None:
    """Eight processes each add one project's wheel and sync at the same moment (the CLI, as the role runs it)."""
    packages, tree_dir = dirs
    build_wheel(packages, "seed", "1.0")
    index.Tree(str(packages), str(tree_dir)).sync()
    script = (
        "import sys; from pathlib import Path; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "from demo_wheel import build_wheel; import airgap_pypi_index as m\n"
        "build_wheel(Path(sys.argv[3]), sys.argv[5], '1.0')\n"
        "m.Tree(sys.argv[3], sys.argv[4]).sync()\n"
    )
    names = [f"parallel-{n}" for n in range(8)]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(ROOT / "scripts"),
                str(MODULE.parent),
                str(packages),
                str(tree_dir),
                name,
            ]
        )
        for name in names
    ]
    assert [worker.wait(timeout=60) for worker in workers] == [0] * len(names)
    for name in names:
        links = links_of(tree_dir / "simple" / name / "index.html")
        assert len(links) == 1, name
        attrs, text = links[0]
        assert (attrs["href"] or "").endswith(f"#sha256={sha256(packages / text)}")
    listed = [text for _, text in links_of(tree_dir / "simple" / "index.html")]
    assert listed == sorted([*names, "seed"])
    cli = subprocess.run(
        [sys.executable, str(MODULE), "--packages", str(packages), "--tree", str(tree_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cli.stdout.startswith("changed: 0 project(s); 9 file(s)"), cli.stdout
    assert not list(tree_dir.rglob(".tmp-*")), "no temporary file is left behind"


def test_browse_pages_escape_metadata_and_need_nothing_from_outside(dirs: tuple[Path, Path]) -> None:
    packages, tree_dir = dirs
    build_wheel(
        packages,
        "evil",
        "1.0",
        summary='<img src=x onerror="alert(1)">',
        description="<script>alert('x')</script>\n# Not markdown",
    )
    build_wheel(packages, "evil", "2.0b1")
    build_wheel(packages, "plain", "3.0", summary="Plain & simple")
    index.Tree(str(packages), str(tree_dir)).sync()
    front = (tree_dir / "index.html").read_text()
    project = (tree_dir / "browse" / "evil.html").read_text()
    for text in (front, project):
        assert "<img src=x" not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
        assert "http://" not in text.replace("http://HOST:PORT", "") and "https://" not in text
        assert "<link" not in text and "src=" not in text.replace("img src=x", "")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in project
    assert project.count("<script>") == 1, "only the page's own inline script"
    assert "evil</a></td><td>1.0</td>" in front, "the latest final release, not the pre-release"
    assert "Plain &amp; simple" in front
    assert "2.0b1" in project and "1.0" in project


def call(app: Any, path: str, method: str = "GET", **headers: str) -> tuple[str, dict[str, str], bytes]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "wsgi.input": io.BytesIO()}
    environ.update({"HTTP_" + key.upper(): value for key, value in headers.items()})
    got: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, dict(response_headers)

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def upstream(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Stands for pypiserver: says which request reached it."""
    start_response("418 Upstream", [("Content-Type", "text/plain")])
    return [f"upstream {environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()]


def test_wsgi_layer_negotiates_redirects_and_passes_the_rest_on(dirs: tuple[Path, Path]) -> None:
    packages, tree_dir = dirs
    wheel = build_wheel(packages, "My_Project", "1.0")
    app = index.StaticIndex(upstream, str(packages), str(tree_dir))
    app.index.sync()  # as the role and each worker do at start
    status, headers, body = call(app, "/simple/my-project/")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/html") and headers["Vary"] == "Accept"
    assert wheel.name.encode() in body
    status, headers, body = call(app, "/simple/my-project/", accept="application/vnd.pypi.simple.v1+json")
    assert headers["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    jsonschema.validate(json.loads(body), PROJECT_SCHEMA)
    pip_accept = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"
    assert call(app, "/simple/", accept=pip_accept)[1]["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    assert call(app, "/simple/", accept="application/vnd.pypi.simple.v1+html")[1]["Content-Type"] == (
        "application/vnd.pypi.simple.v1+html"
    )
    assert call(app, "/simple/", accept="image/png")[0] == "406 Not Acceptable"
    for path, target in [
        ("/simple/My_Project/", "/simple/my-project/"),
        ("/simple/My.Project", "/simple/my-project/"),
        ("/simple", "/simple/"),
        ("/project/My_Project", "/project/my-project/"),
    ]:
        status, headers, _ = call(app, path)
        assert (status, headers["Location"]) == ("301 Moved Permanently", target), path
    assert call(app, "/simple/nothing-here/")[0] == "404 Not Found"
    status, _, body = call(app, f"/packages/{wheel.name}.metadata")
    assert status == "200 OK" and body == wheel_metadata(wheel)
    status, headers, body = call(app, f"/packages/{wheel.name}")
    assert status == "200 OK" and body == wheel.read_bytes() and headers["Content-Length"] == str(len(body))
    assert call(app, f"/packages/{wheel.name}", method="HEAD")[2] == b""
    assert call(app, "/packages/../tree/state.json")[0] == "404 Not Found"
    assert call(app, "/")[0] == "200 OK" and b'id="search"' in call(app, "/")[2]
    assert b"My_Project" in call(app, "/project/my-project/")[2]
    for method, path in [("GET", "/health"), ("POST", "/RPC2"), ("GET", "/packages/"), ("PUT", "/simple/")]:
        assert call(app, path, method=method)[2] == f"upstream {method} {path}".encode()


def test_a_file_dropped_in_by_hand_is_noticed_by_the_next_read(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree_dir = dirs
    monkeypatch.setattr(index, "RECHECK_SECONDS", 0.0)  # the index looks again at most once a second
    build_wheel(packages, "first", "1.0")
    app = index.StaticIndex(upstream, str(packages), str(tree_dir))
    app.index.sync()
    assert call(app, "/simple/first/")[0] == "200 OK"
    late = build_wheel(packages, "late", "1.0")
    # Just written: it may still be being copied, so a read leaves it out for now (and looks again later).
    assert call(app, "/simple/late/")[0] == "404 Not Found"
    os.utime(late, (1_000_000, 1_000_000))  # as if written completely a while ago
    assert call(app, "/simple/late/")[0] == "200 OK"
    late.unlink()
    assert call(app, "/simple/late/")[0] == "404 Not Found"


def test_a_read_is_never_held_for_a_sync_at_work_and_the_next_read_after_it_lists_the_file(
    dirs: tuple[Path, Path],
) -> None:
    packages, tree_dir = dirs
    build_wheel(packages, "first", "1.0")
    app = index.StaticIndex(upstream, str(packages), str(tree_dir))
    app.index.sync()
    late = build_wheel(packages, "late", "1.0")
    os.utime(late, (1_000_000, 1_000_000))  # whole, as a file copied in by hand with its time kept
    answers: list[str] = []
    with open(tree_dir / ".lock", "a") as lock:  # a sync at work: an upload's, or a rebuild of 100,000 files
        fcntl.flock(lock, fcntl.LOCK_EX)
        reader = threading.Thread(target=lambda: answers.append(call(app, "/simple/first/")[0]), daemon=True)
        reader.start()
        reader.join(timeout=10)
        held = reader.is_alive()
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert not held, "the read waited for the sync at work"
    assert answers == ["200 OK"], "served from the pages as they are"
    # The next read, even within the second between re-checks, looks again.
    assert call(app, "/simple/late/")[0] == "200 OK", "the next read after the sync lists the file"


def test_a_read_that_waited_for_the_lock_does_not_sync_again_what_another_sync_brought_up_to_date(
    dirs: tuple[Path, Path],
) -> None:
    packages, tree_dir = dirs
    build_wheel(packages, "first", "1.0")
    worker = index.Tree(str(packages), str(tree_dir))
    worker.sync()
    late = build_wheel(packages, "late", "1.0")
    os.utime(late, (1_000_000, 1_000_000))
    index.Tree(str(packages), str(tree_dir)).sync()  # another worker's sync, done while this one waited for the lock
    # Every write is a new file renamed in place: a new inode, whatever the clock's granularity.
    written = [tree_dir / "state.json", tree_dir / "stamp.json", tree_dir / index.SYNC_FILE]
    before = [(path.stat().st_ino, path.stat().st_mtime_ns) for path in written]
    assert worker.sync(skip_young=True, if_stale=True) == []
    assert [(path.stat().st_ino, path.stat().st_mtime_ns) for path in written] == before, "nothing written"


def test_reads_need_the_same_auth_as_pypiserver_when_downloads_are_protected(dirs: tuple[Path, Path]) -> None:
    packages, tree_dir = dirs
    wheel = build_wheel(packages, "secret", "1.0")
    app = index.StaticIndex(upstream, str(packages), str(tree_dir), check_password=lambda u, p: (u, p) == ("a", "b"))
    app.index.sync()
    for path in ("/", "/simple/", "/simple/secret/", f"/packages/{wheel.name}", f"/packages/{wheel.name}.metadata"):
        status, headers, _ = call(app, path)
        assert status == "401 Unauthorized" and headers["WWW-Authenticate"] == 'Basic realm="pypi"', path
        wrong = "Basic " + base64.b64encode(b"a:wrong").decode()
        assert call(app, path, authorization=wrong)[0] == "403 Forbidden", path
        right = "Basic " + base64.b64encode(b"a:b").decode()
        assert call(app, path, authorization=right)[0] == "200 OK", path


def test_filenames_are_grouped_like_pypiserver_groups_them() -> None:
    assert index.parse_filename("Foo.Bar-1.0-py3-none-any.whl") == ("Foo.Bar", "1.0")
    assert index.parse_filename("foo_bar-2.0.tar.gz") == ("foo_bar", "2.0")
    assert index.parse_filename("zope.interface-5.4.0.zip") == ("zope.interface", "5.4.0")
    assert index.parse_filename("legacy-name-1.0.tar.bz2") == ("legacy-name", "1.0")
    assert index.parse_filename("notes.txt") is None
    assert index.parse_filename(".partial-1.0.tar.gz") is None
    assert index.normalize("Foo.Bar__baz") == "foo-bar-baz"


def test_help() -> None:
    done = subprocess.run([sys.executable, str(MODULE), "--help"], capture_output=True, text=True, check=True)
    assert "--rebuild" in done.stdout and "--packages" in done.stdout
