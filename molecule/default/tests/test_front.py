"""The optional front server (pypi_front) on the one host that turns it on: nginx from the host's OS mirror
serves pages and files from disk, passes uploads and removals to gunicorn, and says exactly what gunicorn says
for what it cannot settle. Real pip and twine on the client container; gunicorn's access log tells which
requests reached gunicorn."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import testinfra.utils.ansible_runner
from conftest import docker, on_client
from test_static_index import (
    ACCESS_LOG,
    JSON_TYPE,
    PACKAGES,
    anchors,
    fetch,
    local_wheel,
    pip,
    remove,
    unique,
    upload,
)

FRONT_HOST = "airgap-pypi-deb12"
FRONT_PORT = 80
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    FRONT_HOST
)

FRONT = f"http://{FRONT_HOST}:{FRONT_PORT}"
GUNICORN = f"http://{FRONT_HOST}:8080"
# The stand-in OS mirror molecule/shared/prepare_os_mirror.yml copies in (scripts/os_mirror.sh attach).
OS_MIRROR = "/srv/os-mirror"
OS_MIRROR_SOURCE = f"file:{OS_MIRROR} ./"
PIP_ACCEPT = f"{JSON_TYPE}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01"


def gunicorn_log(host) -> str:
    time.sleep(0.5)  # the access log line follows the response
    return host.file(ACCESS_LOG).content_string


def installed_version_sources(policy: str) -> tuple[str, list[str]]:
    """From `apt-cache policy PACKAGE`: the installed version and the sources apt lists for that version."""
    installed = re.search(r"(?m)^\s*Installed: (\S+)$", policy)
    assert installed and installed.group(1) != "(none)", policy
    sources: list[str] = []
    in_installed = False
    for line in policy.split("Version table:", 1)[-1].splitlines():
        version = re.match(r"^ (\*\*\*| {3}) (\S+) \d+$", line)
        if version:
            in_installed = version.group(1) == "***"
        elif in_installed and line.strip():
            sources.append(line.split(maxsplit=1)[1])
    return installed.group(1), sources


def mirror_stanza(packages_index: str, package: str, version: str) -> dict[str, str]:
    """The stanza of package=version in a flat repository's Packages index (empty when it is not there)."""
    for stanza in packages_index.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package and fields.get("Version") == version:
            return fields
    return {}


def test_nginx_came_from_the_os_mirror_and_runs_at_boot(host) -> None:
    """The nginx that runs is the one the stand-in OS mirror carries: apt knows its installed version from the
    mirror's index, and the files dpkg installed are those of the mirror's .deb (scripts/os_mirror.sh)."""
    assert host.service("nginx").is_running and host.service("nginx").is_enabled
    owner = host.check_output("dpkg-query --search /usr/sbin/nginx").split(":", 1)[0]
    version, sources = installed_version_sources(host.check_output(f"apt-cache policy {owner}"))
    assert f"{OS_MIRROR_SOURCE} Packages" in sources, (owner, version, sources)
    stanza = mirror_stanza(host.file(f"{OS_MIRROR}/Packages").content_string, owner, version)
    assert stanza, f"{owner} {version} is not in the OS mirror's index"
    deb = f"{OS_MIRROR}/{stanza['Filename'].removeprefix('./')}"
    assert host.check_output(f"sha256sum {deb}").split()[0] == stanza["SHA256"], deb
    # What dpkg recorded for the installed files is the mirror's .deb's list, and the files still match it.
    listed = host.check_output(f"dpkg-deb --info {deb} md5sums").strip()
    assert listed and listed == host.file(f"/var/lib/dpkg/info/{owner}.md5sums").content_string.strip()
    assert host.run(f"dpkg --verify {owner}").stdout == "", "installed files changed since"
    assert not host.file("/etc/nginx/sites-enabled/default").exists, "the distribution's default site is gone"
    assert host.run("nginx -t").rc == 0


def test_only_the_host_that_asks_runs_a_front_server() -> None:
    for other in ("airgap-pypi-deb11", "airgap-pypi-deb12-sysv", "airgap-pypi-deb13"):
        assert docker("exec", other, "sh", "-c", "command -v nginx", check=False).returncode != 0, other


