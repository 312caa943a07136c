"""site.yml runs of their own: check mode on the converged hosts, and bad input on a pristine host.

Every bad input must fail before anything changes: `docker diff` of the pristine host is the same
before and after each failed run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENT, NETWORK, PASSWORD, PORT, PRISTINE, PROJECT_DIR, USER, docker, wait_for
from containers import ansible_playbook, recap

INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
ARTIFACTS = PROJECT_DIR / "offline_artifacts"
IGNORED = re.compile(r"^[ACD] /(root/\.ansible|tmp|run|var/log)(/|$)")


def playbook(*args: str, inventory: str | Path = INVENTORY_DIR) -> subprocess.CompletedProcess[str]:
    return ansible_playbook(PROJECT_DIR / "site.yml", Path(inventory), *args, project=PROJECT_DIR)


def test_check_mode_on_converged_hosts_changes_nothing() -> None:
    result = playbook("--check", "--limit", "pypi_servers")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = recap(result.stdout)
    assert len(counts) == 3, counts
    for host, numbers in counts.items():
        assert numbers["changed"] == 0 and numbers["failed"] == 0, (host, numbers)


@pytest.fixture(scope="module")
def pristine_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory naming only the never-converged host as an index server."""
    path = tmp_path_factory.mktemp("inv") / "hosts.json"
    group_vars = {
        "ansible_connection": "community.docker.docker",
        "pypi_server_users": [{"name": USER, "password": PASSWORD}],
    }
    path.write_text(json.dumps({"pypi_servers": {"hosts": {PRISTINE: None}, "vars": group_vars}}))
    # Ansible's first contact leaves /root/.ansible behind; that is not the playbook's doing.
    subprocess.run(
        ["ansible", "-i", str(path), PRISTINE, "-m", "ansible.builtin.ping"],
        check=True,
        capture_output=True,
        env=dict(os.environ, ANSIBLE_ROLES_PATH=str(PROJECT_DIR / "roles")),
    )
    return path


def changes_of(container: str) -> set[str]:
    lines = docker("diff", container).stdout.splitlines()
    return {line for line in lines if not IGNORED.match(line)}


@pytest.fixture
def unchanged(pristine_inventory: Path) -> Iterator[Path]:
    """Yield the pristine inventory and assert afterwards that the host did not change."""
    before = changes_of(PRISTINE)
    yield pristine_inventory
    assert changes_of(PRISTINE) == before, "a failed check must leave the host as it was"


