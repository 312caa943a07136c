"""Rendered descriptions (roles/pypi_server/files/airgap_pypi_index.py): readme_renderer from the bundle's wheels
(as in the index's virtualenv) renders each file's description once, when the file arrives; the project page shows
the newest release's, with nothing loaded from outside the index."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, load_module

from scripts.demo_wheel import build_wheel
from scripts.index_stack import locked_wheels

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)

MARKDOWN = """# Demo title

## Usage

Read [the guide](https://docs.example.org/guide).

```python
print("hello")
```
"""
GFM = "text/markdown; charset=UTF-8; variant=GFM"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server lock's wheels unpacked, as the index's virtualenv has them (readme_renderer, nh3, comrak)."""
    directory = tmp_path_factory.mktemp("render-site")
    for wheel in locked_wheels():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(directory)
    return directory


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "packages", tmp_path / "tree"


def sync(site: Path, dirs: tuple[Path, Path], *options: str, first: Path | None = None) -> str:
    """Run the index script's sync in a Python of its own with the bundle's wheels (first: a directory before
    them on the path); its output and log."""
    packages, tree = dirs
    packages.mkdir(exist_ok=True)
    path = [str(first)] if first else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PYTHONPATH"] = os.pathsep.join([*path, str(site)])
    done = subprocess.run(
        [sys.executable, str(MODULE), "--packages", str(packages), "--tree", str(tree), *options],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def build_sdist(directory: Path, name: str, version: str, description: str, content_type: str | None) -> Path:
    """A small .tar.gz sdist whose PKG-INFO has this description (and Description-Content-Type, when given)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}.tar.gz"
    kind = f"Description-Content-Type: {content_type}\n" if content_type else ""
    data = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{kind}\n{description}".encode()
    with tarfile.open(path, "w:gz") as archive:
        member = tarfile.TarInfo(f"{name}-{version}/PKG-INFO")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))
    return path


def description(tree: Path, project: str) -> str:
    """The description part of a project's page."""
    page = (tree / "browse" / f"{project}.html").read_text()
    found = re.search(
        r'<h2>Description</h2>\n<div id="description" class="description">(.*?)</div>\n<h2>', page, re.DOTALL
    )
    assert found, page
    return found.group(1)


def test_markdown_renders_headings_code_and_links(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    wheel = build_wheel(packages, "mdproj", "1.0", description=MARKDOWN, content_type=GFM)
    sync(site, dirs)
    shown = description(tree, "mdproj")
    assert re.search(r"<h1[^>]*>Demo title", shown) and re.search(r"<h2[^>]*>Usage", shown), shown
    assert '<a href="https://docs.example.org/guide" rel="nofollow">the guide</a>' in shown
    assert re.search(r'<pre lang="python">.*print.*hello', shown, re.DOTALL), shown
    assert "could not be rendered" not in shown and "# Demo title" not in shown
    assert (tree / "descriptions" / f"{wheel.name}.html").read_text() == shown


def test_restructuredtext_renders_and_is_the_default_type(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    text = "Demo\n====\n\nSome *emphasis*.\n\n::\n\n    literal = 1\n"
    build_sdist(packages, "typed", "1.0", text, "text/x-rst")
    build_sdist(packages, "untyped", "1.0", text, None)  # no Description-Content-Type: reStructuredText, as PyPI
    sync(site, dirs)
    for project in ("typed", "untyped"):
        shown = description(tree, project)
        assert re.search(r"<h1[^>]*>Demo", shown) and "<em>emphasis</em>" in shown, shown
        assert re.search(r"<pre[^>]*>(<code>)?literal = 1", shown), shown


def test_plain_text_is_shown_escaped_and_preformatted(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    build_wheel(
        packages, "plain", "1.0", description="<b>not bold</b> & *not emphasis*\n  indented", content_type="text/plain"
    )
    sync(site, dirs)
    shown = description(tree, "plain")
    assert shown == '<pre class="description-text">&lt;b&gt;not bold&lt;/b&gt; &amp; *not emphasis*\n  indented</pre>'


def test_scripts_and_event_handlers_are_stripped(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    hostile = (
        '# Hi\n\n<script>alert(1)</script>\n\n<img src="x.png" onerror="alert(2)">\n\n'
        '<a href="javascript:alert(3)" onclick="alert(4)">click</a>\n\n<iframe src="/x"></iframe>\n'
    )
    build_wheel(packages, "hostile", "1.0", description=hostile, content_type=GFM)
    build_sdist(packages, "hostile-rst", "1.0", "Hi\n==\n\n.. raw:: html\n\n   <script>alert(5)</script>\n", None)
    sync(site, dirs)
    for project in ("hostile", "hostile-rst"):
        page = (tree / "browse" / f"{project}.html").read_text()
        shown = description(tree, project)
        assert "<script" not in shown and "onerror" not in shown and "onclick" not in shown, shown
        assert "javascript:" not in shown and "<iframe" not in shown, shown
        assert page.count("<script>") == 1, "only the page's own script"
    assert re.search(r"<h1[^>]*>Hi", description(tree, "hostile"))


def test_remote_images_become_links_or_alt_text(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    readme = (
        "# Badges\n\n![build](https://img.example.org/build.svg)\n\n"
        "[![coverage](http://img.example.org/cov.png)](https://ci.example.org/)\n\n"
        "![cdn](//cdn.example.org/logo.png)\n\n"
        '<img src="https://img.example.org/raw.png" alt="raw html">\n\n'
        '<img src="/\\evil.example.org/x.png" alt="backslash">\n\n'
        "![here](docs/local.png)\n"
    )
    build_wheel(packages, "badges", "1.0", description=readme, content_type=GFM)
    sync(site, dirs)
    page = (tree / "browse" / "badges.html").read_text()
    shown = description(tree, "badges")
    assert not re.search(r"src=\"\s*(https?:|/[/\\])", page), page
    assert '<a href="https://img.example.org/build.svg" rel="nofollow">build</a>' in shown
    assert '<a href="https://img.example.org/raw.png" rel="nofollow">raw html</a>' in shown
    assert "coverage" in shown and "cdn" in shown and "backslash" in shown
    assert '<img src="docs/local.png" alt="here">' in shown, "an image relative to this index stays"
    assert "img-src 'self'" in html.unescape(page) and "default-src 'none'" in html.unescape(page)


def test_a_broken_restructuredtext_is_shown_escaped_with_a_note(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    broken = "Title\n=====\n\n.. no-such-directive:: <b>x</b>\n"
    build_sdist(packages, "broken", "1.0", broken, "text/x-rst")
    sync(site, dirs)
    shown = description(tree, "broken")
    assert shown.startswith('<p class="render-note">this description could not be rendered: ')
    assert "no-such-directive" in shown.split("</p>")[0], "the reason names the problem"
    assert '<pre class="description-text">Title\n=====\n\n.. no-such-directive:: &lt;b&gt;x&lt;/b&gt;\n</pre>' in shown


def test_an_oversized_description_is_not_rendered(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    big = "# Heading\n\n" + "word " * 220_000  # 1.1 MB
    build_wheel(packages, "big", "1.0", description=big, content_type=GFM)
    sync(site, dirs)
    shown = description(tree, "big")
    assert "could not be rendered: it is 1,100,011 bytes, more than 1 MiB" in shown
    assert "<h1" not in shown and "word word" not in shown, "neither rendered nor copied into the page"
    assert "big-1.0-py3-none-any.whl" in (tree / "simple" / "big" / "index.html").read_text(), "still listed"


def test_descriptions_beyond_the_renderers_bounds_are_shown_with_a_note(site: Path, dirs: tuple[Path, Path]) -> None:
    """Inputs whose rendering would hold the sync lock for long (nested raw HTML, a content type full of quoted ";")
    or whose rendering is huge are not rendered (nor kept); the files are still listed."""
    packages, tree = dirs
    build_wheel(packages, "nested", "1.0", description="<div>" * 20_000 + "deep", content_type=GFM)
    build_wheel(packages, "typed", "1.0", description="# Typed", content_type='text/markdown; a="' + ";" * 300)
    build_wheel(packages, "emphasis", "1.0", description="*a* " * 250_000, content_type=GFM)  # 1 MB, 2.75 rendered
    sync(site, dirs)
    assert "could not be rendered: it has more than 10,000 &#x27;&lt;&#x27; characters" in description(tree, "nested")
    assert "could not be rendered: its Description-Content-Type is longer than 256" in description(tree, "typed")
    assert "could not be rendered: rendered, it is more than 2 MiB" in description(tree, "emphasis")
    for project in ("nested", "typed", "emphasis"):
        assert "<div><div>" not in description(tree, project) and "<h1" not in description(tree, project)
        assert f"{project}-1.0-py3-none-any.whl" in (tree / "simple" / project / "index.html").read_text()


def test_a_description_is_rendered_once(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    wheel = build_wheel(packages, "once", "1.0", description=MARKDOWN, content_type=GFM)
    sync(site, dirs)
    stored = tree / "descriptions" / f"{wheel.name}.html"
    before = stored.stat()
    build_wheel(packages, "other", "1.0", description="other", content_type="text/plain")
    sync(site, dirs)
    sync(site, dirs, "--rebuild")
    after = stored.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "rendered again"
    assert "Demo title" in description(tree, "once")
    wheel.unlink()
    sync(site, dirs)
    assert not stored.exists(), "a removed file's description goes with it"


def test_the_newest_release_description_is_shown_and_each_file_rendered_on_arrival(
    site: Path, dirs: tuple[Path, Path]
) -> None:
    packages, tree = dirs
    build_wheel(packages, "versions", "1.0", description="# Old one", content_type=GFM)
    build_wheel(packages, "versions", "2.0", description="# New one", content_type=GFM)
    build_wheel(packages, "versions", "3.0rc1", description="# Pre-release", content_type=GFM)
    sync(site, dirs)
    shown = description(tree, "versions")
    assert "New one" in shown and "Old one" not in shown and "Pre-release" not in shown
    stored = sorted(path.name for path in (tree / "descriptions").iterdir())
    assert stored == [f"versions-{v}-py3-none-any.whl.html" for v in ("1.0", "2.0", "3.0rc1")], "each on arrival"


def test_without_readme_renderer_the_text_is_shown_escaped(site: Path, dirs: tuple[Path, Path], tmp_path: Path) -> None:
    packages, tree = dirs
    missing = tmp_path / "missing"
    (missing / "readme_renderer").mkdir(parents=True)
    (missing / "readme_renderer" / "__init__.py").write_text("raise ImportError('not in this virtualenv')\n")
    build_wheel(packages, "first", "1.0", description="# <b>Title</b>", content_type=GFM)
    build_wheel(packages, "second", "1.0", description="two", content_type=GFM)
    output = sync(site, dirs, first=missing)
    assert output.count("readme_renderer cannot be imported") == 1, output
    assert description(tree, "first") == '<pre class="description-text"># &lt;b&gt;Title&lt;/b&gt;</pre>'
    assert not (tree / "descriptions").exists()
    # The same broken install again: remembered (renderer-broken.json), so no sync queues and rewrites every page.
    again = sync(site, dirs, first=missing)
    assert "changed: 0 project(s)" in again and "readme_renderer cannot be imported" not in again, again
    # The same tree once readme_renderer is there: the next sync writes the pages again, descriptions rendered.
    assert "changed: 2 project(s)" in sync(site, dirs)
    assert re.search(r"<h1[^>]*><b>Title</b>", description(tree, "first")), description(tree, "first")


def test_image_sources_that_leave_the_index() -> None:
    for url in (
        "https://a/x.png",
        "HTTP://a",
        "//a/x",
        "/\\a/x",
        " \thttps://a",
        "data:image/png;base64,AA",
        "ht\ttp://a",
    ):
        assert index.is_remote(url), url
    for url in ("x.png", "docs/a.png", "/packages/a.png", "#top", "?q=1"):
        assert not index.is_remote(url), url
    shown = index.local_images(
        '<p><a href="/x"><img src="https://a/b.png" alt="in &amp; link"></a><img src="data:x"></p>'
    )
    assert shown == '<p><a href="/x">in &amp; link</a></p>', "no link in a link; no link to a data: URL"


def test_the_pages_own_scripts_and_style_are_what_the_policy_allows(dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    build_wheel(packages, "policy", "1.0")
    index.Tree(str(packages), str(tree)).sync()
    for page in (tree / "index.html", tree / "browse" / "policy.html"):
        text = page.read_text()
        policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', text)
        assert policy, text
        allowed = html.unescape(policy.group(1))
        for tag in ("script", "style"):
            body = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL)
            assert body is not None
            digest = base64.b64encode(hashlib.sha256(body.group(1).encode()).digest()).decode()
            assert f"'sha256-{digest}'" in allowed, (page.name, tag)
        assert "unsafe-inline" not in allowed and "default-src 'none'" in allowed


def test_pages_written_by_an_older_release_are_written_again(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    wheel = build_wheel(packages, "upgraded", "1.0", description=MARKDOWN, content_type=GFM)
    sync(site, dirs)
    stored = tree / "descriptions" / f"{wheel.name}.html"
    before = stored.stat()
    state = json.loads((tree / "state.json").read_text())
    del state["pages"]  # as a release before rendered descriptions wrote it
    (tree / "state.json").write_text(json.dumps(state))
    (tree / "browse" / "upgraded.html").write_text("an old page")
    assert "changed: 1 project(s)" in sync(site, dirs)
    assert "Demo title" in description(tree, "upgraded")
    assert "changed: 0 project(s)" in sync(site, dirs), "once"
    assert stored.stat().st_ino == before.st_ino, "the description is not rendered again"


# --- rendering off the upload's path: the render command, its bounded children and its queue -------------------

DEEP = ">" * 30_000 + " deep"  # nested block quotes: about 7 CPU seconds to render, under every size bound


def site_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PYTHONPATH"] = str(site)
    return env


def render(site: Path, dirs: tuple[Path, Path], *options: str) -> subprocess.Popen[str]:
    """The render command on the tree (as a worker starts it), not waited for."""
    packages, tree = dirs
    command = [sys.executable, str(MODULE), "render", "--packages", str(packages), "--tree", str(tree), *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=site_env(site))


def queue(tree: Path) -> list[str]:
    """The descriptions queued (state.json with its journal, as a sync reads them)."""
    state = index.Tree(str(tree.parent / "packages"), str(tree)).load_state()
    return state["pending"] if state else []


def children(pid: int, seconds: float = 20) -> list[int]:
    """The children of a process, once it has one (a bounded wait)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if found:
            return [int(child) for child in found]
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child within {seconds} s")


def test_a_sync_queues_descriptions_and_shows_the_text_until_rendered(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    wheel = build_wheel(packages, "queued", "1.0", description="# <b>Queued</b>", content_type=GFM)
    sync(site, dirs, "--no-render")
    assert queue(tree) == [wheel.name]
    assert description(tree, "queued") == (
        '<p class="render-note">this description is being rendered; it is shown as text until then</p>\n'
        '<pre class="description-text"># &lt;b&gt;Queued&lt;/b&gt;</pre>'
    )
    assert not (tree / "descriptions" / f"{wheel.name}.html").exists()
    done = render(site, dirs)
    out, err = done.communicate(timeout=60)
    assert json.loads(out) == {"rendered": 1, "turn": True}, err
    assert re.search(r"<h1[^>]*><b>Queued</b>", description(tree, "queued")), description(tree, "queued")
    assert queue(tree) == []


def test_a_description_past_the_cpu_limit_is_shown_as_text_with_the_limit(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    wheel = build_wheel(packages, "deep", "1.0", description=DEEP, content_type=GFM)
    build_wheel(packages, "after", "1.0", description="# After", content_type=GFM)
    sync(site, dirs, "--cpu-seconds=1")  # the note, not the wall-clock time, shows the stop: 2 cores shared
    shown = description(tree, "deep")
    assert shown.startswith(
        '<p class="render-note">this description could not be rendered: its rendering took more than 1 CPU seconds'
    ), shown
    assert f'<pre class="description-text">{">".replace(">", "&gt;") * 30_000} deep</pre>' in shown
    assert "<blockquote" not in shown
    assert (tree / "descriptions" / f"{wheel.name}.html").read_text() == shown, "stored: never rendered again"
    assert re.search(r"<h1[^>]*>After", description(tree, "after")), "the queue goes on after it"


def test_a_description_past_the_wall_clock_limit_is_killed(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    build_wheel(packages, "slow", "1.0", description=DEEP, content_type=GFM)
    sync(site, dirs, "--cpu-seconds=60", "--wall-seconds=1")  # unstopped, it renders in about 7 CPU seconds
    assert "its rendering took more than 1 seconds (the limit)" in description(tree, "slow")
    assert not [path for path in (tree / "descriptions").iterdir() if path.name.startswith(".tmp-")]


def test_a_description_past_the_memory_limit_is_shown_as_text_with_the_limit(
    site: Path, dirs: tuple[Path, Path]
) -> None:
    packages, tree = dirs
    build_wheel(packages, "greedy", "1.0", description=DEEP, content_type=GFM)  # about 100 MiB of syntax tree
    sync(site, dirs, "--memory-mb=64", "--cpu-seconds=60")
    shown = description(tree, "greedy")
    assert "could not be rendered: its rendering needed more than 64 MiB of memory (the limit)" in shown, shown[:300]
    assert "<blockquote" not in shown


def test_a_renderer_killed_mid_way_leaves_no_html_and_a_restart_takes_the_queue(
    site: Path, dirs: tuple[Path, Path]
) -> None:
    """The renderer killed (an out-of-memory kill picks it, say) while its child renders a minute-long description:
    no HTML, still queued, and the next renderer gets its turn at once although the orphaned child still runs (it
    holds none of the renderer's locks)."""
    packages, tree = dirs
    wheel = build_wheel(packages, "killed", "1.0", description=">" * 100_000 + " deep", content_type=GFM)
    sync(site, dirs, "--no-render")
    renderer = render(site, dirs, "--cpu-seconds=120", "--wall-seconds=120")
    (child,) = children(renderer.pid)
    restarted = None
    try:
        time.sleep(0.5)  # rendering, well before its limits
        renderer.kill()
        renderer.wait(timeout=10)
        stored = tree / "descriptions" / f"{wheel.name}.html"
        assert not stored.exists(), "no partial HTML"
        leftovers = [path.name for path in tree.rglob("*") if path.name.startswith(".tmp-")]
        assert leftovers == [], leftovers
        assert queue(tree) == [wheel.name], "still queued"
        assert "this description is being rendered" in description(tree, "killed")
        assert Path(f"/proc/{child}").exists(), "the orphaned child still renders"
        restarted = render(site, dirs, "--cpu-seconds=1")
        out, err = restarted.communicate(timeout=30)
    finally:
        for process in (renderer, restarted):
            if process is not None:
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    assert json.loads(out) == {"rendered": 1, "turn": True}, err
    assert "its rendering took more than 1 CPU seconds (the limit)" in description(tree, "killed")
    assert queue(tree) == []


def test_a_rendering_child_killed_by_a_signal_ends_as_text_with_a_note(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    wheel = build_wheel(packages, "signalled", "1.0", description=DEEP, content_type=GFM)
    sync(site, dirs, "--no-render")
    renderer = render(site, dirs, "--cpu-seconds=60")
    try:
        (child,) = children(renderer.pid)
        os.kill(child, signal.SIGTERM)  # the child dies (an out-of-memory kill, a crash) before it wrote anything
        out, err = renderer.communicate(timeout=30)
    finally:
        renderer.kill()
    assert json.loads(out) == {"rendered": 1, "turn": True}, err
    shown = (tree / "descriptions" / f"{wheel.name}.html").read_text()
    assert shown.startswith(
        '<p class="render-note">this description could not be rendered: the renderer stopped (signal 15)'
    )
    assert "<blockquote" not in shown and "&gt;&gt;&gt; deep" not in shown[:200]


def wait_lock_held(tree: Path, seconds: float = 30) -> bool:
    """Whether another process holds the tree's wait lock (RENDER_WAIT_LOCK) within seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lock = tree / ".render-wait.lock"
        if lock.exists():
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        time.sleep(0.05)
    return False


def test_one_renderer_works_on_a_tree_and_at_most_one_waits(site: Path, dirs: tuple[Path, Path]) -> None:
    packages, tree = dirs
    build_wheel(packages, "busy", "1.0", description=DEEP, content_type=GFM)
    build_wheel(packages, "later", "1.0", description="# Later", content_type=GFM)
    sync(site, dirs, "--no-render")
    working = render(site, dirs, "--cpu-seconds=2")
    waiting = extra = None
    try:
        children(working.pid)  # it has its turn and renders
        waiting = render(site, dirs)
        # The second has taken the place of the one waiting once it holds the wait lock (its start takes longer on
        # a loaded machine: polled, not slept on).
        assert wait_lock_held(tree), "the second renderer did not take the wait lock within 30 s"
        extra = render(site, dirs)
        out, err = extra.communicate(timeout=20)
        assert json.loads(out) == {"rendered": 0, "turn": False}, err
        assert waiting.poll() is None, "the second waits for its turn"
        assert json.loads(working.communicate(timeout=60)[0]) == {"rendered": 2, "turn": True}
        assert json.loads(waiting.communicate(timeout=60)[0]) == {"rendered": 0, "turn": True}
    finally:
        for process in (working, waiting, extra):
            if process is not None:
                process.kill()
    assert re.search(r"<h1[^>]*>Later", description(tree, "later"))


def test_a_child_s_output_is_read_only_up_to_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent reads at most 2 MiB of a child's output (a renderer that ignores its own bound is cut off and
    killed), and a child that writes less is read whole."""
    monkeypatch.setattr(index, "render_description", lambda text, kind: "x" * (3 << 20))
    limits = index.RenderLimits(cpu_seconds=20, memory_mb=1024, wall_seconds=20)
    shown = index.render_in_child("# text", None, limits)
    assert shown.startswith('<p class="render-note">this description could not be rendered: rendered, it is more')
    assert "xxxx" not in shown and shown.endswith('<pre class="description-text"># text</pre>')
    monkeypatch.setattr(index, "render_description", lambda text, kind: "y" * (1 << 20))
    assert index.render_in_child("# text", None, limits) == "y" * (1 << 20)


def test_render_limits_out_of_range_stop_the_run_naming_them() -> None:
    filters = load_module("pypi_server_filters", ROOT / "roles" / "pypi_server" / "filter_plugins" / "pypi_server.py")
    found = filters.pypi_server_problems(
        {"pypi_server_render_cpu_seconds": 0, "pypi_server_render_memory_mb": 32, "pypi_server_render_wall_seconds": 10}
    )
    assert found == [
        "pypi_server_render_cpu_seconds=0: must be 1-3600 (CPU seconds per description rendering)",
        "pypi_server_render_memory_mb=32: must be 64-65536 (MiB of address space per description rendering)",
    ]


def test_the_renderer_starts_once_the_upload_response_is_sent_not_before(
    dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On two cores the renderer's start (Python, readme_renderer) would slow the response it ran beside: the
    WSGI layer starts it from the body's close(), which the server calls after the response is sent; an upload
    that leaves nothing to render starts none."""
    packages, tree = dirs
    packages.mkdir()
    started: list[str] = []
    monkeypatch.setattr(index.Tree, "start_renderer", lambda self: started.append(self.tree))
    arriving = [
        build_wheel(tmp_path / "dist", "plain", "1.0"),
        build_wheel(tmp_path / "dist", "described", "1.0", description=MARKDOWN, content_type=GFM),
    ]

    def pypiserver(environ: dict[str, object], start_response: object) -> list[bytes]:
        """Stands for pypiserver's upload: the next arriving file is stored."""
        wheel = arriving.pop(0)
        (packages / wheel.name).write_bytes(wheel.read_bytes())
        start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
        return [b""]

    app = index.StaticIndex(pypiserver, str(packages), str(tree))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "SCRIPT_NAME": "", "wsgi.input": io.BytesIO()}
    statuses: list[str] = []
    plain = app(dict(environ), lambda status, headers, exc_info=None: statuses.append(status))
    assert b"".join(plain) == b"" and not hasattr(plain, "close") and started == [], "nothing to render"
    body = app(dict(environ), lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses == ["200 OK", "200 OK"] and started == [], "nothing starts while the response is being written"
    assert b"".join(body) == b"" and started == []
    body.close()  # type: ignore[attr-defined]
    assert started == [str(tree)], "the renderer starts once the response is sent"
