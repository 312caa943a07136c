"""pypi_server's TLS preflight against real certificates made here: each bad input is named, good ones pass.

The checks run on the controller (community.crypto), so a localhost play covers them; the Molecule TLS scenario
runs the same checks inside site.yml and proves the host is left unchanged.
"""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
from conftest import run_playbook
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent


def issue(names: list[str], days: int = 30, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None):
    """(certificate PEM, key PEM, subject, key) for names, self-signed unless issuer is given."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, subject, key


CA_CERT, _, CA_NAME, CA_KEY = issue(["test CA"])
GOOD_CERT, GOOD_KEY, _, _ = issue(["pypi01.example.internal"], issuer=(CA_NAME, CA_KEY))
WILDCARD_CERT, WILDCARD_KEY, _, _ = issue(["*.example.internal"])
EXPIRED_CERT, EXPIRED_KEY, _, _ = issue(["pypi01.example.internal"], days=-1)
OTHER_CA, _, _, _ = issue(["another CA"])


def preflight(tmp_path: Path, **tls: object) -> subprocess.CompletedProcess[str]:
    play = [
        {
            "name": "TLS preflight",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "pypi_server_tls": True,
                "pypi_server_tls_source": "inventory",
                "pypi_server_tls_names": ["pypi01.example.internal"],
                **tls,
            },
            "tasks": [
                {
                    "name": "Run the TLS checks",
                    "ansible.builtin.include_role": {"name": "pypi_server", "tasks_from": "tls_preflight"},
                }
            ],
        }
    ]
    return run_playbook(play, tmp_path / "play.json")


@pytest.mark.parametrize(
    "tls",
    [
        {"pypi_server_tls_cert": GOOD_CERT, "pypi_server_tls_key": GOOD_KEY, "pypi_server_tls_ca_cert": CA_CERT},
        {"pypi_server_tls_cert": WILDCARD_CERT, "pypi_server_tls_key": WILDCARD_KEY},
    ],
    ids=["issued-by-the-given-ca", "wildcard-covers-one-label"],
)
def test_good_input_passes(tmp_path: Path, tls: dict[str, str]) -> None:
    done = preflight(tmp_path, **tls)
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize(
    ("tls", "needle"),
    [
        ({"pypi_server_tls_cert": EXPIRED_CERT, "pypi_server_tls_key": EXPIRED_KEY}, "expired on"),
        ({"pypi_server_tls_cert": "not a certificate", "pypi_server_tls_key": GOOD_KEY}, "is not a PEM certificate"),
        (
            {"pypi_server_tls_cert": GOOD_CERT, "pypi_server_tls_key": "garbage"},
            "is not an unencrypted PEM private key",
        ),
        (
            {
                "pypi_server_tls_cert": WILDCARD_CERT,
                "pypi_server_tls_key": WILDCARD_KEY,
                "pypi_server_tls_names": ["a.b.example.internal"],
            },
            "does not cover a.b.example.internal",
        ),
        (
            {"pypi_server_tls_cert": GOOD_CERT, "pypi_server_tls_key": GOOD_KEY, "pypi_server_tls_ca_cert": OTHER_CA},
            "is not the issuer of pypi_server_tls_cert",
        ),
        ({"pypi_server_tls_key": GOOD_KEY}, "pypi_server_tls_cert is empty"),
        ({"pypi_server_tls_http_port": 8080}, "pypi_server_tls_http_port=8080"),
    ],
    ids=["expired", "not-pem", "bad-key", "wildcard-two-labels", "wrong-ca", "key-without-cert", "same-http-port"],
)
def test_bad_input_is_named(tmp_path: Path, tls: dict[str, object], needle: str) -> None:
    done = preflight(tmp_path, **tls)
    text = " ".join(done.stdout.split())
    assert done.returncode != 0, text[-2000:]
    assert needle in text, text[-3000:]
    assert "BEGIN PRIVATE KEY" not in done.stdout + done.stderr
