"""pypi_server_releases, run as Ansible runs it: the previous release recorded, the oldest releases pruned."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import ROOT, module_argv

MODULE = ROOT / "roles" / "pypi_server" / "library" / "pypi_server_releases.py"


def run(tmp_path: Path, check_mode: bool = False, **params: Any) -> dict[str, Any]:
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check_mode}}))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False)
    return json.loads(done.stdout)


def releases(tmp_path: Path, names: list[str]) -> Path:
    """Release directories, the first the newest."""
    directory = tmp_path / "releases"
    directory.mkdir()
    for age, name in enumerate(names):
        (directory / name).mkdir()
        os.utime(directory / name, (1_000_000 - age * 100, 1_000_000 - age * 100))
    return directory


def test_records_the_previous_release_and_keeps_the_newest(tmp_path: Path) -> None:
    directory = releases(tmp_path, ["r5", "r4", "r3", "r2", "r1"])
    previous = directory / "previous"
    result = run(tmp_path, releases_dir=str(directory), current="r5", before="r1", previous_file=str(previous), keep=3)
    assert result["changed"] is True and result["previous"] == "r1", result
    assert previous.read_text() == "r1\n"
    # r5 (current) and r1 (previous) stay whatever their age; the newest one other (r4) fills the three kept.
    assert sorted(p.name for p in directory.iterdir()) == ["previous", "r1", "r4", "r5"]
    again = run(tmp_path, releases_dir=str(directory), current="r5", before="r5", previous_file=str(previous), keep=3)
    assert again["changed"] is False and again["removed"] == [] and again["previous"] == "r1"


def test_check_mode_reports_and_changes_nothing(tmp_path: Path) -> None:
    directory = releases(tmp_path, ["r3", "r2", "r1"])
    result = run(
        tmp_path,
        True,
        releases_dir=str(directory),
        current="r3",
        before="r2",
        previous_file=str(directory / "p"),
        keep=1,
    )
    assert result["changed"] is True and result["removed"] == ["r1"], result
    assert sorted(p.name for p in directory.iterdir()) == ["r1", "r2", "r3"]


def test_a_link_in_the_releases_directory_is_neither_followed_nor_removed(tmp_path: Path) -> None:
    directory = releases(tmp_path, ["r2", "r1"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (directory / "planted").symlink_to(outside)
    result = run(tmp_path, releases_dir=str(directory), current="r2", previous_file=str(directory / "p"), keep=1)
    assert result["removed"] == ["r1"], result
    assert (directory / "planted").is_symlink() and outside.is_dir()


def test_keep_below_one_is_refused(tmp_path: Path) -> None:
    directory = releases(tmp_path, ["r1"])
    result = run(tmp_path, releases_dir=str(directory), current="r1", previous_file=str(directory / "p"), keep=0)
    assert result["failed"] is True and "keep=0" in result["msg"]