def test_the_firewall_opens_the_front_port(host) -> None:
    assert f"{FRONT_PORT}/tcp" in host.check_output("firewall-cmd --list-ports").split()
    assert f"{FRONT_PORT}/tcp" in host.check_output("firewall-cmd --permanent --list-ports").split()


def test_upload_through_nginx_is_served_from_disk_at_once(host, tmp_path: Path) -> None:
    project = unique("front-fresh")
    wheel, remote = local_wheel(tmp_path, project, "1.0", requires_python=">=3.8")
    upload(host, remote, port=FRONT_PORT)
    # At once, no retry: the page nginx reads is the one gunicorn wrote before twine returned.
    rc, out, err = pip(host, "download", "--no-deps", "--dest", f"/var/tmp/dl-{project}", project, port=FRONT_PORT)
    assert rc == 0, out + err
    downloaded = on_client("sha256sum", f"/var/tmp/dl-{project}/{wheel.name}").stdout.split()[0]
    assert downloaded == hashlib.sha256(wheel.read_bytes()).hexdigest()
    status, headers, body = fetch(f"{FRONT}/simple/{project}/", accept=PIP_ACCEPT)
    assert status == 200 and headers["Content-Type"] == JSON_TYPE and headers["Vary"] == "Accept"
    assert body == fetch(f"{GUNICORN}/simple/{project}/", accept=PIP_ACCEPT)[2], "the same page as gunicorn's"
    assert fetch(f"{FRONT}/packages/{wheel.name}.metadata")[2] == fetch(f"{GUNICORN}/packages/{wheel.name}.metadata")[2]
    log = gunicorn_log(host)
    proxied = [line for line in log.splitlines() if line.startswith("127.0.0.1 ")]
    assert any('"POST / HTTP/1.1" 200' in line for line in proxied), "the upload went through nginx to gunicorn"
    assert f"GET /packages/{wheel.name} " not in log, "nginx served the file itself"
    assert log.count(f"GET /simple/{project}/ ") == 1, "only the direct read above reached gunicorn"


def test_html_for_browsers_and_old_clients_from_disk(host) -> None:
    for accept in ("", "text/html", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "*/*"):
        status, headers, body = fetch(f"{FRONT}/simple/", accept=accept)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8", accept
        assert body == fetch(f"{GUNICORN}/simple/", accept=accept)[2], accept
    assert 'id="search"' in fetch(f"{FRONT}/")[2].decode()


def test_the_front_pages_search_index_is_served_from_disk(host, tmp_path: Path) -> None:
    """/search.json (what the front page's search reads) comes from the tree, as JSON, and names a new upload."""
    project = unique("front-search")
    _, remote = local_wheel(tmp_path, project, "1.0")
    upload(host, remote, port=FRONT_PORT)
    before = gunicorn_log(host).count("GET /search.json ")
    # The lists may be rewritten a moment after the upload's own page: ask for up to 10 s.
    for _ in range(20):
        status, headers, body = fetch(f"{FRONT}/search.json")
        assert status == 200 and headers["Content-Type"] == "application/json", headers
        if project in [row[0] for row in json.loads(body)["projects"]]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{project} never came into /search.json")
    assert body == fetch(f"{GUNICORN}/search.json")[2], "the same index as gunicorn's"
    assert gunicorn_log(host).count("GET /search.json ") == before + 1, "only the direct read reached gunicorn"


def test_what_nginx_cannot_settle_gets_gunicorns_answer(host) -> None:
    """Accept headers outside the few nginx matches, non-normalized names, /health: gunicorn answers them."""
    cases = [
        ("/simple/", "application/vnd.pypi.simple.v1+html"),
        ("/simple/", f"text/html;q=0.9, {JSON_TYPE};q=0.2"),
        ("/simple/", f"{JSON_TYPE};q=0.5, text/html"),
        ("/simple/", "application/json"),
        ("/simple/Airgap_Demo/", PIP_ACCEPT),
        ("/simple", ""),
        ("/health", ""),
    ]
    for path, accept in cases:
        front, direct = fetch(f"{FRONT}{path}", accept=accept), fetch(f"{GUNICORN}{path}", accept=accept)
        assert front[0] == direct[0], (path, accept, front[0], direct[0])
        assert front[1].get("Content-Type") == direct[1].get("Content-Type"), (path, accept)
        assert front[2] == direct[2], (path, accept)
    assert fetch(f"{FRONT}/simple/", accept="application/json")[0] == 406
    status, headers, _ = fetch(f"{FRONT}/simple/Airgap_Demo/")
    assert status == 301 and headers["Location"].endswith("/simple/airgap-demo/")


