"""The audit trail (roles/pypi_server/files/airgap_pypi_index.py): one JSON line per change, appended whole under
a lock by concurrent writers, bounded fields, rotation by size, never through a link; uploads.json and what the
pages make of it (PEP 700's upload-time, "uploaded by" on the browse page); the yank and remove commands' records."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import ROOT, load_module, module_argv
from test_static_index import PROJECT_SCHEMA

from scripts.demo_wheel import build_wheel

MODULE = ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py"
index = load_module("airgap_pypi_index", MODULE)
filters = load_module("pypi_server_filters", ROOT / "roles" / "pypi_server" / "filter_plugins" / "pypi_server.py")

FIELDS = ["time", "account", "client", "action", "project", "version", "file", "sha256", "subject"]


def lines_of(directory: Path, name: str = "audit.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / name).read_text().splitlines()]


def every_line(directory: Path) -> list[dict[str, Any]]:
    """The records of the log and its rotated files, oldest file first."""
    names = sorted(
        (p.name for p in directory.glob("audit.jsonl*")),
        key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0,
    )
    return [record for name in names for record in lines_of(directory, name)]


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "audit"
    directory.mkdir(mode=0o750)
    return directory


def test_a_record_is_one_json_line_with_every_field_and_nulls_where_none_applies(audit_dir: Path) -> None:
    log = index.AuditLog(str(audit_dir))
    log.append(
        "upload",
        account="alice",
        client="10.0.0.7",
        project="demo",
        version="1.0",
        filename="demo-1.0.tar.gz",
        sha256="ab" * 32,
    )
    log.append("yank", account="ops", client="ansible", project="demo", version="1.0")
    first, second = lines_of(audit_dir)
    assert list(first) == FIELDS and list(second) == FIELDS
    assert first["action"] == "upload" and first["account"] == "alice" and first["client"] == "10.0.0.7"
    assert first["file"] == "demo-1.0.tar.gz" and first["sha256"] == "ab" * 32
    assert second["file"] is None and second["sha256"] is None
    assert first["time"].endswith("Z") and index._UPLOAD_TIME.match(first["time"])
    mode = stat.S_IMODE((audit_dir / "audit.jsonl").stat().st_mode)
    assert mode == 0o640


def test_fields_are_cut_to_their_bounds_and_line_breaks_never_split_a_record(audit_dir: Path) -> None:
    log = index.AuditLog(str(audit_dir))
    hostile = 'x\n{"action": "remove"}\r\u2028' + "y" * 5000
    log.append("upload", account=hostile, client=hostile, project=hostile, version=hostile, filename=hostile)
    raw = (audit_dir / "audit.jsonl").read_bytes()
    assert raw.count(b"\n") == 1 and raw.isascii()
    (record,) = lines_of(audit_dir)
    for field, limit in index.AUDIT_LIMITS.items():
        assert record[field] is None or len(record[field]) <= limit
    assert record["action"] == "upload"
    assert record["account"].startswith('x\n{"action"')  # kept as text, escaped in the file


def _append_many(directory: str, worker: int, count: int) -> None:
    log = index.AuditLog(directory, max_bytes=64 << 10, keep=50)
    for number in range(count):
        log.append("upload", account=f"w{worker}", client="127.0.0.1", project="p" * 150, version=str(number))


def test_concurrent_writers_never_interleave_or_lose_a_line_across_rotations(audit_dir: Path) -> None:
    workers, count = 6, 150
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_append_many, args=(str(audit_dir), w, count)) for w in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    records = every_line(audit_dir)  # every line parses as a whole record
    assert len(records) == workers * count
    assert len(list(audit_dir.glob("audit.jsonl.*"))) >= 2  # it did rotate, while they wrote
    for worker in range(workers):  # each writer's lines in its own order: nothing lost, nothing repeated
        assert [int(r["version"]) for r in records if r["account"] == f"w{worker}"] == list(range(count))
    for name in audit_dir.glob("audit.jsonl*"):
        assert name.stat().st_size <= 64 << 10


def test_rotation_keeps_keep_files_and_deletes_the_oldest(audit_dir: Path) -> None:
    log = index.AuditLog(str(audit_dir), max_bytes=index.MIN_AUDIT_BYTES, keep=2)
    (audit_dir / "audit.jsonl.7").write_text("{}\n")  # left by a larger pypi_server_audit_keep before
    for number in range(2000):  # about 300 KB: several rotations
        log.append("yank", account="ops", client="ansible", project="p" * 100, version=str(number))
    assert sorted(p.name for p in audit_dir.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    kept = every_line(audit_dir)
    assert [int(r["version"]) for r in kept] == list(range(2000 - len(kept), 2000))  # the newest, in order


def test_bad_settings_are_refused_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="pypi_server_audit_keep"):
        index.AuditLog("/nonexistent", keep=0)
    with pytest.raises(ValueError, match="pypi_server_audit_max_mb"):
        index.AuditLog("/nonexistent", max_bytes=1000)


def test_a_link_in_place_of_the_log_or_the_directory_is_never_followed(audit_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    (audit_dir / "audit.jsonl").symlink_to(target)
    log = index.AuditLog(str(audit_dir))
    with pytest.raises(index.AuditError, match="symbolic link"):
        log.append("yank", account="ops", client="ansible", project="demo", version="1.0")
    assert target.read_text() == "untouched\n"
    linked = tmp_path / "linked-audit"
    linked.symlink_to(audit_dir)
    with pytest.raises(index.AuditError, match="symbolic link"):
        index.AuditLog(str(linked)).append("yank", account="ops", client="ansible", project="demo", version="1.0")


def test_a_failed_append_is_logged_and_counted_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = index.AuditLog(str(tmp_path / "missing"))
    assert log.record("upload", account="alice", client="10.0.0.7", project="demo", filename="demo-1.0.tar.gz") is False
    assert log.failures == 1
    assert "AUDIT RECORD LOST" in caplog.text and "demo-1.0.tar.gz" in caplog.text


def test_an_upload_enters_uploads_json_and_a_removal_takes_it_out(audit_dir: Path) -> None:
    log = index.AuditLog(str(audit_dir))
    log.append("upload", account="alice", client="::1", project="demo", version="1.0", filename="demo-1.0.tar.gz")
    log.append("upload", account="bob", client="::1", project="demo", version="2.0", filename="demo-2.0.tar.gz")
    uploads = index.read_uploads_file(log.uploads_file)
    assert uploads["demo-1.0.tar.gz"]["account"] == "alice" and uploads["demo-2.0.tar.gz"]["account"] == "bob"
    log.append(
        "remove",
        account="ops",
        client="ansible",
        project="demo",
        version="1.0",
        filename="demo-1.0.tar.gz",
        forget=["demo-1.0.tar.gz"],
    )
    assert list(index.read_uploads_file(log.uploads_file)) == ["demo-2.0.tar.gz"]
    assert stat.S_IMODE(Path(log.uploads_file).stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"../x.whl": {"time": "2026-01-02T03:04:05Z", "account": "a"}}, "not a file name of the packages directory"),
        ({"x.whl": {"time": "yesterday", "account": "a"}}, "is not YYYY-MM-DDTHH:MM:SSZ"),
        ({"x.whl": {"time": "2026-01-02T03:04:05Z", "account": "a\u202e"}}, "control character U\\+202E"),
    ],
)
def test_a_bad_uploads_file_is_refused_naming_the_problem_and_its_fix(
    audit_dir: Path, entry: dict[str, Any], problem: str
) -> None:
    (audit_dir / "uploads.json").write_text(json.dumps({"format": 1, "files": entry}))
    with pytest.raises(index.AuditError, match=f"{problem}.*move it aside"):
        index.read_uploads_file(str(audit_dir / "uploads.json"))


# --- the pages --------------------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, audit_dir: Path) -> dict[str, Any]:
    packages = tmp_path / "packages"
    packages.mkdir()
    recorded = build_wheel(packages, "demo", "1.0")
    mirrored = build_wheel(packages, "demo", "2.0")  # no audit record: loaded from a mirror
    log = index.AuditLog(str(audit_dir))
    log.append("upload", account="<alice>", client="10.0.0.7", project="demo", version="1.0", filename=recorded.name)
    tree = index.Tree(str(packages), str(tmp_path / "static"), uploads=log.uploads_file)
    tree.sync()
    return {"tree": tree, "log": log, "recorded": recorded, "mirrored": mirrored, "static": tmp_path / "static"}


def test_json_pages_carry_pep700_upload_time_only_for_files_with_a_record(site: dict[str, Any]) -> None:
    document = json.loads((site["static"] / "simple" / "demo" / "index.json").read_text())
    jsonschema.validate(document, PROJECT_SCHEMA)
    assert document["meta"]["api-version"] == "1.1"  # PEP 700's keys need 1.1
    files = {item["filename"]: item for item in document["files"]}
    when = index.read_uploads_file(site["log"].uploads_file)[site["recorded"].name]["time"]
    assert files[site["recorded"].name]["upload-time"] == when
    assert index._UPLOAD_TIME.match(when)
    assert "upload-time" not in files[site["mirrored"].name]


def test_the_browse_page_says_who_uploaded_a_file_and_when_escaped(site: dict[str, Any]) -> None:
    page = (site["static"] / "browse" / "demo.html").read_text()
    assert page.count("uploaded by") == 1  # the mirrored file has no line
    assert "uploaded by &lt;alice&gt; on " in page and "<alice>" not in page


def test_the_pages_follow_the_uploads_file_without_reading_the_log(site: dict[str, Any]) -> None:
    tree, log = site["tree"], site["log"]
    (Path(log.directory) / "audit.jsonl").unlink()  # the pages never need the log itself
    log.append(
        "upload", account="bob", client="10.0.0.8", project="demo", version="2.0", filename=site["mirrored"].name
    )
    assert tree.sync() == ["demo"]
    document = json.loads((site["static"] / "simple" / "demo" / "index.json").read_text())
    assert all("upload-time" in item for item in document["files"])
    assert tree.sync() == []  # an unchanged uploads file changes nothing


def test_a_tree_without_an_uploads_file_keeps_the_upload_times_it_shows(site: dict[str, Any]) -> None:
    tree = index.Tree(site["tree"].packages, site["tree"].tree)  # as a caller that does not know the audit trail
    assert tree.sync(rebuild=True) == ["demo"]
    document = json.loads((site["static"] / "simple" / "demo" / "index.json").read_text())
    assert "upload-time" in {key for item in document["files"] for key in item}


# --- the yank and remove commands -------------------------------------------------------------------------------


def cli(site: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    tree = site["tree"]
    common = [
        "--packages",
        tree.packages,
        "--tree",
        tree.tree,
        "--yanked",
        str(Path(tree.tree).parent / "yanked.json"),
    ]
    return subprocess.run(
        [sys.executable, str(MODULE), args[0], *common, "--audit", site["log"].directory, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_yank_and_unyank_are_recorded_with_the_account_and_client_given(site: dict[str, Any]) -> None:
    done = cli(site, "yank", "--project", "Demo", "--version", "1.0", "--account", "carol", "--client", "ansible")
    assert done.returncode == 0, done.stderr
    cli(site, "yank", "--project", "demo", "--version", "1.0", "--account", "carol")  # nothing changes: no record
    cli(site, "unyank", "--project", "demo", "--version", "1.0", "--account", "carol", "--client", "ansible")
    records = lines_of(Path(site["log"].directory))[1:]
    assert [(r["action"], r["account"], r["client"], r["project"], r["version"]) for r in records] == [
        ("yank", "carol", "ansible", "demo", "1.0"),
        ("unyank", "carol", "ansible", "demo", "1.0"),
    ]


def test_a_removal_is_recorded_per_file_with_its_sha256_and_leaves_uploads_json(
    site: dict[str, Any], tmp_path: Path
) -> None:
    digest = hashlib.sha256(site["recorded"].read_bytes()).hexdigest()
    done = cli(
        site,
        "remove",
        "--removed",
        str(tmp_path / "removed"),
        "--project",
        "demo",
        "--version",
        "1.0",
        "--account",
        "ops",
    )
    assert done.returncode == 0, done.stderr
    record = lines_of(Path(site["log"].directory))[-1]
    assert (record["action"], record["account"], record["file"], record["sha256"]) == (
        "remove",
        "ops",
        site["recorded"].name,
        digest,
    )
    assert "record_files" not in json.loads(done.stdout.splitlines()[-1])
    assert site["recorded"].name not in index.read_uploads_file(site["log"].uploads_file)


def test_a_bad_account_is_refused_before_any_change(site: dict[str, Any]) -> None:
    done = cli(site, "yank", "--project", "demo", "--version", "1.0", "--account", "ops\x1b[2J")
    assert done.returncode == 2 and "--account" in done.stderr and "U+001B" in done.stderr
    assert len(lines_of(Path(site["log"].directory))) == 1
    assert not (Path(site["tree"].tree).parent / "yanked.json").exists()


def test_a_change_whose_record_cannot_be_written_stands_and_fails_loudly(site: dict[str, Any]) -> None:
    log = Path(site["log"].directory) / "audit.jsonl"
    log.unlink()
    log.mkdir()  # not a file: every append fails, whoever runs the command
    done = cli(site, "yank", "--project", "demo", "--version", "1.0", "--account", "ops")
    assert done.returncode == 1
    assert "AUDIT RECORD LOST" in done.stderr and "audit record could not be written" in done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["changed"] is True  # the yank stands, and its pages
    assert "data-yanked" in (Path(site["tree"].tree) / "simple" / "demo" / "index.html").read_text()


def test_lost_records_are_counted_in_the_metrics_summed_over_workers() -> None:
    one = index.Metrics()
    one.record_lost()
    again = index.Metrics.from_document(json.loads(json.dumps(one.document())))  # a worker's file, read back
    assert again.audit_lost == 1
    older = one.document()
    del older["audit_lost"]  # the file of a worker of the version before, during an upgrade
    assert index.Metrics.from_document(older).audit_lost == 0
    total = index.Metrics()
    total.add(one)
    total.add(again)
    assert "\nairgap_pypi_audit_records_lost_total 2\n" in index.render_metrics(total).decode()


def test_packages_or_pages_in_the_audit_directory_are_refused_before_any_change() -> None:
    found = filters.pypi_server_problems(
        {"pypi_server_data_dir": "/srv/pypi", "pypi_server_static_dir": "/srv/pypi/audit"}
    )
    assert len(found) == 1 and "the index keeps its audit trail in /srv/pypi/audit" in found[0], found
    assert "choose another directory" in found[0]
    assert filters.pypi_server_problems({"pypi_server_audit_keep": 0, "pypi_server_audit_max_mb": 5000}) == [
        "pypi_server_audit_max_mb=5000: must be 1-4096 (MiB of audit.jsonl before it is rotated)",
        "pypi_server_audit_keep=0: must be 1-100 (rotated audit files kept)",
    ]


def accounts(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The accounts command as the role runs it after setting the password file."""
    argv = [sys.executable, str(MODULE), "accounts", f"--audit={directory}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_account_changes_are_recorded_by_name_and_never_with_a_password(audit_dir: Path) -> None:
    done = accounts(audit_dir, "--added=carol", "--changed=alice", "--removed=bob", "--account=ops", "--client=ansible")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lost": 0, "recorded": 3}
    added, changed, removed = lines_of(audit_dir)
    assert [added["action"], changed["action"], removed["action"]] == [
        "account-add",
        "account-change",
        "account-remove",
    ]
    assert [added["subject"], changed["subject"], removed["subject"]] == ["carol", "alice", "bob"]
    assert all(r["account"] == "ops" and r["client"] == "ansible" and r["project"] is None for r in (added, removed))
    assert list(added) == FIELDS


def test_an_account_change_with_a_bad_name_or_no_trail_is_refused_and_nothing_is_recorded(
    audit_dir: Path, tmp_path: Path
) -> None:
    bad = accounts(audit_dir, "--added=carol", "--removed=bad name", "--account=ops")
    assert bad.returncode == 2, bad.stderr
    assert "--removed 'bad name'" in bad.stderr and "Nothing was recorded" in bad.stderr, bad.stderr
    assert not (audit_dir / "audit.jsonl").exists(), "not even the good name is recorded"
    argv = [sys.executable, str(MODULE), "accounts", "--added=carol"]
    missing = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "--audit is required" in missing.stderr, missing.stderr


OWNER_MAP_MODULE = ROOT / "roles" / "pypi_server" / "library" / "pypi_server_accounts.py"


def owner_map_changes(tmp_path: Path, owners: dict[str, list[str]]) -> list[str]:
    """The role's pypi_server_accounts writing tmp_path/project_owners.json, its result as the audit task's argv
    (--added=PROJECT:ACCOUNT ..., --removed=...)."""
    args = tmp_path / "owner-map-args.json"
    args.write_text(
        json.dumps({"ANSIBLE_MODULE_ARGS": {"owner_map": str(tmp_path / "project_owners.json"), "owners": owners}})
    )
    done = subprocess.run(module_argv(OWNER_MAP_MODULE, args), capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)
    added, removed = result["owners_added"], result["owners_removed"]
    return [f"--added={change}" for change in added] + [f"--removed={change}" for change in removed]


def owners_command(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The owners command as the role runs it after writing the owner map."""
    argv = [sys.executable, str(MODULE), "owners", f"--audit={directory}", "--account=ops", "--client=ansible", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_owner_map_changes_are_recorded_per_project_and_account(audit_dir: Path, tmp_path: Path) -> None:
    first = owner_map_changes(tmp_path, {"Demo_Pkg": ["alice", "bob"], "internal": []})
    assert first == ["--added=demo-pkg:alice", "--added=demo-pkg:bob"]
    done = owners_command(audit_dir, *first)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lost": 0, "recorded": 2}
    assert owner_map_changes(tmp_path, {"demo.pkg": ["alice", "bob"], "internal": []}) == [], "no change, no record"
    second = owner_map_changes(tmp_path, {"demo-pkg": ["bob", "carol"]})
    assert second == ["--added=demo-pkg:carol", "--removed=demo-pkg:alice"]
    assert owners_command(audit_dir, *second).returncode == 0
    records = lines_of(audit_dir)
    assert [(r["action"], r["project"], r["subject"]) for r in records] == [
        ("owner-add", "demo-pkg", "alice"),
        ("owner-add", "demo-pkg", "bob"),
        ("owner-add", "demo-pkg", "carol"),
        ("owner-remove", "demo-pkg", "alice"),
    ]
    assert all(r["account"] == "ops" and r["client"] == "ansible" for r in records)
    assert all(r["version"] is None and r["file"] is None and r["sha256"] is None for r in records)
    assert all(list(r) == FIELDS for r in records)


def test_an_owner_change_with_a_bad_value_or_no_trail_is_refused_and_nothing_is_recorded(
    audit_dir: Path,
) -> None:
    for bad, needle in (
        ("demo-pkg", "not PROJECT:ACCOUNT (an upload account's name after the colon)"),
        ("demo pkg:alice", "not PROJECT:ACCOUNT (a project name first)"),
        ("demo:alice\nforged", "an upload account's name"),
        ("demo:alice\n", "an upload account's name"),
        ("demo\n:alice", "a project name first"),
        ("demo:" + "a" * 200, "an upload account's name"),
    ):
        done = owners_command(audit_dir, "--added=demo:alice", f"--removed={bad}")
        assert done.returncode == 2 and needle in done.stderr and "Nothing was recorded" in done.stderr, done.stderr
    assert not (audit_dir / "audit.jsonl").exists(), "not even the good change is recorded"
    argv = [sys.executable, str(MODULE), "owners", "--added=demo:alice"]
    missing = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "--audit is required" in missing.stderr, missing.stderr
