"""Playbook runs of their own: check mode and verify.yml on the converged hosts, bad TLS input on an untouched host.

Every bad input must fail before anything changes: `docker diff` of the stranger is the same before and after.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    INVENTORY_DIR,
    PASSWORD,
    PKI,
    PROJECT_DIR,
    SERVER,
    STRANGER,
    USER,
    changes_of,
    on,
    recap,
    run_playbook,
    wait_for,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SITE = PROJECT_DIR / "site.yml"
VERIFY = PROJECT_DIR / "playbooks" / "verify.yml"
SUPERVISORCTL = ["/opt/airgap-pypi/supervisor/bin/supervisorctl", "-c", "/etc/supervisor/supervisord.conf"]


def folded(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_check_mode_on_converged_hosts_changes_nothing() -> None:
    result = run_playbook(SITE, INVENTORY_DIR, "--check")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    counts = recap(result.stdout)
    assert {SERVER, "airgap-pypi-tls-client"} <= set(counts), counts
    for host, numbers in counts.items():
        assert numbers["changed"] == 0 and numbers["failed"] == 0, (host, numbers)


def test_ca_on_the_hosts_is_the_controllers() -> None:
    """Created once and kept: the copies converge and the idempotence run installed are the controller's CA."""
    ca = (PKI / "ca.crt").read_text().strip()
    assert on(SERVER, "cat", "/etc/airgap-pypi/tls/ca.crt").stdout.strip() == ca
    anchor = on("airgap-pypi-tls-client", "cat", "/usr/local/share/ca-certificates/airgap-pypi-ca.crt")
    assert anchor.stdout.strip() == ca


def test_verify_playbook_passes_reports_and_changes_nothing() -> None:
    for extra in ([], ["--check"]):
        result = run_playbook(VERIFY, INVENTORY_DIR, *extra)
        text = folded(result)
        assert result.returncode == 0, text[-4000:]
        for host, numbers in recap(result.stdout).items():
            assert numbers["changed"] == 0 and numbers["failed"] == 0, (extra, host, numbers)
        for needle in (
            "PASS | every supervisord program is RUNNING",
            "PASS | index answers /health on port 8080",
            "PASS | a file downloads and matches its sha256",
            "PASS | upload without credentials is refused (401)",
            f"PASS | TLS chain valid for {SERVER}",
            "PASS | plain HTTP is not served on port 8080",
            "PASS | port 8080/tcp open in firewalld",
            "PASS | port 443/tcp open in firewalld",
            "PASS | front server serves /simple/ (PEP 691 JSON) on port 443 over HTTPS, certificate valid for "
            + SERVER,
            "PASS | front server reaches gunicorn (/health)",
            "PASS | upload without credentials through the front server is refused (401)",
            "PASS | index reachable from this client with its certificate verified",
        ):
            assert needle in text, f"{needle!r} not in:\n{text[-4000:]}"


def test_verify_playbook_fails_and_names_the_failed_checks() -> None:
    on(SERVER, *SUPERVISORCTL, "stop", "pypiserver")
    try:
        result = run_playbook(VERIFY, INVENTORY_DIR, "--limit", "pypi_servers")
        text = folded(result)
        assert result.returncode != 0, text[-3000:]
        assert "FAIL | every supervisord program is RUNNING" in text
        assert "check(s) failed on airgap-pypi-tls-deb12" in text and "index answers /health on port 8080" in text
    finally:
        on(SERVER, *SUPERVISORCTL, "start", "pypiserver")
    assert wait_for(lambda: "RUNNING" in on(SERVER, *SUPERVISORCTL, "status", "pypiserver").stdout, 30)


# --- bad TLS input: the play stops in its first play, the host stays as it was ------------------------------


def pem_pair(names: list[str], days: int = 30) -> tuple[str, str]:
    """A self-signed certificate for names, and its key, as PEM text."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


@pytest.fixture(scope="module")
def stranger_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory naming the never-configured stranger as an index server with TLS from the inventory."""
    path = tmp_path_factory.mktemp("inv") / "hosts.json"
    group_vars = {
        "ansible_connection": "community.docker.docker",
        "pypi_server_users": [{"name": USER, "password": PASSWORD}],
        "pypi_server_tls": True,
        "pypi_server_tls_source": "inventory",
    }
    path.write_text(json.dumps({"pypi_servers": {"hosts": {STRANGER: None}, "vars": group_vars}}))
    return path


@pytest.fixture
def unchanged(stranger_inventory: Path) -> Iterator[Path]:
    before = changes_of(STRANGER)
    yield stranger_inventory
    assert changes_of(STRANGER) == before, "a failed check must leave the host as it was"


GOOD_CERT, GOOD_KEY = pem_pair([STRANGER])
OTHER_CERT, OTHER_KEY = pem_pair(["pypi.elsewhere.internal"])


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ({"pypi_server_tls_cert": GOOD_CERT}, ["pypi_server_tls_key is empty", "Nothing was changed"]),
        ({"pypi_server_tls_cert": GOOD_CERT, "pypi_server_tls_key": OTHER_KEY}, ["does not match"]),
        ({"pypi_server_tls_cert": OTHER_CERT, "pypi_server_tls_key": OTHER_KEY}, [f"does not cover {STRANGER}"]),
    ],
    ids=["cert-without-key", "key-of-another-cert", "names-not-covered"],
)
def test_bad_tls_input_stops_before_any_change(unchanged: Path, extra: dict[str, str], needles: list[str]) -> None:
    extra_file = unchanged.with_name("extra.json")
    extra_file.write_text(json.dumps(extra))
    result = run_playbook(SITE, unchanged, "-e", f"@{extra_file}")
    text = folded(result)
    assert result.returncode != 0, text[-3000:]
    for needle in needles:
        assert needle in text, f"{needle!r} not in output:\n{text[-3000:]}"
    # The key never shows up in the output, whatever failed.
    key_body = re.sub(r"-----[A-Z ]+-----", "", extra.get("pypi_server_tls_key", "")).split()
    assert not any(line in result.stdout + result.stderr for line in key_body if len(line) > 20)