def expect_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert the run failed and said every needle (whitespace folded, as the callback wraps lines)."""
    text = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, text[-3000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in output:\n{text[-3000:]}"
    return text


def test_missing_bundle(unchanged: Path, tmp_path: Path) -> None:
    result = playbook("-e", f"pypi_bootstrap_artifacts_dir={tmp_path}/none", inventory=unchanged)
    expect_failure(result, "SHA256SUMS is missing", "make bundle")


def test_corrupted_wheel(unchanged: Path, tmp_path: Path) -> None:
    copy = tmp_path / "offline_artifacts"
    shutil.copytree(ARTIFACTS, copy)
    victim = min((copy / "wheels").glob("gunicorn-*.whl"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"corrupted!")
    result = playbook("-e", f"pypi_bootstrap_artifacts_dir={copy}", inventory=unchanged)
    expect_failure(result, "failed its checksum check", f"wheels/{victim.name}: FAILED")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ({"pypi_server_port": 70000}, ["pypi_server_port=70000", "1-65535"]),
        ({"pypi_server_port": "http"}, ["pypi_server_port", "int"]),
        ({"pypi_server_workers": 0}, ["pypi_server_workers=0", "1-64"]),
        ({"pypi_server_packages_dir": "srv/packages"}, ["pypi_server_packages_dir=srv/packages", "absolute"]),
        ({"pypi_server_user": "Bad User"}, ["'Bad User'", "must match"]),
        ({"pypi_supervisor_init_system": "upstart"}, ["pypi_supervisor_init_system", "upstart"]),
        ({"pypi_server_users": [{"name": "alice", "password": ""}]}, ["without a password", "alice"]),
        ({"pypi_server_users": [{"name": "bob"}]}, ["password", "pypi_server_users"]),
        ({"pypi_front_enabled": True, "pypi_front_port": 8080}, ["pypi_front_port=8080", "other than"]),
        ({"pypi_front_enabled": True, "pypi_front_max_upload_size": "lots"}, ["pypi_front_max_upload_size='lots'"]),
        ({"pypi_front_enabled": True, "pypi_server_auth_downloads": True}, ["without the index's password check"]),
        # The pristine host's apt knows no repository: nginx cannot come from its OS mirror.
        ({"pypi_front_enabled": True}, ["needs the OS package 'nginx'", "OS repositories of your private network"]),
    ],
    ids=[
        "port-range",
        "port-type",
        "workers",
        "relative-path",
        "user-name",
        "init-system",
        "empty-password",
        "missing-password",
        "front-port",
        "front-upload-size",
        "front-auth-downloads",
        "front-no-os-mirror",
    ],
)
def test_bad_inventory_value(unchanged: Path, extra: dict[str, object], needles: list[str]) -> None:
    result = playbook("-e", json.dumps(extra), inventory=unchanged)
    text = expect_failure(result, *needles)
    assert "Nothing was changed" in text or "Validation of arguments failed" in text


def python36_prefix() -> str | None:
    """Where pyenv keeps a CPython 3.6 on this machine, if it has one."""
    pyenv = shutil.which("pyenv")
    if not pyenv:
        return None
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
    found = sorted(Path(root, "versions").glob("3.6.*")) if root else []
    return str(found[-1]) if found else None


@pytest.fixture
def python36_only_host(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A host whose only Python is a real CPython 3.6 at /usr/libexec/platform-python, as on EL 8 minimal.

    A Debian container with its python3 removed and pyenv's 3.6 put in: it emulates EL 8's interpreter
    situation, not EL 8 itself.
    """
    prefix = python36_prefix()
    if prefix is None:
        pytest.skip("not run: no CPython 3.6 from pyenv on this machine to carry into the container")
    name = "airgap-pypi-py36"
    docker("rm", "-f", name, check=False)
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--hostname",
        name,
        "--network",
        NETWORK,
        "--cap-add",
        "SYS_BOOT",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "--tmpfs",
        "/tmp",
        "airgap-pypi/debian12-sysv:latest",
    )
    try:
        purge = "dpkg --purge --force-depends $(dpkg-query -W -f '${Package}\\n' 'python3*' 'libpython3*')"
        docker("exec", name, "sh", "-c", purge)
        archive = tmp_path / "python36.tar"
        subprocess.run(
            ["tar", "-C", "/", "--exclude=test", "--exclude=site-packages", "-cf", str(archive), prefix.lstrip("/")],
            check=True,
        )
        docker("cp", "-", f"{name}:/", input_file=archive)
        docker("exec", name, "ln", "-s", f"{prefix}/bin/python3.6", "/usr/libexec/platform-python")
        version = docker("exec", name, "/usr/libexec/platform-python", "-c", "import sys; print(sys.version[:4])")
        assert version.stdout.strip() == "3.6."
        assert docker("exec", name, "sh", "-c", "command -v python3", check=False).returncode != 0
        inventory = tmp_path / "hosts.json"
        group_vars = {
            "ansible_connection": "community.docker.docker",
            "pypi_server_users": [{"name": USER, "password": PASSWORD}],
        }
        inventory.write_text(json.dumps({"pypi_servers": {"hosts": {name: None}, "vars": group_vars}}))
        yield name, inventory
    finally:
        docker("rm", "-f", name, check=False)


def test_python36_only_host_is_refused_with_a_way_out(python36_only_host: tuple[str, Path]) -> None:
    name, inventory = python36_only_host
    before = changes_of(name)
    result = playbook(inventory=inventory)
    expect_failure(
        result,
        f"{name} has no Python that this bundle supports",
        "3.6 /usr/libexec/platform-python",
        "supported: 3.9, 3.10, 3.11, 3.12, 3.13",
        "AppStream",
    )
    assert changes_of(name) == before, "a refused host must be left as it was"


