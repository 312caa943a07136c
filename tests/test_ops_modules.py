"""The modules behind upgrades and backups: the index probe, the data manifest and the archive check."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import random
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from conftest import load_module

ROOT = Path(__file__).resolve().parent.parent
probe = load_module("pypi_server_serving", ROOT / "roles" / "pypi_server" / "library" / "pypi_server_serving.py")
manifest = load_module("pypi_backup_manifest", ROOT / "roles" / "pypi_backup" / "library" / "pypi_backup_manifest.py")
verify = load_module("pypi_backup_verify", ROOT / "roles" / "pypi_backup" / "library" / "pypi_backup_verify.py")

WHEEL = b"not really a wheel, but bytes with a known sha256"


class FakeIndex(http.server.BaseHTTPRequestHandler):
    """Answers like pypiserver: /simple/, /packages/ with sha256 fragments, the files themselves."""

    files: ClassVar[dict[str, bytes]] = {}
    listed_sha: ClassVar[dict[str, str]] = {}
    simple_status = 200
    # /health answers 503 this many times, then 200.
    health_fails: ClassVar[list[int]] = [0]

    def do_GET(self) -> None:
        if self.path == "/health":
            failing = self.health_fails[0] > 0
            self.health_fails[0] -= 1
            self.reply(503 if failing else 200, b"")
        elif self.path == "/simple/":
            self.reply(self.simple_status, b"<html><body></body></html>")
        elif self.path == "/packages/":
            links = "".join(
                f'<a href="/packages/{name}#sha256={self.listed_sha.get(name, hashlib.sha256(data).hexdigest())}">'
                f"{name}</a>\n"
                for name, data in self.files.items()
            )
            self.reply(200, f"<html><body>{links}</body></html>".encode())
        elif self.path.startswith("/packages/") and self.path[10:] in self.files:
            self.reply(200, self.files[self.path[10:]])
        else:
            self.reply(404, b"")

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def index() -> Iterator[tuple[str, type[FakeIndex]]]:
    handler = type("Handler", (FakeIndex,), {"files": {}, "listed_sha": {}, "simple_status": 200, "health_fails": [0]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_probe_downloads_the_first_file_and_checks_its_sha256(index) -> None:
    url, handler = index
    handler.files = {"b-1.0-py3-none-any.whl": b"other", "a-1.0-py3-none-any.whl": WHEEL}
    result = probe.probe(url, None, 5)
    assert result["serving"] is True, result
    assert result["files"] == 2 and result["file"] == "a-1.0-py3-none-any.whl"
    assert any("sha256 matches the listing" in line for line in result["checks"])


def test_probe_fails_on_a_file_with_other_bytes(index) -> None:
    url, handler = index
    handler.files = {"a-1.0-py3-none-any.whl": WHEEL}
    handler.listed_sha = {"a-1.0-py3-none-any.whl": "0" * 64}
    result = probe.probe(url, None, 5)
    assert result["serving"] is False
    assert "a-1.0-py3-none-any.whl downloaded with sha256" in result["msg"]


def test_probe_passes_an_empty_index_and_says_so(index) -> None:
    url, _ = index
    result = probe.probe(url, None, 5)
    assert result["serving"] is True and result["file"] == ""
    assert "the index holds no file yet: no download to check" in result["checks"]


def test_probe_names_a_failing_simple_index(index) -> None:
    url, handler = index
    handler.simple_status = 500
    result = probe.probe(url, None, 5)
    assert result["serving"] is False and result["msg"] == f"GET {url}/simple/ answered 500, not 200"


def test_health_wait_asks_until_health_answers_200(index) -> None:
    url, handler = index
    handler.health_fails = [2]
    assert probe.wait_for_health(url, 10, None) == ""
    assert handler.health_fails[0] < 0, "/health was not asked until it answered 200"


def test_health_wait_gives_up_naming_the_last_answer(index) -> None:
    url, handler = index
    handler.health_fails = [100]
    assert probe.wait_for_health(url, 2, None) == "GET /health did not answer 200 within 2 s (status 503)"


def test_an_index_without_accounts_must_ask_for_a_password(index) -> None:
    url, handler = index
    handler.simple_status = 401
    assert probe.asks_password(url, 5)["serving"] is True
    handler.simple_status = 200
    result = probe.asks_password(url, 5)
    assert result["serving"] is False and result["msg"] == "GET /simple/ answered 200, not 401"


def test_probe_reports_an_index_that_does_not_answer() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe.probe(f"http://127.0.0.1:{port}", None, 2)
    assert result["serving"] is False and "did not answer" in result["msg"]


@pytest.fixture
def index_data(tmp_path: Path) -> tuple[Path, Path]:
    packages, config = tmp_path / "data" / "packages", tmp_path / "etc"
    (packages / "sub").mkdir(parents=True)
    config.mkdir()
    (packages / "a-1.0-py3-none-any.whl").write_bytes(WHEEL)
    (packages / "sub" / "b-2.0.tar.gz").write_bytes(b"sdist")
    (config / "htpasswd").write_text("alice:$apr1$x$y\nbob:$apr1$z$w\n")
    (config / "gunicorn.conf.py").write_text("workers = 2\n")
    return packages, config


def test_manifest_read_only_lists_every_file_with_its_sha256(index_data: tuple[Path, Path]) -> None:
    packages, config = index_data
    result = manifest.build(packages, config, ["htpasswd", "gunicorn.conf.py", "absent.py"], None, {})
    assert result["files"] == {
        "config/gunicorn.conf.py": hashlib.sha256(b"workers = 2\n").hexdigest(),
        "config/htpasswd": hashlib.sha256((config / "htpasswd").read_bytes()).hexdigest(),
        "packages/a-1.0-py3-none-any.whl": hashlib.sha256(WHEEL).hexdigest(),
        "packages/sub/b-2.0.tar.gz": hashlib.sha256(b"sdist").hexdigest(),
    }
    assert result["count"] == 4 and result["bytes"] == len(WHEEL) + 5 + 12 + len((config / "htpasswd").read_bytes())
    again = manifest.build(packages, config, ["htpasswd", "gunicorn.conf.py"], None, {})
    assert again["digest"] == result["digest"], "the same data must give the same digest"


def test_snapshot_hard_links_packages_and_writes_a_checkable_manifest(index_data: tuple[Path, Path]) -> None:
    packages, config = index_data
    snapshot = packages.parent / ".backup" / "snapshot"
    result = manifest.build(packages, config, ["htpasswd"], snapshot, {"host": "h1"})
    linked = snapshot / "packages" / "a-1.0-py3-none-any.whl"
    assert linked.stat().st_ino == (packages / "a-1.0-py3-none-any.whl").stat().st_ino
    assert (snapshot / "config" / "htpasswd").stat().st_ino != (config / "htpasswd").stat().st_ino
    lines = (snapshot / "MANIFEST.sha256").read_text().splitlines()
    assert lines == [f"{digest}  {path}" for path, digest in sorted(result["files"].items())]
    for line in lines:
        digest, path = line.split("  ", 1)
        assert hashlib.sha256((snapshot / path).read_bytes()).hexdigest() == digest
    assert '"host": "h1"' in (snapshot / "INFO.json").read_text()


def test_the_yank_file_is_carried_as_data_never_through_a_link(index_data: tuple[Path, Path], tmp_path: Path) -> None:
    packages, config = index_data
    yanked = packages.parent / "yanked.json"
    yanked.write_text('{"format": 1, "projects": {}}')
    other = {"yanked.json": str(yanked)}
    result = manifest.build(packages, config, ["htpasswd"], None, {}, other=other)
    assert result["files"]["data/yanked.json"] == hashlib.sha256(yanked.read_bytes()).hexdigest()
    without = manifest.build(packages, config, ["htpasswd"], None, {})
    assert result["digest"] != without["digest"], "a change of the yank file is a new backup"
    snapshot = tmp_path / "snapshot"
    manifest.build(packages, config, ["htpasswd"], snapshot, {}, other=other)
    assert (snapshot / "data" / "yanked.json").read_bytes() == yanked.read_bytes()
    assert "data/yanked.json" in (snapshot / "MANIFEST.sha256").read_text()
    yanked.unlink()
    assert "data/yanked.json" not in manifest.build(packages, config, [], None, {}, other=other)["files"]
    (tmp_path / "elsewhere.json").write_text("planted")
    yanked.symlink_to(tmp_path / "elsewhere.json")
    assert manifest.build(packages, config, [], None, {}, other=other)["files"].keys() == without["files"].keys() - {
        "config/htpasswd"
    }, "a link is left out, never followed"
    with pytest.raises(ValueError, match="unfit for the archive"):
        manifest.build(packages, config, [], None, {}, other={"../x": str(yanked)})


def test_the_owners_file_is_carried_as_data_beside_the_yank_file(index_data: tuple[Path, Path], tmp_path: Path) -> None:
    """The backup role's data files, as its vars name them: the owners file (in the directory the index's workers
    write it in) travels as data/owners.json, and a restore puts it back there."""
    packages, config = index_data
    data_files = yaml.safe_load((ROOT / "roles" / "pypi_backup" / "vars" / "main.yml").read_text())[
        "__pypi_backup_data_files"
    ]
    assert data_files == {
        "yanked.json": "{{ __pypi_backup_yanked_file }}",
        "owners.json": "{{ __pypi_backup_owners_file }}",
    }
    owners = packages.parent / "owners" / "owners.json"
    owners.parent.mkdir()
    owners.write_text('{"format": 1, "projects": {"demo": {"owner": "alice", "when": "2026-01-01T00:00:00Z"}}}')
    other = {"yanked.json": str(packages.parent / "yanked.json"), "owners.json": str(owners)}
    snapshot = tmp_path / "snapshot"
    result = manifest.build(packages, config, ["htpasswd"], snapshot, {}, other=other)
    assert result["files"]["data/owners.json"] == hashlib.sha256(owners.read_bytes()).hexdigest()
    assert "data/yanked.json" not in result["files"], "only the files there are"
    assert (snapshot / "data" / "owners.json").read_bytes() == owners.read_bytes()
    restore = (ROOT / "roles" / "pypi_backup" / "tasks" / "restore.yml").read_text()
    assert "staging/data/owners.json" in restore and "__pypi_backup_owners_same" in restore


def test_the_audit_trail_is_carried_as_a_data_directory_of_regular_files(
    index_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """data/audit/<file> for each regular file directly in the audit directory (the log, its rotated files and
    uploads.json); temporary files, links and subdirectories stay out, and a linked directory is never read."""
    packages, config = index_data
    data_dirs = yaml.safe_load((ROOT / "roles" / "pypi_backup" / "vars" / "main.yml").read_text())[
        "__pypi_backup_data_dirs"
    ]
    assert data_dirs == {"audit": "{{ __pypi_backup_audit_dir }}"}
    audit = packages.parent / "audit"
    audit.mkdir()
    for name in ("audit.jsonl", "audit.jsonl.1", "uploads.json"):
        (audit / name).write_text(f"{name}\n")
    (audit / ".tmp-abc").write_text("half written")
    (audit / "sub").mkdir()
    (tmp_path / "secret").write_text("planted")
    (audit / "audit.jsonl.2").symlink_to(tmp_path / "secret")
    snapshot = tmp_path / "snapshot"
    result = manifest.build(packages, config, [], snapshot, {}, dirs={"audit": str(audit)})
    carried = sorted(path for path in result["files"] if path.startswith("data/"))
    assert carried == ["data/audit/audit.jsonl", "data/audit/audit.jsonl.1", "data/audit/uploads.json"]
    assert (snapshot / "data" / "audit" / "uploads.json").read_text() == "uploads.json\n"
    linked = tmp_path / "linked"
    linked.symlink_to(audit)
    assert not any(
        p.startswith("data/") for p in manifest.build(packages, config, [], None, {}, dirs={"a": str(linked)})["files"]
    )
    with pytest.raises(ValueError, match="unfit for the archive"):
        manifest.build(packages, config, [], None, {}, dirs={"../a": str(audit)})


def pack(snapshot: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("MANIFEST.sha256", "INFO.json", "packages", "config"):
            tar.add(snapshot / name, arcname=name)
        for name, data in (extra or {}).items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return archive


@pytest.fixture
def archive(index_data: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    packages, config = index_data
    snapshot = tmp_path / "snapshot"
    manifest.build(packages, config, ["htpasswd", "gunicorn.conf.py"], snapshot, {"host": "h1"})
    return snapshot, pack(snapshot, tmp_path / "good.tar.gz")


def test_verify_accepts_a_good_archive_and_names_its_accounts(archive: tuple[Path, Path]) -> None:
    snapshot, path = archive
    result = verify.verify(str(path))
    assert result["count"] == 4 and result["accounts"] == ["alice", "bob"]
    assert result["info"]["host"] == "h1"
    assert result["digest"] == hashlib.sha256((snapshot / "MANIFEST.sha256").read_bytes()).hexdigest()


def test_verify_rejects_a_file_with_other_bytes(archive: tuple[Path, Path], tmp_path: Path) -> None:
    snapshot, _ = archive
    (snapshot / "packages" / "a-1.0-py3-none-any.whl").unlink()  # a hard link: replace, do not edit in place
    (snapshot / "packages" / "a-1.0-py3-none-any.whl").write_bytes(b"tampered")
    with pytest.raises(verify.BadArchive, match=re.escape("1 file(s) with another sha256 than listed: packages/a-1.0")):
        verify.verify(str(pack(snapshot, tmp_path / "bad.tar.gz")))


def test_verify_rejects_unlisted_and_unsafe_members(archive: tuple[Path, Path], tmp_path: Path) -> None:
    snapshot, _ = archive
    with pytest.raises(verify.BadArchive, match=re.escape("the manifest does not list: packages/sneaked.whl")):
        verify.verify(str(pack(snapshot, tmp_path / "extra.tar.gz", {"packages/sneaked.whl": b"x"})))
    with pytest.raises(verify.BadArchive, match="outside the restore directory"):
        verify.verify(str(pack(snapshot, tmp_path / "escape.tar.gz", {"../etc/passwd": b"x"})))


def test_verify_rejects_a_truncated_archive(archive: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = archive
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(verify.BadArchive, match=re.escape("cannot read it as one tar.gz archive")):
        verify.verify(str(truncated))


def test_verify_names_any_damaged_byte_as_a_failed_verification(tmp_path: Path) -> None:
    # A byte flipped in the deflate data can make zlib itself fail ("invalid block type", ...): that too is the
    # module's BadArchive, whose message says "failed verification", never another exception. Members of random and
    # of repeated bytes (stored and compressed blocks, as packages give), the same bytes and offsets every run.
    rng = random.Random(15)
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tar:
        for n in range(5):
            body = rng.randbytes(20_000) + b"a" * 50_000
            member = tarfile.TarInfo(f"packages/f{n}-1.0-py3-none-any.whl")
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
    data = good.getvalue()
    damaged = tmp_path / "damaged.tar.gz"
    for at in rng.sample(range(64, len(data)), 400):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        damaged.write_bytes(bytes(flipped))
        with pytest.raises(verify.BadArchive):
            verify.verify(str(damaged))


def test_verify_refuses_an_archive_with_another_appended(archive: tuple[Path, Path], tmp_path: Path) -> None:
    """A tar.gz followed by a zip (which unzip and unarchive's zip handler would read instead) fails the check."""
    _, path = archive
    crafted = tmp_path / "crafted.tar.gz"
    appended = io.BytesIO()
    with zipfile.ZipFile(appended, "w") as extra:
        link = zipfile.ZipInfo("packages/evil")
        link.external_attr = 0o120777 << 16  # a symlink, as the crafted backup held
        extra.writestr(link, "/etc/shadow")
    crafted.write_bytes(path.read_bytes() + b"\0" * 4096 + appended.getvalue())
    with pytest.raises(verify.BadArchive, match=r"follows the gzip stream|follows the end of the tar"):
        verify.verify(str(crafted))


def test_verify_unpacks_what_it_verified_and_nothing_when_it_fails(archive: tuple[Path, Path], tmp_path: Path) -> None:
    snapshot, path = archive
    dest = tmp_path / "staging"
    result = verify.verify(str(path), str(dest))
    written = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert written == set(result["files"]) | {"MANIFEST.sha256", "INFO.json"}
    for name, digest in result["files"].items():
        assert not (dest / name).is_symlink()
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest
    bad = pack(snapshot, tmp_path / "extra.tar.gz", {"packages/sneaked.whl": b"x"})
    second = tmp_path / "second"
    with pytest.raises(verify.BadArchive, match="does not list"):
        verify.verify(str(bad), str(second))
    assert list(second.iterdir()) == []
    with pytest.raises(verify.BadArchive, match="is not empty"):
        verify.verify(str(path), str(dest))


def test_verify_refuses_a_second_tar_after_a_single_zero_block(archive: tuple[Path, Path], tmp_path: Path) -> None:
    """A second tar in the same 10 KiB record as the first one's end, which tarfile has already buffered."""
    snapshot, _ = archive
    first = io.BytesIO()
    with tarfile.open(fileobj=first, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("MANIFEST.sha256", "INFO.json", "packages", "config"):
            tar.add(snapshot / name, arcname=name)
    data = first.getvalue().rstrip(b"\0")
    data += b"\0" * (-len(data) % 512) + b"\0" * 512  # one zero block: tarfile stops here
    second = tarfile.TarInfo("packages/evil.whl")
    second.size = 4
    data += second.tobuf(tarfile.USTAR_FORMAT) + b"evil" + b"\0" * 508
    crafted = tmp_path / "second.tar.gz"
    crafted.write_bytes(gzip.compress(data))
    with pytest.raises(verify.BadArchive, match="follows the end of the tar"):
        verify.verify(str(crafted))


def test_unpacking_an_archive_other_than_the_one_verified_fails(archive: tuple[Path, Path], tmp_path: Path) -> None:
    _, path = archive
    dest = tmp_path / "staging"
    with pytest.raises(verify.BadArchive, match="as verified before"):
        verify.verify(str(path), str(dest), "0" * 64)
    assert list(dest.iterdir()) == []
    assert verify.verify(str(path), str(dest), verify.verify(str(path))["digest"])["count"] == 4


def test_health_wait_survives_an_answer_that_is_not_http() -> None:
    """A port that answers garbage (a TLS gunicorn, a dying worker) is a failed try, not a traceback."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer_garbage() -> None:
            for _ in range(5):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")

        threading.Thread(target=answer_garbage, daemon=True).start()
        message = probe.wait_for_health(f"http://127.0.0.1:{listener.getsockname()[1]}", 2, None, timeout=2)
    assert message.startswith("GET /health did not answer 200 within 2 s ("), message
