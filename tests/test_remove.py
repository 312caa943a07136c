"""Removal in the static read path (roles/pypi_server/files/airgap_pypi_index.py `remove`): files moved aside with
their record, the pages and metadata files that go with them, the refusals, links, check mode and the pruning of
old removals."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, load_module
from test_static_index import call, links_of, upstream
from test_yank import page_ids

from scripts.demo_wheel import build_wheel

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)

NEW, OLD = "demo-2.0-py3-none-any.whl", "demo-1.0-py3-none-any.whl"
# A second file of release 2.0 (PEP 440: 2.0.0 is 2.0), in a subdirectory as pypiserver allows.
SECOND = "sub/demo-2.0.0-py3-none-any.whl"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """A data directory as the role lays it out: packages/ with demo 1.0 and two files of 2.0, and other 1.0; the
    pages written; the place of removed/."""
    data = tmp_path / "data"
    packages = data / "packages"
    (packages / "sub").mkdir(parents=True)
    build_wheel(packages, "demo", "1.0")
    build_wheel(packages, "demo", "2.0")
    shutil.copy(packages / NEW, packages / SECOND)
    build_wheel(packages, "other", "1.0")
    site = {"packages": packages, "tree": data / "static", "removed": data / "removed", "yanked": data / "yanked.json"}
    done = cli(site)
    assert done.returncode == 0, done.stderr
    return site


def cli(site: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    """The module's command line as the role runs it: `remove ARGS` with the layout, or the plain sync."""
    paths = ["--packages", str(site["packages"]), "--tree", str(site["tree"]), "--yanked", str(site["yanked"])]
    argv = ["remove", *paths, "--removed", str(site["removed"]), *args] if args else paths
    return subprocess.run([sys.executable, str(MODULE), *argv], capture_output=True, text=True, timeout=60, check=False)


