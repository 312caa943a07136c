"""uv as the client role leaves it: its system configuration (/etc/uv/uv.toml) alone makes `uv pip install` use the
index, with no flags. The project is uploaded under a unique name first, so only this index can have it; without
the configuration (`--no-config`) the same install fails, so it is the configuration that found the index."""

from __future__ import annotations

import os
from pathlib import Path

import testinfra.utils.ansible_runner
from conftest import CLIENT, on_client
from test_static_index import local_wheel, unique, upload

# The client role points at the host that runs the front server (molecule.yml: pypi_client_server).
SERVER = "airgap-pypi-deb12"
FRONT_PORT = 80
UV = "/opt/clients/bin/uv"
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(SERVER)


def uv_install(requirement: str, target: str, *flags: str) -> tuple[int, str]:
    """uv pip install into target on the client, bounded in time, with no cache; (exit code, its output)."""
    on_client("rm", "-rf", target)
    done = on_client(
        "env",
        "UV_HTTP_TIMEOUT=10",
        "UV_HTTP_RETRIES=0",
        "timeout",
        "120",
        UV,
        *flags,
        "pip",
        "install",
        "--no-cache",
        "--python",
        "/opt/clients/bin/python",
        "--target",
        target,
        requirement,
    )
    return done.returncode, done.stdout + done.stderr


def test_uv_installs_from_the_index_with_only_its_system_configuration(host, tmp_path: Path) -> None:
    config = on_client("cat", "/etc/uv/uv.toml")
    assert config.returncode == 0, f"the client role wrote no uv configuration on {CLIENT}"
    assert f'url = "http://{SERVER}:{FRONT_PORT}/simple/"' in config.stdout, config.stdout
    project = unique("uv-probe")
    _, on_the_client = local_wheel(tmp_path, project, "1.0.0")
    upload(host, on_the_client, port=FRONT_PORT)
    module = project.replace("-", "_")
    rc, output = uv_install(f"{project}==1.0.0", "/var/tmp/uv-target")
    assert rc == 0, output
    imported = on_client("env", "PYTHONPATH=/var/tmp/uv-target", "/usr/bin/python3", "-c", f"import {module}")
    assert imported.returncode == 0, imported.stderr
    # The same command without the configuration looks at the public index, which this network cannot reach.
    rc, output = uv_install(f"{project}==1.0.0", "/var/tmp/uv-target-noconfig", "--no-config")
    assert rc != 0, f"uv found {project} without the configuration:\n{output}"
