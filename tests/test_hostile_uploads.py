"""Hostile and broken uploads against the real stack on loopback (gunicorn, pypiserver, the upload checks and the
static read path from the role's templates; twine as the client): each is refused with a reason twine prints, or
stored whole, and the index keeps serving every other project.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, load_module

from scripts.containers import wait_for
from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, PASSWORD, USER, Stack, auth_header, get, serve, twine_upload, write_htpasswd


def make_wheel(
    directory: Path,
    filename: str,
    *,
    name: str | None = None,
    version: str | None = None,
    metadata: bytes | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """A wheel written by hand: its METADATA may disagree with its file name, be huge, or carry any bytes."""
    stem_name, stem_version = filename.split("-")[:2]
    dist_info = f"{stem_name}-{stem_version}.dist-info"
    if metadata is None:
        metadata = (
            f"Metadata-Version: 2.1\nName: {name or stem_name}\nVersion: {version or stem_version}\n"
            "Summary: hostile input test\n"
        ).encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        for member, data in (extra or {}).items():
            archive.writestr(zipfile.ZipInfo(member), data, compress_type=zipfile.ZIP_STORED)
        archive.writestr(f"{dist_info}/RECORD", "")
    return path


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    output = " ".join((done.stdout + done.stderr).split())  # twine wraps long lines
    assert done.returncode != 0, output
    for word in words:
        assert word in output, (word, output[-2000:])
    return output


def listed(stack: Stack, project: str) -> bytes:
    status, body = get(f"{stack.url}/simple/{project}/")
    return body if status == 200 else b""


def still_serving(stack: Stack, tmp_path: Path, project: str) -> None:
    """Another project uploads and is on its page at once, on the root page within seconds (the worker writes the
    project-wide lists just after the upload's answer: docs/design.md, "At 100,000 files"), and the browse page
    answers."""
    wheel = build_wheel(tmp_path / "ok", project, "1.0")
    done = twine_upload(stack.url, wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    assert wheel.name.encode() in listed(stack, project)
    deadline = time.monotonic() + 10
    while f'href="{project}/"'.encode() not in get(f"{stack.url}/simple/")[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f'href="{project}/"'.encode() in get(f"{stack.url}/simple/")[1], f"{project} not on /simple/ within 10 s"
    assert get(f"{stack.url}/")[0] == 200


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve(tmp_path_factory.mktemp("hostile")) as running:
        yield running


def test_a_file_name_too_long_for_its_metadata_file_is_refused_and_nothing_breaks(stack: Stack, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "a" * 230 + "-1.0-py3-none-any.whl")
    output = refused(twine_upload(stack.url, wheel), "400", "at most")
    assert "bytes" in output
    assert not (stack.packages / wheel.name).exists()
    still_serving(stack, tmp_path, "after-long-name")


def test_a_long_name_dropped_in_by_hand_is_left_off_and_workers_still_boot(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    long_one = make_wheel(packages, "b" * 230 + "-1.0-py3-none-any.whl")
    beside = build_wheel(packages, "beside-it", "1.0")
    for placed in (long_one, beside):  # placed earlier: not a file still being written
        os.utime(placed, (time.time() - 60, time.time() - 60))
    # A start over a packages directory that already holds it: the workers boot and serve the rest.
    with serve(tmp_path / "stack", packages=packages) as running:
        assert b"beside-it" in get(f"{running.url}/simple/")[1]
        assert long_one.name[:20].encode() not in get(f"{running.url}/simple/")[1]
        assert get(f"{running.url}/packages/{long_one.name}")[0] == 404
        state = json.loads((running.tree / "state.json").read_text())
        assert "longer than" in state["skipped"][long_one.name]["reason"]
        still_serving(running, tmp_path, "after-boot")
        log = running.log.read_text()
        assert "left off the index" in log and "Traceback" not in log


def test_a_metadata_bomb_is_refused_and_read_only_within_bounds(stack: Stack, tmp_path: Path) -> None:
    bomb = b"Metadata-Version: 2.1\nName: bomb\nVersion: 1.0\n\n" + b"x" * (100 << 20)
    wheel = make_wheel(tmp_path, "bomb-1.0-py3-none-any.whl", metadata=bomb)
    assert wheel.stat().st_size < 1 << 20
    # The file alone, as a hostile client sends it.
    status, text = raw_upload(stack.url, wheel.name, wheel.read_bytes())
    assert status == 400 and "larger than 4 MiB" in text, text
    # twine also sends the 100 MB text as a form field: refused before the form is parsed into memory.
    refused(twine_upload(stack.url, wheel), "413", "of form fields besides the file")
    # Dropped in by hand: listed without PEP 658 metadata; no worker ever held the 100 MB.
    os.link(wheel, stack.packages / wheel.name)
    os.utime(stack.packages / wheel.name, (time.time() - 60, time.time() - 60))
    body = listed(stack, "bomb")
    assert wheel.name.encode() in body and b"data-core-metadata" not in body
    for pid in stack.workers():
        peak = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
        assert int(peak.split()[1]) < 100 * 1024, f"worker {pid} peaked at {peak}"
    assert (stack.tree / "browse" / "bomb.html").stat().st_size < 1 << 20


def test_garbage_named_as_a_wheel_is_refused(stack: Stack, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus-1.0-py3-none-any.whl"
    bogus.write_bytes(os.urandom(4096))
    # twine checks the zip itself; a raw POST is what a hostile client sends.
    status, text = raw_upload(stack.url, bogus.name, bogus.read_bytes())
    assert status == 400 and "zip" in text, text
    assert not (stack.packages / bogus.name).exists()
    assert get(f"{stack.url}/simple/bogus/")[0] == 404


def test_metadata_that_names_another_project_or_version_is_refused(stack: Stack, tmp_path: Path) -> None:
    posing = make_wheel(tmp_path, "innocent-1.0-py3-none-any.whl", name="requests")
    refused(twine_upload(stack.url, posing), "400", "Name 'requests'")
    other_version = make_wheel(tmp_path / "v", "innocent-1.0-py3-none-any.whl", version="2.0")
    refused(twine_upload(stack.url, other_version), "400", "Version '2.0'")
    assert get(f"{stack.url}/simple/innocent/")[0] == 404


def test_another_spelling_of_a_stored_file_is_refused(stack: Stack, tmp_path: Path) -> None:
    first = make_wheel(tmp_path, "goodpkg-1.0-py3-none-any.whl")
    assert twine_upload(stack.url, first).returncode == 0
    variant = make_wheel(tmp_path / "variant", "GoodPkg-1.0-py3-none-any.whl")
    refused(twine_upload(stack.url, variant), "400", "already has this file as goodpkg-1.0-py3-none-any.whl")
    assert sorted(p.name for p in stack.packages.glob("*oodpkg*")) == [first.name]


def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with serve(tmp_path / "stack", max_upload_mb=1) as small:
        wheel = make_wheel(tmp_path, "large-1.0-py3-none-any.whl", extra={"large/data.bin": os.urandom(2 << 20)})
        refused(twine_upload(small.url, wheel), "413", "up to 1 MiB")
        assert list(small.packages.iterdir()) == []
        still_serving(small, tmp_path, "under-the-limit")


def test_an_anonymous_upload_gets_pypiserver_401_unread(stack: Stack, tmp_path: Path) -> None:
    status, _ = raw_upload(stack.url, "anon-1.0-py3-none-any.whl", os.urandom(1024), authenticated=False)
    assert status == 401


def test_documentation_uploads_are_refused_before_pypiserver_reads_them_into_memory(stack: Stack) -> None:
    status, text = raw_upload(stack.url, "docs.zip", os.urandom(4096), action="doc_upload")
    assert status == 400 and "documentation uploads are not kept" in text, (status, text)


def test_non_ascii_metadata_is_served_as_utf8(stack: Stack, tmp_path: Path) -> None:
    text = "There\u2019s caf\u00e9 \u2603"
    wheel = build_wheel(tmp_path, "unicode-meta", "1.0", summary=text, description=text)
    assert twine_upload(stack.url, wheel).returncode == 0
    page = get(f"{stack.url}/project/unicode-meta/")[1]
    assert text.encode() in page and b"\xef\xbf\xbd" not in page
    # The front page is one of the lists written right after the response (the lists command).
    assert wait_for(lambda: text.encode() in get(f"{stack.url}/")[1], 10, step=0.05)


def test_a_worker_killed_mid_upload_leaves_nothing_listed_or_served(stack: Stack, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "cutoff-1.0-py3-none-any.whl", extra={"cutoff/blob.bin": os.urandom(160 << 20)})
    result: dict[str, subprocess.CompletedProcess[str]] = {}
    uploader = threading.Thread(target=lambda: result.setdefault("done", twine_upload(stack.url, wheel)))
    uploader.start()
    temporary, during = None, None
    deadline = time.monotonic() + 120
    while temporary is None and uploader.is_alive() and time.monotonic() < deadline:
        temporary = next((p for p in stack.packages.glob(".tmp-upload-*")), None)
        time.sleep(0.002)
    assert temporary is not None, "the upload was never seen being written under a temporary name"
    during = get(f"{stack.url}/packages/{wheel.name}")[0]
    for pid in stack.workers():
        os.kill(pid, signal.SIGKILL)
    uploader.join(timeout=180)
    assert during == 404, "a GET during the upload must not return part of the file"
    assert result["done"].returncode != 0
    stack.wait_healthy()
    assert not (stack.packages / wheel.name).exists()
    assert get(f"{stack.url}/simple/cutoff/")[0] == 404
    # The killed writer's temporary file goes at the next sync (once no writer holds it).
    time.sleep(2.5)
    still_serving(stack, tmp_path, "after-kill")
    assert list(stack.packages.glob(".tmp-upload-*")) == []
    # Uploaded again, whole this time: taken (no 409 for a file that was never stored) and served intact.
    done = twine_upload(stack.url, wheel)
    assert done.returncode == 0, done.stdout + done.stderr
    status, body = get(f"{stack.url}/packages/{wheel.name}", timeout=120)
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(wheel.read_bytes()).digest()


def test_a_full_disk_refuses_the_upload_and_keeps_nothing(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(packages)], check=False)
    if mounted.returncode != 0:
        pytest.skip("NOT RUN: a small tmpfs cannot be mounted here (needs root)")
    try:
        with serve(tmp_path / "stack", packages=packages) as small:
            wheel = make_wheel(tmp_path, "toobig-1.0-py3-none-any.whl", extra={"toobig/blob.bin": os.urandom(12 << 20)})
            refused(twine_upload(small.url, wheel), "500")
            assert sorted(p.name for p in packages.iterdir()) == []
            still_serving(small, tmp_path, "fits-on-disk")
    finally:
        subprocess.run(["umount", "--lazy", str(packages)], check=False)


def test_paths_with_nul_links_and_a_broken_state_never_stop_the_index(stack: Stack, tmp_path: Path) -> None:
    assert get(f"{stack.url}/simple/a%00b/")[0] == 404
    assert get(f"{stack.url}/project/a%00b/")[0] == 404
    assert get(f"{stack.url}/packages/a%00b-1.0.tar.gz")[0] == 404
    # A file reached through a directory link in the packages directory is not served (pypiserver would not).
    outside = tmp_path / "outside"
    build_wheel(outside, "linked-in", "1.0")
    (stack.packages / "linked").symlink_to(outside, target_is_directory=True)
    assert get(f"{stack.url}/packages/linked/linked_in-1.0-py3-none-any.whl")[0] == 404
    assert get(f"{stack.url}/simple/linked-in/")[0] == 404
    # Nor a file link (to a file outside the directory).
    stray = build_wheel(outside, "file-link", "1.0")
    os.utime(stray, (time.time() - 60, time.time() - 60))  # an old file: not one still being written
    (stack.packages / stray.name).symlink_to(stray)
    deadline = time.monotonic() + 3  # past the read-triggered sync's once-a-second check
    while time.monotonic() < deadline:
        assert get(f"{stack.url}/packages/{stray.name}")[0] == 404
        assert get(f"{stack.url}/simple/file-link/")[0] == 404
        time.sleep(0.5)
    (stack.packages / stray.name).unlink()
    # state.json of the wrong shape: rebuilt, not trusted.
    (stack.tree / "state.json").write_text(json.dumps({"version": 1, "packages": str(stack.packages), "files": []}))
    still_serving(stack, tmp_path, "after-bad-state")
    state = json.loads((stack.tree / "state.json").read_text())
    for entry in state["files"].values():
        entry["requires_python"] = 3  # a field of the wrong type
    (stack.tree / "state.json").write_text(json.dumps(state))
    again = build_wheel(tmp_path / "again", "after-bad-state", "2.0")  # its page renders every entry's fields
    assert twine_upload(stack.url, again).returncode == 0
    assert again.name.encode() in listed(stack, "after-bad-state")
    # The whole tree deleted: the next read writes it again.
    subprocess.run(["rm", "-rf", "--", *(str(p) for p in stack.tree.iterdir())], check=True)
    assert get(f"{stack.url}/simple/")[0] == 200
    deadline = time.monotonic() + 10  # a file changed in the last 2 s waits for the next check
    while b"after-bad-state" not in get(f"{stack.url}/simple/")[1] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"after-bad-state" in get(f"{stack.url}/simple/")[1]


def test_a_leftover_of_a_killed_sync_is_removed_when_workers_start(stack: Stack) -> None:
    leftover = stack.tree / "simple" / ".tmp-killed-sync"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half a page")
    for pid in stack.workers():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while leftover.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    stack.wait_healthy()
    assert not leftover.exists()


def raw_upload(
    url: str,
    filename: str,
    data: bytes,
    authenticated: bool = True,
    *,
    authorization: str | None = None,
    content_type: str = "multipart/form-data; boundary=airgap-pypi-test-boundary",
    extra_part: bytes = b"",
    action: str = "file_upload",
) -> tuple[int, str]:
    """A multipart upload as twine sends it, without twine's own checks of the file."""
    boundary = "airgap-pypi-test-boundary"
    body = io.BytesIO()
    body.write(extra_part)
    for field, value in ((":action", action), ("name", filename.split("-", maxsplit=1)[0]), ("version", "1.0")):
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    body.write(data + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{url}/", data=body.getvalue(), method="POST")
    request.add_header("Content-Type", content_type)
    if authenticated:
        request.add_header("Authorization", authorization or auth_header())
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def test_a_project_named_index_does_not_shadow_the_front_page(stack: Stack, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "index", "1.0", summary="the project called index")
    assert twine_upload(stack.url, wheel).returncode == 0
    # The front page follows right after the response (the lists command).
    assert wait_for(lambda: b'href="project/index/"' in get(f"{stack.url}/")[1], 10, step=0.05)
    assert b'id="search"' in get(f"{stack.url}/")[1]
    project = get(f"{stack.url}/project/index/")[1]
    assert b"the project called index" in project and b'id="search"' not in project


def test_zip_directories_and_tar_scans_are_bounded_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks read a zip's end record before zipfile parses its directory, and a sdist's tar stream only
    within a budget: a huge member list or a compressed bomb is refused, not unpacked."""
    index = load_module("airgap_pypi_index", ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py")
    wheel = make_wheel(tmp_path, "many-1.0-py3-none-any.whl")
    data = bytearray(wheel.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 8 : end + 12] = b"\xff\xff\xff\xff"  # entries on this disk and in all: the zip64 marker
    with pytest.raises(index.BadDistribution, match="zip64"):
        index.core_metadata(io.BytesIO(bytes(data)), wheel.name)
    data[end + 8 : end + 12] = b"\x03\x00\x03\x00"
    data[end + 12 : end + 16] = (64 << 20).to_bytes(4, "little")  # a 64 MiB central directory
    with pytest.raises(index.BadDistribution, match="zip directory is larger than 8 MiB"):
        index.core_metadata(io.BytesIO(bytes(data)), wheel.name)
    monkeypatch.setattr(index, "MAX_TAR_SCAN_BYTES", 4 << 20)  # the same bound, smaller, to keep the test quick
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as sdist:
        padding = tarfile.TarInfo("bomb-1.0/zeros.bin")
        padding.size = index.MAX_TAR_SCAN_BYTES + (1 << 20)
        sdist.addfile(padding, io.BytesIO(b"\0" * padding.size))
    assert bomb.tell() < 1 << 20
    with pytest.raises(index.BadDistribution, match="no PKG-INFO in the first 4 MiB"):
        index.core_metadata(io.BytesIO(bomb.getvalue()), "bomb-1.0.tar.gz")


def test_protected_reads_take_the_password_and_forget_it_when_the_file_changes(tmp_path: Path) -> None:
    """With pypi_server_auth_downloads, a verified password is remembered, but a new password file (a password
    changed, an account removed) refuses the old one at once; a wrong password is never remembered."""
    with serve(tmp_path / "stack", auth_downloads=True) as protected:
        wheel = build_wheel(tmp_path, "protected", "1.0")
        assert twine_upload(protected.url, wheel).returncode == 0
        url = f"{protected.url}/simple/protected/"

        def read(password: str | None) -> int:
            request = urllib.request.Request(url)
            if password is not None:
                token = base64.b64encode(f"{USER}:{password}".encode()).decode()
                request.add_header("Authorization", f"Basic {token}")
            try:
                with OPENER.open(request, timeout=20) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        assert read(None) == 401 and read("wrong") == 403
        assert [read(PASSWORD) for _ in range(5)] == [200] * 5
        assert read("wrong") == 403
        write_htpasswd(protected.base / "etc" / "htpasswd", protected.env, {USER: "changed-password"})
        assert read(PASSWORD) == 403, "the old password must be refused as soon as the file changes"
        assert read("changed-password") == 200
        done = twine_upload(protected.url, build_wheel(tmp_path / "again", "protected", "2.0"))
        assert done.returncode != 0, "uploads check the same file: the old password is refused there too"


def test_a_tree_that_cannot_be_written_answers_500_never_an_empty_reply(tmp_path: Path) -> None:
    """A sync that fails after an upload says so (500 with why); reads go on with the pages as they are, and the
    next read after the fault is gone writes them."""
    with serve(tmp_path / "stack") as stack:
        still_serving(stack, tmp_path, "before-fault")
        project_dir = stack.tree / "simple" / "blocked"
        project_dir.parent.mkdir(parents=True, exist_ok=True)
        project_dir.write_text("a file where the project's directory must go")
        done = twine_upload(stack.url, build_wheel(tmp_path / "blocked", "blocked", "1.0"))
        assert done.returncode != 0 and "500" in done.stdout + done.stderr, done.stdout + done.stderr
        status, body = get(f"{stack.url}/simple/")
        assert status == 200 and b"before-fault" in body
        assert get(f"{stack.url}/simple/before-fault/")[0] == 200
        project_dir.unlink()
        deadline = time.monotonic() + 10
        while get(f"{stack.url}/simple/blocked/")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert get(f"{stack.url}/simple/blocked/")[0] == 200
        assert "Traceback" in stack.log.read_text(), "the failed sync is logged with its cause"


def test_authorization_headers_pypiserver_accepts_are_checked_too(stack: Stack, tmp_path: Path) -> None:
    """bottle (pypiserver's parser) takes 'Basic<TAB>...' and stray bytes after the base64: the checks must see
    every request pypiserver would let store a file."""
    posing = make_wheel(tmp_path, "oddauth-1.0-py3-none-any.whl", name="requests")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    for header in (f"Basic\t{token}", f"Basic {token}\xff", f"basic {token}"):
        status, text = raw_upload(stack.url, posing.name, posing.read_bytes(), authorization=header)
        assert status == 400 and "Name 'requests'" in text, (header, status, text)
    assert not (stack.packages / posing.name).exists()
    wrong = base64.b64encode(f"{USER}:wrong".encode()).decode()
    assert raw_upload(stack.url, posing.name, posing.read_bytes(), authorization=f"Basic {wrong}")[0] == 403


FAKE = b"filename=\r\n\r\n"  # a delimiter-like line inside a field's value, not at a line's start


@pytest.mark.parametrize(
    ("content_type", "extra_header", "prefix"),
    [
        ("multipart/form-data; BOUNDARY=airgap-pypi-test-boundary", b"", b""),
        ('multipart/form-data; x="boundary=nope"; boundary=airgap-pypi-test-boundary', b"", b""),
        ("multipart/form-data; boundary=airgap-pypi-test-boundary", b"X-Note: filename=x\r\n", b""),
        (
            "multipart/form-data; boundary=airgap-pypi-test-boundary",
            b"",
            b"--airgap-pypi-test-boundaryfilename=\r\n\r\n",
        ),
    ],
    ids=["upper-case-boundary", "decoy-parameter", "filename-in-another-header", "delimiter-inside-a-value"],
)
def test_the_form_field_bound_holds_however_the_body_is_written(
    stack: Stack, tmp_path: Path, content_type: str, extra_header: bytes, prefix: bytes
) -> None:
    wheel = make_wheel(tmp_path, "fieldy-1.0-py3-none-any.whl")
    field = (
        b'--airgap-pypi-test-boundary\r\nContent-Disposition: form-data; name="description"\r\n'
        + extra_header
        + b"\r\n"
        + prefix
        + b"A" * (9 << 20)
        + b"\r\n"
    )
    status, text = raw_upload(stack.url, wheel.name, wheel.read_bytes(), content_type=content_type, extra_part=field)
    assert status == 413 and "form fields besides the file" in text, (status, text)


def test_another_spelling_of_a_hyphenated_sdist_is_refused(stack: Stack, tmp_path: Path) -> None:
    def sdist(directory: Path, filename: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        pkg_info = b"Metadata-Version: 2.1\nName: good-pkg\nVersion: 1.0\n"
        member = tarfile.TarInfo(filename.removesuffix(".tar.gz") + "/PKG-INFO")
        member.size = len(pkg_info)
        with tarfile.open(directory / filename, "w:gz") as archive:
            archive.addfile(member, io.BytesIO(pkg_info))
        return directory / filename

    first = sdist(tmp_path / "a", "good-pkg-1.0.tar.gz")
    assert raw_upload(stack.url, first.name, first.read_bytes())[0] == 200
    for other in ("Good_Pkg-1.0.tar.gz", "good.pkg-1.0.tar.gz"):
        variant = sdist(tmp_path / other, other)
        status, text = raw_upload(stack.url, other, variant.read_bytes())
        assert status == 400 and "already has this file as good-pkg-1.0.tar.gz" in text, (other, status, text)
    assert listed(stack, "good-pkg").count(b"<a ") == 1


def test_zip64_records_and_huge_tar_headers_are_refused_unread(tmp_path: Path) -> None:
    index = load_module("airgap_pypi_index", ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py")
    wheel = make_wheel(tmp_path, "z-1.0-py3-none-any.whl")
    data = wheel.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1)  # zipfile follows this whatever the end record says
    with pytest.raises(index.BadDistribution, match="zip64"):
        index.core_metadata(io.BytesIO(data[:end] + locator + data[end:]), wheel.name)
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as packed:
        header = tarfile.TarInfo("././@PaxHeader")
        header.type, header.size = tarfile.XHDTYPE, 2 << 20
        packed.write(header.tobuf(tarfile.USTAR_FORMAT) + b"\0" * header.size)
    with pytest.raises(index.BadDistribution, match="extended tar header"):
        index.core_metadata(io.BytesIO(bomb.getvalue()), "z-1.0.tar.gz")
