"""The static read path at scale (issue 15), on a few hundred files: a sync after one upload journals only what
changed and writes only that project's pages, the lists naming every project after its response (and by the next
sync when the worker died before); a journal that cannot be used is never trusted; the
front page lists a page of projects and searches a compact index; a long rebuild logs its progress."""

from __future__ import annotations

import fcntl
import gc
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import load_module
from test_static_index import MODULE, call, links_of, upstream

from scripts.demo_wheel import build_wheel

index = load_module("airgap_pypi_index", MODULE)

PROJECTS = 40
VERSIONS = 5


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """200 wheels: 40 projects of 5 versions, indexed."""
    packages = tmp_path / "packages"
    for project in range(PROJECTS):
        for version in range(VERSIONS):
            build_wheel(packages, f"scale-{project:03d}", f"1.0.{version}", summary=f"summary of {project:03d}")
    tree = tmp_path / "tree"
    index.Tree(str(packages), str(tree)).sync()
    return packages, tree


def identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def page_ids(tree: Path) -> dict[str, tuple[int, int]]:
    """Every page of the tree by its path: inode and mtime (a page written again is a new inode)."""
    return {str(p.relative_to(tree)): identity(p) for p in tree.rglob("*.html") if p.is_file()}


def journal_lines(tree: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tree / "state.journal").read_bytes().splitlines()]


def test_an_upload_journals_only_its_own_changes(site: tuple[Path, Path]) -> None:
    packages, tree = site
    base = identity(tree / "state.json")
    before = page_ids(tree)
    wheel = build_wheel(packages, "scale-007", "2.0")
    assert index.Tree(str(packages), str(tree)).sync(project="scale-007") == ["scale-007"]
    assert identity(tree / "state.json") == base, "state.json is not written again for one upload"
    (line,) = journal_lines(tree)
    assert set(line["files"]) == {wheel.name}
    assert set(line["summaries"]) == {"scale-007"}
    assert len(json.dumps(line)) < 2000, "the line holds the change, not the index"
    after = page_ids(tree)
    rewritten = sorted(name for name in before if after[name] != before[name])
    assert rewritten == ["browse/scale-007.html", "simple/scale-007/index.html"], "the lists wait for flush_lists"
    # Another process (a worker) reads state.json and the journal after it.
    state = index.Tree(str(packages), str(tree)).load_state()
    assert state["files"][wheel.name]["version"] == "2.0"
    assert state["summaries"]["scale-007"][1] == "2.0"
    assert len(state["files"]) == PROJECTS * VERSIONS + 1
    assert index.Tree(str(packages), str(tree)).listed(wheel.name)


def lists_name(tree: Path, project: str) -> dict[str, bool]:
    """Whether each list naming every project names project."""
    return {
        "simple/index.html": f'href="{project}/"' in (tree / "simple" / "index.html").read_text(),
        "simple/index.json": {"name": project} in json.loads((tree / "simple" / "index.json").read_text())["projects"],
        "search.json": any(row[0] == project for row in json.loads((tree / "search.json").read_text())["projects"]),
        "index.html": f'href="project/{project}/"' in (tree / "index.html").read_text(),
    }


def test_an_upload_leaves_the_lists_to_after_its_response(site: tuple[Path, Path]) -> None:
    packages, tree = site
    wheel = build_wheel(packages, "scale-000-new", "1.0")  # first by name: on the front page too
    worker = index.Tree(str(packages), str(tree))
    assert worker.sync(project="scale-000-new") == ["scale-000-new"]
    assert wheel.name in (tree / "simple" / "scale-000-new" / "index.html").read_text(), "its page is whole at once"
    assert json.loads((tree / "stamp.json").read_text())["lists_stale"] is True, "marked before the response"
    assert not any(lists_name(tree, "scale-000-new").values()), "no list was written in the upload's sync"
    worker.flush_lists()
    assert all(lists_name(tree, "scale-000-new").values())
    assert "lists_stale" not in json.loads((tree / "stamp.json").read_text())
    ids = page_ids(tree)
    worker.flush_lists()  # nothing left: nothing written again
    assert page_ids(tree) == ids


