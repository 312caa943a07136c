"""Generations of the served tree (roles/pypi_common/files/airgap_pypi_generation.py): the writer's manifest and a
replica's pull with the real rsync, from a local path (the transport over SSH is rsync's own)."""

from __future__ import annotations

import json
import os
import shutil
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
    assert (replica / "current").readlink().name.startswith("gen-1-")
    assert done["serving"]["generation"] == (replica / "current").readlink().name
    assert done["serving"]["digest"] == done["writer"]["digest"] and done["writer"]["sequence"] == 1
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
    assert served(replica) == before and (replica / "current").readlink().name.startswith("gen-1-")
    assert not [p for p in replica.iterdir() if p.name.endswith(".partial")], "the partial copy is gone"


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


@needs_rsync
def test_old_generations_are_pruned_to_keep(writer: Path, tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    for sequence in range(1, 5):
        (writer / "packages" / f"demo-{sequence}.0.whl").write_bytes(b"w%d" % sequence)
        publish(writer, sequence)
        gen.pull(str(writer), str(replica), keep=2)
    generations = sorted(p.name for p in replica.iterdir() if p.name.startswith("gen-"))
    assert len(generations) == 2 and (replica / "current").readlink().name in generations
    assert any(name.startswith("gen-4-") for name in generations)


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
    assert not (replica / "current").exists()


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
    assert not (replica / ".incoming.json").exists(), "nothing of it stays on the replica"
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
    with pytest.raises(gen.GenerationError, match="did not arrive"):
        gen.pull(str(writer), str(replica))
    assert not [path for path in copied if path.endswith("inside")], "the directory was not copied"


def test_a_fifo_in_a_published_area_does_not_hold_the_publisher(data_dir: Path) -> None:
    os.mkfifo(data_dir / "packages" / "planted.whl")
    publisher = gen.Publisher(str(data_dir), ["packages", "static"])
    assert publisher.scan() is True  # walk lists plain files only; the FIFO is not one
    assert "packages/planted.whl" not in gen.parse((data_dir / gen.MANIFEST).read_bytes())["files"]
    with pytest.raises(gen.GenerationError, match="not a plain file"):
        gen.file_entry(str(data_dir / "packages" / "planted.whl"))