def result_line(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def listed(site: dict[str, Path], project: str = "demo") -> list[str]:
    """The file names the project's PEP 503 page links to ([] when it has no page)."""
    page = site["tree"] / "simple" / project / "index.html"
    return sorted(text for _, text in links_of(page)) if page.exists() else []


def package_files(site: dict[str, Path]) -> list[str]:
    return sorted(str(path.relative_to(site["packages"])) for path in site["packages"].rglob("*") if path.is_file())


def entries(site: dict[str, Path]) -> list[str]:
    return sorted(path.name for path in site["removed"].iterdir()) if site["removed"].exists() else []


def old_entry(site: dict[str, Path], name: str, days: float) -> Path:
    """An entry of the removed directory as a removal `days` ago made it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - days * 86400))
    entry = site["removed"] / f"{stamp}-{name}"
    entry.mkdir(parents=True)
    (entry / "record.json").write_text(json.dumps({"project": name, "version": "1", "files": []}))
    (entry / f"{name}.whl").write_bytes(b"kept")
    return entry


def test_a_release_is_moved_aside_with_its_record_and_off_the_pages_before_the_command_returns(
    site: dict[str, Path],
) -> None:
    sums = {relfn: hashlib.sha256((site["packages"] / relfn).read_bytes()).hexdigest() for relfn in (NEW, SECOND)}
    sizes = {relfn: (site["packages"] / relfn).stat().st_size for relfn in (NEW, SECOND)}
    metadata = site["tree"] / "metadata"
    assert (metadata / f"{NEW}.metadata").exists() and (metadata / f"{SECOND}.metadata").exists()
    other = page_ids(site, "other")
    assert listed(site) == sorted([OLD, NEW, SECOND.split("/")[1]])

    # A worker that served the pages before the removal.
    app = index.StaticIndex(upstream, str(site["packages"]), str(site["tree"]), yanked=str(site["yanked"]))
    assert call(app, f"/packages/{NEW}")[0] == "200 OK" and NEW.encode() in call(app, "/simple/demo/")[2]

    done = result_line(cli(site, "--project", "Demo", "--version", "2.0"))
    assert done["changed"] is True and done["project"] == "demo" and done["version"] == "2.0"
    assert done["files"] == [NEW, SECOND] and done["pages"] == ["demo"] and done["pruned"] == []
    assert f"2 file(s) moved off the index to {site['removed']}/" in done["message"]
    assert package_files(site) == [OLD, "other-1.0-py3-none-any.whl"]
    assert listed(site) == [OLD], "the page no longer lists them when the command returns"
    assert NEW not in (site["tree"] / "simple" / "demo" / "index.json").read_text()
    assert not (metadata / f"{NEW}.metadata").exists() and not (metadata / f"{SECOND}.metadata").exists()
    assert (metadata / f"{OLD}.metadata").exists()
    assert page_ids(site, "other") == other, "only the project's pages were written"
    assert call(app, f"/packages/{NEW}")[0].startswith("404") and NEW.encode() not in call(app, "/simple/demo/")[2]

    (entry,) = entries(site)
    assert re.fullmatch(r"[0-9]{8}T[0-9]{6}Z-demo-2\.0", entry) and done["removed_to"] == str(site["removed"] / entry)
    kept = site["removed"] / entry
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file()) == sorted(
        ["record.json", NEW, SECOND]
    )
    assert all(hashlib.sha256((kept / relfn).read_bytes()).hexdigest() == sums[relfn] for relfn in sums)
    record = json.loads((kept / "record.json").read_text())
    assert record["format"] == 1 and record["project"] == "demo" and record["version"] == "2.0"
    assert record["files"] == [{"name": relfn, "sha256": sums[relfn], "size": sizes[relfn]} for relfn in (NEW, SECOND)]
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z", record["time"]) and isinstance(record["by"], str)
    assert oct(site["removed"].stat().st_mode & 0o777) == "0o700", "removed files are nobody's to download"


def test_one_file_is_removed_by_its_name_and_the_last_file_takes_the_project_off(site: dict[str, Path]) -> None:
    done = result_line(cli(site, "--project", "demo", "--file", NEW))
    assert done["files"] == [NEW] and package_files(site) == sorted([OLD, SECOND, "other-1.0-py3-none-any.whl"])
    assert listed(site) == sorted([OLD, SECOND.split("/")[1]])
    result_line(cli(site, "--project", "demo", "--version", "1.0"))
    result_line(cli(site, "--project", "demo", "--version", "2.0", "--file", SECOND.split("/")[1]))
    assert listed(site) == [] and not (site["tree"] / "simple" / "demo").exists()
    assert "demo" not in json.dumps(json.loads((site["tree"] / "simple" / "index.json").read_text()))


def test_a_second_run_changes_nothing_and_a_version_never_there_is_refused(site: dict[str, Path]) -> None:
    first = result_line(cli(site, "--project", "demo", "--version", "2.0"))
    again = result_line(cli(site, "--project", "demo", "--version", "2.0.0"))
    assert again["changed"] is False and again["files"] == [] and again["already"] == first["removed_to"]
    assert "was already removed" in again["message"] and again["message"].endswith(": nothing to do")
    assert len(entries(site)) == 1
    assert result_line(cli(site, "--project", "demo", "--file", NEW))["changed"] is False
    done = cli(site, "--project", "demo", "--version", "3.0")
    assert done.returncode == 2 and "demo has no file of this version (its versions: 1.0)" in done.stderr


def test_check_says_what_would_change_and_writes_nothing(site: dict[str, Path]) -> None:
    pages = page_ids(site, "demo")
    before = package_files(site)
    done = result_line(cli(site, "--project", "demo", "--version", "2.0", "--check"))
    assert done["changed"] is True and done["check"] is True and "2 file(s) would be moved" in done["message"]
    assert "pages" not in done and package_files(site) == before and page_ids(site, "demo") == pages
    assert not site["removed"].exists(), "not even the removed directory is made"
    old = old_entry(site, "gone", days=40)
    done = result_line(cli(site, "--project", "demo", "--version", "2.0", "--check"))
    assert done["pruned"] == [old.name] and "1 removal(s) older than 30 days would be deleted" in done["message"]
    assert entries(site) == [old.name] and (old / "gone.whl").exists()


def test_removals_older_than_keep_days_are_deleted_and_nothing_else(site: dict[str, Path]) -> None:
    old = old_entry(site, "old", days=31)
    recent = old_entry(site, "recent", days=29)
    (site["removed"] / "notes").mkdir()  # not a removal's name: never touched
    done = result_line(cli(site, "--project", "demo", "--version", "1.0", "--keep-days", "0"))
    assert done["pruned"] == [] and old.exists(), "0 keeps every removal"
    done = result_line(cli(site, "--project", "demo", "--version", "2.0"))
    assert done["pruned"] == [old.name] and "1 removal(s) older than 30 days deleted" in done["message"]
    assert not old.exists() and recent.exists() and (site["removed"] / "notes").exists()
    assert len(entries(site)) == 4
    # A run that removes nothing still prunes, and says so as a change.
    done = result_line(cli(site, "--project", "demo", "--version", "2.0", "--keep-days", "1"))
    assert done["changed"] is True and done["pruned"] == [recent.name] and "already removed" in done["message"]


def test_links_are_never_followed(site: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    # A removed directory that is a link: refused, nothing moved.
    site["removed"].symlink_to(elsewhere)
    done = cli(site, "--project", "demo", "--version", "2.0")
    assert done.returncode == 2, done.stderr
    assert f"--removed {site['removed']}: a symbolic link" in done.stderr and "Nothing was changed." in done.stderr
    assert NEW in package_files(site) and [path.name for path in elsewhere.iterdir()] == ["precious"]
    site["removed"].unlink()
    # An old removal that is a link, and a link inside an old removal: the links go at most, never their targets.
    site["removed"].mkdir()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 90 * 86400))
    (site["removed"] / f"{stamp}-linked-1.0").symlink_to(elsewhere)
    old = old_entry(site, "old", days=90)
    (old / "inside").symlink_to(elsewhere)
    # A link in the packages directory named as a file of demo: not a file of the index, never moved.
    (site["packages"] / "demo-3.0-py3-none-any.whl").symlink_to(site["packages"] / OLD)
    done = cli(site, "--project", "demo", "--version", "3.0")
    assert done.returncode == 2 and "demo has no file of this version" in done.stderr
    assert (site["packages"] / "demo-3.0-py3-none-any.whl").is_symlink()
    done = result_line(cli(site, "--project", "demo", "--version", "2.0"))
    assert done["pruned"] == [old.name] and not old.exists()
    assert (site["removed"] / f"{stamp}-linked-1.0").is_symlink()
    assert [path.name for path in elsewhere.iterdir()] == ["precious"] and (
        elsewhere / "precious"
    ).read_text() == "keep"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--project", "absent", "--version", "1.0"), "--project 'absent': the packages directory ("),
        (("--project", "demo", "--version", "3.0"), "--version '3.0': demo has no file of this version"),
        (("--project", "demo", "--file", "demo-3.0-py3-none-any.whl"), "demo has no file of this name (its files: "),
        (("--project", "demo", "--file", "other-1.0-py3-none-any.whl"), "a file of other, not of demo"),
        (("--project", "demo", "--file", "sub/" + NEW), "--file 'sub/demo-2.0-py3-none-any.whl': a file name, not a"),
        (("--project", "demo", "--file", "../demo-2.0.whl"), "a file name, not a path"),
        (("--project", "demo", "--file", "README.txt"), "not the name of a distribution file"),
        (("--project", "demo", "--version", "1.0", "--file", NEW), "a file of version 2.0, not 1.0"),
        (("--project", "demo"), "name what to remove: --version or --file."),
        (("--project", "../etc", "--version", "2.0"), "--project '../etc': not a project name"),
        (("--project", "demo", "--version", "2.0", "--keep-days", "-1"), "--keep-days -1: 0 (keep forever)"),
    ],
)
def test_each_refusal_names_the_bad_value_and_changes_nothing(
    site: dict[str, Path], args: tuple[str, ...], message: str
) -> None:
    before = package_files(site)
    pages = page_ids(site, "demo")
    done = cli(site, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Nothing was changed." in done.stderr, done.stderr
    assert done.stdout == ""
    assert package_files(site) == before and page_ids(site, "demo") == pages
    assert not site["removed"].exists(), "not even the removed directory is made"


def test_a_nul_in_the_file_name_is_refused(site: dict[str, Path]) -> None:
    """No NUL can pass through argv: the check itself, in-process."""
    tree = index.Tree(str(site["packages"]), str(site["tree"]))
    with pytest.raises(index.Refusal, match=r"--file 'demo-2\.0-py3-none-any\.whl\\x00': a file name, not a path"):
        index.remove_release(
            tree, str(site["removed"]), "demo", version=None, filename=NEW + "\x00", keep_days=30, check=False
        )
    assert NEW in package_files(site) and not site["removed"].exists()


def test_a_removed_path_that_is_a_file_is_refused(site: dict[str, Path]) -> None:
    site["removed"].write_text("not a directory")
    done = cli(site, "--project", "demo", "--version", "2.0")
    assert done.returncode == 2 and f"--removed {site['removed']}: not a directory." in done.stderr, done.stderr
    assert NEW in package_files(site)


def test_help_names_the_command() -> None:
    done = subprocess.run([sys.executable, str(MODULE), "--help"], capture_output=True, text=True, check=True)
    assert "remove" in done.stdout
    done = subprocess.run([sys.executable, str(MODULE), "remove", "--help"], capture_output=True, text=True, check=True)
    assert "--keep-days" in done.stdout and "--file" in done.stdout and "--check" in done.stdout
