"""Offline unit tests for build_mirror.py, build_controller.py, pack_archive.py and unpack_archive.sh."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from scripts import build_controller as controller
from scripts import build_mirror as mirror
from scripts import pack_archive as packer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


NOT_FOUND = (
    "command failed (1): uv pip compile ...\nerror: No solution found when resolving dependencies\n"
    "  cause: Because nosuchpkg was not found in the package registry and you require nosuchpkg, we can conclude "
    "that your requirements are unsatisfiable."
)
NO_WHEEL = (
    "  \u00d7 No solution found when resolving dependencies:\n  ╰─▶ Because numpy==2.0.2 has no usable wheels and you "
    "require numpy==2.0.2, we can conclude that your requirements are unsatisfiable."
)


# --------------------------------------------------------------------------- mirror


def test_manylinux_tags_are_widened_down_to_the_oldest() -> None:
    tags = mirror.Platform(12, "x86_64-manylinux_2_28").pip_platforms()
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    arm = mirror.Platform(12, "aarch64-manylinux_2_28").pip_platforms()
    assert "manylinux2014_aarch64" in arm and "manylinux1_aarch64" not in arm


@pytest.mark.parametrize(
    ("triple", "expected"),
    [
        ("x86_64-unknown-linux-musl", "musllinux_1_2_x86_64"),
        ("x86_64-pc-windows-msvc", "win_amd64"),
        ("aarch64-apple-darwin", "macosx_13_0_arm64"),
    ],
)
def test_other_platforms(triple: str, expected: str) -> None:
    assert expected in mirror.Platform(12, triple).pip_platforms()


def test_platform_tags_include_pure_python_and_abi3() -> None:
    tags = {str(t) for t in mirror.Platform(12, "x86_64-pc-windows-msvc").tags()}
    assert {"py3-none-any", "cp312-cp312-win_amd64", "cp312-abi3-win_amd64"} <= tags
    assert "cp312-cp312-manylinux_2_28_x86_64" not in tags


def test_platforms_file_errors_name_the_line() -> None:
    with pytest.raises(mirror.BuildError, match=r"platforms.txt:2: .*riscv"):
        mirror.parse_platforms("3.12 x86_64-manylinux_2_28\n3.12 riscv64-unknown-linux\n")
    with pytest.raises(mirror.BuildError, match=r"platforms.txt:1: 'py312' is not"):
        mirror.parse_platforms("py312\n")
    assert [p.label for p in mirror.parse_platforms("# c\n3.13 x86_64-pc-windows-msvc\n")] == [
        "cp313-x86_64-pc-windows-msvc"
    ]


def test_requirements_file_errors_name_the_line() -> None:
    with pytest.raises(mirror.BuildError, match=r"requirements.in:2: 'requests ==' is not a requirement"):
        mirror.parse_requirements("click\nrequests ==\n")


def test_uv_explanations_name_the_package_and_the_reason() -> None:
    reqs = mirror.parse_requirements("click\nnosuchpkg\nnumpy==2.0.2\n")
    reason = mirror.why_unsatisfiable(NOT_FOUND)
    assert reason.startswith("Because nosuchpkg was not found")
    assert mirror.culprits(reason, reqs) == ["nosuchpkg"]
    assert mirror.short_why(reason) == "does not exist on the index"
    reason = mirror.why_unsatisfiable(NO_WHEEL)
    assert mirror.culprits(reason, reqs) == ["numpy"]
    assert mirror.short_why(reason).startswith("no wheel for this platform (Because numpy==2.0.2")
    assert mirror.no_wheel_names(reason) == {"numpy"}


def test_allowances() -> None:
    allowed = mirror.parse_allowed(["NumPy@cp313-x86_64-manylinux_2_28", "pywin32"])
    linux, windows = mirror.Platform(13, "x86_64-manylinux_2_28"), mirror.Platform(13, "x86_64-pc-windows-msvc")
    assert mirror.is_allowed(allowed, "numpy", linux) and not mirror.is_allowed(allowed, "numpy", windows)
    assert mirror.is_allowed(allowed, "pywin32", windows)


def test_missing_table_marks_allowed_rows() -> None:
    table = mirror.missing_table([mirror.Missing("numpy", "cp313-x", "no wheel", True)]).splitlines()
    assert table[0].split() == ["package", "platform", "why"]
    assert table[1].startswith("numpy (allowed)")


# --------------------------------------------------------------------------- controller collections


def _collection_wheel(path: Path) -> Path:
    present = b"print('hi')\n"
    files = {
        "files": [
            {"name": ".", "ftype": "dir", "chksum_type": None, "chksum_sha256": None, "format": 1},
            {"name": "plugins", "ftype": "dir", "chksum_type": None, "chksum_sha256": None, "format": 1},
            {
                "name": "plugins/m.py",
                "ftype": "file",
                "chksum_type": "sha256",
                "format": 1,
                "chksum_sha256": hashlib.sha256(present).hexdigest(),
            },
            {"name": ".azure-pipelines", "ftype": "dir", "chksum_type": None, "chksum_sha256": None, "format": 1},
            {
                "name": ".azure-pipelines/x.yml",
                "ftype": "file",
                "chksum_type": "sha256",
                "format": 1,
                "chksum_sha256": "0" * 64,
            },
        ],
        "format": 1,
    }
    manifest = {
        "collection_info": {"namespace": "demo", "name": "coll", "version": "1.2.3", "dependencies": {}},
        "file_manifest_file": {"name": "FILES.json", "ftype": "file", "chksum_type": "sha256", "chksum_sha256": "x"},
        "format": 1,
    }
    wheel = path / "ansible-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("ansible_collections/demo/coll/MANIFEST.json", json.dumps(manifest))
        zf.writestr("ansible_collections/demo/coll/FILES.json", json.dumps(files))
        zf.writestr("ansible_collections/demo/coll/plugins/m.py", present)
    return wheel


def test_collection_is_repacked_with_only_the_files_the_wheel_has(tmp_path: Path) -> None:
    with zipfile.ZipFile(_collection_wheel(tmp_path)) as wheel:
        name, data, _manifest = controller.collection_tarball(wheel, "demo.coll", 0)
        assert (name, data) == controller.collection_tarball(wheel, "demo.coll", 0)[:2]  # reproducible
    assert name == "demo-coll-1.2.3.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        files_json = tar.extractfile("FILES.json").read()
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
    assert names == ["MANIFEST.json", "FILES.json", "plugins", "plugins/m.py"]
    assert [e["name"] for e in json.loads(files_json)["files"]] == [".", "plugins", "plugins/m.py"]
    assert manifest["file_manifest_file"]["chksum_sha256"] == hashlib.sha256(files_json).hexdigest()


# --------------------------------------------------------------------------- archive


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "offline_artifacts" / "controller").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "VERSION").write_text("9.8.7\n")
    (root / "site.yml").write_text("---\n")
    (root / ".gitignore").write_text("offline_artifacts/SHA256SUMS\n")
    for bundle in (root / "offline_artifacts", root / "offline_artifacts" / "controller"):
        (bundle / "x.whl").write_bytes(b"x")
        (bundle / "SHA256SUMS").write_text(f"{hashlib.sha256(b'x').hexdigest()}  x.whl\n")
    for script in ("unpack_archive.sh", "airgap_transfer.py"):
        (root / "scripts" / script).write_bytes((SCRIPTS / script).read_bytes())
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def test_archive_is_reproducible(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    first = packer.pack(repo, tmp_path / "a")
    (repo / "site.yml").touch()  # a newer mtime must not matter
    second = packer.pack(repo, tmp_path / "b")
    assert first.name == second.name == "airgap-pypi-9.8.7-20231114.tar.gz"
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert "airgap-pypi-9.8.7/offline_artifacts/SHA256SUMS" in [m.name for m in members]  # git-ignored, carried
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 1700000000)}


def _unpack(*args: str) -> subprocess.CompletedProcess[str]:
    """unpack_archive.sh on an unsigned archive (these tests are about its other checks)."""
    return subprocess.run(
        ["sh", str(SCRIPTS / "unpack_archive.sh"), "--allow-unsigned", *args],
        check=False,
        capture_output=True,
        text=True,
    )


def test_unpack_checks_the_archive(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    archive = packer.pack(repo, tmp_path / "dist")
    wrong = _unpack("--expect-version", "1.0.0", str(archive))
    assert wrong.returncode == 1 and "is version 9.8.7, but version 1.0.0 is expected" in wrong.stderr
    good = _unpack("--expect-version", "9.8.7", str(archive), str(tmp_path / "out"))
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "out" / "airgap-pypi-9.8.7" / "VERSION").read_text() == "9.8.7\n"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    bad = _unpack(str(archive), str(tmp_path / "out2"))
    assert bad.returncode == 1 and "is corrupted or incomplete" in bad.stderr
    assert not (tmp_path / "out2").exists()


def test_archive_streamed_is_the_archive_compressed_in_memory(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pack() streams the tar.gz to disk; the bytes must stay those of the in-memory gzip.compress it replaced.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (repo / "offline_artifacts" / "big.whl").write_bytes(bytes(range(256)) * 40_000 + b"tail")
    archive = packer.pack(repo, tmp_path / "dist")
    names = packer.repo_files(repo)
    expected = gzip.compress(packer.tar_bytes(repo, names, "airgap-pypi-9.8.7", 1700000000), compresslevel=9, mtime=0)
    assert archive.read_bytes() == expected
