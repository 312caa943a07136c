"""The audit trail against the real stack on loopback (gunicorn, pypiserver, the upload checks and the static read
path from the role's templates; twine as the client): an accepted upload is one line with the account, the client
address and the sha256 of the file stored, and its pages show when and by whom; refused uploads leave no line; a
first upload's claim and pypiserver's removal form are recorded; a record that cannot be written loses no upload."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_owners_server import ACCOUNTS, accepted, post, refused, upload

from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, Stack, auth_header, get, serve

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve(
        tmp_path_factory.mktemp("audit-server"), accounts=ACCOUNTS, admins=("ops",), claim_first_upload=True
    ) as running:
        yield running


def records(stack: Stack) -> list[dict[str, Any]]:
    log = stack.audit / "audit.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_an_upload_is_recorded_with_its_account_client_and_stored_sha256_and_shown_on_its_pages(
    stack: Stack, tmp_path: Path
) -> None:
    wheel = build_wheel(tmp_path, "audited-demo", "1.0")
    accepted(upload(stack, wheel, "alice"))
    claim, stored = records(stack)[-2:]
    assert (claim["action"], claim["account"], claim["project"]) == ("claim", "alice", "audited-demo")
    digest = hashlib.sha256((stack.packages / wheel.name).read_bytes()).hexdigest()
    assert stored == {
        "time": stored["time"],
        "account": "alice",
        "client": "127.0.0.1",
        "action": "upload",
        "project": "audited-demo",
        "version": "1.0",
        "file": wheel.name,
        "sha256": digest,
        "subject": None,
    }
    status, body = get(f"{stack.url}/simple/audited-demo/", accept=JSON_ACCEPT)
    assert status == 200
    (item,) = json.loads(body)["files"]
    assert item["upload-time"] == stored["time"]  # PEP 700, on the page when twine returns
    status, body = get(f"{stack.url}/project/audited-demo/")
    assert status == 200 and b"uploaded by alice on " + stored["time"][:10].encode() in body


def test_refused_and_duplicate_uploads_leave_no_line(stack: Stack, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, "audited-refusals", "1.0")
    accepted(upload(stack, wheel, "bob"))
    before = len(records(stack))
    refused(upload(stack, wheel, "bob"), "400")  # pypiserver: already stored (400 to twine, 409 to others)
    refused(upload(stack, build_wheel(tmp_path / "other", "audited-refusals", "2.0"), "mallory"), "403")  # not owner
    assert len(records(stack)) == before


def test_pypiservers_removal_form_is_recorded(stack: Stack, tmp_path: Path) -> None:
    # pypiserver matches the name as the file spells it (audited_removal), the record has it normalised.
    accepted(upload(stack, build_wheel(tmp_path, "audited-removal", "1.0"), "ops"))
    status, _ = post(stack, "ops", {":action": "remove_pkg", "name": "audited_removal", "version": "1.0"})
    assert status == 200
    last = records(stack)[-1]
    assert (last["action"], last["account"], last["project"], last["version"]) == (
        "remove",
        "ops",
        "audited-removal",
        "1.0",
    )


def test_an_upload_whose_record_cannot_be_written_is_stored_and_logged_loudly(stack: Stack, tmp_path: Path) -> None:
    log = stack.audit / "audit.jsonl"
    aside = stack.audit / "audit.jsonl.aside"
    log.touch()  # there when this test runs alone
    log.rename(aside)
    log.mkdir()  # not a file: the append fails in the worker
    try:
        wheel = build_wheel(tmp_path, "audited-lost", "1.0")
        accepted(upload(stack, wheel, "ops"))
    finally:
        log.rmdir()
        aside.rename(log)
    assert (stack.packages / wheel.name).exists()
    assert "AUDIT RECORD LOST" in stack.log.read_text() and wheel.name in stack.log.read_text()
    status, body = get(f"{stack.url}/simple/audited-lost/", accept=JSON_ACCEPT)
    assert status == 200 and "upload-time" not in json.loads(body)["files"][0]
    request = urllib.request.Request(f"{stack.url}/metrics", headers={"Authorization": auth_header()})
    deadline = time.monotonic() + 10  # each worker writes its counts within a second
    while b"airgap_pypi_audit_records_lost_total 1" not in (metrics := OPENER.open(request, timeout=20).read()):
        assert time.monotonic() < deadline, metrics.decode()[-3000:]
        time.sleep(0.2)
