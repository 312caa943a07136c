"""The air gap, end to end: an offline controller unpacks the archive, installs its toolchain and runs site.yml.

The controller is a container with `--network none` (only a loopback interface): it reaches the index host
through the docker socket (community.docker.docker_api connection), which is not a network route. The index
host and the client sit on a docker network created `--internal` (no route out). The client then installs
libraries of the carried-in mirror with `--index-url` only. Run by scripts/test.sh (make test).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.containers import SYSTEMD_RUN_OPTIONS
from scripts.pack_archive import pack, version

ROOT = Path(__file__).resolve().parent.parent

NETWORK = "airgap-pypi-proof"
INDEX = "airgap-pypi-proof-index"
CLIENT = "airgap-pypi-proof-client"
CONTROLLER = "airgap-pypi-proof-controller"
VERSION = version(ROOT)
REPO = f"/work/airgap-pypi-{VERSION}"
PLAYBOOK = [f"{REPO}/.venv-controller/bin/ansible-playbook", "site.yml", "-i", "/work/inventory.yml"]
INVENTORY = f"""all:
  children:
    pypi_servers:
      hosts:
        {INDEX}:
      vars:
        ansible_connection: community.docker.docker_api
        pypi_bootstrap_expected_version: "{VERSION}"
"""
TIMES: dict[str, float] = {}


def docker(*args: str, check: bool = False, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def on(container: str, *args: str, workdir: str | None = None) -> subprocess.CompletedProcess[str]:
    return docker("exec", *(["-w", workdir] if workdir else []), container, *args)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def remove_all() -> None:
    docker("rm", "-f", INDEX, CLIENT, CONTROLLER)
    docker("network", "rm", NETWORK)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The archive of this tree (what `make bundle` ends with), in the controller's /carry with its .sha256."""
    remove_all()
    out = tmp_path_factory.mktemp("carry")
    start = time.monotonic()
    path = pack(ROOT, out)
    TIMES["pack archive"] = time.monotonic() - start
    docker("network", "create", "--internal", NETWORK, check=True)
    docker("run", "-d", "--name", INDEX, "--hostname", INDEX, "--network", NETWORK, *SYSTEMD_RUN_OPTIONS,
           "airgap-pypi/debian12-systemd:latest", check=True)  # fmt: skip
    docker("run", "-d", "--name", CLIENT, "--network", NETWORK, "airgap-pypi/debian12-client:latest", check=True)
    docker("run", "-d", "--name", CONTROLLER, "--network", "none", "-v", "/var/run/docker.sock:/var/run/docker.sock",
           "airgap-pypi/debian13-controller:latest", check=True)  # fmt: skip
    on(CONTROLLER, "mkdir", "-p", "/carry", "/work")
    for item in out.iterdir():
        docker("cp", str(item), f"{CONTROLLER}:/carry/{item.name}", check=True)
    on(INDEX, "timeout", "120", "systemctl", "is-system-running", "--wait")
    yield path
    remove_all()
    print("\nproof timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMES.items()))


def test_controller_has_no_network(archive: Path) -> None:
    links = on(CONTROLLER, "ls", "/sys/class/net").stdout.split()
    assert links == ["lo"], links
    probe = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"
    result = on(CONTROLLER, "python3", "-c", probe)
    assert result.returncode != 0 and "unreachable" in result.stderr.lower(), explain(result)


def test_index_host_has_no_route_out(archive: Path) -> None:
    probe = "import socket; socket.create_connection(('1.1.1.1', 443), timeout=3)"
    assert on(INDEX, "python3", "-c", probe).returncode != 0


def test_corrupted_archive_is_refused(archive: Path) -> None:
    script = (
        f"mkdir -p /carry/bad && cp /carry/{archive.name} /carry/{archive.name}.sha256 /carry/bad/ && "
        # One byte inverted (never rewritten with a byte it may already hold: an archive with an X at offset 5000
        # would pass unchanged).
        'python3 -c \'import sys; f = open(sys.argv[1], "r+b"); f.seek(5000); b = f.read(1); f.seek(5000); '
        f"f.write(bytes([b[0] ^ 0xFF])); f.close()' /carry/bad/{archive.name} && "
        f"sh /carry/unpack_archive.sh /carry/bad/{archive.name} /carry/bad"
    )
    result = on(CONTROLLER, "sh", "-c", script)
    assert result.returncode == 1, explain(result)
    assert "is corrupted or incomplete" in result.stderr, explain(result)
    assert on(CONTROLLER, "test", "-e", f"/carry/bad/airgap-pypi-{VERSION}").returncode != 0


def test_archive_of_another_version_is_refused(archive: Path) -> None:
    result = on(
        CONTROLLER, "sh", "/carry/unpack_archive.sh", "--expect-version", "0.0.1", f"/carry/{archive.name}", "/work"
    )
    assert result.returncode == 1 and f"is version {VERSION}, but version 0.0.1 is expected" in result.stderr


def test_unpack(archive: Path) -> None:
    result = on(
        CONTROLLER, "sh", "/carry/unpack_archive.sh", "--expect-version", VERSION, f"/carry/{archive.name}", "/work"
    )
    assert result.returncode == 0, explain(result)
    assert "scripts/install_controller.sh" in result.stdout


def test_toolchain_installs_offline(archive: Path) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, f"{REPO}/scripts/install_controller.sh")
    TIMES["offline toolchain install"] = time.monotonic() - start
    assert result.returncode == 0, explain(result)
    for line in ("ansible [core 2.2", "ansible.posix ", "community.general ", "community.docker "):
        assert line in result.stdout, explain(result)


