"""The static read path as clients meet it: pip and twine on the client container, pages read back against the
files on the index host (PEP 503 hashes and data-requires-python, PEP 691 JSON, PEP 658 metadata)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import zipfile
from pathlib import Path

import testinfra.utils.ansible_runner
from conftest import CLIENT, CLIENT_BIN, PASSWORD, PORT, USER, docker, on_client

from scripts.demo_wheel import build_wheel

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "http_servers"
)

PACKAGES = "/srv/pypi/packages"
ACCESS_LOG = "/var/log/supervisor/pypiserver.out.log"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"

FETCH = """
import base64, json, sys, urllib.request, urllib.error
url, accept, auth = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
if auth:
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
class Keep(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None
try:
    response = urllib.request.build_opener(Keep).open(request, timeout=20)
    status, headers, body = response.status, dict(response.headers), response.read()
except urllib.error.HTTPError as error:
    status, headers, body = error.code, dict(error.headers), error.read()
print(json.dumps({"status": status, "headers": headers, "body": base64.b64encode(body).decode()}))
"""


def fetch(url: str, accept: str = "", auth: str = "") -> tuple[int, dict[str, str], bytes]:
    """GET url from the client container (redirects not followed)."""
    done = on_client("/usr/bin/python3", "-c", FETCH, url, accept, auth)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    return answer["status"], answer["headers"], base64.b64decode(answer["body"])


def name_of(host) -> str:
    return host.backend.get_hostname()


def base_url(host, port: int = PORT) -> str:
    return f"http://{name_of(host)}:{port}"


def twine(host, *wheels: str, port: int = PORT) -> str:
    """Shell command of a twine upload of wheels (paths on the client) to host."""
    words = [f"{CLIENT_BIN}/twine", "upload", "--non-interactive", "--disable-progress-bar"]
    return " ".join([*words, "--repository-url", f"{base_url(host, port)}/", "-u", USER, "-p", PASSWORD, *wheels])


def upload(host, *wheels: str, port: int = PORT) -> None:
    done = on_client("sh", "-c", twine(host, *wheels, port=port))
    assert done.returncode == 0, done.stdout + done.stderr


def pip(host, *args: str, port: int = PORT) -> tuple[int, str, str]:
    done = on_client(
        f"{CLIENT_BIN}/pip",
        *args,
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--trusted-host",
        name_of(host),
        "--index-url",
        f"{base_url(host, port)}/simple/",
    )
    return done.returncode, done.stdout, done.stderr


def root_lists(host, project: str, accept: str = "", seconds: float = 10) -> bool:
    """Whether /simple/ (HTML, or JSON with accept) names project within seconds: the lists naming every project
    are written right after an upload's response (its own project page before it)."""
    deadline = time.monotonic() + seconds
    while True:
        body = fetch(f"{base_url(host)}/simple/", accept=accept)[2]
        if accept == JSON_TYPE:
            if project in {p["name"] for p in json.loads(body)["projects"]}:
                return True
        elif f'href="{project}/"' in body.decode():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)


REMOVE = """
import base64, sys, urllib.parse, urllib.request
form = urllib.parse.urlencode({':action': 'remove_pkg', 'name': sys.argv[2], 'version': sys.argv[3]}).encode()
request = urllib.request.Request(sys.argv[1], data=form, method='POST')
request.add_header('Authorization', 'Basic ' + base64.b64encode(sys.argv[4].encode()).decode())
print(urllib.request.urlopen(request, timeout=20).status)
"""


def remove(host, filename: str, version: str, port: int = PORT) -> None:
    """Remove a release through pypiserver's form (what `pypiserver`'s remove action takes)."""
    # pypiserver finds the file by the name as the file name spells it.
    name = filename.split("-", 1)[0]
    url = f"{base_url(host, port)}/"
    done = on_client("/usr/bin/python3", "-c", REMOVE, url, name, version, f"{USER}:{PASSWORD}")
    assert done.stdout.strip() == "200", done.stdout + done.stderr


def local_wheel(tmp_path: Path, name: str, version: str, **metadata: str) -> tuple[Path, str]:
    """Build a wheel here, copy it to the client, return (local path, path on the client)."""
    wheel = build_wheel(tmp_path, name, version, **metadata)
    docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
    return wheel, f"/var/tmp/{wheel.name}"


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**12}"


def anchors(page: bytes) -> dict[str, str]:
    """file name -> the whole <a ...> tag."""
    return {m.group(2): m.group(0) for m in re.finditer(r"<a ([^>]*)>([^<]+)</a>", page.decode())}


