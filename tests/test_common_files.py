"""pypi_common_files, run as Ansible runs it: directories, contents, absent paths; idempotent and check mode."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
from pathlib import Path
from typing import Any

from conftest import module_argv

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "roles" / "pypi_common" / "library" / "pypi_common_files.py"
OWNER = pwd.getpwuid(os.getuid()).pw_name
GROUP = grp.getgrgid(os.getgid()).gr_name


def run(
    tmp_path: Path, paths: list[dict[str, Any]], check: bool = False, diff: bool = False, **extra: Any
) -> dict[str, Any]:
    """The module's JSON result for these paths (it runs as a separate process, as on a host)."""
    args = tmp_path / f"args-{len(list(tmp_path.glob('args-*')))}.json"
    params = {"paths": paths, "_ansible_check_mode": check, "_ansible_diff": diff, **extra}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)
    assert not result.get("failed"), result
    return result


def mode_of(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def layout(base: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(base / "a" / "b"), "state": "directory", "owner": OWNER, "group": GROUP, "mode": "0750"},
        {"path": str(base / "a" / "b" / "conf"), "state": "file", "content": "x = 1\n", "mode": "0640"},
        {"path": str(base / "a" / "htpasswd"), "state": "file", "content": "", "force": False, "mode": "0600"},
        {"path": str(base / "gone"), "state": "absent"},
    ]


def test_creates_everything_then_changes_nothing(tmp_path: Path) -> None:
    base = tmp_path / "root"
    (base / "gone").mkdir(parents=True)
    (base / "gone" / "file").write_text("old")
    first = run(tmp_path, layout(base))
    assert first["changed"] and len(first["changed_paths"]) == 4
    assert mode_of(base / "a") == "0o750", "a missing parent gets the directory's mode, as the file module does"
    assert mode_of(base / "a" / "b") == "0o750"
    assert (base / "a" / "b" / "conf").read_text() == "x = 1\n" and mode_of(base / "a" / "b" / "conf") == "0o640"
    assert (base / "a" / "htpasswd").read_text() == "" and mode_of(base / "a" / "htpasswd") == "0o600"
    assert not (base / "gone").exists()
    second = run(tmp_path, layout(base))
    assert not second["changed"] and second["changed_paths"] == []


def test_check_mode_reports_but_does_not_touch(tmp_path: Path) -> None:
    base = tmp_path / "root"
    result = run(tmp_path, layout(base), check=True)
    assert result["changed"]
    assert not base.exists()
    run(tmp_path, layout(base))
    (base / "a" / "b").chmod(0o755)
    (base / "a" / "b" / "conf").write_text("x = 2\n")
    drift = run(tmp_path, layout(base), check=True, diff=True)
    assert drift["changed_paths"] == [str(base / "a" / "b"), str(base / "a" / "b" / "conf")]
    assert drift["diff"][0]["before"] == "x = 2\n" and drift["diff"][0]["after"] == "x = 1\n"
    assert mode_of(base / "a" / "b") == "0o755" and (base / "a" / "b" / "conf").read_text() == "x = 2\n"


def test_repairs_contents_and_mode_but_keeps_a_file_without_force(tmp_path: Path) -> None:
    base = tmp_path / "root"
    run(tmp_path, layout(base))
    (base / "a" / "b" / "conf").write_text("edited by hand\n")
    (base / "a" / "htpasswd").write_text("alice:$apr1$...\n")
    (base / "a" / "htpasswd").chmod(0o644)
    result = run(tmp_path, layout(base))
    assert result["changed_paths"] == [str(base / "a" / "b" / "conf"), str(base / "a" / "htpasswd")]
    assert (base / "a" / "b" / "conf").read_text() == "x = 1\n"
    assert (base / "a" / "htpasswd").read_text() == "alice:$apr1$...\n", "force: false never overwrites"
    assert mode_of(base / "a" / "htpasswd") == "0o600", "but its mode is still enforced"