def test_uploads_still_need_the_password(host, tmp_path: Path) -> None:
    project = unique("front-anon")
    _, remote = local_wheel(tmp_path, project, "1.0")
    done = on_client(
        "sh", "-c", f"/opt/clients/bin/twine upload --non-interactive --repository-url {FRONT}/ -u x -p y {remote}"
    )
    assert done.returncode != 0 and ("403" in done.stdout + done.stderr or "401" in done.stdout + done.stderr)
    assert fetch(f"{FRONT}/simple/{project}/")[0] == 404


def test_a_removal_through_nginx_leaves_its_page(host, tmp_path: Path) -> None:
    project = unique("front-removed")
    keep, keep_remote = local_wheel(tmp_path, project, "1.0")
    drop, drop_remote = local_wheel(tmp_path, project, "1.1")
    upload(host, keep_remote, drop_remote, port=FRONT_PORT)
    remove(host, drop.name, "1.1", port=FRONT_PORT)
    page = anchors(fetch(f"{FRONT}/simple/{project}/")[2])
    assert keep.name in page and drop.name not in page
    assert fetch(f"{FRONT}/packages/{drop.name}")[0] == 404
    assert fetch(f"{FRONT}/packages/{drop.name}.metadata")[0] == 404


def test_hidden_files_are_not_served(host) -> None:
    host.run(f"touch {PACKAGES}/.partial-upload /srv/pypi/static/simple/.hidden")
    for path in ("/packages/.partial-upload", "/simple/.hidden", "/.lock", "/simple/../.lock"):
        assert fetch(f"{FRONT}{path}")[0] == 404, path
    host.run(f"rm -f {PACKAGES}/.partial-upload /srv/pypi/static/simple/.hidden")


def test_links_other_files_and_doubled_slashes_get_gunicorns_404(host) -> None:
    """Only distribution files on the pages are served, never through a link; //simple/ is not merged."""
    host.run(
        f'mkdir -p /var/tmp/outside && cp "$(ls {PACKAGES}/*.whl | head -1)" /var/tmp/outside/ '
        f"&& ln -sfn /var/tmp/outside {PACKAGES}/linked && echo secret > {PACKAGES}/notes.txt"
    )
    linked = host.run("ls /var/tmp/outside").stdout.split()[0]
    try:
        for path in (f"/packages/linked/{linked}", "/packages/notes.txt", "//simple/", "/simple//airgap-demo/"):
            front, direct = fetch(f"{FRONT}{path}"), fetch(f"{GUNICORN}{path}")
            assert direct[0] == 404, (path, direct[0])
            assert front[0] == 404, (path, front[0])
    finally:
        host.run(f"rm -rf {PACKAGES}/linked {PACKAGES}/notes.txt /var/tmp/outside")


def test_the_client_role_points_pip_at_the_front_server(host, tmp_path: Path) -> None:
    config = on_client("cat", "/etc/pip.conf").stdout
    assert f"index-url = {FRONT}/simple/" in config, config
    project = unique("front-client")
    _, remote = local_wheel(tmp_path, project, "1.0")
    upload(host, remote, port=FRONT_PORT)
    # No --index-url: the system-wide configuration the client role wrote.
    done = on_client(
        "/opt/clients/bin/pip", "download", "--no-deps", "--no-cache-dir", "-d", f"/var/tmp/{project}", project
    )
    assert done.returncode == 0 and f"Looking in indexes: {FRONT}/simple/" in done.stdout, done.stdout + done.stderr
