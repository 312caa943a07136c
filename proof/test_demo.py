"""`make demo` on a clean clone of the committed tree, as the README's quick start promises.

The clone has nothing git does not track (no .venv, no bundle); `make demo` builds them, provisions the sandbox
host with site.yml and prints a pip line. That line, run in a new virtual environment that sees only the index
(no pip configuration, no PIP_* variables of this machine), must install the demo package. `make down` removes
the sandbox afterwards. The sandbox has one name per machine: while a developer's own sandbox is up, this test
says NOT RUN (skipped), never passed, and leaves that sandbox alone.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = "airgap-pypi-sandbox"


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p)
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if subprocess.run(["docker", "container", "inspect", SANDBOX], capture_output=True, check=False).returncode == 0:
        pytest.skip(f"NOT RUN: a sandbox ({SANDBOX}) is up on this machine; `make down` first to run this test")
    dest = tmp_path_factory.mktemp("demo") / "airgap-pypi"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True, timeout=120)
    try:
        yield dest
    finally:
        subprocess.run(["make", "-C", str(dest), "down"], capture_output=True, check=False, timeout=120)


def test_make_demo_on_a_clean_clone_prints_a_pip_line_that_installs(clone: Path, tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    demo = subprocess.run(
        ["make", "demo"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=clean_env(AIRGAP_PYPI_DEMO_PORT=str(port)),
        check=False,
        timeout=1200,
    )
    seconds = time.monotonic() - started
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-3000:]
    print(f"make demo on a clean clone: {seconds:.1f} s")
    found = re.search(r"^\s*Install:\s+(pip install .*)$", demo.stdout, re.MULTILINE)
    assert found, demo.stdout[-3000:]
    args = shlex.split(found.group(1))
    assert f"http://127.0.0.1:{port}/simple/" in args, args
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", *args, "--no-cache-dir"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import airgap_demo; print(airgap_demo.VERSION)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.strip() == "1.0.0", version.stdout + version.stderr