def test_an_upload_is_on_its_page_with_hashes_when_twine_returns(host, tmp_path: Path) -> None:
    project = unique("static-fresh")
    wheel, remote = local_wheel(tmp_path, project, "1.0", requires_python=">=3.8,<4")
    upload(host, remote)
    # At once, no retry: pip sees the file the moment twine has returned.
    rc, out, err = pip(host, "download", "--no-deps", "--dest", f"/var/tmp/dl-{project}", f"{project}==1.0")
    assert rc == 0, out + err
    status, headers, body = fetch(f"{base_url(host)}/simple/{project}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and headers["Vary"] == "Accept"
    tag = anchors(body)[wheel.name]
    on_host = host.file(f"{PACKAGES}/{wheel.name}")
    assert on_host.sha256sum == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert f"#sha256={on_host.sha256sum}" in tag
    assert 'data-requires-python="&gt;=3.8,&lt;4"' in tag
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA")))
    assert f'data-core-metadata="sha256={hashlib.sha256(metadata).hexdigest()}"' in tag
    status, headers, served = fetch(f"{base_url(host)}/packages/{wheel.name}.metadata")
    assert status == 200 and served == metadata


def test_json_by_content_negotiation(host, tmp_path: Path) -> None:
    project = unique("static-json")
    wheel, remote = local_wheel(tmp_path, project, "2.0", requires_python=">=3.9")
    upload(host, remote)
    accept = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
    status, headers, body = fetch(f"{base_url(host)}/simple/{project}/", accept=accept)
    assert status == 200 and headers["Content-Type"] == JSON_TYPE and headers["Vary"] == "Accept"
    document = json.loads(body)
    assert document["meta"]["api-version"].startswith("1.")
    assert document["name"] == project
    (item,) = document["files"]
    assert item["filename"] == wheel.name
    assert item["hashes"] == {"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    assert item["requires-python"] == ">=3.9"
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA")))
    assert item["core-metadata"] == {"sha256": hashlib.sha256(metadata).hexdigest()}
    # PEP 714: the old key with a hash dict crashes pip 23.0 (Debian 12's own pip).
    assert "dist-info-metadata" not in item
    assert root_lists(host, project, JSON_TYPE), f"{project} never came into /simple/ (JSON)"
    status, headers, _ = fetch(f"{base_url(host)}/simple/{project.upper().replace('-', '_')}/")
    assert status == 301 and headers["Location"].endswith(f"/simple/{project}/")


def test_pip_resolves_with_the_metadata_file(host, tmp_path: Path) -> None:
    project = unique("static-meta")
    wheel, remote = local_wheel(tmp_path, project, "3.0")
    upload(host, remote)
    rc, out, err = pip(host, "install", "--dry-run", "--ignore-installed", "--report", "-", "--quiet", project)
    assert rc == 0, out + err
    assert json.loads(out)["install"][0]["metadata"]["version"] == "3.0"
    time.sleep(0.5)  # the access log line follows the response
    log = host.file(ACCESS_LOG).content_string
    metadata_at = log.find(f'"GET /packages/{wheel.name}.metadata HTTP/1.1" 200')
    assert metadata_at >= 0, "pip fetched the PEP 658 metadata file (and checked its hash)"
    wheel_at = log.find(f'"GET /packages/{wheel.name} HTTP')
    assert wheel_at == -1 or wheel_at > metadata_at, "pip resolved from the metadata before any download"


def test_a_removed_file_disappears_from_its_page(host, tmp_path: Path) -> None:
    project = unique("static-removed")
    keep, keep_remote = local_wheel(tmp_path, project, "1.0")
    drop, drop_remote = local_wheel(tmp_path, project, "1.1")
    upload(host, keep_remote, drop_remote)
    assert drop.name in anchors(fetch(f"{base_url(host)}/simple/{project}/")[2])
    remove(host, drop.name, "1.1")
    page = anchors(fetch(f"{base_url(host)}/simple/{project}/")[2])
    assert keep.name in page and drop.name not in page
    assert not host.file(f"{PACKAGES}/{drop.name}").exists
    assert fetch(f"{base_url(host)}/packages/{drop.name}.metadata")[0] == 404
    rc, out, err = pip(host, "download", "--no-deps", "--dest", f"/var/tmp/dl-{project}", f"{project}==1.1")
    assert rc != 0 and "No matching distribution" in out + err


def test_concurrent_uploads_of_different_projects_both_appear(host, tmp_path: Path) -> None:
    first, second = unique("static-left"), unique("static-right")
    left, left_remote = local_wheel(tmp_path, first, "1.0")
    right, right_remote = local_wheel(tmp_path, second, "1.0")
    both = on_client("sh", "-c", f"{twine(host, left_remote)} & {twine(host, right_remote)} & wait %1 && wait %2")
    assert both.returncode == 0, both.stdout + both.stderr
    for project, wheel in ((first, left), (second, right)):
        tag = anchors(fetch(f"{base_url(host)}/simple/{project}/")[2])[wheel.name]
        assert f"#sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}" in tag
    assert root_lists(host, first) and root_lists(host, second), "both projects come into /simple/"


def test_a_file_dropped_in_by_hand_is_served(host, tmp_path: Path) -> None:
    """Files copied into the packages directory outside pypiserver are noticed by the next reads."""
    project = unique("static-by-hand")
    wheel = build_wheel(tmp_path, project, "1.0")
    docker("cp", str(wheel), f"{name_of(host)}:{PACKAGES}/{wheel.name}")
    host.run(f"touch -d '1 minute ago' {PACKAGES}/{wheel.name}")
    deadline = time.monotonic() + 10
    while fetch(f"{base_url(host)}/simple/{project}/")[0] != 200:
        assert time.monotonic() < deadline, "a file dropped in by hand was not listed within 10 s"
        time.sleep(0.5)
    host.run(f"rm -f {PACKAGES}/{wheel.name}")
    deadline = time.monotonic() + 10
    while fetch(f"{base_url(host)}/simple/{project}/")[0] != 404:
        assert time.monotonic() < deadline, "a file removed by hand was still listed after 10 s"
        time.sleep(0.5)


def test_browse_page_replaces_the_welcome_page(host) -> None:
    status, headers, body = fetch(f"{base_url(host)}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="search"' in body and b"Welcome to pypiserver" not in body
    assert b"<script src" not in body and b"<link" not in body, "inline CSS and JS only"


def test_the_static_tree_belongs_to_the_index_user(host) -> None:
    tree = host.file("/srv/pypi/static")
    assert tree.is_directory and tree.user == "pypiserver"
    assert host.file("/srv/pypi/static/simple/index.html").user == "pypiserver"
    assert not host.run("find /srv/pypi/static ! -user pypiserver").stdout.strip()
