"""pypi_server_accounts: the listed accounts with sha512_crypt hashes, old apr1 hashes replaced, others removed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import load_module

ROOT = Path(__file__).resolve().parent.parent
accounts = load_module("pypi_server_accounts", ROOT / "roles" / "pypi_server" / "library" / "pypi_server_accounts.py")
# passlib as the index's virtualenv has it: the bundle's wheel (pure Python, importable as it is).
sys.path.extend(str(wheel) for wheel in sorted((ROOT / "offline_artifacts" / "wheels").glob("passlib-*.whl"))[-1:])
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
