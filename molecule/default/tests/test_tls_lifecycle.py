"""The TLS index over its life: the internal CA re-issues the certificate when the names change or too few days
remain, HTTPS and the front server come back after a restart, and a backup restores onto lost data with both
HTTPS ports serving the files again. Runs after test_tls.py and test_playbook_runs.py (file order) and leaves the
host as the scenario's inventory describes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from tls_support import (
    CLIENT,
    FRONT_PORT,
    INVENTORY_DIR,
    PKI,
    PORT,
    PROJECT_DIR,
    SERVER,
    docker,
    on,
    recap,
    run_playbook,
    wait_for,
)

SITE = PROJECT_DIR / "site.yml"
CA_ON_CLIENT = "/usr/local/share/ca-certificates/airgap-pypi-ca.crt"
EXTRA_NAME = "pypi.airgap.test"
PACKAGES = "/srv/pypi/packages"
# On the client: the certificate each port presents, verified against the internal CA (PEM, one per port).
SERVED = (
    "import socket, ssl, sys\n"
    "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
    "for port in sys.argv[3:]:\n"
    "    raw = socket.create_connection((sys.argv[2], int(port)), timeout=10)\n"
    "    s = ctx.wrap_socket(raw, server_hostname=sys.argv[2])\n"
    "    print(ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True)))\n"
)


def served() -> list[x509.Certificate]:
    """The certificates gunicorn and nginx present to the client, each verified against the CA."""
    answer = on(CLIENT, "python3", "-c", SERVED, CA_ON_CLIENT, SERVER, str(PORT), str(FRONT_PORT))
    assert answer.returncode == 0, answer.stdout + answer.stderr
    pems = [block + "-----END CERTIFICATE-----\n" for block in answer.stdout.split("-----END CERTIFICATE-----")[:2]]
    return [x509.load_pem_x509_certificate(pem.strip().encode() + b"\n") for pem in pems]


def names_of(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def converge(*extra: str) -> None:
    result = run_playbook(SITE, INVENTORY_DIR, "--limit", SERVER, *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert recap(result.stdout)[SERVER]["failed"] == 0


def serves_tls() -> bool:
    try:
        return len(served()) == 2
    except AssertionError:
        return False


def test_the_ca_reissues_when_names_change_or_too_few_days_remain() -> None:
    first = served()
    assert first[0].serial_number == first[1].serial_number, "both ports present one certificate"
    assert EXTRA_NAME not in names_of(first[0])
    try:
        converge("-e", json.dumps({"pypi_server_tls_names": [EXTRA_NAME]}))
        renamed = served()
        assert EXTRA_NAME in names_of(renamed[0]) and renamed[0].serial_number != first[0].serial_number
        assert renamed[1].serial_number == renamed[0].serial_number, "nginx took the new certificate too"
        kept = x509.load_pem_x509_certificate((PKI / "hosts" / f"{SERVER}.crt").read_bytes())
        assert kept.serial_number == renamed[0].serial_number, "the controller keeps the certificate it issued"
        # Same names, but more renewal days than the certificate has left (825 by default): issued again.
        converge("-e", json.dumps({"pypi_server_tls_names": [EXTRA_NAME], "pypi_server_tls_renew_days": 900}))
        renewed = served()
        assert renewed[0].serial_number != renamed[0].serial_number, "a certificate inside the renewal window stays"
        assert EXTRA_NAME in names_of(renewed[0]) and renewed[1].serial_number == renewed[0].serial_number
    finally:
        converge()
    back = served()
    assert EXTRA_NAME not in names_of(back[0]) and back[1].serial_number == back[0].serial_number


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
