"""The TLS index over its life: HTTPS and the front server come back after a restart, and a backup restores onto
lost data with both HTTPS ports serving the files again (a new certificate for new names: test_settings_changes.py;
the renewal window: tests/test_tls_ca.py). Runs after test_tls.py (file order) and leaves the host as the scenario's
inventory describes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tls_support import (
    CA_ON_CLIENT,
    CLIENT,
    FRONT_PORT,
    INVENTORY_DIR,
    PORT,
    PROJECT_DIR,
    SERVER,
    docker,
    on,
    run_playbook,
    served,
    wait_for,
)

PACKAGES = "/srv/pypi/packages"


def serves_tls() -> bool:
    try:
        return len(served()) == 2
    except AssertionError:
        return False


def test_https_and_the_front_server_come_back_after_a_restart() -> None:
    before = served()[0].serial_number
    docker("restart", SERVER, timeout=180)
    assert wait_for(serves_tls, 90, 1), "HTTPS on gunicorn's and nginx's ports did not come back after a restart"
    assert {cert.serial_number for cert in served()} == {before}


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


def file_hash_over_https(name: str, port: int) -> str:
    code = (
        "import hashlib, ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "print(hashlib.sha256(urllib.request.urlopen(sys.argv[2], context=ctx, timeout=20).read()).hexdigest())\n"
    )
    url = f"https://{SERVER}:{port}/packages/{name}"
    answer = on(CLIENT, "python3", "-c", code, CA_ON_CLIENT, url)
    assert answer.returncode == 0, f"{url}: {answer.stdout}{answer.stderr}"
    return answer.stdout.strip()


def test_a_backup_restores_lost_data_and_both_https_ports_serve_it(backup_dir: Path) -> None:
    listing = on(SERVER, "sh", "-c", f"cd {PACKAGES} && sha256sum *.whl")
    files = dict(reversed(line.split("  ", 1)) for line in listing.stdout.splitlines())
    assert files, f"the TLS tests uploaded no package: {listing.stdout}{listing.stderr}"
    backup = run_playbook(
        PROJECT_DIR / "playbooks" / "backup.yml",
        INVENTORY_DIR,
        "--limit",
        SERVER,
        "-e",
        f"pypi_backup_dir={backup_dir}",
    )
    assert backup.returncode == 0, backup.stdout[-3000:]
    (archive,) = sorted(backup_dir.glob(f"{SERVER}-*.tar.gz"))
    # The data is lost: every package file gone from the host.
    assert on(SERVER, "sh", "-c", f"rm -f {PACKAGES}/*.whl").returncode == 0
    restore = run_playbook(
        PROJECT_DIR / "playbooks" / "restore.yml",
        INVENTORY_DIR,
        "--limit",
        SERVER,
        "-e",
        f"pypi_backup_archive={archive}",
    )
    assert restore.returncode == 0, restore.stdout[-3000:] + restore.stderr[-2000:]
    for name, digest in files.items():
        for port in (PORT, FRONT_PORT):
            assert file_hash_over_https(name, port) == digest, (name, port)
