"""Offline unit tests for scripts/build_bundle.py (no network, no real pip/uv runs)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from scripts import build_bundle as bb

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build_bundle.py"

CP312 = bb.Target(12)
WHEEL = "demo_pkg-1.0-py3-none-any.whl"
WHEEL_BYTES = b"not really a wheel, but hashed like one"
WHEEL_SHA = hashlib.sha256(WHEEL_BYTES).hexdigest()
IN_TEXT = "# demo\ndemo-pkg\n"


def lock_body(sha: str = WHEEL_SHA) -> str:
    return f"demo-pkg==1.0 \\\n    --hash=sha256:{sha} \\\n    --hash=sha256:{'0' * 64}\n    # via -r demo.in\n"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A tiny built bundle: one .in, its cp312 lock, one wheel, SHA256SUMS."""
    root = tmp_path / "offline_artifacts"
    for sub in ("requirements", "locks", "wheels"):
        (root / sub).mkdir(parents=True)
    (root / "requirements" / "demo.in").write_text(IN_TEXT)
    digest = bb.fingerprint(IN_TEXT, CP312)
    lock = root / "locks" / "demo-cp312.txt"
    lock.write_text(bb.lock_header("demo", CP312, digest) + lock_body())
    (root / "wheels" / WHEEL).write_bytes(WHEEL_BYTES)
    bb.write_sums(root, [lock])
    return root


# ----------------------------------------------------------------- targets


@pytest.mark.parametrize("text", ["3.6", "3.7", "3.8", "cp36"])
def test_old_targets_rejected_with_reason(text: str) -> None:
    with pytest.raises(ValueError, match=r"Supported: 3\.9, 3\.10, 3\.11, 3\.12, 3\.13"):
        bb.parse_target(text)
    with pytest.raises(ValueError, match="platform-python"):
        bb.parse_target(text)


@pytest.mark.parametrize("text", ["3.14", "2.7", "py311", "3", ""])
def test_unknown_targets_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        bb.parse_target(text)


def test_targets_parsed_sorted_deduplicated() -> None:
    targets = bb.parse_targets("3.12, cp311,3.12")
    assert [t.tag for t in targets] == ["cp311", "cp312"]
    assert [t.version for t in targets] == ["3.11", "3.12"]