def test_inventory_expecting_another_version_stops_the_play(archive: Path) -> None:
    on(CONTROLLER, "sh", "-c", f"cat > /work/inventory.yml <<'EOF'\n{INVENTORY}EOF")
    result = on(CONTROLLER, *PLAYBOOK, "-e", "pypi_bootstrap_expected_version=0.0.1", workdir=REPO)
    assert result.returncode != 0, explain(result)
    assert f"is version {VERSION}" in result.stdout and "expects 0.0.1" in result.stdout, explain(result)


def test_site_yml_from_the_offline_controller(archive: Path) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, *PLAYBOOK, workdir=REPO)
    TIMES["site.yml"] = time.monotonic() - start
    assert result.returncode == 0, explain(result)


def test_rerun_copies_nothing(archive: Path) -> None:
    start = time.monotonic()
    result = on(CONTROLLER, *PLAYBOOK, workdir=REPO)
    TIMES["site.yml re-run"] = time.monotonic() - start
    assert result.returncode == 0 and "changed=0" in result.stdout, explain(result)


def test_client_installs_mirrored_libraries(archive: Path) -> None:
    url = f"http://{INDEX}:8080/simple/"
    script = (
        "rm -rf /var/tmp/v && python3 -m venv /var/tmp/v && PIP_CONFIG_FILE=/dev/null /var/tmp/v/bin/pip install "
        f"--disable-pip-version-check --no-cache-dir --index-url {url} --trusted-host {INDEX} requests click && "
        "/var/tmp/v/bin/python -c 'import requests, click, idna, urllib3, certifi, charset_normalizer; print(\"ok\")'"
    )
    result = on(CLIENT, "sh", "-c", script)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), explain(result)


def test_name_taken_by_other_bytes_stops_before_copying(archive: Path) -> None:
    found = on(INDEX, "sh", "-c", "ls /srv/pypi/packages | grep '^click-'").stdout.split()
    assert found, "click is not in the index"
    on(INDEX, "sh", "-c", f"echo other > /srv/pypi/packages/{found[0]} && rm -f /srv/pypi/packages/idna-*")
    result = on(CONTROLLER, *PLAYBOOK, "--tags", "pypi_server", workdir=REPO)
    assert result.returncode != 0, explain(result)
    assert f"{found[0]} in /srv/pypi/packages" in result.stdout and "nothing was copied" in result.stdout, explain(
        result
    )
    assert not on(INDEX, "sh", "-c", "ls /srv/pypi/packages | grep '^idna-'").stdout.strip()
