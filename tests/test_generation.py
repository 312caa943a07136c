"""Generations of the served tree (roles/pypi_common/files/airgap_pypi_generation.py): the writer's manifest and a
replica's pull with the real rsync, from a local path (the transport over SSH is rsync's own)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tracemalloc
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, load_module

gen = load_module("airgap_pypi_generation", ROOT / "roles" / "pypi_common" / "files" / "airgap_pypi_generation.py")

NO_RSYNC = "NOT RUN: no rsync on this machine (scripts/ensure_deb_tool.sh rsync rsync)"
needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason=NO_RSYNC)


def publish(writer: Path, sequence: int, origin: str = "writer-a") -> dict[str, tuple[int, str]]:
    """The writer's generation.json for what its tree holds now."""
    files = gen.manifest_of(str(writer))
    gen.write_manifest(str(writer), origin, sequence, files)
    return files


def served(replica: Path) -> dict[str, bytes]:
    """What a reader of replica/current sees: every file under it but the manifest."""
    current = replica / "current"
    return {
        str(path.relative_to(current)): path.read_bytes()
        for path in sorted(current.rglob("*"))
        if path.is_file() and path.name != gen.MANIFEST
    }


@pytest.fixture
def writer(tmp_path: Path) -> Path:
    tree = tmp_path / "writer"
    (tree / "simple" / "demo").mkdir(parents=True)
    (tree / "packages").mkdir()
    (tree / "simple" / "index.html").write_text('<a href="demo/">demo</a>')
    (tree / "simple" / "demo" / "index.html").write_text('<a href="../../packages/demo-1.0.tar.gz">demo</a>')
    (tree / "packages" / "demo-1.0.tar.gz").write_bytes(b"sdist one" * 1000)
    return tree


@needs_rsync
def test_an_empty_replica_catches_up_and_serves_exactly_the_writers_files(writer: Path, tmp_path: Path) -> None:
    publish(writer, 1)
    replica = tmp_path / "replica"
    done = gen.pull(str(writer), str(replica))
    assert (done["changed"], done["sequence"], done["hashed"]) == (True, 1, 3)
    assert served(replica) == {
        str(p.relative_to(writer)): p.read_bytes() for p in writer.rglob("*") if p.is_file() and p.name != gen.MANIFEST
    }
    assert (replica / "current").readlink() == Path("tree"), "one tree, named by the link nginx serves"
    assert (replica / "applied.json").read_bytes() == (writer / gen.MANIFEST).read_bytes(), "the record"
    assert done["serving"]["digest"] == done["writer"]["digest"] and done["writer"]["sequence"] == 1
    assert sorted(p.name for p in replica.iterdir()) == [".writer", "applied.json", "current", "tree"]
    # Nothing new: no copy, no switch.
    again = gen.pull(str(writer), str(replica))
    assert (again["changed"], again["sequence"], again["hashed"]) == (False, 1, 0)


@needs_rsync
def test_a_new_generation_reads_only_the_files_that_changed(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"sdist two")
    (writer / "simple" / "demo" / "index.html").write_text("two links")
    publish(writer, 2)
    done = gen.pull(str(writer), str(replica))
    assert done["changed"] and done["sequence"] == 2
    assert done["hashed"] == 2, "the unchanged files are the old generation's, by inode, not read again"
    assert served(replica)["packages/demo-2.0.tar.gz"] == b"sdist two"
    assert served(replica)["simple/demo/index.html"] == b"two links"


@needs_rsync
def test_a_file_that_differs_from_the_manifest_is_never_served(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    before = served(replica)
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"the real one" * 100)
    publish(writer, 2)
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"tampered one" * 100)  # same size, other bytes
    with pytest.raises(gen.GenerationError, match=r"demo-2\.0\.tar\.gz: its sha256 is not the manifest's"):
        gen.pull(str(writer), str(replica))
    assert served(replica) == before and gen.served(str(replica))["sequence"] == 1, "the tree and record unchanged"
    assert not (replica / ".incoming").exists() and not (replica / ".applying").exists(), "nothing half done"


@needs_rsync
def test_a_file_still_arriving_keeps_the_old_generation(writer: Path, tmp_path: Path) -> None:
    """The manifest lists a file the tree does not hold yet (or holds shorter): the switch waits."""
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    big = writer / "packages" / "demo-3.0.tar.gz"
    big.write_bytes(b"x" * 5000)
    publish(writer, 2)
    big.write_bytes(b"x" * 10)  # cut off
    with pytest.raises(gen.GenerationError, match="10 bytes, the manifest says 5000"):
        gen.pull(str(writer), str(replica))
    big.unlink()
    with pytest.raises(gen.GenerationError, match="did not arrive"):
        gen.pull(str(writer), str(replica))
    assert "packages/demo-3.0.tar.gz" not in served(replica)
    big.write_bytes(b"x" * 5000)
    assert gen.pull(str(writer), str(replica))["changed"]
    assert "packages/demo-3.0.tar.gz" in served(replica)


