"""pypi_server_accounts: the listed accounts with sha512_crypt hashes, old apr1 hashes replaced, others removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import load_module, module_argv

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "roles" / "pypi_server" / "library" / "pypi_server_accounts.py"
accounts = load_module("pypi_server_accounts", MODULE)
# passlib as the index's virtualenv has it: the bundle's wheel (pure Python, importable as it is).
PASSLIB = [str(wheel) for wheel in sorted((ROOT / "offline_artifacts" / "wheels").glob("passlib-*.whl"))[-1:]]
sys.path.extend(PASSLIB)
passlib_hash = pytest.importorskip("passlib.hash", reason="not run: no passlib wheel in the bundle (make bundle)")
ROUNDS = 6000  # the module's rule is the same at any count; a small one keeps the test quick


def current(password: str, stored: str) -> bool:
    scheme = passlib_hash.sha512_crypt
    return scheme.identify(stored) and scheme.from_string(stored).rounds == ROUNDS and scheme.verify(password, stored)


def new_hash(password: str) -> str:
    return passlib_hash.sha512_crypt.using(rounds=ROUNDS).hash(password)


def test_old_hashes_wrong_passwords_and_new_accounts_get_sha512_and_the_rest_stays() -> None:
    kept = new_hash("alice-pw")
    entries = {
        "alice": kept,
        "bob": passlib_hash.apr_md5_crypt.hash("bob-pw"),
        "carol": new_hash("old-pw"),
        "mallory": new_hash("x"),
    }
    users = [
        {"name": "alice", "password": "alice-pw"},
        {"name": "bob", "password": "bob-pw"},
        {"name": "carol", "password": "new-pw"},
        {"name": "dave", "password": "dave-pw"},
    ]
    result, changed, removed = accounts.plan(entries, users, current, new_hash)
    assert result["alice"] == kept, "a current hash that verifies is left as it is (a re-run changes nothing)"
    assert changed == ["bob", "carol", "dave"] and removed == ["mallory"]
    assert list(result) == ["alice", "bob", "carol", "dave"]
    for user in users:
        assert result[user["name"]].startswith(f"$6$rounds={ROUNDS}$")
        assert passlib_hash.sha512_crypt.verify(user["password"], result[user["name"]])
    assert accounts.plan(result, users, current, new_hash)[1:] == ([], [])


def test_other_rounds_are_rehashed_and_comments_are_dropped() -> None:
    other = passlib_hash.sha512_crypt.using(rounds=7000).hash("pw")
    entries = accounts.parse(f"# a comment\n\nalice:{other}\nbroken line\n")
    assert entries == {"alice": other}
    _, changed, _ = accounts.plan(entries, [{"name": "alice", "password": "pw"}], current, new_hash)
    assert changed == ["alice"]


def run_module(tmp_path: Path, **params: Any) -> dict[str, Any]:
    """The module as Ansible runs it on an index host (passlib importable, as in the index's virtualenv)."""
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"rounds": ROUNDS, "mode": "0640", **params}}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(PASSLIB))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, check=False, env=env)
    return json.loads(done.stdout)


def test_one_call_sets_the_accounts_and_the_owner_map_and_a_second_changes_nothing(tmp_path: Path) -> None:
    htpasswd, owner_map = tmp_path / "htpasswd", tmp_path / "project_owners.json"
    users = [{"name": "alice", "password": "alice-pw"}, {"name": "bob", "password": "bob-pw"}]
    both = {"path": str(htpasswd), "users": users, "owner_map": str(owner_map), "owners": {"Demo_Pkg": ["alice"]}}
    first = run_module(tmp_path, **both)
    assert first["changed"] and first["added"] == ["alice", "bob"] and first["owners_added"] == ["demo-pkg:alice"]
    assert sorted(accounts.parse(htpasswd.read_text())) == ["alice", "bob"]
    assert json.loads(owner_map.read_text())["projects"] == {"demo-pkg": ["alice"]}
    assert oct(htpasswd.stat().st_mode & 0o777) == oct(owner_map.stat().st_mode & 0o777) == "0o640"
    again = run_module(tmp_path, **both)
    assert not again["changed"] and again["set"] == again["owners_added"] == again["owners_removed"] == []
    # Only the owners change: the accounts stay as they are, and the change says which owner went.
    owners_only = run_module(tmp_path, **{**both, "owners": {"demo-pkg": ["bob"]}})
    assert owners_only["changed"] and owners_only["set"] == [] and owners_only["removed"] == []
    assert owners_only["owners_added"] == ["demo-pkg:bob"] and owners_only["owners_removed"] == ["demo-pkg:alice"]


def test_an_htpasswd_path_without_users_is_refused(tmp_path: Path) -> None:
    refused = run_module(tmp_path, path=str(tmp_path / "htpasswd"))
    assert refused.get("failed") and "users" in refused["msg"], refused
    assert not (tmp_path / "htpasswd").exists()