def test_a_file_where_a_directory_belongs_fails(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    args = tmp_path / "args.json"
    params = {"paths": [{"path": str(tmp_path / "taken"), "state": "directory"}]}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)
    assert result["failed"] and "is not a directory" in result["msg"]


def test_verify_checks_the_listed_files_as_sha256sum_would(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.whl", tmp_path / "bad.whl"
    good.write_bytes(b"good")
    bad.write_bytes(b"tampered")
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in [("good.whl", b"good"), ("bad.whl", b"bad")]
    )
    entry = {"path": str(tmp_path / "SHA256SUMS"), "state": "file", "content": sums}
    result = run(tmp_path, [entry], verify=str(tmp_path / "SHA256SUMS"), probe=[str(good), str(tmp_path / "none")])
    assert result["verified"] is False and result["mismatched"] == ["bad.whl"], result
    assert result["present"] == [str(good)]
    bad.write_bytes(b"bad")
    assert run(tmp_path, [entry], verify=str(tmp_path / "SHA256SUMS"))["verified"] is True


def test_probe_reports_plain_files_only(tmp_path: Path) -> None:
    """A link planted at a marker's name (even to a plain file) or a directory there does not count as the marker."""
    marker, linked, folder = tmp_path / "marker", tmp_path / "linked", tmp_path / "folder"
    marker.write_text("lock\n")
    linked.symlink_to(marker)
    folder.mkdir()
    probe = [str(marker), str(linked), str(folder), str(tmp_path / "none")]
    assert run(tmp_path, [], probe=probe)["present"] == [str(marker)]


def test_verify_in_check_mode_uses_the_content_that_would_be_written(tmp_path: Path) -> None:
    (tmp_path / "a.whl").write_bytes(b"a")
    sums = f"{hashlib.sha256(b'a').hexdigest()}  a.whl\n"
    entry = {"path": str(tmp_path / "SHA256SUMS"), "state": "file", "content": sums}
    result = run(tmp_path, [entry], check=True, verify=str(tmp_path / "SHA256SUMS"))
    assert result["changed"] is True and result["verified"] is True, result
    assert not (tmp_path / "SHA256SUMS").exists()


def test_compare_names_missing_files_and_files_with_other_bytes(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    (packages / "same.whl").write_bytes(b"same")
    (packages / "other.whl").write_bytes(b"changed by hand")
    (packages / "link.whl").symlink_to(packages / "same.whl")
    sums = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        for name, data in [("same.whl", b"same"), ("other.whl", b"other"), ("gone.whl", b"gone"), ("link.whl", b"same")]
    )
    result = run(tmp_path, [], compare={"dir": str(packages), "sums": sums})
    assert result["compared"] == {"missing": ["gone.whl"], "differ": ["other.whl", "link.whl"]}, result
    # Check mode on a new host: the directory is not there yet, so every file is missing.
    fresh = run(tmp_path, [], check=True, compare={"dir": str(tmp_path / "none"), "sums": sums})
    assert fresh["compared"]["missing"] == ["same.whl", "other.whl", "gone.whl", "link.whl"]


def test_compare_refuses_a_name_that_leaves_the_directory(tmp_path: Path) -> None:
    args = tmp_path / "args.json"
    bad = f"{'0' * 64}  ../etc/passwd\n"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"paths": [], "compare": {"dir": str(tmp_path), "sums": bad}}}))
    result = json.loads(subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False).stdout)
    assert result["failed"] is True and "bad line" in result["msg"]


def test_compare_counts_a_fifo_as_other_bytes_without_hanging(tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    os.mkfifo(packages / "planted.whl")
    sums = f"{hashlib.sha256(b'x').hexdigest()}  planted.whl\n"
    result = run(tmp_path, [], compare={"dir": str(packages), "sums": sums})
    assert result["compared"] == {"missing": [], "differ": ["planted.whl"]}, result