@needs_rsync
def test_files_newer_than_the_manifest_are_left_out(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    (writer / "packages" / "demo-9.0.tar.gz").write_bytes(b"uploaded after the manifest")
    gen.pull(str(writer), str(replica))
    assert "packages/demo-9.0.tar.gz" not in served(replica)


@needs_rsync
def test_links_from_the_writer_are_never_copied_or_followed(writer: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for replicas")
    (writer / "packages" / "leak.tar.gz").symlink_to(secret)
    publish(writer, 1)  # the writer's walk skips links: the manifest does not list it
    replica = tmp_path / "replica"
    gen.pull(str(writer), str(replica))
    assert "packages/leak.tar.gz" not in served(replica)
    assert not (replica / "current" / "packages" / "leak.tar.gz").is_symlink()


@needs_rsync
def test_a_rebuilt_writer_of_another_origin_is_followed_even_with_a_lower_sequence(
    writer: Path, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    publish(writer, 5)
    gen.pull(str(writer), str(replica))
    (writer / "packages" / "demo-1.0.tar.gz").unlink()
    publish(writer, 1, origin="writer-b")
    assert gen.pull(str(writer), str(replica))["changed"]
    assert "packages/demo-1.0.tar.gz" not in served(replica)
    # Of the same origin, an older sequence is not taken.
    publish(writer, 0, origin="writer-b")
    assert not gen.pull(str(writer), str(replica))["changed"]


def rsync_asked(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The paths each rsync run of --files-from was asked for (the list file read as the run starts)."""
    asked: list[list[str]] = []
    real = gen.rsync

    def rsync_and_note(argv: list[str], tolerated: tuple[int, ...] = ()) -> None:
        listing = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--files-from=")]
        if listing:
            asked.append([path for path in Path(listing[0]).read_text().split("\0") if path])
        real(argv, tolerated)

    monkeypatch.setattr(gen, "rsync", rsync_and_note)
    return asked


@needs_rsync
def test_a_pull_copies_only_the_changed_files_and_leaves_the_others_in_place(
    writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    inode = (replica / "current" / "packages" / "demo-1.0.tar.gz").stat().st_ino
    asked = rsync_asked(monkeypatch)
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"sdist two")
    (writer / "simple" / "demo" / "index.html").write_text("two links")
    publish(writer, 2)
    done = gen.pull(str(writer), str(replica))
    assert asked == [["packages/demo-2.0.tar.gz", "simple/demo/index.html"]], "the two changed paths, no other"
    assert (done["fetched"], done["removed"]) == (2, 0)
    assert (replica / "current" / "packages" / "demo-1.0.tar.gz").stat().st_ino == inode, "not copied again"
    assert gen.pull(str(writer), str(replica))["changed"] is False and len(asked) == 1, "unchanged: no copy"


@needs_rsync
def test_a_tree_removed_by_hand_is_fetched_whole_again(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    shutil.rmtree(replica / "tree")
    done = gen.pull(str(writer), str(replica))
    assert done["changed"] and done["fetched"] == 3 and served(replica) == gen_tree(writer)


@needs_rsync
def test_keep_is_accepted_and_a_replica_holds_one_tree(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    for sequence in range(1, 4):
        (writer / "packages" / f"demo-{sequence}.0.whl").write_bytes(b"w%d" % sequence)
        publish(writer, sequence)
        assert gen.main(["pull", str(writer), str(replica), "--keep", "2"]) == 0
    assert [p.name for p in replica.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != "."] == ["tree"]
    assert "packages/demo-3.0.whl" in served(replica)


@needs_rsync
@pytest.mark.parametrize("unfit", ["directory", "oversized"])
def test_a_manifest_that_becomes_unfit_is_refused_not_taken_from_the_last_copy(
    unfit: str, writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica keeps the last copy of the writer's manifest for rsync's quick check: a manifest rsync skips
    (a directory, over --max-size) must fail the pull, not leave that copy to be read as the writer's."""
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    if unfit == "directory":
        (writer / gen.MANIFEST).unlink()
        (writer / gen.MANIFEST).mkdir()
    else:
        publish(writer, 2)
        monkeypatch.setattr(gen, "MAX_MANIFEST_BYTES", (writer / gen.MANIFEST).stat().st_size - 1)
    with pytest.raises(gen.GenerationError, match=r"no generation\.json|not a file"):
        gen.pull(str(writer), str(replica))
    assert "packages/demo-2.0.tar.gz" not in served(replica) and gen.served(str(replica))["sequence"] == 1


@needs_rsync
def test_a_manifest_rewritten_in_the_same_second_with_the_same_size_is_fetched(writer: Path, tmp_path: Path) -> None:
    """rsync's quick check of the kept copy compares the mtime to the nanosecond (--modify-window=-1)."""
    replica = tmp_path / "replica"
    page = writer / "simple" / "demo" / "index.html"
    publish(writer, 1)
    stamp = (writer / gen.MANIFEST).stat()
    gen.pull(str(writer), str(replica))
    page.write_text("Y" * page.stat().st_size)
    publish(writer, 2)
    assert (writer / gen.MANIFEST).stat().st_size == stamp.st_size
    os.utime(writer / gen.MANIFEST, ns=(stamp.st_atime_ns, stamp.st_mtime_ns - stamp.st_mtime_ns % 10**9 + 7))
    done = gen.pull(str(writer), str(replica))
    assert done["changed"] and served(replica)["simple/demo/index.html"] == page.read_bytes()


def listed_by_page(page: Path) -> list[str]:
    return re.findall(r'href="[./]*(packages/[^"#]+)', page.read_text())


@needs_rsync
def test_the_apply_never_shows_a_page_before_its_file(writer: Path, tmp_path: Path) -> None:
    """Checked after every rename and removal of the apply: each page of the tree names only files it holds."""
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    tree = replica / "current"
    page = writer / "simple" / "demo" / "index.html"
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    (writer / "packages" / "demo-3.0.tar.gz").write_bytes(b"three")
    page.write_text(page.read_text() + '<a href="../../packages/demo-2.0.tar.gz">2</a>')
    (writer / "simple" / "other").mkdir()
    (writer / "simple" / "other" / "index.html").write_text('<a href="../../packages/demo-3.0.tar.gz">3</a>')
    publish(writer, 2)
    steps: list[tuple[str, str]] = []

    def every_page_whole(what: str, path: str) -> None:
        steps.append((what, path))
        for found in tree.rglob("index.html"):
            missing = [name for name in listed_by_page(found) if not (tree / name).is_file()]
            assert not missing, f"after {what} {path}: {found.relative_to(tree)} links to missing {missing}"

    gen.pull(str(writer), str(replica), step=every_page_whole)
    assert len(steps) == 4 and [path for _, path in steps[:2]] == [
        "packages/demo-2.0.tar.gz",
        "packages/demo-3.0.tar.gz",
    ]
    # Removals: the page first, then the file; the directory left empty goes.
    (writer / "simple" / "other" / "index.html").unlink()
    (writer / "simple" / "other").rmdir()
    (writer / "packages" / "demo-3.0.tar.gz").unlink()
    publish(writer, 3)
    steps.clear()
    done = gen.pull(str(writer), str(replica), step=every_page_whole)
    assert steps == [("removed", "simple/other/index.html"), ("removed", "packages/demo-3.0.tar.gz")]
    assert done["removed"] == 2 and not (tree / "simple" / "other").exists(), "the empty directory is pruned"
    assert served(replica) == {k: v for k, v in gen_tree(writer).items()}


def gen_tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != gen.MANIFEST
    }


@needs_rsync
def test_metadata_lands_before_the_pages_and_after_the_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "packages").mkdir(parents=True)
    (data / "static" / "metadata").mkdir(parents=True)
    (data / "static" / "simple").mkdir(parents=True)
    (data / "packages" / "a-1.whl").write_bytes(b"a")
    (data / "static" / "metadata" / "a-1.whl.metadata").write_text("Name: a")
    (data / "static" / "simple" / "index.html").write_text("a")
    (data / "static" / "index.html").write_text("a")
    gen.Publisher(str(data), ["packages", "static"]).scan()
    order: list[str] = []
    gen.pull(str(data), str(tmp_path / "replica"), step=lambda what, path: order.append(path))
    assert order == [
        "packages/a-1.whl",
        "static/metadata/a-1.whl.metadata",
        "static/index.html",
        "static/simple/index.html",
    ]


@needs_rsync
def test_links_in_the_tree_are_replaced_never_followed(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("untouched")
    tree = replica / "tree"
    (tree / "packages" / "demo-2.0.tar.gz").symlink_to(outside / "target")  # at a destination
    (tree / "simple" / "new").symlink_to(outside)  # a parent directory of a destination
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    (writer / "simple" / "new").mkdir()
    (writer / "simple" / "new" / "index.html").write_text("new")
    publish(writer, 2)
    gen.pull(str(writer), str(replica))
    assert not (tree / "packages" / "demo-2.0.tar.gz").is_symlink() and not (tree / "simple" / "new").is_symlink()
    assert sorted(p.name for p in outside.iterdir()) == ["target"] and (outside / "target").read_text() == "untouched"
    assert served(replica) == gen_tree(writer)


@needs_rsync
@pytest.mark.parametrize("direction", ["file to directory", "directory to file"])
def test_a_path_that_changes_between_file_and_directory_is_applied_whole(
    direction: str, writer: Path, tmp_path: Path
) -> None:
    """simple/x a page, then a directory holding simple/x/index.html (or the other way): the new page is served, the
    old one gone, and the pull after it finds nothing to repair."""
    replica = tmp_path / "replica"
    name, page = writer / "simple" / "x", writer / "simple" / "x" / "index.html"
    if direction == "file to directory":
        name.write_text("the old page")
    else:
        name.mkdir()
        page.write_text("the old page")
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    assert served(replica) == gen_tree(writer)
    if direction == "file to directory":
        name.unlink()
        name.mkdir()
        page.write_text("the new page")
    else:
        page.unlink()
        name.rmdir()
        name.write_text("the new page")
    publish(writer, 2)
    done = gen.pull(str(writer), str(replica))
    assert served(replica) == gen_tree(writer)
    assert done["changed"] and done["removed"] == 0, "the old name was replaced, not removed after"
    assert gen.served(str(replica))["sequence"] == 2 and not (replica / ".applying").exists()
    assert not gen.pull(str(writer), str(replica))["changed"] and served(replica) == gen_tree(writer)
    if direction == "directory to file":  # a removal under what is now a file: gone already, not an error
        gen.remove_tree(str(replica / "tree" / "simple" / "x" / "index.html"))
        assert (replica / "tree" / "simple" / "x").read_text() == "the new page"


class Crash(Exception):
    pass


@needs_rsync
def test_a_pull_after_a_crash_mid_apply_checks_the_tree_before_trusting_the_record(
    writer: Path, tmp_path: Path
) -> None:
    """Generation 2 was half applied (a new file and a page of the same size renamed in) when the pull died; the
    writer then went back to generation 1's files (as generation 3). The record still says generation 1, so
    without the check the pull would find nothing to do and serve generation 2's page and file for good."""
    replica = tmp_path / "replica"
    page = writer / "simple" / "demo" / "index.html"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    first = gen_tree(writer)
    old_page = page.read_bytes()
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    page.write_bytes(b"Z" * len(old_page))  # the same size: only its sha256 tells
    publish(writer, 2)

    def die_after_the_page(what: str, path: str) -> None:
        if path == "simple/demo/index.html":
            raise Crash(path)

    with pytest.raises(Crash):
        gen.pull(str(writer), str(replica), step=die_after_the_page)
    assert (replica / ".applying").exists() and gen.served(str(replica))["sequence"] == 1
    (writer / "packages" / "demo-2.0.tar.gz").unlink()
    page.write_bytes(old_page)
    publish(writer, 3)
    done = gen.pull(str(writer), str(replica))
    assert done["changed"] and served(replica) == first, "the half-applied page and file were found and undone"
    assert not (replica / ".applying").exists() and gen.served(str(replica))["sequence"] == 3


@needs_rsync
def test_a_crash_before_any_rename_keeps_the_record(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    record = gen.served(str(replica))
    (replica / ".applying").write_text('{"paths": ["packages/demo-1.0.tar.gz"]}')
    assert gen.pull(str(writer), str(replica))["changed"] is False
    assert gen.served(str(replica)) == record and not (replica / ".applying").exists()


@needs_rsync
@pytest.mark.parametrize("planted", ["a link", "over the bound"])
def test_a_marker_that_is_a_link_or_too_long_is_not_trusted(
    planted: str, writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of the tree changed behind the record (same size): a marker naming no path would let the check skip
    it. One planted as a link is not followed, one longer than the bound is not read: every file is read instead,
    the change is found and the writer's generation applied over it."""
    replica = tmp_path / "replica"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    first = gen_tree(writer)
    page = replica / "tree" / "simple" / "demo" / "index.html"
    page.write_bytes(b"Z" * page.stat().st_size)
    outside = tmp_path / "outside.json"
    outside.write_text('{"paths": []}')
    if planted == "a link":
        (replica / ".applying").symlink_to(outside)
    else:
        monkeypatch.setattr(gen, "MAX_MARKER_BYTES", 100)
        (replica / ".applying").write_text('{"paths": []}' + " " * 100)
    assert gen.pull(str(writer), str(replica))["changed"], "the tree was found not to be what the record says"
    assert served(replica) == first and not os.path.lexists(replica / ".applying")
    assert outside.read_text() == '{"paths": []}'


@needs_rsync
def test_a_replica_of_the_generation_layout_is_adopted_without_a_gap(
    writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """current -> gen-1-...: the link is never changed (nginx's current/... paths keep working), the served
    directory becomes the tree and its manifest the record; the other generations go."""
    replica = tmp_path / "replica"
    publish(writer, 1)
    served_dir = replica / "gen-1-aaaaaaaaaaaa"
    shutil.copytree(writer, served_dir)
    (replica / "gen-0-bbbbbbbbbbbb").mkdir()
    (replica / ".gen-2-cccccccccccc.partial").mkdir()
    (replica / ".incoming.json").write_text("{}")
    (replica / "current").symlink_to("gen-1-aaaaaaaaaaaa")
    inode = served_dir.stat().st_ino
    asked = rsync_asked(monkeypatch)
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    publish(writer, 2)
    done = gen.pull(str(writer), str(replica))
    assert done["changed"] and asked == [["packages/demo-2.0.tar.gz"]], "only the new file, the rest adopted"
    assert (replica / "current").readlink() == Path("gen-1-aaaaaaaaaaaa") and served_dir.stat().st_ino == inode
    assert sorted(p.name for p in replica.iterdir()) == [".writer", "applied.json", "current", "gen-1-aaaaaaaaaaaa"]
    assert served(replica) == gen_tree(writer) and not (served_dir / gen.MANIFEST).exists()
    assert not gen.pull(str(writer), str(replica))["changed"]


def writer_rsync(writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The writer's side of a pull as the role sets it up: its rsync configuration (the role's template,
    rendered) and, standing in for ssh in RSYNC_RSH, a remote shell that runs the replica key's forced command
    whatever the client asks, as sshd does. Returns what the forced command was asked to run, one line per run."""
    jinja2 = pytest.importorskip("jinja2")
    template = ROOT / "roles" / "pypi_replica" / "templates" / "rsyncd.conf.j2"
    config = tmp_path / "rsyncd.conf"
    config.write_text(
        jinja2.Template(template.read_text(), keep_trailing_newline=True).render(
            __pypi_replica_written_by="# Written by the test",
            __pypi_replica_module="data",
            __pypi_replica_writer_data_dir=str(writer),
        )
    )
    asked = tmp_path / "asked"
    shell = tmp_path / "fake-ssh"
    shell.write_text(
        f'#!/bin/sh\necho "$*" >> {asked}\nexec {shutil.which("rsync")} --server --daemon --config={config} .\n'
    )
    shell.chmod(0o755)
    monkeypatch.setenv("RSYNC_RSH", f"{shell} -l reader")
    return asked


@needs_rsync
def test_a_pull_through_the_writers_read_only_rsync_daemon_as_over_ssh(
    writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pull in rsync's daemon syntax (HOST::MODULE) passes its remote shell to rsync (--rsh), and its options
    pass the writer's read-only rsync daemon that the replica key's forced command starts."""
    asked = writer_rsync(writer, tmp_path, monkeypatch)
    replica = tmp_path / "replica"
    publish(writer, 1)
    assert gen.pull("writer::data", str(replica))["changed"]
    assert not gen.pull("writer::data", str(replica))["changed"]
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    publish(writer, 2)
    done = gen.pull("writer::data", str(replica))
    assert done["fetched"] == 1 and served(replica) == gen_tree(writer)
    # Over the remote shell, as the replica's user (-l), asking for a daemon: never a TCP connection.
    runs = asked.read_text().splitlines()
    assert runs and all(line.startswith("-l reader writer rsync --server --daemon") for line in runs), runs


@needs_rsync
def test_the_writers_rsync_daemon_reads_the_data_directory_and_nothing_else(
    writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer_rsync(writer, tmp_path, monkeypatch)
    (tmp_path / "secret").write_text("not the replicas'")
    (writer / "packages" / "link").symlink_to(tmp_path / "secret")
    rsh = os.environ["RSYNC_RSH"]
    into = tmp_path / "into"
    into.mkdir()

    def rsync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rsync", f"--rsh={rsh}", *args], capture_output=True, text=True, timeout=60, check=False)

    publish(writer, 1)
    assert rsync("writer::data/generation.json", f"{into}/").returncode == 0, "the key works"
    for path in ("../secret", "/../secret", "packages/../../secret", "packages/link"):
        rsync(f"writer::data/{path}", f"{into}/")
        assert not (into / "secret").exists() and not (into / "link").exists(), path
    # Asking to follow links is refused by the configuration (an rsync before 3.4.3 would follow one).
    for option in ("--copy-links", "--copy-unsafe-links", "--copy-dirlinks"):
        done = rsync(option, "writer::data/packages/link", f"{into}/")
        assert done.returncode != 0 and f"configured to refuse {option}" in done.stderr, (option, done.stderr)
        assert not (into / "link").exists(), option
    upload = tmp_path / "x.whl"
    upload.write_bytes(b"x")
    done = rsync(str(upload), "writer::data/packages/")
    assert done.returncode != 0 and "read only" in done.stderr and not (writer / "packages" / "x.whl").exists()
    done = rsync("--remove-source-files", "writer::data/generation.json", f"{into}/")
    assert done.returncode != 0 and (writer / "generation.json").exists()
    # No other module, no list of modules, and the old way of asking (rrsync's HOST:PATH) gets nothing.
    assert rsync("writer::other/generation.json", f"{into}/other").returncode != 0
    assert rsync("writer::").stdout.strip() == ""
    assert rsync("writer:generation.json", f"{into}/old").returncode != 0 and not (into / "old").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 2}, "not a format 1 generation manifest"),
        ({"sequence": -1}, "sequence -1"),
        ({"sequence": True}, "sequence True"),
        ({"origin": "../x"}, "origin '../x'"),
        ({"files": {"/etc/passwd": [1, "0" * 64]}}, "unfit path '/etc/passwd'"),
        ({"files": {"a/../b": [1, "0" * 64]}}, "unfit path 'a/../b'"),
        ({"files": {".hidden": [1, "0" * 64]}}, "unfit path '.hidden'"),
        ({"files": {"packages/a\nhtpasswd": [1, "0" * 64]}}, "a control character"),
        ({"files": {"a": [1, "0" * 64], "a/b": [1, "0" * 64]}}, "'a' is both a file and a directory"),
        ({"files": {"a": [1, "xyz"]}}, "entry of 'a' is not"),
        ({"files": {"generation.json": [1, "0" * 64]}}, "lists generation.json itself"),
    ],
)
def test_an_unfit_manifest_is_refused_naming_what_is_wrong(change: dict[str, object], message: str) -> None:
    doc = {"format": 1, "kind": "generation", "origin": "w", "sequence": 1, "files": {}}
    doc.update(change)
    with pytest.raises(gen.GenerationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        gen.parse(json.dumps(doc).encode())


def test_an_oversized_manifest_is_refused_before_it_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gen, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(gen.GenerationError, match="over the limit of 100"):
        gen.parse(b" " * 101)


@needs_rsync
def test_a_writer_without_a_manifest_leaves_the_replica_as_it_was(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    with pytest.raises(gen.GenerationError, match="rsync exited"):
        gen.pull(str(writer), str(replica))
    assert served(replica) == {} and gen.served(str(replica)) is None, "nothing served, nothing recorded"


@needs_rsync
def test_a_file_rewritten_with_the_same_size_and_time_is_fetched_again(writer: Path, tmp_path: Path) -> None:
    """rsync's quick check (size and time) links the old file; the sha256 check finds it and it is copied again."""
    replica = tmp_path / "replica"
    page = writer / "simple" / "demo" / "index.html"
    publish(writer, 1)
    gen.pull(str(writer), str(replica))
    stamp = page.stat()
    page.write_text("X" * stamp.st_size)
    os.utime(page, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    publish(writer, 2)
    done = gen.pull(str(writer), str(replica))
    assert done["changed"] and served(replica)["simple/demo/index.html"] == b"X" * stamp.st_size


# --------------------------------------------------------------------------- the writer's publisher


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A writer's data directory: the two served areas and private files beside them."""
    root = tmp_path / "data"
    (root / "packages").mkdir(parents=True)
    (root / "static" / "simple").mkdir(parents=True)
    (root / "audit").mkdir()
    (root / "packages" / "demo-1.0.tar.gz").write_bytes(b"one")
    (root / "packages" / ".demo-2.0.tar.gz.tmp").write_bytes(b"half an upl")
    (root / "static" / "simple" / "index.html").write_text("demo")
    (root / "audit" / "audit.jsonl").write_text("private")
    (root / "htpasswd").write_text("secret")
    return root


def test_the_publisher_lists_the_areas_only_and_counts_generations(data_dir: Path) -> None:
    publisher = gen.Publisher(str(data_dir), ["packages", "static"])
    assert publisher.scan() is True and publisher.sequence == 0
    manifest = gen.parse((data_dir / gen.MANIFEST).read_bytes())
    assert sorted(manifest["files"]) == ["packages/demo-1.0.tar.gz", "static/simple/index.html"]
    assert manifest["origin"] == (data_dir / gen.ORIGIN_FILE).read_text().strip()
    assert publisher.scan() is False and publisher.sequence == 0, "nothing changed: no new generation"
    (data_dir / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    assert publisher.scan() is True and publisher.sequence == 1
    # A restart continues the sequence of the same tree.
    again = gen.Publisher(str(data_dir), ["packages", "static"])
    assert again.origin == manifest["origin"] and again.sequence == 1


def test_a_restarted_publisher_publishes_nothing_for_an_unchanged_tree(data_dir: Path) -> None:
    assert gen.Publisher(str(data_dir), ["packages", "static"]).scan() is True
    before = (data_dir / gen.MANIFEST).read_bytes()
    again = gen.Publisher(str(data_dir), ["packages", "static"])
    assert again.scan() is False and again.sequence == 0
    assert (data_dir / gen.MANIFEST).read_bytes() == before
    (data_dir / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    assert again.scan() is True and again.sequence == 1
    # Other areas than the manifest's: published again, whatever the files.
    assert gen.Publisher(str(data_dir), ["packages"]).scan() is True


def test_the_publisher_reads_only_files_that_changed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = gen.Publisher(str(data_dir), ["packages", "static"])
    read: list[str] = []
    real = gen.file_entry
    monkeypatch.setattr(gen, "file_entry", lambda path, limit=None: read.append(Path(path).name) or real(path, limit))
    publisher.scan()
    assert sorted(read) == ["demo-1.0.tar.gz", "index.html"]
    read.clear()
    (data_dir / "static" / "simple" / "index.html").write_text("demo, and more")
    publisher.scan()
    assert read == ["index.html"]


def test_a_file_changing_while_it_is_read_waits_for_the_next_scan(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = gen.Publisher(str(data_dir), ["packages", "static"])
    real = gen.file_entry

    def read_then_grow(path: str, limit: int | None = None) -> tuple[int, str]:
        entry = real(path, limit)
        with open(path, "ab") as out:  # the index still writing it
            out.write(b"more")
        return entry

    monkeypatch.setattr(gen, "file_entry", read_then_grow)
    assert publisher.scan() is False and not (data_dir / gen.MANIFEST).exists()
    monkeypatch.setattr(gen, "file_entry", real)
    assert publisher.scan() is True


@needs_rsync
def test_a_replica_pulls_the_published_areas_and_nothing_private(data_dir: Path, tmp_path: Path) -> None:
    (data_dir / "packages" / "elsewhere.tar.gz").symlink_to(data_dir / "htpasswd")
    gen.Publisher(str(data_dir), ["packages", "static"]).scan()
    replica = tmp_path / "replica"
    assert gen.pull(str(data_dir), str(replica))["changed"]
    assert sorted(served(replica)) == ["packages/demo-1.0.tar.gz", "static/simple/index.html"]
    assert gen.main(["publish", str(data_dir), "--area", "packages", "--area", "static"]) == 0
    assert gen.main(["pull", str(data_dir), str(replica)]) == 0


@needs_rsync
def test_a_directory_where_the_manifest_should_be_is_refused_and_the_next_pull_works(
    writer: Path, tmp_path: Path
) -> None:
    replica = tmp_path / "replica"
    (writer / gen.MANIFEST).mkdir()
    (writer / gen.MANIFEST / "big").write_bytes(b"x" * 1000)
    with pytest.raises(gen.GenerationError, match=r"no generation\.json|not a file"):
        gen.pull(str(writer), str(replica))
    assert not (replica / ".writer" / gen.MANIFEST).exists(), "nothing of it is kept as the writer's manifest"
    (writer / gen.MANIFEST / "big").unlink()
    (writer / gen.MANIFEST).rmdir()
    publish(writer, 1)
    assert gen.pull(str(writer), str(replica))["changed"]


@needs_rsync
def test_a_listed_name_that_is_a_directory_on_the_writer_is_not_copied_whole(
    writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = tmp_path / "replica"
    copied: list[str] = []
    real = gen.rsync

    def rsync_then_look(argv: list[str], tolerated: tuple[int, ...] = ()) -> None:
        real(argv, tolerated)
        copied.extend(str(p) for p in Path(argv[-1]).rglob("*"))  # what this run brought

    monkeypatch.setattr(gen, "rsync", rsync_then_look)
    publish(writer, 1)
    (writer / "packages" / "demo-1.0.tar.gz").unlink()
    (writer / "packages" / "demo-1.0.tar.gz").mkdir()
    (writer / "packages" / "demo-1.0.tar.gz" / "inside").write_bytes(b"y" * 100)
    with pytest.raises(gen.GenerationError, match=r"did not arrive|not a plain file"):
        gen.pull(str(writer), str(replica))
    assert not [path for path in copied if path.endswith("inside")], "the directory was not copied"


def pages_name_only_listed_files(manifest: dict[str, object], root: Path) -> list[str]:
    """The package files the published pages link to that the manifest lacks (a reader's 404s)."""
    files = manifest["files"]
    assert isinstance(files, dict)
    missing = []
    for path in files:
        if path.startswith("static/"):
            for name in re.findall(r'href="[./]*packages/([^"#]+)', (root / path).read_text()):
                if f"packages/{name}" not in files:
                    missing.append(f"{path} -> packages/{name}")
    return missing


def test_an_upload_landing_between_the_walks_is_not_published_half(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the bench found: the file lands after the walk of packages, its page before the walk of static.
    The second walk of packages sees the file: nothing is published until a scan sees both."""
    page = data_dir / "static" / "simple" / "index.html"
    page.write_text('<a href="../../packages/demo-1.0.tar.gz">demo-1.0</a>')
    publisher = gen.Publisher(str(data_dir), ["packages", "static"])
    assert publisher.scan() is True
    real, walks = gen.walk, []

    def walk_then_upload(root: str) -> dict[str, os.stat_result]:
        found = real(root)
        walks.append(Path(root).name)
        if walks == ["packages"]:  # just after the first walk of the files: the index uploads
            (data_dir / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
            page.write_text(page.read_text() + '<a href="../../packages/demo-2.0.tar.gz">demo-2.0</a>')
        return found

    monkeypatch.setattr(gen, "walk", walk_then_upload)
    published = []
    for _ in range(3):
        if publisher.scan():
            published.append(gen.parse((data_dir / gen.MANIFEST).read_bytes()))
    assert [pages_name_only_listed_files(manifest, data_dir) for manifest in published] == [[]] * len(published)
    assert walks[:3] == ["packages", "static", "packages"], "files, pages, files again"
    assert len(published) == 1 and publisher.sequence == 1, "published once, by the scan after the race"
    assert "packages/demo-2.0.tar.gz" in published[0]["files"]
    assert published[0]["areas"] == ["packages", "static"]


def test_a_fifo_in_a_published_area_does_not_hold_the_publisher(data_dir: Path) -> None:
    os.mkfifo(data_dir / "packages" / "planted.whl")
    publisher = gen.Publisher(str(data_dir), ["packages", "static"])
    assert publisher.scan() is True  # walk lists plain files only; the FIFO is not one
    assert "packages/planted.whl" not in gen.parse((data_dir / gen.MANIFEST).read_bytes())["files"]
    with pytest.raises(gen.GenerationError, match="not a plain file"):
        gen.file_entry(str(data_dir / "packages" / "planted.whl"))


# --------------------------------------------------------------------------- the replica's health


def manifest_summary(sequence: int, digest: str) -> dict[str, object]:
    """What pull() tells of a manifest (the writer's, or the one the replica's tree holds)."""
    return {"sequence": sequence, "origin": "writer-a", "digest": digest}


ONE = manifest_summary(1, "1" * 64)
TWO = manifest_summary(2, "2" * 64)
SERVING_ONE = manifest_summary(1, "1" * 64)


def test_health_a_replica_serving_the_writers_manifest_is_healthy() -> None:
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE, wall="2026-01-01T00:00:00Z")
    doc = health.status(100.5, wall="2026-01-01T00:00:01Z")
    assert doc["healthy"] is True and doc["reason"] == "serving the writer's newest generation"
    assert doc["lag_seconds"] == 0.5 and doc["max_lag_seconds"] == 10.0
    assert doc["serving"] == {"sequence": 1, "origin": "writer-a", "digest": "1" * 64}
    assert doc["writer"] == {
        "sequence": 1,
        "origin": "writer-a",
        "reachable": True,
        "last_contact": "2026-01-01T00:00:00Z",
        "error": None,
    }
    assert doc["checked"] == "2026-01-01T00:00:01Z" and doc["kind"] == "replica-status" and doc["format"] == 1


def test_health_a_replica_behind_by_more_than_max_lag_is_unhealthy_until_it_catches_up() -> None:
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE)
    for second in range(101, 115):  # the writer published 2; every pull of it fails
        health.observe(float(second), SERVING_ONE, TWO, error="1 files differ from the manifest")
    doc = health.status(114.5)
    assert doc["healthy"] is False and doc["lag_seconds"] == 14.5
    assert doc["reason"] == "it is 14.500 s behind the writer's newest generation, more than the 10 s allowed"
    assert doc["writer"]["sequence"] == 2 and doc["writer"]["error"] == "1 files differ from the manifest"
    assert health.status(109.0)["healthy"] is True, "9 s behind is within the bound"
    health.observe(115.0, manifest_summary(2, "2" * 64), TWO)
    doc = health.status(115.2)
    assert doc["healthy"] is True and doc["lag_seconds"] == 0.2 and doc["writer"]["error"] is None


def test_health_a_writer_gone_back_to_an_older_generation_is_named_as_such() -> None:
    """A writer restored from a backup publishes a lower sequence of the same tree: the replica does not follow."""
    health = gen.Health(max_lag=10)
    health.observe(100.0, manifest_summary(5, "5" * 64), manifest_summary(5, "5" * 64))
    health.observe(120.0, manifest_summary(5, "5" * 64), manifest_summary(3, "3" * 64))
    doc = health.status(120.5)
    assert doc["healthy"] is False and doc["reason"].startswith("the writer publishes generation 3 of the tree")
    assert "generation 5 is served here" in doc["reason"] and "more than the 10 s allowed" in doc["reason"]


def test_health_a_current_replica_stays_healthy_with_its_lag_frozen_while_the_writer_is_unreachable() -> None:
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE, wall="2026-01-01T00:00:00Z")
    health.observe(101.0, SERVING_ONE, ONE)
    health.observe(102.0, SERVING_ONE, None, error="rsync exited 255: connection refused")
    doc = health.status(5000.0)
    assert doc["healthy"] is True and doc["lag_seconds"] == 0.0, "frozen at the last answered fetch"
    assert doc["writer"]["reachable"] is False and doc["writer"]["error"].startswith("rsync exited 255")
    assert doc["reason"].startswith("serving the writer's newest generation as of its last contact")


def test_health_a_replica_already_behind_stays_unhealthy_while_the_writer_is_unreachable() -> None:
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE)
    health.observe(120.0, SERVING_ONE, TWO, error="1 files differ from the manifest")
    health.observe(121.0, SERVING_ONE, None, error="rsync exited 255: connection refused")
    doc = health.status(5000.0)
    assert doc["healthy"] is False and doc["lag_seconds"] == 20.0, "as behind as at the last contact"
    assert "20.000 s behind" in doc["reason"]


def test_health_a_replica_without_a_generation_is_never_healthy() -> None:
    health = gen.Health(max_lag=10)
    doc = health.status(1.0)
    assert doc["healthy"] is False and doc["serving"] is None and doc["lag_seconds"] is None
    assert doc["reason"] == "no pull has ended since the program started" and doc["writer"]["reachable"] is False
    health.observe(100.0, None, ONE, error="1 files differ from the manifest")
    doc = health.status(100.1)
    assert doc["healthy"] is False and doc["reason"] == "it serves no generation yet"
    health.observe(101.0, SERVING_ONE, ONE)
    assert health.status(101.1)["healthy"] is True
    health.observe(102.0, None, ONE, error="/r/current points at 'elsewhere', not at a generation")
    doc = health.status(102.1)
    assert doc["healthy"] is False and doc["reason"] == "it serves no generation yet", "current is gone"


def test_health_a_replica_that_never_reached_the_writer_since_it_started_is_not_healthy() -> None:
    """Its generation may be old: without one answer it cannot tell how old."""
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, None, error="rsync exited 255")
    doc = health.status(100.1)
    assert doc["healthy"] is False and doc["lag_seconds"] is None and "has not answered" in doc["reason"]
    health.observe(101.0, SERVING_ONE, TWO, error="1 files differ from the manifest")
    doc = health.status(101.1)
    assert doc["healthy"] is False and "has not served the writer's newest generation" in doc["reason"]


def test_health_a_replica_already_behind_does_not_come_back_while_the_next_fetch_hangs() -> None:
    """Current at 0, the writer newer at 9: out of the pool at 15. The next pull's fetch then hangs: the lag stays
    what it had reached (15), never the 9 of the last fetch's start, and the reason does not say "newest"."""
    health = gen.Health(max_lag=10)
    health.observe(0.0, SERVING_ONE, ONE)
    health.observe(9.0, SERVING_ONE, TWO, error="1 files differ from the manifest", answered=9.0, ended=9.5)
    assert health.status(9.6)["healthy"] is True
    assert health.status(9.6)["reason"] == (
        "it serves generation 1 and the writer's newest is 2: 9.600 s without it, within the 10 s allowed"
    )
    doc = health.status(15.0)
    assert doc["healthy"] is False and doc["lag_seconds"] == 15.0
    health.begin(15.0)
    for now in (16.0, 200.0):
        doc = health.status(now)
        assert doc["healthy"] is False and doc["lag_seconds"] == 15.0, f"at {now}"
        assert doc["reason"].startswith("it is 15.000 s behind"), f"at {now}"
    health.observe(15.0, SERVING_ONE, None, error="rsync exited 30: timeout", down=True, ended=315.0)
    assert health.status(400.0)["healthy"] is False and health.status(400.0)["lag_seconds"] == 15.0


def test_health_the_lag_freezes_at_the_writers_answer_not_at_the_fetchs_start() -> None:
    """The fetch of generation 2 started at 9, its manifest came back at 14; the files then fail to come (the
    network): frozen at 14, not 9. Within the bound, the reason says behind, never "newest"."""
    health = gen.Health(max_lag=10)
    health.observe(0.0, SERVING_ONE, ONE)
    health.begin()
    health.contact(9.0, SERVING_ONE, TWO, answered=14.0)
    health.observe(9.0, SERVING_ONE, TWO, error="rsync exited 12", down=True, answered=14.0)
    doc = health.status(500.0)
    assert doc["healthy"] is False and doc["lag_seconds"] == 14.0 and doc["writer"]["reachable"] is False
    late = gen.Health(max_lag=20)
    late.observe(0.0, SERVING_ONE, ONE)
    late.observe(9.0, SERVING_ONE, TWO, error="rsync exited 255", down=True, answered=14.0)
    doc = late.status(500.0)
    assert doc["healthy"] is True and doc["lag_seconds"] == 14.0
    assert doc["reason"] == (
        "it serves generation 1 and the writer's newest is 2 as of its last contact (the writer does not answer):"
        " 14.000 s without it, within the 20 s allowed"
    )


def test_health_a_stopped_pull_is_never_healthy_and_errors_are_cut_to_500_characters() -> None:
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, None, error="x" * 2000)
    health.observe(101.0, SERVING_ONE, ONE, error="y" * 2000)
    assert health.status(101.0)["writer"]["error"] == "y" * 500
    doc = health.status(101.0, running=False)
    assert doc["healthy"] is False and doc["reason"] == "the pull is not running"


def test_health_a_fetch_not_answered_yet_counts_as_a_writer_that_does_not_answer() -> None:
    """A pull hangs connecting to a writer that is down: a current replica stays in the pool meanwhile."""
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE)
    health.begin()
    assert health.status(400.0)["healthy"] is True and health.lag(400.0) == 0.0


def test_health_a_long_pull_of_a_newer_generation_counts_its_lag_before_it_ends() -> None:
    """The writer answered with generation 2; its files take long to come: the lag grows while they do."""
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE)
    health.begin()
    health.contact(101.0, SERVING_ONE, TWO)
    doc = health.status(112.0)
    assert doc["healthy"] is False and doc["lag_seconds"] == 12.0 and doc["writer"]["sequence"] == 2


def status_of(directory: Path) -> dict[str, object]:
    return json.loads((directory / "status.json").read_text())


@needs_rsync
def test_one_pull_with_a_status_dir_writes_a_healthy_status_and_ok_json(writer: Path, tmp_path: Path) -> None:
    publish(writer, 1)
    replica, status = tmp_path / "replica", tmp_path / "status"
    assert gen.main(["pull", str(writer), str(replica), "--loop", "0", "--status-dir", str(status)]) == 0
    doc = status_of(status)
    assert doc["healthy"] is True and doc["serving"]["sequence"] == 1 and doc["writer"]["reachable"] is True
    assert doc["serving"]["digest"] == gen.served(str(replica))["digest"]
    assert json.loads((status / "ok.json").read_text()) == doc
    assert stat.S_IMODE(status.stat().st_mode) == 0o755
    assert stat.S_IMODE((status / "ok.json").stat().st_mode) == 0o644, "nginx reads it"
    assert sorted(p.name for p in status.iterdir()) == ["ok.json", "status.json"], "no temporary file stays"


@needs_rsync
def test_a_replica_that_cannot_take_the_writers_generation_falls_behind_and_leaves_the_pool(
    writer: Path, tmp_path: Path
) -> None:
    replica, status = tmp_path / "replica", tmp_path / "status"
    status.mkdir()
    health = gen.Health(max_lag=10)

    def one_pass(started: float) -> dict[str, object]:
        gen.pull_once(str(writer), str(replica), 2, "rsync", health=health, started=started)
        gen.write_status(str(status), health.status(started + 0.5))
        return status_of(status)

    publish(writer, 1)
    assert one_pass(100.0)["healthy"] and (status / "ok.json").exists()
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"the real one" * 100)
    publish(writer, 2)
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"tampered one" * 100)  # the manifest's sha256 is wrong
    doc = one_pass(105.0)
    assert doc["healthy"] is True and doc["lag_seconds"] == 5.5, "behind, within the bound"
    assert "sha256 is not the manifest's" in doc["writer"]["error"]
    doc = one_pass(111.0)
    assert doc["healthy"] is False and not (status / "ok.json").exists()
    assert doc["reason"].startswith("it is 11.500 s behind") and doc["serving"]["sequence"] == 1
    assert doc["writer"]["sequence"] == 2
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"the real one" * 100)
    doc = one_pass(112.0)
    assert doc["healthy"] is True and doc["serving"]["sequence"] == 2 and (status / "ok.json").exists()


@needs_rsync
def test_a_replica_stays_in_the_pool_while_its_writer_is_gone(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    health = gen.Health(max_lag=10)
    publish(writer, 1)
    assert gen.pull_once(str(writer), str(replica), 2, "rsync", health=health, started=100.0)
    writer.rename(tmp_path / "gone")
    assert not gen.pull_once(str(writer), str(replica), 2, "rsync", health=health, started=200.0)
    doc = health.status(300.0)
    assert doc["healthy"] is True and doc["writer"]["reachable"] is False and doc["lag_seconds"] == 0.0
    assert doc["serving"]["sequence"] == 1 and "rsync exited" in doc["writer"]["error"]


def failing_rsync(tmp_path: Path, code: int, said: str = "rsync: write failed: No space left on device (28)") -> str:
    """A stand-in rsync that says said and exits code on every run."""
    program = tmp_path / f"rsync-exits-{code}"
    program.write_text(f"#!/bin/sh\necho '{said}' >&2\nexit {code}\n")
    program.chmod(0o755)
    return str(program)


@pytest.mark.parametrize(
    ("code", "transport"),
    [(255, True), (10, True), (12, True), (30, True), (35, True), (11, False), (1, False), (23, False)],
)
def test_only_the_writer_or_the_network_not_answering_is_a_transport_failure(
    code: int, transport: bool, tmp_path: Path
) -> None:
    with pytest.raises(gen.GenerationError, match=f"rsync exited {code}") as failed:
        gen.rsync([failing_rsync(tmp_path, code)])
    assert isinstance(failed.value, gen.TransportError) is transport


def test_rsync_keeps_only_the_end_of_what_it_said(tmp_path: Path) -> None:
    """A hostile writer's rsync may say 30 MB before it fails: only the last bytes are kept in memory."""
    chatty = tmp_path / "chatty-rsync"
    chatty.write_text("#!/bin/sh\nhead -c 30000000 /dev/zero | tr '\\000' x\necho\necho 'the last words'\nexit 11\n")
    chatty.chmod(0o755)
    tracemalloc.start()
    try:
        with pytest.raises(gen.GenerationError, match="rsync exited 11") as failed:
            gen.rsync([str(chatty)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(failed.value).endswith("the last words") and len(str(failed.value)) < 2100
    assert peak < 5_000_000, f"{peak} bytes held while rsync spoke"


def test_rsync_that_speaks_past_the_deadline_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    child = tmp_path / "rsync.pid"
    endless = tmp_path / "endless-rsync"
    endless.write_text(f'#!/bin/sh\necho $$ > "{child}"\nwhile :; do echo "rsync: an error"; done\n')
    endless.chmod(0o755)
    monkeypatch.setattr(gen, "RSYNC_DEADLINE", 1)
    begun = time.monotonic()
    with pytest.raises(gen.TransportError, match="rsync ran longer than 1 s"):
        gen.rsync([str(endless)])
    assert time.monotonic() - begun < 10
    assert not running(int(child.read_text())), "killed at the deadline"


@needs_rsync
def test_a_replica_that_cannot_write_locally_leaves_the_pool(writer: Path, tmp_path: Path) -> None:
    """Its disk is full: every pull's rsync exits 11 before the writer's manifest is read. The writer is not down,
    so the lag is not frozen: the replica falls behind the writer's newer generation and leaves the pool."""
    replica = tmp_path / "replica"
    health = gen.Health(max_lag=10)
    publish(writer, 1)
    assert gen.pull_once(str(writer), str(replica), 2, "rsync", health=health, started=100.0)
    (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
    publish(writer, 2)
    full = failing_rsync(tmp_path, 11)
    for started in (103.0, 106.0, 109.0):
        assert not gen.pull_once(str(writer), str(replica), 2, full, health=health, started=started)
    assert health.status(109.5)["healthy"] is True, "9.5 s since it was known current: within the bound"
    doc = health.status(112.0)
    assert doc["healthy"] is False and doc["lag_seconds"] == 12.0
    assert doc["reason"] == (
        "its pulls have failed for 12.000 s since it last served the writer's newest generation,"
        " more than the 10 s allowed"
    )
    assert "rsync exited 11" in doc["writer"]["error"] and doc["writer"]["reachable"] is True
    # The same replica with its writer down (ssh fails: 255) stays in the pool.
    down = gen.Health(max_lag=10)
    assert gen.pull_once(str(writer), str(replica), 2, "rsync", health=down, started=100.0)
    assert not gen.pull_once(str(writer), str(replica), 2, failing_rsync(tmp_path, 255), health=down, started=103.0)
    doc = down.status(500.0)
    assert doc["healthy"] is True and doc["lag_seconds"] == 0.0 and doc["writer"]["reachable"] is False


def test_health_an_error_that_is_not_the_writers_lets_the_lag_grow() -> None:
    health = gen.Health(max_lag=10)
    health.observe(100.0, SERVING_ONE, ONE)
    health.observe(101.0, SERVING_ONE, None, error="manifest: not JSON", down=False)
    doc = health.status(111.0)
    assert doc["healthy"] is False and doc["lag_seconds"] == 11.0 and doc["writer"]["reachable"] is True
    health.observe(112.0, SERVING_ONE, None, error="rsync exited 255", down=True)
    assert health.status(500.0)["lag_seconds"] == 0.0, "the writer down: frozen at its last answer"


def test_the_status_files_replace_links_planted_at_their_names_without_following_them(tmp_path: Path) -> None:
    status, target = tmp_path / "status", tmp_path / "target"
    status.mkdir()
    target.write_text("untouched")
    (status / "ok.json").symlink_to(target)
    (status / "status.json").symlink_to(target)
    health = gen.Health(max_lag=10)
    health.observe(1.0, SERVING_ONE, ONE)
    gen.write_status(str(status), health.status(1.0))
    assert not (status / "ok.json").is_symlink() and not (status / "status.json").is_symlink()
    assert target.read_text() == "untouched"
    (status / "ok.json").unlink()
    (status / "ok.json").symlink_to(target)
    gen.write_status(str(status), health.status(1.0, running=False))
    assert not (status / "ok.json").is_symlink() and not (status / "ok.json").exists()
    assert target.read_text() == "untouched"


def test_nothing_is_written_over_the_status_of_a_stopped_pull(tmp_path: Path) -> None:
    """The watch thread may still run a moment after the loop ended: it does not bring ok.json back."""
    health = gen.Health(max_lag=10)
    health.observe(1.0, SERVING_ONE, ONE)
    files = gen.StatusFiles(str(tmp_path), health)
    files.write(1.0)
    assert (tmp_path / "ok.json").exists()
    files.write(1.0, running=False)
    files.write(1.0)
    files.write(1.0, changed_only=True)
    assert not (tmp_path / "ok.json").exists() and status_of(tmp_path)["reason"] == "the pull is not running"


def test_the_watch_rewrites_an_unhealthy_status_when_the_writer_publishes_a_newer_generation(tmp_path: Path) -> None:
    """Unhealthy before a long pull fetched a newer manifest, and still unhealthy after: the status says so at once
    (it named the writer's older generation until that pull ended, a test saw on a loaded machine)."""
    health = gen.Health(max_lag=1)
    health.observe(1.0, SERVING_ONE, ONE, ended=1.0)
    files = gen.StatusFiles(str(tmp_path), health)
    files.write(1.0)
    files.write(5.0, changed_only=True)  # the next pull is late: out of the pool, the writer's newest still 1
    assert status_of(tmp_path)["healthy"] is False and status_of(tmp_path)["writer"]["sequence"] == 1
    health.begin(5.0)
    health.contact(5.0, SERVING_ONE, TWO)  # the pull fetched generation 2; its files are still to come
    files.write(7.0, changed_only=True)
    doc = status_of(tmp_path)
    assert doc["healthy"] is False and doc["writer"]["sequence"] == 2
    assert "behind the writer's newest generation" in doc["reason"]


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_status_dir_that_is_a_link_or_a_file_is_refused(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = tmp_path / "status"
    if kind == "link":
        (tmp_path / "elsewhere").mkdir()
        status.symlink_to(tmp_path / "elsewhere")
    else:
        status.write_text("")
    with pytest.raises(SystemExit) as stopped:
        gen.main(["pull", str(tmp_path / "w"), str(tmp_path / "r"), "--status-dir", str(status)])
    assert stopped.value.code == 2
    assert f"--status-dir {status} is a link or not a directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists(), "nothing was pulled"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_a_max_lag_not_above_zero_is_refused(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gen.main(["pull", str(tmp_path / "w"), str(tmp_path / "r"), "--max-lag", value])
    assert f"--max-lag {value}" in capsys.readouterr().err


@needs_rsync
@pytest.mark.parametrize("escape", [KeyboardInterrupt, RuntimeError])
def test_a_loop_that_ends_by_an_exception_leaves_the_pool(
    escape: type[BaseException], writer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(writer, 1)
    replica, status = tmp_path / "replica", tmp_path / "status"
    seen: list[bool] = []

    def interrupted(seconds: float) -> None:
        seen.append((status / "ok.json").exists())
        raise escape("stopped while waiting")

    # The module's own name only: subprocess waits for rsync with time.sleep too.
    monkeypatch.setattr(gen, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=interrupted))
    with pytest.raises(escape):
        gen.main(["pull", str(writer), str(replica), "--loop", "1", "--status-dir", str(status)])
    assert seen == [True], "it was healthy before"
    assert not (status / "ok.json").exists()
    doc = status_of(status)
    assert doc["healthy"] is False and doc["reason"] == "the pull is not running"
    assert doc["serving"]["sequence"] == 1, "what it serves is still told"


PROGRAM = ROOT / "roles" / "pypi_common" / "files" / "airgap_pypi_generation.py"


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """condition() came true within seconds (checked every 50 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def running(pid: int) -> bool:
    """pid is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_pull(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(PROGRAM), "pull", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@needs_rsync
def test_sigterm_takes_a_running_pull_out_of_the_pool(writer: Path, tmp_path: Path) -> None:
    publish(writer, 1)
    status = tmp_path / "status"
    process = start_pull(str(writer), str(tmp_path / "replica"), "--loop", "0.2", "--status-dir", str(status))
    try:
        assert wait_for((status / "ok.json").exists), "healthy within 10 s"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert not (status / "ok.json").exists()
    doc = status_of(status)
    assert doc["healthy"] is False and doc["reason"] == "the pull is not running"


def test_sigterm_during_an_rsync_ends_that_rsync_too(tmp_path: Path) -> None:
    """supervisord's stop while rsync hangs on the writer: the child is killed, not left to run on."""
    child = tmp_path / "rsync.pid"
    hanging = tmp_path / "hanging-rsync"
    hanging.write_text(f'#!/bin/sh\necho $$ > "{child}"\nexec sleep 60\n')
    hanging.chmod(0o755)
    status = tmp_path / "status"
    status.mkdir()
    (status / "ok.json").write_text("{}")  # left by a run killed outright (SIGKILL)
    argv = [str(tmp_path / "writer"), str(tmp_path / "replica"), "--loop", "1", "--rsync", str(hanging)]
    process = start_pull(*argv, "--status-dir", str(status))
    pid = 0
    try:
        assert wait_for(lambda: child.exists() and child.read_text().strip().isdigit()), "rsync started"
        pid = int(child.read_text())
        assert running(pid)
        assert not (status / "ok.json").exists(), "an old run's ok.json is gone before the first pull ends"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
        assert wait_for(lambda: not running(pid), 5), "the rsync child ended with the program"
    finally:
        process.kill()
        process.wait()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # not left behind when the test fails
    assert status_of(status)["reason"] == "the pull is not running"


@needs_rsync
def test_a_pull_that_takes_longer_than_max_lag_leaves_the_pool_before_it_ends(writer: Path, tmp_path: Path) -> None:
    """A long catch-up (here an rsync of the files that hangs): ok.json goes once the lag passes the bound."""
    child, stall = tmp_path / "rsync.pid", tmp_path / "stall"
    slow = tmp_path / "slow-rsync"
    slow.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{stall}" ]; then case "$*" in *--files-from*) echo $$ > "{child}"; exec sleep 60;; esac; fi\n'
        f'exec {shutil.which("rsync")} "$@"\n'
    )
    slow.chmod(0o755)
    publish(writer, 1)
    status = tmp_path / "status"
    argv = [str(writer), str(tmp_path / "replica"), "--loop", "0.1", "--max-lag", "0.5", "--rsync", str(slow)]
    process = start_pull(*argv, "--status-dir", str(status))
    pid = 0
    try:
        assert wait_for((status / "ok.json").exists), "healthy within 10 s"
        stall.touch()
        (writer / "packages" / "demo-2.0.tar.gz").write_bytes(b"two")
        publish(writer, 2)
        assert wait_for(lambda: child.exists() and child.read_text().strip().isdigit()), "the files' rsync started"
        pid = int(child.read_text())
        assert wait_for(lambda: not (status / "ok.json").exists()), "out of the pool within 10 s"
        # ok.json goes first, status.json is rewritten right after it (write_status): wait for that too.
        assert wait_for(lambda: status_of(status)["healthy"] is False), "the status says so within 10 s"
        assert process.poll() is None and running(pid), "while the pull still runs"
        doc = status_of(status)
        assert doc["healthy"] is False and "behind the writer's newest generation" in doc["reason"]
        assert doc["serving"]["sequence"] == 1 and doc["writer"]["sequence"] == 2
    finally:
        process.kill()
        process.wait()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_verify_says_whether_a_copy_is_exactly_the_manifests_files(data_dir: Path, tmp_path: Path) -> None:
    assert gen.Publisher(str(data_dir), ["packages", "static"]).scan() is True
    manifest = str(data_dir / gen.MANIFEST)
    copy = tmp_path / "copy"
    (copy / "packages").mkdir(parents=True)
    (copy / "packages" / "demo-1.0.tar.gz").write_bytes(b"one")
    argv = ["verify", str(copy), manifest, "--area", "packages"]
    assert gen.main(argv) == 0
    assert gen.differences(str(copy), manifest, ["packages"]) == []
    # The same size, other bytes.
    (copy / "packages" / "demo-1.0.tar.gz").write_bytes(b"eno")
    assert gen.differences(str(copy), manifest, ["packages"]) == [
        "packages/demo-1.0.tar.gz: its size or sha256 is not the manifest's"
    ]
    assert gen.main(argv) == 1
    # A file the manifest does not list, and one missing.
    (copy / "packages" / "demo-1.0.tar.gz").unlink()
    (copy / "packages" / "other-1.0.tar.gz").write_bytes(b"x")
    assert gen.differences(str(copy), manifest, ["packages"]) == [
        "packages/demo-1.0.tar.gz: missing",
        "packages/other-1.0.tar.gz: not in the manifest",
    ]
    # A manifest that is a link is not read.
    (tmp_path / "link.json").symlink_to(manifest)
    assert gen.main(["verify", str(copy), str(tmp_path / "link.json"), "--area", "packages"]) == 2