def test_cli_rejects_36(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bb.main(["--targets", "3.11,3.6"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "3.6 is not supported" in err and "3.9, 3.10, 3.11, 3.12, 3.13" in err


def test_help_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--targets" in out and "--check" in out and "--upgrade" in out


# ----------------------------------------------------------------- environment


def test_scrubbed_env_removes_pip_and_uv_variables() -> None:
    base = {
        "PATH": "/usr/bin",
        "PIP_FIND_LINKS": "file:///somewhere",
        "PIP_CERT": "/x.pem",
        "pip_index_url": "lowercase too",
        "UV_INDEX_URL": "http://mirror.invalid/simple",
        "UV_CACHE_DIR": "/c",
        "HOME": "/root",
    }
    env = bb.scrubbed_env(base)
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/root"
    leftover = {k for k in env if k.upper().startswith(("PIP_", "UV_"))}
    assert leftover == {
        "PIP_CONFIG_FILE",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "UV_NO_CONFIG",
    }
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1" and env["UV_NO_CONFIG"] == "1"
    assert "PIP_FIND_LINKS" in base  # input untouched


def test_subprocesses_get_scrubbed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "file:///elsewhere")
    monkeypatch.setenv("UV_EXTRA_INDEX_URL", "http://mirror.invalid/simple")
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    child = json.loads(bb.run([sys.executable, "-c", code]).stdout)
    assert "PIP_FIND_LINKS" not in child and "UV_EXTRA_INDEX_URL" not in child
    assert child["PIP_CONFIG_FILE"] == os.devnull and child["UV_NO_CONFIG"] == "1"


def test_run_failure_is_a_build_error() -> None:
    with pytest.raises(bb.BuildError, match="boom"):
        bb.run([sys.executable, "-c", "import sys; sys.exit('boom')"])


def test_find_uv_next_to_python_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    uv = bindir / "uv"
    uv.write_text("#!/bin/sh\n")
    uv.chmod(0o755)
    assert bb.find_uv(str(bindir / "python")) == str(uv)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(bb.BuildError, match="uv not found"):
        bb.find_uv(str(tmp_path / "other" / "python"))


# ----------------------------------------------------------------- locks


def test_fingerprint_tracks_inputs() -> None:
    base = bb.fingerprint(IN_TEXT, CP312)
    assert base == bb.fingerprint(IN_TEXT, bb.Target(12))
    assert len(base) == 64
    assert base != bb.fingerprint(IN_TEXT + "passlib\n", CP312)
    assert base != bb.fingerprint(IN_TEXT, bb.Target(11))


def test_fingerprint_tracks_resolver_options(monkeypatch: pytest.MonkeyPatch) -> None:
    base = bb.fingerprint(IN_TEXT, CP312)
    monkeypatch.setattr(bb, "UV_OPTIONS", (*bb.UV_OPTIONS, "--prerelease=allow"))
    assert bb.fingerprint(IN_TEXT, CP312) != base


def test_lock_header_round_trip(tmp_path: Path) -> None:
    digest = bb.fingerprint(IN_TEXT, CP312)
    header = bb.lock_header("demo", CP312, digest)
    assert str(tmp_path) not in header and "/root" not in header and "http" not in header
    assert "make lock" in header and "cp312" in header
    lock = tmp_path / "demo-cp312.txt"
    lock.write_text(header + lock_body())
    assert bb.read_fingerprint(lock) == digest
    assert bb.needs_lock(lock, digest, upgrade=False) is None
    assert bb.needs_lock(lock, digest, upgrade=True) == "upgrade"
    assert bb.needs_lock(lock, "f" * 64, upgrade=False) == "inputs changed"
    lock.write_text(lock_body())
    assert bb.read_fingerprint(lock) is None
    assert bb.needs_lock(lock, digest, upgrade=False) == "no fingerprint"
    assert bb.needs_lock(tmp_path / "absent.txt", digest, upgrade=False) == "missing"


def test_fingerprint_line_only_read_from_header(tmp_path: Path) -> None:
    lock = tmp_path / "x-cp312.txt"
    lock.write_text(lock_body() + bb.FINGERPRINT_PREFIX + "a" * 64 + "\n")
    assert bb.read_fingerprint(lock) is None


def test_parse_pins() -> None:
    text = (
        bb.lock_header("demo", CP312, "a" * 64)
        + lock_body()
        + ("Typing_Extensions==4.16.0 \\\n    --hash=sha256:" + "1" * 64 + "\n    # via\n    #   virtualenv\n")
    )
    pins = bb.parse_pins(text)
    assert [(p.name, str(p.version)) for p in pins] == [
        ("demo-pkg", "1.0"),
        ("typing-extensions", "4.16.0"),
    ]
    assert pins[0].hashes == {WHEEL_SHA, "0" * 64}


@pytest.mark.parametrize("line", ["demo-pkg>=1.0 --hash=sha256:" + "1" * 64, "demo-pkg==1.0"])
def test_parse_pins_rejects_unpinned_or_unhashed(line: str) -> None:
    with pytest.raises(bb.BuildError):
        bb.parse_pins(line + "\n")


def test_resolve_writes_header_and_relative_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    req = tmp_path / "requirements"
    req.mkdir()
    in_file = req / "demo.in"
    in_file.write_text(IN_TEXT)
    calls: list[tuple[list[str], Path | None]] = []

    def fake_run(cmd: Sequence[str], cwd: Path | None = None) -> None:
        calls.append((list(cmd), cwd))
        Path(cmd[cmd.index("--output-file") + 1]).write_text(lock_body())

    monkeypatch.setattr(bb, "run", fake_run)
    out = tmp_path / "demo-cp312.txt"
    bb.resolve("uv", in_file, CP312, out, upgrade=False)
    cmd, cwd = calls[0]
    assert cwd == req and "demo.in" in cmd and str(in_file) not in cmd
    for flag in (
        "--no-config",
        "--no-python-downloads",
        "--generate-hashes",
        "--no-header",
    ):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert cmd[cmd.index("--python-platform") + 1] == "x86_64-manylinux_2_28"
    text = out.read_text()
    assert bb.read_fingerprint(out) == bb.fingerprint(IN_TEXT, CP312)
    assert text.endswith(lock_body()) and str(tmp_path) not in text
    bb.resolve("uv", in_file, CP312, out, upgrade=True)
    assert "--upgrade" in calls[1][0] and out.read_text() == text


# ----------------------------------------------------------------- wheels


def test_tag_compatibility() -> None:
    pin = bb.Pin("demo-pkg", bb.Version("1.0"), frozenset({WHEEL_SHA}))
    assert bb.satisfies(WHEEL, WHEEL_SHA, pin, CP312)
    assert not bb.satisfies(WHEEL, "1" * 64, pin, CP312)  # wrong hash
    assert not bb.satisfies("demo_pkg-1.1-py3-none-any.whl", WHEEL_SHA, pin, CP312)
    binary = "demo_pkg-1.0-cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
    assert not bb.satisfies(binary, WHEEL_SHA, pin, CP312)
    assert bb.satisfies(binary, WHEEL_SHA, pin, bb.Target(13))
    assert not bb.satisfies("demo_pkg-1.0.tar.gz", WHEEL_SHA, pin, CP312)


def test_stale_and_missing_wheels(bundle: Path) -> None:
    lock = bb.load_lock(bundle / "locks" / "demo-cp312.txt")
    assert lock.name == "demo" and lock.target == CP312
    files = {
        WHEEL: WHEEL_SHA,
        "demo_pkg-0.9-py3-none-any.whl": "2" * 64,  # old release
        "other-1.0-py3-none-any.whl": "3" * 64,  # no lock mentions it
        "notes.txt": "4" * 64,
    }
    assert bb.missing_pins(lock, files) == []
    assert bb.unreferenced(files, [lock]) == sorted(set(files) - {WHEEL})
    corrupt = {WHEEL: "5" * 64}
    assert [p.name for p in bb.missing_pins(lock, corrupt)] == ["demo-pkg"]
    assert bb.unreferenced(corrupt, [lock]) == [WHEEL]


def test_download_moves_verified_files(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = bb.load_lock(bundle / "locks" / "demo-cp312.txt")
    seen: list[list[str]] = []

    def fake_pip(cmd: Sequence[str], cwd: Path | None = None) -> None:
        seen.append(list(cmd))
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(exist_ok=True)
        (dest / WHEEL).write_bytes(WHEEL_BYTES)

    monkeypatch.setattr(bb, "run", fake_pip)
    target_dir = tmp_path / "fresh-wheels"
    assert bb.download(lock, lock.pins, target_dir) == ([WHEEL], [])
    assert (target_dir / WHEEL).read_bytes() == WHEEL_BYTES
    (target_dir / WHEEL).write_bytes(b"corrupt")
    assert bb.download(lock, lock.pins, target_dir) == ([WHEEL], [WHEEL])
    assert (target_dir / WHEEL).read_bytes() == WHEEL_BYTES
    cmd = seen[0]
    assert cmd[:3] == [sys.executable, "-m", "pip"]
    for flag in ("--no-deps", "--require-hashes", "--only-binary=:all:"):
        assert flag in cmd
    assert cmd[cmd.index("--abi") + 1] == "cp312"
    platforms = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--platform"]
    assert platforms == ["manylinux_2_28_x86_64", "manylinux2014_x86_64", "any"]


def test_download_rejects_unlocked_hash(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = bb.load_lock(bundle / "locks" / "demo-cp312.txt")

    def evil_pip(cmd: Sequence[str], cwd: Path | None = None) -> None:
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir()
        (dest / WHEEL).write_bytes(b"tampered")

    monkeypatch.setattr(bb, "run", evil_pip)
    with pytest.raises(bb.BuildError, match="does not allow"):
        bb.download(lock, lock.pins, tmp_path / "w")
    assert not (tmp_path / "w" / WHEEL).exists()


# ----------------------------------------------------------------- SHA256SUMS


def test_sums_deterministic_sorted_lf(bundle: Path) -> None:
    for name in (
        "zeta-1.0-py3-none-any.whl",
        "Alpha-1.0-py3-none-any.whl",
        "mid-2-py3-none-any.whl",
    ):
        (bundle / "wheels" / name).write_bytes(name.encode())
    locks = [bundle / "locks" / "demo-cp312.txt"]
    first = bb.write_sums(bundle, locks).read_bytes()
    second = bb.write_sums(bundle, list(reversed(locks))).read_bytes()
    assert first == second
    assert b"\r" not in first and first.endswith(b"\n")
    paths = [line.split("  ", 1)[1] for line in first.decode().splitlines()]
    assert paths == sorted(paths)
    assert paths[0] == "locks/demo-cp312.txt" and "wheels/zeta-1.0-py3-none-any.whl" in paths
    assert all(len(line.split("  ", 1)[0]) == 64 for line in first.decode().splitlines())


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU sha256sum not installed")
def test_sums_accepted_by_gnu_sha256sum(bundle: Path) -> None:
    subprocess.run(
        ["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"],
        cwd=bundle,
        check=True,
    )


def test_check_passes_on_intact_bundle(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bb.check(bundle) == []
    assert bb.main(["--check", "--artifacts", str(bundle)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_detects_corrupted_wheel(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle / "wheels" / WHEEL).write_bytes(b"corrupted")
    assert bb.main(["--check", "--artifacts", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert f"wheels/{WHEEL}: sha256 mismatch" in err
    assert "no wheel for demo-pkg==1.0" in err


def test_check_detects_missing_extra_and_edited_lock(bundle: Path) -> None:
    (bundle / "wheels" / WHEEL).unlink()
    (bundle / "wheels" / "intruder-1.0-py3-none-any.whl").write_bytes(b"x")
    lock = bundle / "locks" / "demo-cp312.txt"
    lock.write_text(lock.read_text() + "# edited\n")
    problems = bb.check(bundle)
    assert f"wheels/{WHEEL}: missing" in problems
    assert "wheels/intruder-1.0-py3-none-any.whl: not listed in SHA256SUMS" in problems
    assert "locks/demo-cp312.txt: sha256 mismatch" in problems


def test_check_without_sums(tmp_path: Path) -> None:
    assert bb.check(tmp_path) == ["SHA256SUMS: missing (build the bundle first)"]


def test_check_warns_on_stale_lock(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle / "requirements" / "demo.in").write_text(IN_TEXT + "passlib\n")
    assert bb.check(bundle) == []
    assert "out of date" in capsys.readouterr().out


def test_version_table() -> None:
    lock = bb.Lock(
        "demo",
        CP312,
        Path("demo-cp312.txt"),
        bb.parse_pins("pip==26.3 --hash=sha256:" + "1" * 64 + "\n"),
    )
    table = bb.version_table([lock], [bb.Target(11), CP312]).splitlines()
    assert table[0].split() == ["package", "cp311", "cp312"]
    assert table[1].split() == ["pip", "-", "26.3"]
