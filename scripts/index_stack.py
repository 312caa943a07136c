"""The index's real stack on loopback for the unit tests and the benchmark: pypiserver and gunicorn from the
bundle's wheels, the role's own templates rendered (upload checks, static read path), and the toolchain's twine and
pip as clients."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import jinja2
import pytest
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

ROOT = Path(__file__).resolve().parent.parent
ROLE = ROOT / "roles" / "pypi_server"
WHEELS = Path(os.environ.get("AIRGAP_PYPI_TEST_WHEELS", ROOT / "offline_artifacts" / "wheels"))
LOCK = ROOT / "offline_artifacts" / "locks" / f"server-cp{sys.version_info[0]}{sys.version_info[1]}.txt"
BIN = Path(sys.executable).parent
HERE = frozenset(sys_tags())  # the wheel tags the Python running the tests installs (comrak has one wheel a CPython)
USER, PASSWORD = "uploader", "static-test-only"
# Straight to loopback, whatever proxy the environment names.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def locked_wheels() -> list[Path]:
    """The bundle's wheels of the server lock of the Python running the tests (those built for it)."""
    if not LOCK.exists() or not WHEELS.is_dir():
        pytest.skip("not run: no built bundle (offline_artifacts/wheels); build it with make bundle")
    names = re.findall(r"(?m)^([A-Za-z0-9_.-]+)==([^ \\]+)", LOCK.read_text())
    found = []
    for name, version in names:
        stem = re.sub(r"[-_.]+", "_", name).lower()
        matches = [
            w
            for w in sorted(WHEELS.glob("*.whl"))
            if w.name.lower().startswith(f"{stem}-{version}-") and not parse_wheel_filename(w.name)[3].isdisjoint(HERE)
        ]
        if not matches:
            pytest.skip(f"not run: the bundle lacks {name} {version} (build it: make bundle)")
        found.append(matches[0])
    return found


def extract_site(site: Path) -> Path:
    """The locked wheels extracted into site, a directory to put on PYTHONPATH (as the index's virtualenv)."""
    for wheel in locked_wheels():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return site