def tree_lock_free(tree: Path) -> bool:
    """Whether another process could take the tree's lock right now (what an upload's sync waits for)."""
    with open(tree / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_the_lists_are_rendered_without_the_trees_lock_and_follow_a_sync_that_came_between(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree = site
    build_wheel(packages, "scale-000-first", "1.0")
    index.Tree(str(packages), str(tree)).sync(project="scale-000-first")
    renders: list[bool] = []
    real = index.Tree.root_lists

    def root_lists(self: Any, projects: list[str], summaries: dict[str, Any]) -> Any:
        renders.append(tree_lock_free(tree))
        rendered = real(self, projects, summaries)
        if len(renders) == 1:  # another upload's sync, between the first render and the lock
            build_wheel(packages, "scale-000-second", "1.0")
            assert index.Tree(str(packages), str(tree)).sync(project="scale-000-second") == ["scale-000-second"]
        return rendered

    monkeypatch.setattr(index.Tree, "root_lists", root_lists)
    assert index.Tree(str(packages), str(tree)).flush_lists()
    assert renders == [True, True], "rendered without the lock, then again without it for the new state"
    assert all(lists_name(tree, "scale-000-first").values())
    assert all(lists_name(tree, "scale-000-second").values()), "the lists follow the sync that came between"
    assert "lists_stale" not in json.loads((tree / "stamp.json").read_text())


def test_the_upload_response_is_not_held_for_the_lists(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree = site
    # The lists are written by the lists command, a process of its own: never by a thread of the worker, whose
    # requests would wait for its GIL. In this process flush_lists writes nothing.
    in_worker: list[str] = []
    monkeypatch.setattr(index.Tree, "flush_lists", lambda self: in_worker.append("flush_lists") or False)
    monkeypatch.setattr(index.Tree, "write_lists", lambda self, summaries: in_worker.append("write_lists"))
    wheel = build_wheel(packages.parent / "dist", "scale-000-new", "1.0")

    def pypiserver(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """Stands for pypiserver behind the upload checks: the file stored, the upload noted for the audit."""
        (packages / wheel.name).write_bytes(wheel.read_bytes())
        environ[index.AUDIT_KEY] = {"action": "upload", "project": "scale-000-new"}
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    app = index.StaticIndex(pypiserver, str(packages), str(tree))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "SCRIPT_NAME": "", "wsgi.input": io.BytesIO()}
    body = app(environ, lambda status, headers, exc_info=None: None)
    assert wheel.name in (tree / "simple" / "scale-000-new" / "index.html").read_text(), "listed when answered"
    assert not any(lists_name(tree, "scale-000-new").values()), "the response did not wait for the lists"
    body.close()  # type: ignore[attr-defined]  # the server has sent the response
    deadline = time.monotonic() + 10
    while not all(lists_name(tree, "scale-000-new").values()):
        assert time.monotonic() < deadline, "the lists were not written after the response"
        time.sleep(0.02)
    assert in_worker == [], "the worker wrote the lists itself"


# Runs a command of the module in a process of its own, then prints that process's niceness.
NICENESS_AFTER = "\n".join(
    ["import os, sys, airgap_pypi_index as m", "code = m.main(sys.argv[1:])", "print(os.nice(0))", "sys.exit(code)"]
)


@pytest.mark.parametrize(("command", "added"), [("lists", index.BACKGROUND_NICENESS), ("render", 0)])
def test_the_lists_command_runs_at_a_lower_priority_and_the_renderer_does_not(
    site: tuple[Path, Path], command: str, added: int
) -> None:
    """The renderer keeps the index's priority: its children have a wall-clock limit, past which a rendering is
    stored for good."""
    packages, tree = site
    build_wheel(packages, "scale-000-new", "1.0")
    index.Tree(str(packages), str(tree)).sync(project="scale-000-new")
    argv = [command, "--packages", str(packages), "--tree", str(tree)]
    done = subprocess.run(
        [sys.executable, "-c", NICENESS_AFTER, *argv],
        env={**os.environ, "PYTHONPATH": str(MODULE.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == min(19, os.nice(0) + added)
    if command == "lists":  # it wrote what the upload's sync left
        assert all(lists_name(tree, "scale-000-new").values())
        assert "lists_stale" not in json.loads((tree / "stamp.json").read_text())


def test_lists_a_failed_lists_command_left_are_written_when_a_worker_starts_or_a_read_finds_them(
    site: tuple[Path, Path],
) -> None:
    packages, tree = site
    build_wheel(packages, "scale-000-new", "1.0")
    index.Tree(str(packages), str(tree)).sync(project="scale-000-new")  # the lists command never ran, or failed
    app = index.StaticIndex(upstream, str(packages), str(tree))
    assert call(app, "/simple/scale-000-new/")[0] == "200 OK"
    assert not any(lists_name(tree, "scale-000-new").values())
    app.index.startup()  # a worker starting (gunicorn's) kicks the lists command
    deadline = time.monotonic() + 20
    while not all(lists_name(tree, "scale-000-new").values()):
        assert time.monotonic() < deadline, "the lists were not written when the worker started"
        time.sleep(0.05)
    while app.index._flusher is not None:  # its lists command done (a read skips a kick while one is at work)
        assert time.monotonic() < deadline, "the lists command did not end"
        time.sleep(0.05)
    # A worker already running: the first read that finds the mark in the stamp kicks it too.
    build_wheel(packages, "scale-000-newer", "1.0")
    index.Tree(str(packages), str(tree)).sync(project="scale-000-newer")
    other = index.StaticIndex(upstream, str(packages), str(tree))
    assert call(other, "/simple/scale-000-newer/")[0] == "200 OK"
    while not all(lists_name(tree, "scale-000-newer").values()):
        assert time.monotonic() < deadline + 20, "the lists were not written after a read found the mark"
        time.sleep(0.05)
    # The mark goes from the stamp after the lists are written: wait for that lists command to end.
    while other.index._flusher is not None:
        assert time.monotonic() < deadline + 20, "the lists command did not end"
        time.sleep(0.05)
    assert "lists_stale" not in json.loads((tree / "stamp.json").read_text())


def test_a_read_that_finds_the_mark_while_a_lists_command_is_at_work_starts_no_other(site: tuple[Path, Path]) -> None:
    packages, tree = site
    build_wheel(packages, "scale-000-new", "1.0")
    index.Tree(str(packages), str(tree)).sync(project="scale-000-new")
    with open(tree / index.LISTS_RUN_LOCK, "a") as lock:  # a lists command at work (the upload's worker's)
        fcntl.flock(lock, fcntl.LOCK_EX)
        reader = index.StaticIndex(upstream, str(packages), str(tree))  # the other worker
        assert call(reader, "/simple/scale-000-new/")[0] == "200 OK"
        assert reader.index._flusher is None, "a second lists command was started beside the one at work"
        fcntl.flock(lock, fcntl.LOCK_UN)
    # With none at work, the same read has the mark written (the repair of a command that failed).
    again = index.StaticIndex(upstream, str(packages), str(tree))
    assert call(again, "/simple/scale-000-new/")[0] == "200 OK"
    assert again.index._flusher is not None
    deadline = time.monotonic() + 20
    while not all(lists_name(tree, "scale-000-new").values()):
        assert time.monotonic() < deadline, "the lists were not written"
        time.sleep(0.05)


def test_lists_left_by_a_killed_worker_are_written_by_the_next_sync(site: tuple[Path, Path]) -> None:
    packages, tree = site
    build_wheel(packages, "scale-000-new", "1.0")
    index.Tree(str(packages), str(tree)).sync(project="scale-000-new")  # the worker dies before flush_lists
    assert not any(lists_name(tree, "scale-000-new").values())
    assert index.Tree(str(packages), str(tree)).sync(skip_young=True, project="") == []  # a settle: nothing new
    assert all(lists_name(tree, "scale-000-new").values())
    assert "lists_stale" not in json.loads((tree / "stamp.json").read_text())


def test_a_project_gone_leaves_the_lists_at_once(site: tuple[Path, Path]) -> None:
    packages, tree = site
    for wheel in packages.glob("scale_003-*"):
        wheel.unlink()
    worker = index.Tree(str(packages), str(tree))
    assert worker.sync(project="scale-003") == ["scale-003"]
    assert not any(lists_name(tree, "scale-003").values()), "no list names a project that is not served"
    assert "lists_stale" not in json.loads((tree / "stamp.json").read_text())


def test_the_upload_path_lists_the_packages_directory_once(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, _ = site
    walks: list[str] = []
    real_walk = os.walk
    monkeypatch.setattr(index.os, "walk", lambda top, *a, **k: walks.append(os.fspath(top)) or real_walk(top, *a, **k))
    wheel = build_wheel(packages.parent / "dist", "scale-000-new", "1.0")
    with index.one_listing():
        with wheel.open("rb") as handle:
            assert index.check_upload(wheel.name, handle, str(packages)) == "scale-000-new"
        index.remove_leftovers(str(packages))
        assert not index.stored_below([packages], wheel.name)
        (packages / wheel.name).write_bytes(wheel.read_bytes())
        assert index.stored_below([packages], wheel.name), "the file itself is looked for now, not in the listing"
    assert walks == [str(packages)]
    index.stored_below([packages], wheel.name)  # outside one_listing(): listed again
    assert len(walks) == 2


def test_a_parsed_state_is_kept_out_of_full_collections(site: tuple[Path, Path]) -> None:
    """A full collection would walk every entry of the state, stopping the worker's reads meanwhile."""
    packages, tree = site
    gc.unfreeze()
    try:
        state = index.Tree(str(packages), str(tree)).load_state()
        assert state is not None
        tracked = {id(obj) for obj in gc.get_objects()}
        assert id(state["files"]) not in tracked and gc.get_freeze_count() > 0, "frozen when parsed"
    finally:
        gc.unfreeze()


def test_a_worker_applies_only_the_lines_appended_since_it_read(site: tuple[Path, Path]) -> None:
    packages, tree = site
    reader = index.Tree(str(packages), str(tree))
    assert reader.load_state() is not None
    for version in ("3.0", "3.1"):
        wheel = build_wheel(packages, "scale-001", version)
        index.Tree(str(packages), str(tree)).sync(project="scale-001")
        assert reader.listed(wheel.name), "the other process's line is applied"
    assert reader._state[2] == (tree / "state.journal").stat().st_size, "read up to the journal's end, once"
    wheel.unlink()
    assert index.Tree(str(packages), str(tree)).sync() == ["scale-001"]
    assert not reader.listed(wheel.name), "a removal is journalled too"


def test_the_journal_is_folded_into_state_json_once_it_is_large(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree = site
    generation = json.loads((tree / "state.json").read_text())["journal"]
    build_wheel(packages, "scale-002", "2.0")
    index.Tree(str(packages), str(tree)).sync()
    assert len(journal_lines(tree)) == 1
    monkeypatch.setattr(index, "MIN_COMPACT_BYTES", 0)
    monkeypatch.setattr(index, "JOURNAL_SHARE", 1 << 40)  # any line is more than this share of state.json
    build_wheel(packages, "scale-003", "2.0")
    index.Tree(str(packages), str(tree)).sync()
    assert (tree / "state.journal").read_bytes() == b""
    state = json.loads((tree / "state.json").read_text())
    assert state["journal"] != generation, "a new generation: an old journal's lines are never applied to it"
    assert {"scale-002-2.0", "scale-003-2.0"} <= {f"{e['project']}-{e['version']}" for e in state["files"].values()}


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'{"journal": "GEN", "files": {"x-1.0-py3-none-any.whl": {"size": "big"}}}\n',
        b'{"journal": "another", "files": {}}\n',
        b'{"journal": "GEN", "summaries": {"x": [1]}}\n',
        b'{"journal": "GEN", "extra": 1}\n',
        b"[]\n",
    ],
)
def test_a_journal_line_that_cannot_be_used_is_never_trusted(site: tuple[Path, Path], line: bytes) -> None:
    packages, tree = site
    generation = json.loads((tree / "state.json").read_text())["journal"]
    gone = packages / "scale_004-1.0.0-py3-none-any.whl"
    gone.unlink()
    index.Tree(str(packages), str(tree)).sync()  # journalled
    good = (tree / "state.journal").read_bytes()
    with open(tree / "state.journal", "ab") as journal:
        journal.write(line.replace(b"GEN", generation.encode()))
        journal.write(good)  # a good line after a bad one is not applied either
    state = index.Tree(str(packages), str(tree)).load_state()
    assert gone.name not in state["files"] and "x-1.0-py3-none-any.whl" not in state["files"]
    assert "x" not in state["summaries"]
    build_wheel(packages, "scale-005", "2.0")
    assert index.Tree(str(packages), str(tree)).sync() == ["scale-005"]
    assert (tree / "state.journal").read_bytes() == b"", "the next save writes the state whole"
    assert json.loads((tree / "state.json").read_text())["journal"] != generation


def test_a_line_still_being_written_waits(site: tuple[Path, Path]) -> None:
    packages, tree = site
    reader = index.Tree(str(packages), str(tree))
    reader.load_state()
    generation = json.loads((tree / "state.json").read_text())["journal"]
    with open(tree / "state.journal", "ab") as journal:
        journal.write(b'{"journal": "' + generation.encode() + b'", "pend')  # no newline yet
    assert reader.load_state() is not None and reader._state[2] == 0, "not read, not marked bad"
    wheel = build_wheel(packages, "scale-006", "2.0")
    index.Tree(str(packages), str(tree)).sync()  # under the lock, a cut line is a crash's: written whole
    assert reader.listed(wheel.name)


def test_a_journal_that_is_a_link_is_never_followed(site: tuple[Path, Path], tmp_path: Path) -> None:
    packages, tree = site
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    (tree / "state.journal").unlink()
    (tree / "state.journal").symlink_to(outside)
    build_wheel(packages, "scale-008", "2.0")
    index.Tree(str(packages), str(tree)).sync()
    assert outside.read_bytes() == b"", "nothing written through the link"
    assert not (tree / "state.journal").is_symlink(), "replaced by a journal of its own"


def test_a_state_from_before_the_journal_keeps_its_hashes(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree = site
    state = json.loads((tree / "state.json").read_text())
    del state["journal"], state["summaries"]
    (tree / "state.json").write_text(json.dumps(state))
    (tree / "state.journal").unlink()
    monkeypatch.setattr(index, "file_entry", lambda *args: pytest.fail("a cached file was read again"))
    assert index.Tree(str(packages), str(tree)).sync() == []
    assert index.Tree(str(packages), str(tree)).load_state()["summaries"]["scale-000"][1] == "1.0.4"


def test_a_sync_for_one_project_does_not_look_at_the_others_files(site: tuple[Path, Path]) -> None:
    packages, tree = site
    other = packages / "scale_010-1.0.4-py3-none-any.whl"  # the latest: its summary is on the page
    replaced = build_wheel(packages.parent / "new", "scale-010", "1.0.4", summary="replaced in place")
    replaced.replace(other)
    build_wheel(packages, "scale-011", "2.0")
    assert index.Tree(str(packages), str(tree)).sync(project="scale-011") == ["scale-011"]
    assert "replaced in place" not in (tree / "browse" / "scale-010.html").read_text()
    assert index.Tree(str(packages), str(tree)).sync() == ["scale-010"], "the next full sync sees it"
    assert "replaced in place" in (tree / "browse" / "scale-010.html").read_text()


def test_an_upload_through_the_wsgi_layer_syncs_its_project(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree = site

    def stored(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """Stands for UploadChecks and pypiserver: notes what the POST was (as UploadChecks does), then stores."""
        if environ.get("test.noted"):
            environ[index.AUDIT_KEY] = environ["test.noted"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"stored"]

    app = index.StaticIndex(stored, str(packages), str(tree))
    synced: list[Any] = []
    monkeypatch.setattr(app.index, "sync", lambda **kwargs: synced.append(kwargs.get("project")) or [])
    for noted in ({"action": "upload", "project": "scale-012"}, {"action": "remove", "project": "scale-012"}, None):
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "wsgi.input": io.BytesIO(), "test.noted": noted}
        assert b"".join(app(environ, lambda status, headers, exc_info=None: None)) == b"stored"
    assert synced == ["scale-012", None, None], "a removal (or an unknown POST) looks at every file"


def test_the_front_page_lists_a_page_and_searches_a_compact_index(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, tree = site
    monkeypatch.setattr(index, "FRONT_ROWS", 10)
    (tree / "yanked.json").write_text(
        json.dumps({"format": 1, "projects": {"scale-039": {"1.0.4": {"reason": "bad <b>", "when": ""}}}})
    )
    index.Tree(str(packages), str(tree), yanked=str(tree / "yanked.json")).sync(rebuild=True)
    front = (tree / "index.html").read_text()
    shown = [text for attrs, text in links_of(tree / "index.html") if (attrs["href"] or "").startswith("project/")]
    assert shown == [f"scale-{n:03d}" for n in range(10)], "the first FRONT_ROWS by name"
    assert f"10 of {PROJECTS} projects" in front and 'data-total="40"' in front
    rows = json.loads((tree / "search.json").read_text())["projects"]
    assert len(rows) == PROJECTS
    assert rows[0] == ["scale-000", "scale-000", "1.0.4", "summary of 000", VERSIONS, []]
    assert rows[-1] == ["scale-039", "scale-039", "1.0.3", "summary of 039", VERSIONS, ["1.0.4 yanked: bad <b>"]]
    app = index.StaticIndex(upstream, str(packages), str(tree))
    status, headers, body = call(app, "/search.json")
    assert status == "200 OK" and headers["Content-Type"] == "application/json" and json.loads(body)["projects"]
    assert "connect-src 'self'" in call(app, "/")[1]["Content-Security-Policy"], "the search may fetch it"
    # The page stays the same size however many projects there are.
    for project in range(PROJECTS, 2 * PROJECTS):
        build_wheel(packages, f"scale-{project:03d}", "1.0")
    index.Tree(str(packages), str(tree)).sync()
    assert abs(len((tree / "index.html").read_text()) - len(front)) < 100
    assert len(json.loads((tree / "search.json").read_text())["projects"]) == 2 * PROJECTS


def test_a_long_rebuild_logs_its_progress(
    site: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    packages, tree = site
    monkeypatch.setattr(index, "PROGRESS_SECONDS", 0.0)
    (tree / "state.json").unlink()
    with caplog.at_level(logging.INFO, logger="airgap_pypi_index"):
        index.Tree(str(packages), str(tree)).sync()
    messages = [record.getMessage() for record in caplog.records]
    assert f"files checked: 1 of {PROJECTS * VERSIONS} (0 s)" in messages
    assert any(m.startswith(f"files checked: {PROJECTS * VERSIONS} of {PROJECTS * VERSIONS} in ") for m in messages)
    assert any(m.startswith(f"pages written: {PROJECTS} of {PROJECTS} in ") for m in messages)


def test_a_name_added_in_the_same_tick_as_a_sync_is_found_once_the_directory_settles(
    site: tuple[Path, Path],
) -> None:
    packages, tree_dir = site
    tree = index.Tree(str(packages), str(tree_dir))
    build_wheel(packages, "scale-020", "2.0")
    tree.sync(project="scale-020")
    stamp = json.loads((tree_dir / "stamp.json").read_text())
    assert stamp["settle"] > 0, "the directory was young: it is listed again later"
    seen = packages.stat()
    unseen = build_wheel(packages, "scale-021", "2.0")  # in the same tick: the directory's mtime says nothing
    os.utime(unseen, (time.time() - 60, time.time() - 60))  # and written whole (not a file still being written)
    os.utime(packages, ns=(seen.st_atime_ns, seen.st_mtime_ns))
    tree.ensure_fresh()
    assert unseen.name not in (tree_dir / "simple" / "scale-021" / "index.html").read_text()
    tree._settle = time.time() - 1  # as if YOUNG_SECONDS had passed
    (tree_dir / "stamp.json").write_text(json.dumps(dict(stamp, settle=tree._settle)))
    tree.ensure_fresh()
    assert tree._settler is not None, "listed again in a thread of its own"
    tree._settler.join(30)
    assert unseen.name in (tree_dir / "simple" / "scale-021" / "index.html").read_text()


def test_pypiservers_exists_is_answered_by_listing_names(tmp_path: Path) -> None:
    root = tmp_path / "packages"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "sub" / "a-1.0.tar.gz").write_bytes(b"x")
    (root / ".hidden" / "b-1.0.tar.gz").write_bytes(b"x")
    (root / "c-1.0.tar.gz").mkdir()
    (root / "d-1.0.tar.gz").symlink_to(root / "sub" / "a-1.0.tar.gz")
    found = {name: index.stored_below([root], name) for name in ("a-1.0.tar.gz", "b-1.0.tar.gz", "c-1.0.tar.gz")}
    assert found == {"a-1.0.tar.gz": True, "b-1.0.tar.gz": False, "c-1.0.tar.gz": False}
    assert index.stored_below([root], "d-1.0.tar.gz"), "as pypiserver's Path.is_file, a link to a file counts"
    assert not index.stored_below([root], ".x") and not index.stored_below([root], "e-1.0.tar.gz")


def test_an_uploads_other_spellings_are_looked_for_among_its_projects_names_only() -> None:
    names = [
        "Good_Pkg-1.0.tar.gz",
        "good.pkg-1.0.tar.gz",
        "good__pkg-2.0-py3-none-any.whl",
        "goodpkg-1.0.tar.gz",  # a candidate: parsing tells it apart
        "good-pkg-extra-1.0.tar.gz",
        "other-1.0.tar.gz",
        "xgood-pkg-1.0.tar.gz",
        "good-pk-1.0.tar.gz",
    ]
    assert index.names_of_project(names, "good-pkg") == names[:5]
    assert index.names_of_project([], "good-pkg") == []
    assert index.names_of_project(["a.b-1.0.zip", "a-1.0.zip"], "a-b") == ["a.b-1.0.zip"]
    assert index.names_of_project(["c++-1.0.zip", "c-1.0.zip"], "c") == ["c++-1.0.zip", "c-1.0.zip"]
