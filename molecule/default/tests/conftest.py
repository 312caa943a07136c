"""Shared helpers for the default scenario's verify step (testinfra + real clients)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from tls_support import CLIENT as TLS_CLIENT

from scripts.containers import docker, wait_for  # noqa: F401 - the tests import both from here
from scripts.demo_wheel import build_wheel

# The scenario's client container and network: molecule/el names its own, so the two scenarios never collide.
CLIENT = os.environ.get("AIRGAP_PYPI_MOLECULE_CLIENT", "airgap-pypi-client")
NETWORK = os.environ.get("AIRGAP_PYPI_MOLECULE_NETWORK", "airgap-pypi-molecule")
PORT = 8080
USER = "tester"
PASSWORD = "molecule-test-only"  # the scenario's throwaway account (molecule.yml)
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
CLIENT_BIN = "/opt/clients/bin"


def on_client(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a command on the client container."""
    return docker("exec", CLIENT, *args, check=check)


def twine_upload(url: str, *files: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    """twine upload of files on the client container to the index at url, as the scenario's account."""
    credentials = ("-u", USER, "-p", password)
    twine = (f"{CLIENT_BIN}/twine", "upload", "--non-interactive", "--repository-url", url)
    return on_client(*twine, *credentials, *files)


def health_from_client(server: str) -> bool:
    """True when the index on server answers /health to the client container."""
    code = (
        "import urllib.request,sys;"
        f"sys.exit(0 if urllib.request.urlopen('http://{server}:{PORT}/health', timeout=3).status == 200 else 1)"
    )
    return on_client("/usr/bin/python3", "-c", code).returncode == 0


@pytest.fixture(scope="session")
def demo_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A fresh wheel (unique version per run) copied onto the client; returns (path on client, version)."""
    version = f"1.0.{int(time.time())}"
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"), "airgap-demo", version)
    # /tmp is a tmpfs in the container: docker cp would write beneath it, out of sight.
    docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
    return f"/var/tmp/{wheel.name}", version


@pytest.fixture(scope="session")
def uploaded_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A fresh wheel (unique version per run) uploaded by the TLS client with twine and its ~/.pypirc, over HTTPS."""
    version = f"1.0.{int(time.time())}"
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"), "airgap-demo", version)
    # /tmp is a tmpfs in the container: docker cp would write beneath it, out of sight.
    docker("cp", str(wheel), f"{TLS_CLIENT}:/var/tmp/{wheel.name}")
    twine = (f"{CLIENT_BIN}/twine", "upload", "--non-interactive", "-r", "airgap", f"/var/tmp/{wheel.name}")
    upload = docker("exec", TLS_CLIENT, *twine, check=False, timeout=300)
    assert upload.returncode == 0, upload.stdout + upload.stderr
    return wheel.name, version
