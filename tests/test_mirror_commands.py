"""The index's mirror-input, mirror-state and prune logic (roles/pypi_server/files/airgap_pypi_index.py), called
directly: which releases prune takes, which yanks the mirror changes, and the checks of their inputs. The playbooks
around them are tests/test_mirror_state_playbook.py's and tests/test_prune_playbook.py's."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import ROOT, load_module

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)


def whl(version: str, project: str = "demo") -> str:
    return f"{project}-{version}-py3-none-any.whl"


def test_prune_orders_by_version_counts_prereleases_and_never_takes_an_upload_or_a_subdirectory_file() -> None:
    found = {whl(v): v for v in ("1.0", "1.10", "1.9", "2.0rc1", "0.9")}
    found["sub/" + whl("0.1")] = "0.1"  # put in by hand below the packages directory
    mirrored = [name.rsplit("/", 1)[-1] for name in found] + ["sub/" + whl("0.1")]
    plan = index.plan_prune({"demo": found}, mirrored, uploaded=[whl("0.9")], keep=2)
    # newest first by PEP 440: 2.0rc1, 1.10 kept; 1.9 and 1.0 go (oldest first); 0.9 is an upload.
    assert plan == {"demo": [("1.0", [whl("1.0")]), ("1.9", [whl("1.9")])]}


def test_prune_keeps_what_the_current_mirror_carries_and_files_of_one_release_go_together() -> None:
    found = {whl("1.0"): "1.0", "demo-1.0.0.tar.gz": "1.0.0", whl("2.0"): "2.0", whl("3.0"): "3.0"}
    plan = index.plan_prune({"demo": found}, list(found), uploaded=[], keep=1, current=[whl("2.0")])
    assert plan == {"demo": [("1.0", sorted([whl("1.0"), "demo-1.0.0.tar.gz"]))]}


def test_mirror_yanks_leave_a_hand_yank_and_take_off_only_what_the_mirror_still_carries() -> None:
    document = {"files": [whl("1.0"), whl("2.0"), whl("3.0")], "yanked": {whl("1.0"): "a", whl("3.0"): "c"}}
    releases = {
        "demo": {
            "1.0": {"reason": "by hand", "when": "t"},  # the operator's: never changed
            "2.0": {"reason": "old", "when": "t", "origin": "mirror"},  # unmarked upstream now: taken off
            "4.0": {"reason": "gone", "when": "t", "origin": "mirror"},  # not carried any more: stays
        }
    }
    present = {"demo": ["1.0", "2.0", "3.0", "4.0"]}
    assert index.plan_mirror_yanks(document, releases, present) == [
        ("unyank", "demo", "2.0", None),
        ("yank", "demo", "3.0", "c"),
    ]


@pytest.mark.parametrize(
    ("document", "named"),
    [
        ({"files": ["x/" + whl("1.0")], "yanked": {}}, "is not a distribution file name"),
        ({"files": [whl("1.0")], "yanked": []}, "yanked.json is not an object"),
        ({"files": [whl("1.0")], "yanked": {whl("2.0"): ""}}, f"names '{whl('2.0')}', a file the mirror does not"),
        ({"files": [whl("1.0")], "yanked": {whl("1.0"): "a\u202eb"}}, "control character U+202E"),
    ],
)
def test_an_unfit_mirror_document_is_named(document: dict, named: str) -> None:
    assert named in (index.mirror_document_problem(document) or "")


def test_mirror_input_reads_sha256sums_and_yanked_json_without_following_a_link(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / whl("1.0")).write_bytes(b"w")
    sums = f"{hashlib.sha256(b'w').hexdigest()}  files/{whl('1.0')}\n"
    (tmp_path / "SHA256SUMS").write_text(sums + f"{'0' * 64}  locks/cp312-x.txt\n")
    assert index.read_mirror_input(str(tmp_path)) == {"format": 1, "files": [whl("1.0")], "yanked": {}}
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({whl("1.0"): "r"}))
    (tmp_path / "yanked.json").symlink_to(elsewhere)
    with pytest.raises(index.Refusal, match="a link is never followed"):
        index.read_mirror_input(str(tmp_path))


@pytest.mark.parametrize("content", ["[]", '{"format": 1, "files": {}}', '{"format": 2, "files": []}', "nope"])
def test_an_unusable_mirrored_json_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "mirrored.json"
    path.write_text(content)
    with pytest.raises(index.Refusal, match=r"mirrored\.json"):
        index.read_mirrored_file(str(path))


def test_the_mirror_stamp_replaces_older_stamps_and_follows_no_link(tmp_path: Path) -> None:
    prefix = index.MIRROR_STAMP_PREFIX
    (tmp_path / f"{prefix}old").write_text("")
    (tmp_path / "mirrored.json").write_text("{}")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("kept")
    (tmp_path / f"{prefix}link").symlink_to(elsewhere / "keep")
    index.write_mirror_stamp(str(tmp_path / f"{prefix}new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{prefix}new", "elsewhere", "mirrored.json"]
    assert (elsewhere / "keep").read_text() == "kept", "the link was removed, not what it points to"
    (tmp_path / f"{prefix}again").symlink_to(elsewhere / "planted")
    with pytest.raises(FileExistsError):  # a link at the stamp's temporary name is never written through
        (tmp_path / f".{prefix}again.{os.getpid()}.tmp").symlink_to(elsewhere / "planted")
        index.write_mirror_stamp(str(tmp_path / f"{prefix}again"))
    assert not (elsewhere / "planted").exists()


def test_mirror_state_refuses_a_stamp_of_another_name(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["mirror-state", "--packages=/nonexistent", "--tree=/nonexistent", "--yanked=/y", "--mirrored=/m"]
    assert index.main([*argv, "--stamp=/srv/pypi/yanked.json"]) == 2
    assert "--stamp=/srv/pypi/yanked.json: the name must start with .mirror-applied-" in capsys.readouterr().err