def test_port_in_use(unchanged: Path) -> None:
    docker("exec", "-d", PRISTINE, "python3", "-m", "http.server", str(PORT))
    try:
        wait = (
            "import socket, time\n"
            "for _ in range(50):\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {PORT}), 1)\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
        )
        assert docker("exec", PRISTINE, "python3", "-c", wait).returncode == 0
        result = playbook(inventory=unchanged)
        expect_failure(result, f"Port {PORT} on {PRISTINE} is already in use by python3 -m http.server")
    finally:
        docker("exec", PRISTINE, "pkill", "-f", "http.server", check=False)


def http_status(url: str, auth: bool) -> str:
    """HTTP status of a GET from the client container, with or without the test account."""
    code = (
        "import base64, urllib.request, urllib.error\n"
        f"req = urllib.request.Request('{url}')\n"
        f"if {auth}:\n"
        f"    req.add_header('Authorization', 'Basic ' + base64.b64encode(b'{USER}:{PASSWORD}').decode())\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=10).status)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n"
    )
    # No answer at all (connection refused) prints nothing: "" is the status then.
    return docker("exec", CLIENT, "/usr/bin/python3", "-c", code, check=False).stdout.strip()


def test_downloads_can_require_a_password() -> None:
    """On the host with the front server: turned off with it (nginx cannot check passwords), and back after."""
    host = "airgap-pypi-deb12"
    url, front = f"http://{host}:{PORT}/simple/", f"http://{host}:80/simple/"
    assert http_status(url, auth=False) == "200" and http_status(front, auth=False) == "200"
    try:
        result = playbook("--limit", host, "-e", "pypi_server_auth_downloads=true", "-e", "pypi_front_enabled=false")
        assert result.returncode == 0, result.stdout[-3000:]
        assert wait_for(lambda: http_status(url, auth=False) == "401", 30)
        assert http_status(front, auth=False) != "200", "nginx no longer serves the index once it is off"
        assert http_status(url, auth=True) == "200"
        # The static read path guards every read as pypiserver does: pages, browse page, metadata, files.
        base = f"http://{host}:{PORT}"
        wheel = docker(
            "exec", host, "sh", "-c", "ls /srv/pypi/packages | grep '^airgap_demo-' | head -1"
        ).stdout.strip()
        assert wheel, "the default tests uploaded airgap-demo"
        for path in ("/", "/simple/airgap-demo/", f"/packages/{wheel}.metadata", f"/packages/{wheel}"):
            assert http_status(base + path, auth=False) == "401", path
            assert http_status(base + path, auth=True) == "200", path
    finally:
        restored = playbook("--limit", host)
        assert restored.returncode == 0, restored.stdout[-3000:]
    assert wait_for(lambda: http_status(url, auth=False) == "200", 30)
    assert http_status(front, auth=False) == "200", "the front server is back"


def http_body(url: str) -> str:
    """Body of a GET from the client container."""
    code = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=10).read().decode())"
    return docker("exec", CLIENT, "/usr/bin/python3", "-c", code).stdout


def test_static_index_can_be_turned_off() -> None:
    """pypi_server_static_index=false is pypiserver alone, as before (the benchmark's baseline)."""
    host = "airgap-pypi-deb11"
    page = f"http://{host}:{PORT}/simple/airgap-demo/"
    assert "data-requires-python" in http_body(page)
    try:
        result = playbook("--limit", host, "-e", "pypi_server_static_index=false")
        assert result.returncode == 0, result.stdout[-3000:]
        assert wait_for(lambda: "data-requires-python" not in http_body(page), 30)
        assert "airgap_demo-" in http_body(page), "pypiserver lists the same files itself"
        assert "pypiserver" in http_body(f"http://{host}:{PORT}/"), "its own welcome page"
    finally:
        restored = playbook("--limit", host)
        assert restored.returncode == 0, restored.stdout[-3000:]
    assert wait_for(lambda: "data-requires-python" in http_body(page), 30)
    assert 'id="search"' in http_body(f"http://{host}:{PORT}/")