def owner_map_module() -> ModuleType:
    """The role's pypi_server_accounts module (its document() writes the owner map file the pages read)."""
    spec = importlib.util.spec_from_file_location("pypi_server_accounts", ROLE / "library" / "pypi_server_accounts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def render(template: str, variables: dict[str, object]) -> str:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    environment.filters["bool"] = bool
    environment.filters["to_json"] = json.dumps
    return environment.from_string((ROLE / "templates" / template).read_text()).render(**variables)


def get(url: str, accept: str | None = None, timeout: float = 20) -> tuple[int, bytes]:
    """Status and body of a GET; 0 when nothing answers."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def auth_header() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@dataclass
class Stack:
    url: str
    packages: Path
    tree: Path
    log: Path
    base: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    config: Path  # the rendered configuration and airgap_pypi_index.py, as the role deploys them
    yanked: Path  # the yank file the pages follow (base/yanked.json, as pypi_server_data_dir/yanked.json)
    owners: Path  # the claims of first uploads (base/owners/owners.json, as in pypi_server_data_dir)
    audit: Path  # the audit trail's directory (base/audit, as pypi_server_data_dir/audit, made as the role makes it)

    def workers(self) -> list[int]:
        """PIDs of this gunicorn's workers (children of the master this test started)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def wait_healthy(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while get(f"{self.url}/health", timeout=5)[0] != 200:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"gunicorn did not answer /health within {seconds} s"
            time.sleep(0.2)


def write_htpasswd(path: Path, env: dict[str, str], accounts: dict[str, str]) -> None:
    """The accounts as pypi_server_accounts writes them (passlib from the bundle, as in the index's virtualenv)."""
    lines = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from passlib.hash import sha512_crypt\n"
            "pairs = sys.argv[1:]\n"
            "for name, password in zip(pairs[::2], pairs[1::2]):\n"
            "    print(f'{name}:{sha512_crypt.using(rounds=100000).hash(password)}')",
            *(item for pair in accounts.items() for item in pair),
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    temporary = path.with_name(".tmp-htpasswd")
    temporary.write_text(lines)
    temporary.replace(path)


@contextlib.contextmanager
def serve(
    base: Path,
    *,
    max_upload_mb: int = 2048,
    packages: Path | None = None,
    workers: int = 2,
    auth_downloads: bool = False,
    metrics_public: bool = False,
    accounts: dict[str, str] | None = None,
    admins: tuple[str, ...] = (),
    project_owners: dict[str, list[str]] | None = None,
    claim_first_upload: bool = False,
    audit_max_mb: int = 10,
    audit_keep: int = 5,
    render_cpu_seconds: int = 10,
) -> Iterator[Stack]:
    """gunicorn (gthread workers) serving pypiserver behind the upload checks and the static read path, as the
    role configures it, with one upload account hashed as the role hashes it (sha512_crypt, 100,000 rounds), plus
    accounts ({name: password}); admins, project_owners, claim_first_upload, audit_max_mb, audit_keep and
    render_cpu_seconds as the pypi_server_* settings."""
    site = base / "site"
    extract_site(site)
    config, tree = base / "etc", base / "static"
    packages = packages or base / "packages"
    config.mkdir()
    packages.mkdir(exist_ok=True)
    (base / "audit").mkdir(mode=0o750)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TWINE_"))}
    env["PYTHONPATH"] = f"{site}{os.pathsep}{config}"
    write_htpasswd(config / "htpasswd", env, {USER: PASSWORD, **(accounts or {})})
    htpasswd = config / "htpasswd"
    port = free_port()
    variables: dict[str, object] = {
        "ansible_managed": f"rendered by {__name__}",
        "pypi_server_config_dir": str(config),
        "pypi_server_program_name": "static-test",
        "pypi_server_bind_address": "127.0.0.1",
        "pypi_server_port": port,
        "pypi_server_workers": workers,
        "pypi_server_threads": 4,
        "pypi_server_timeout": 60,
        "pypi_server_static_index": True,
        "pypi_server_static_dir": str(tree),
        "pypi_server_packages_dir": str(packages),
        "pypi_server_auth_downloads": auth_downloads,
        "pypi_server_metrics_public": metrics_public,
        "__pypi_server_metrics_dir": str(base / "metrics"),
        "pypi_server_overwrite": False,
        "pypi_server_max_upload_mb": max_upload_mb,
        "pypi_server_tls": False,
        "__pypi_server_htpasswd": str(htpasswd),
        "__pypi_server_yanked_file": str(base / "yanked.json"),
        "pypi_server_project_owners": project_owners or {},
        "pypi_server_owners_claim_first_upload": claim_first_upload,
        "__pypi_server_admins": list(admins),
        "__pypi_server_owners_file": str(base / "owners" / "owners.json"),
        "__pypi_server_audit_dir": str(base / "audit"),
        "pypi_server_audit_max_mb": audit_max_mb,
        "pypi_server_audit_keep": audit_keep,
        "pypi_server_render_cpu_seconds": render_cpu_seconds,
        "pypi_server_render_memory_mb": 1024,
        "pypi_server_render_wall_seconds": 30,
        "__pypi_server_master_user": "pypiserver",
    }
    owner_map = config / "project_owners.json"  # as the role's pypi_server_accounts writes it
    owner_map.write_bytes(owner_map_module().document(project_owners or {}))
    variables["__pypi_server_owner_map_file"] = str(owner_map)
    (config / "gunicorn.conf.py").write_text(render("gunicorn.conf.py.j2", variables))
    (config / "pypiserver_wsgi.py").write_text(render("pypiserver_wsgi.py.j2", variables))
    shutil.copy(ROLE / "files" / "airgap_pypi_index.py", config)
    log_path = base / "gunicorn.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(config / "gunicorn.conf.py")],
            env=env,
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    stack = Stack(
        f"http://127.0.0.1:{port}",
        packages,
        tree,
        log_path,
        base,
        env,
        process,
        config,
        base / "yanked.json",
        base / "owners" / "owners.json",
        base / "audit",
    )
    try:
        stack.wait_healthy()
        yield stack
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def twine_upload(
    url: str, wheel: Path, env: dict[str, str] | None = None, *, user: str = USER, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TWINE_"))}
    return subprocess.run(
        [
            *(str(BIN / "twine"), "upload", "--non-interactive", "--disable-progress-bar"),
            *("--repository-url", f"{url}/", "-u", user, "-p", password, str(wheel)),
        ],
        capture_output=True,
        text=True,
        env=env or clean,
        timeout=300,
        check=False,
    )
