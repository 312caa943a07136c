"""Owners per project against the real stack on loopback (gunicorn, pypiserver, the upload checks from the role's
templates; twine as the client): a non-owner is refused with the reason twine prints, owners and admins upload, the
first upload of an unmapped project claims it, a broken owners file refuses instead of opening projects, and without
a map and claims every account uploads anywhere, as before."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.demo_wheel import build_wheel
from scripts.index_stack import OPENER, PASSWORD, USER, Stack, auth_header, get, serve, twine_upload

ACCOUNTS = {
    "alice": "alice-test-only",
    "bob": "bob-test-only",
    "mallory": "mallory-test-only",
    "ops": "ops-test-only",
    USER: PASSWORD,
}
OWNERS = {"Owned_Demo": ["alice", "bob"]}


def upload(stack: Stack, wheel: Path, account: str) -> subprocess.CompletedProcess[str]:
    return twine_upload(stack.url, wheel, user=account, password=ACCOUNTS[account])


def accepted(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout + done.stderr


def refused(done: subprocess.CompletedProcess[str], *words: str) -> str:
    output = " ".join((done.stdout + done.stderr).split())  # twine wraps long lines
    assert done.returncode != 0, output
    for word in words:
        assert word in output, (word, output[-2000:])
    return output


def files_of(stack: Stack, project: str) -> list[str]:
    return sorted(path.name for path in stack.packages.iterdir() if path.name.lower().startswith(project))


def post(stack: Stack, account: str, fields: dict[str, str], upload: Path | None = None) -> tuple[int, str]:
    """A POST to / as clients send one (the upload form, or pypiserver's removal), without twine's own checks."""
    boundary = "airgap-pypi-owners-boundary"
    body = io.BytesIO()
    for field, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
    if upload is not None:
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="content"; filename="{upload.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        body.write(upload.read_bytes() + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(f"{stack.url}/", data=body.getvalue(), method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    token = base64.b64encode(f"{account}:{ACCOUNTS[account]}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status, response.reason
    except urllib.error.HTTPError as error:
        return error.code, str(error.reason)


def remove_pkg(stack: Stack, account: str, name: str, version: str) -> tuple[int, str]:
    """pypiserver's removal of a release by name and version (:action remove_pkg)."""
    return post(stack, account, {":action": "remove_pkg", "name": name, "version": version})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with serve(
        tmp_path_factory.mktemp("owners"),
        accounts=ACCOUNTS,
        admins=("ops",),
        project_owners=OWNERS,
        claim_first_upload=True,
    ) as running:
        yield running


def test_a_mapped_project_refuses_a_non_owner_with_the_reason_twine_prints(stack: Stack, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "mallory", "owned-demo", "1.0")
    refused(upload(stack, wheel, "mallory"), "403", "owned-demo is owned by alice, bob: ask one of them or an admin")
    assert files_of(stack, "owned") == [] and get(f"{stack.url}/simple/owned-demo/")[0] == 404
    accepted(upload(stack, wheel, "alice"))
    accepted(upload(stack, build_wheel(tmp_path / "bob", "Owned_Demo", "2.0"), "bob"))  # another spelling
    accepted(upload(stack, build_wheel(tmp_path / "ops", "owned-demo", "3.0"), "ops"))  # an admin, not in the map
    assert len(files_of(stack, "owned")) == 3
    assert not stack.owners.exists() or "owned-demo" not in stack.owners.read_text(), "a mapped project is not claimed"
    # pypiserver's removal by name takes the same rule (it matches the name as the file spells it).
    stored = next(name for name in files_of(stack, "owned") if "-1.0-" in name).split("-")[0]
    status, reason = remove_pkg(stack, "mallory", stored, "1.0")
    assert status == 403 and "owned-demo is owned by alice, bob" in reason, (status, reason)
    assert len(files_of(stack, "owned")) == 3
    assert remove_pkg(stack, "alice", stored, "1.0")[0] == 200
    assert len(files_of(stack, "owned")) == 2
    counted = 'airgap_pypi_uploads_refused_total{reason="not_owner"} 1'
    deadline = time.monotonic() + 10  # each worker writes its counts within a second
    while True:
        request = urllib.request.Request(f"{stack.url}/metrics", headers={"Authorization": auth_header()})
        with OPENER.open(request, timeout=20) as response:
            metrics = response.read().decode()
        if counted in metrics or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert counted in metrics, "the refused upload is counted (removals are not uploads)"


def test_the_first_upload_claims_an_unmapped_project_and_others_are_refused(stack: Stack, tmp_path: Path) -> None:
    accepted(upload(stack, build_wheel(tmp_path / "1", "first-come", "1.0"), "bob"))
    claims = json.loads(stack.owners.read_text())["projects"]
    assert claims["first-come"]["owner"] == "bob"
    refused(
        upload(stack, build_wheel(tmp_path / "2", "First_Come", "2.0"), "alice"),
        "403",
        "first-come is owned by bob (its first uploader): ask them or an admin",
    )
    accepted(upload(stack, build_wheel(tmp_path / "3", "first-come", "2.0"), "bob"))
    accepted(upload(stack, build_wheel(tmp_path / "4", "first-come", "3.0"), "ops"))
    assert files_of(stack, "first") == [f"first_come-{v}-py3-none-any.whl" for v in ("1.0", "2.0", "3.0")]
    assert json.loads(stack.owners.read_text())["projects"]["first-come"]["owner"] == "bob"
    # An upload the checks refuse (its metadata names another project) claims nothing.
    wrong = build_wheel(tmp_path / "5", "not-claimed", "1.0")
    posing = wrong.rename(wrong.with_name(wrong.name.replace("not_claimed", "posed")))
    status, reason = post(stack, "mallory", {":action": "file_upload"}, posing)
    assert status == 400 and "its metadata says Name" in reason, (status, reason)
    assert "posed" not in json.loads(stack.owners.read_text())["projects"]
    assert files_of(stack, "posed") == []


def test_a_project_with_files_but_no_owner_is_claimed_by_its_next_uploader(stack: Stack, tmp_path: Path) -> None:
    build_wheel(stack.packages, "carried-in", "1.0")  # there before owners (a mirror, an upload before claims)
    accepted(upload(stack, build_wheel(tmp_path, "carried-in", "2.0"), "mallory"))
    assert json.loads(stack.owners.read_text())["projects"]["carried-in"]["owner"] == "mallory"
    refused(upload(stack, build_wheel(tmp_path / "a", "carried-in", "3.0"), "alice"), "403", "owned by mallory")


def owners_line(stack: Stack, project: str) -> str | None:
    status, body = get(f"{stack.url}/project/{project}/")
    assert status == 200, (project, status)
    found = re.search(r'<p class="owners">(.*?)</p>', body.decode())
    return found.group(1) if found else None


def test_project_pages_show_their_owners_from_the_map_and_from_claims(stack: Stack, tmp_path: Path) -> None:
    """The map comes to the pages through the file the role writes (here as the role's module writes it), the
    claims from the owners file: both on the page when the upload returns."""
    accepted(upload(stack, build_wheel(tmp_path / "a", "owned-demo", "8.0"), "alice"))
    assert owners_line(stack, "owned-demo") == "owners: alice, bob"
    accepted(upload(stack, build_wheel(tmp_path / "b", "page-claimed", "1.0"), "bob"))
    assert owners_line(stack, "page-claimed") == "owners: bob (claimed by the first upload)"
    front = get(f"{stack.url}/")[1].decode()
    assert 'class="owners"' not in front, "the project pages only"


def test_a_broken_owners_file_refuses_unmapped_uploads_and_says_why(stack: Stack, tmp_path: Path) -> None:
    kept = stack.owners.read_bytes() if stack.owners.exists() else b'{"format": 1, "projects": {}}'
    try:
        stack.owners.parent.mkdir(exist_ok=True)
        stack.owners.write_text("{broken")
        refused(
            upload(stack, build_wheel(tmp_path / "1", "while-broken", "1.0"), "alice"),
            "403",
            "while-broken has no owner in the inventory and the owners file is unreadable: ask an admin",
        )
        assert files_of(stack, "while") == []
        assert "is not JSON" in stack.log.read_text() and str(stack.owners) in stack.log.read_text()
        accepted(upload(stack, build_wheel(tmp_path / "2", "owned-demo", "4.0"), "alice"))  # the map still holds
        accepted(upload(stack, build_wheel(tmp_path / "3", "while-broken", "1.0"), "ops"))  # so do admins
        assert stack.owners.read_text() == "{broken", "left for the operator to look at"
    finally:
        stack.owners.write_bytes(kept)
    accepted(upload(stack, build_wheel(tmp_path / "4", "while-broken", "2.0"), "alice"))
    assert json.loads(stack.owners.read_text())["projects"]["while-broken"]["owner"] == "alice"


def test_without_a_map_or_claims_every_account_uploads_anywhere(tmp_path: Path) -> None:
    """The defaults (an empty map, claims off), even with an admin listed: the index as it was before owners."""
    with serve(tmp_path / "stack", accounts=ACCOUNTS, admins=("ops",)) as plain:
        for number, account in enumerate((USER, "alice", "mallory", "bob"), 1):
            accepted(upload(plain, build_wheel(tmp_path / account, "shared", f"{number}.0"), account))
        assert len(files_of(plain, "shared")) == 4
        assert not plain.owners.exists() and not plain.owners.parent.exists(), "nothing is recorded"
        assert remove_pkg(plain, "mallory", "shared", "1.0")[0] == 200
