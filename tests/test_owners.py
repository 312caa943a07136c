"""Owners per project (pypi_server_project_owners, pypi_server_owners_claim_first_upload, admin accounts): the
upload checks' decision, the owners file they keep the claims of first uploads in (bounded, never through a link,
a broken one refusing instead of opening projects), and the preflight's refusal of a bad owner map."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, load_module, module_argv

from scripts.demo_wheel import build_wheel

index = load_module("airgap_pypi_index", ROOT / "roles" / "pypi_server" / "files" / "airgap_pypi_index.py")
filters = load_module("pypi_server_filters", ROOT / "roles" / "pypi_server" / "filter_plugins" / "pypi_server.py")

MAP = {"demo": ["alice", "bob"], "reserved": []}
ADMINS = frozenset({"root-ci"})


def decide(project: str, account: str, claim: bool = False, claims: dict[str, str] | None = None) -> Any:
    return index.owner_decision(project, account, owners=MAP, admins=ADMINS, claim_first_upload=claim, claims=claims)


# --- the decision -----------------------------------------------------------------------------------------------


def test_a_mapped_project_takes_its_accounts_and_admins_only() -> None:
    assert decide("demo", "alice").allowed and decide("demo", "bob").allowed
    assert decide("demo", "root-ci").allowed, "an admin uploads anywhere"
    refused = decide("demo", "mallory")
    assert not refused.allowed and not refused.claim
    assert refused.reason == "demo is owned by alice, bob: ask one of them or an admin"
    assert decide("reserved", "alice").reason == "only an admin may upload reserved"
    assert decide("reserved", "root-ci").allowed


def test_the_map_wins_over_a_claim_and_over_a_broken_owners_file() -> None:
    assert decide("demo", "alice", claim=True, claims={"demo": "mallory"}).allowed
    assert not decide("demo", "mallory", claim=True, claims={"demo": "mallory"}).allowed
    assert decide("demo", "alice", claim=True, claims=None).allowed


def test_without_claims_an_unmapped_project_is_open_to_every_account() -> None:
    for account in ("alice", "mallory", "root-ci"):
        found = decide("other", account)
        assert found.allowed and not found.claim, account
    empty = index.ProjectOwners()
    assert not empty.active, "an empty map without claims is the index without owners"
    assert not index.ProjectOwners(admins=["root-ci"]).active


def test_with_claims_the_first_uploader_owns_an_unmapped_project() -> None:
    first = decide("other", "mallory", claim=True, claims={})
    assert first.allowed and first.claim
    assert decide("other", "mallory", claim=True, claims={"other": "mallory"}) == index.OwnerDecision(True)
    later = decide("other", "alice", claim=True, claims={"other": "mallory"})
    assert not later.allowed and later.reason == "other is owned by mallory (its first uploader): ask them or an admin"
    assert decide("other", "root-ci", claim=True, claims={"other": "mallory"}).allowed


def test_an_unreadable_owners_file_refuses_unmapped_projects_except_to_admins() -> None:
    refused = decide("other", "alice", claim=True, claims=None)
    assert not refused.allowed and "owners file is unreadable" in refused.reason
    admin = decide("other", "root-ci", claim=True, claims=None)
    assert admin.allowed and not admin.claim, "nothing can be recorded in a file that cannot be read"


def test_reasons_are_short_and_name_a_few_owners() -> None:
    many = {"big": [f"account-{number}" for number in range(40)]}
    reason = index.owner_decision(
        "big", "mallory", owners=many, admins=(), claim_first_upload=False, claims=None
    ).reason
    assert reason.startswith("big is owned by account-0, account-1, account-2, account-3, account-4 and 35 more")
    long_owner = "x" * 120
    reason = index.owner_decision(
        "p", "mallory", owners={}, admins=(), claim_first_upload=True, claims={"p": long_owner}
    ).reason
    assert len(reason) < 120 and reason.isascii()


def test_the_map_takes_any_spelling_of_a_project() -> None:
    owners = index.ProjectOwners({"Demo_Pkg": ["alice"], "demo.pkg": ["bob"]})
    assert owners.owners == {"demo-pkg": ["alice", "bob"]}
    assert owners.decide("demo-pkg", "bob").allowed and not owners.decide("demo-pkg", "carol").allowed


# --- the owners file ---------------------------------------------------------------------------------------------


@pytest.fixture
def claims_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "owners" / "owners.json"


def claiming(path: Path, owners: dict[str, list[str]] | None = None) -> Any:
    return index.ProjectOwners(owners or {}, admins=["root-ci"], claims_file=str(path), claim_first_upload=True)


def test_a_claim_is_recorded_once_and_a_later_claim_loses(claims_file: Path) -> None:
    owners = claiming(claims_file)
    assert owners.decide("other", "alice").claim
    assert owners.claim("other", "alice") == index.OwnerDecision(True, claim=True)
    document = json.loads(claims_file.read_text())
    assert document["format"] == 1 and document["projects"]["other"]["owner"] == "alice"
    assert claims_file.stat().st_mode & 0o777 == 0o644
    assert not owners.decide("other", "bob").allowed
    # Another worker that decided before the claim was written: its claim, under the lock, finds alice's.
    late = owners.claim("other", "bob")
    assert not late.allowed and "owned by alice" in late.reason
    assert json.loads(claims_file.read_text())["projects"]["other"]["owner"] == "alice"
    assert [p.name for p in claims_file.parent.iterdir()] == ["owners.json"], "no temporary file is left"


def test_concurrent_first_uploads_leave_one_owner(claims_file: Path) -> None:
    owners = claiming(claims_file)
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda who=who: results.setdefault(who, owners.claim("race", who)))
        for who in ("alice", "bob", "carol", "dave")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [who for who, decision in results.items() if decision.allowed]
    assert len(winners) == 1
    assert json.loads(claims_file.read_text())["projects"]["race"]["owner"] == winners[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "is not JSON"),
        (b'{"format": 2, "projects": {}}', "not an owners file of format 1"),
        (b'{"format": 1, "projects": []}', '"projects" is not an object'),
        (b'{"format": 1, "projects": {"Demo": {"owner": "a", "when": ""}}}', "is not a normalised project name"),
        (b'{"format": 1, "projects": {"demo": {"owner": 1, "when": ""}}}', 'not {"owner": ACCOUNT'),
        (b'{"format": 1, "projects": {"demo": {"owner": "a b", "when": ""}}}', "is not an account name"),
        (b'{"format": 1, "projects": {"demo": {"owner": "a", "when": "\\u202e"}}}', "U+202E"),
    ],
)
def test_a_broken_owners_file_is_logged_and_refuses_unmapped_uploads(
    claims_file: Path, caplog: pytest.LogCaptureFixture, content: bytes, problem: str
) -> None:
    claims_file.parent.mkdir(parents=True)
    claims_file.write_bytes(content)
    owners = claiming(claims_file, {"mapped": ["alice"]})
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        refused = owners.decide("other", "alice")
    assert not refused.allowed and "owners file is unreadable" in refused.reason
    assert any(problem in record.getMessage() and str(claims_file) in record.getMessage() for record in caplog.records)
    assert owners.decide("mapped", "alice").allowed, "the map does not need the file"
    assert owners.decide("other", "root-ci").allowed
    assert not owners.claim("other", "alice").allowed, "a claim never replaces a file it cannot read"
    assert claims_file.read_bytes() == content, "left for the operator to look at"


def test_an_oversized_owners_file_is_refused(claims_file: Path) -> None:
    claims_file.parent.mkdir(parents=True)
    claims_file.write_bytes(b'{"format": 1, "projects": {}}' + b" " * (4 << 20))
    with pytest.raises(index.OwnersFileError, match="is larger than 4 MiB"):
        index.read_owners_file(str(claims_file))
    assert not claiming(claims_file).decide("other", "alice").allowed


def test_the_owners_file_is_never_read_through_a_link_or_from_a_fifo(claims_file: Path, tmp_path: Path) -> None:
    claims_file.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"format": 1, "projects": {}}))
    claims_file.symlink_to(elsewhere)
    with pytest.raises(index.OwnersFileError, match="is a symbolic link"):
        index.read_owners_file(str(claims_file))
    assert not claiming(claims_file).decide("other", "alice").allowed
    assert not claiming(claims_file).claim("other", "alice").allowed
    assert claims_file.is_symlink() and json.loads(elsewhere.read_text())["projects"] == {}, "link and target stay"
    claims_file.unlink()
    os.mkfifo(claims_file)
    with pytest.raises(index.OwnersFileError, match="is not a regular file"):
        index.read_owners_file(str(claims_file))  # returns at once: opened without waiting for a writer


def test_no_owners_file_is_an_empty_one(claims_file: Path) -> None:
    assert index.read_owners_file(str(claims_file)) == {"format": 1, "projects": {}}
    assert claiming(claims_file).decide("other", "alice").claim


# --- the preflight -----------------------------------------------------------------------------------------------

USERS = [{"name": "alice", "password": "pw-1"}, {"name": "bob", "password": "pw-2", "admin": True}]


def preflight(owners: Any, users: Any = None) -> list[str]:
    settings = {"pypi_server_users": USERS if users is None else users, "pypi_server_project_owners": owners}
    return filters.pypi_server_problems(settings)


def test_a_good_owner_map_passes() -> None:
    assert preflight({}) == []
    assert preflight({"Demo_Pkg": ["alice", "bob"], "reserved": [], "x": ["alice"]}) == []


@pytest.mark.parametrize(
    ("owners", "needles"),
    [
        (
            {"demo": ["alice", "carol"]},
            ["pypi_server_project_owners['demo']: account 'carol' is not in pypi_server_users", "add the account"],
        ),
        ({"demo": "alice"}, ["pypi_server_project_owners['demo']: must be a list", "e.g. [alice, bob]", "'alice'"]),
        ({"demo": None}, ["pypi_server_project_owners['demo']: must be a list"]),
        ({"demo pkg": ["alice"]}, ["'demo pkg' is not a project name", "letters, digits"]),
        ({"-demo": ["alice"]}, ["'-demo' is not a project name"]),
        ({"Demo": ["alice"], "demo": ["bob"]}, ["'Demo', 'demo' are the same project", "list it once"]),
        (["demo"], ["pypi_server_project_owners: must be a mapping", "not list"]),
        ({"demo": [{"name": "alice"}]}, ["account \"{'name': 'alice'}\" is not in pypi_server_users"]),
    ],
)
def test_a_bad_owner_map_stops_the_run_naming_the_value(owners: Any, needles: list[str]) -> None:
    found = preflight(owners)
    assert len(found) == 1, found
    for needle in needles:
        assert needle in found[0], (needle, found)


def test_an_owner_map_naming_an_account_of_no_list_names_it() -> None:
    found = preflight({"demo": ["alice"]}, users=[])
    assert found == [
        "pypi_server_project_owners['demo']: account 'alice' is not in pypi_server_users; add the account there "
        "(name, password) or take it off the list"
    ]


def test_admin_must_be_a_boolean_and_admins_are_listed() -> None:
    found = filters.pypi_server_problems({"pypi_server_users": [{"name": "a", "password": "p", "admin": "maybe"}]})
    assert found == ["pypi_server_users: account 'a' has admin: 'maybe'; use true or false"]
    users = [*USERS, {"name": "c", "password": "p", "admin": "yes"}, {"name": "d", "password": "p", "admin": "false"}]
    assert filters.admins(users) == ["bob", "c"]
    assert filters.admins("not a list") == []


def test_the_owners_directory_is_kept_apart_from_packages_and_pages() -> None:
    found = filters.pypi_server_problems(
        {"pypi_server_data_dir": "/srv/pypi", "pypi_server_packages_dir": "/srv/pypi/owners/packages"}
    )
    assert len(found) == 1 and "the index keeps the owners of projects in /srv/pypi/owners" in found[0], found


# --- owners on the browse pages: the owner map file the role writes, and the claims ------------------------------

OWNER_MAP_MODULE = ROOT / "roles" / "pypi_server" / "library" / "pypi_server_accounts.py"


def run_owner_map(tmp_path: Path, path: Path, owners: Any, check_mode: bool = False) -> dict[str, Any]:
    """The role's pypi_server_accounts module writing only the owner map, run as Ansible runs it on a host; its
    owners_added and owners_removed as added and removed."""
    args = tmp_path / "owner-map-args.json"
    args.write_text(
        json.dumps(
            {"ANSIBLE_MODULE_ARGS": {"owner_map": str(path), "owners": owners, "_ansible_check_mode": check_mode}}
        )
    )
    done = subprocess.run(module_argv(OWNER_MAP_MODULE, args), capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)
    return {**result, "added": result["owners_added"], "removed": result["owners_removed"]}


def owners_on_page(tree: Path, project: str) -> str | None:
    found = re.search(r'<p class="owners">(.*?)</p>', (tree / "browse" / f"{project}.html").read_text())
    return found.group(1) if found else None


def test_the_owner_map_module_writes_what_the_index_reads_and_says_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "project_owners.json"
    first = run_owner_map(tmp_path, path, {"Demo_Proj": ["alice"], "demo.proj": ["bob", "alice"], "reserved": []})
    assert first["changed"] and first["added"] == ["demo-proj:alice", "demo-proj:bob"] and first["removed"] == []
    assert index.read_owner_map(str(path)) == {"demo-proj": ["alice", "bob"], "reserved": []}
    again = run_owner_map(tmp_path, path, {"demo-proj": ["alice", "bob"], "reserved": []})
    assert not again["changed"] and again["added"] == again["removed"] == [], "idempotent"
    checked = run_owner_map(tmp_path, path, {"demo-proj": ["carol"]}, check_mode=True)
    assert checked["changed"] and checked["added"] == ["demo-proj:carol"]
    assert checked["removed"] == ["demo-proj:alice", "demo-proj:bob"]
    assert index.read_owner_map(str(path)) == {"demo-proj": ["alice", "bob"], "reserved": []}, "check mode: no write"
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    path.unlink()
    path.symlink_to(target)
    linked = run_owner_map(tmp_path, path, {"demo-proj": ["carol"]})
    assert linked["changed"] and linked["added"] == ["demo-proj:carol"], "a link is not read as the old map"
    assert target.read_text() == "keep" and not path.is_symlink(), "the link is replaced, never followed"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"format": 1, "projects": {"Demo": ["alice"]}}', "not a normalised project name"),
        ('{"format": 1, "projects": {"demo": "alice"}}', "not a list"),
        ('{"format": 1, "projects": {"demo": ["bad name"]}}', "is not an account name"),
        ('{"format": 2, "projects": {}}', "not an owner map of format 1"),
        ("not json", "not JSON"),
    ],
)
def test_a_bad_owner_map_file_is_refused_naming_the_problem(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "project_owners.json"
    path.write_text(content)
    with pytest.raises(index.OwnersFileError, match=needle):
        index.read_owner_map(str(path))


def test_an_oversized_or_linked_owner_map_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "project_owners.json"
    path.write_text('{"format": 1, "projects": {}, "pad": "' + "x" * (4 << 20) + '"}')
    with pytest.raises(index.OwnersFileError, match="larger than"):
        index.read_owner_map(str(path))
    target = tmp_path / "target.json"
    target.write_text('{"format": 1, "projects": {"demo": ["mallory"]}}')
    path.unlink()
    path.symlink_to(target)
    with pytest.raises(index.OwnersFileError):
        index.read_owner_map(str(path))


def test_project_pages_show_the_map_s_owners_and_first_uploads_claims(tmp_path: Path) -> None:
    packages, tree = tmp_path / "packages", tmp_path / "tree"
    for project in ("mapped", "claimed", "reserved", "open-one"):
        build_wheel(packages, project, "1.0")
    owner_map, claims = tmp_path / "project_owners.json", tmp_path / "owners" / "owners.json"
    owner_map.write_text(json.dumps({"format": 1, "projects": {"mapped": ["alice", "bob"], "reserved": []}}))
    owners = claiming(claims)
    owners.claim("claimed", "carol")
    owners.claim("mapped", "mallory")  # a claim of a project the map now has never counts
    tree_of = index.Tree(str(packages), str(tree), owner_map=str(owner_map), owner_claims=str(claims))
    tree_of.sync()
    assert owners_on_page(tree, "mapped") == "owners: alice, bob"
    assert owners_on_page(tree, "claimed") == "owners: carol (claimed by the first upload)"
    assert owners_on_page(tree, "reserved") == "owners: none (only an admin may upload)"
    assert owners_on_page(tree, "open-one") is None
    # The role changes the map: the next sync rewrites that project's page (and only its).
    before = (tree / "browse" / "claimed.html").stat().st_mtime_ns
    owner_map.write_text(json.dumps({"format": 1, "projects": {"mapped": ["<b>x</b>"]}}))
    with pytest.raises(index.OwnersFileError):
        index.read_owner_map(str(owner_map))  # the preflight's rule: no markup reaches a page through the map
    owner_map.write_text(json.dumps({"format": 1, "projects": {"mapped": ["dave"]}}))
    assert tree_of.sync() == ["mapped", "reserved"]
    assert owners_on_page(tree, "mapped") == "owners: dave"
    assert owners_on_page(tree, "reserved") is None
    assert (tree / "browse" / "claimed.html").stat().st_mtime_ns == before


def test_a_broken_owner_map_keeps_the_owners_the_pages_show(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    packages, tree = tmp_path / "packages", tmp_path / "tree"
    build_wheel(packages, "mapped", "1.0")
    owner_map = tmp_path / "project_owners.json"
    owner_map.write_text(json.dumps({"format": 1, "projects": {"mapped": ["alice"]}}))
    tree_of = index.Tree(str(packages), str(tree), owner_map=str(owner_map))
    tree_of.sync()
    owner_map.write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="airgap_pypi_index"):
        assert tree_of.sync() == []
    assert "the pages keep the owners they show" in caplog.text
    assert owners_on_page(tree, "mapped") == "owners: alice"
