"""Helpers of the default scenario's TLS tests (test_tls*.py): the TLS hosts converge in the same run as the others."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from cryptography import x509

from scripts.containers import ansible_playbook, docker, recap, wait_for  # noqa: F401 - the tests import them from here

SERVER = "airgap-pypi-tls-deb12"
CLIENT = "airgap-pypi-tls-client"
STRANGER = "airgap-pypi-tls-stranger"
NETWORK = "airgap-pypi-molecule"
PORT = 8080  # gunicorn, HTTPS
FRONT_PORT = 443  # nginx in front (pypi_front_enabled), HTTPS with the same certificate
USER = "tester"
PASSWORD = "molecule-test-only"  # the scenario's throwaway account (molecule.yml)
# What the client role points pip at: the front server.
INDEX = f"https://{SERVER}:{FRONT_PORT}/simple/"
CLIENT_BIN = "/opt/clients/bin"
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
PKI = INVENTORY_DIR / "pki"  # pypi_server_tls_ca_dir's default: next to the inventory
# Paths a running container changes by itself, and Ansible's own temporary files.
IGNORED = re.compile(r"^[ACD] /(root/\.ansible|root/\.cache|tmp|run|var/log|var/tmp)(/|$)")


def on(container: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command in a container (never raises on its exit code)."""
    return docker("exec", container, *args, check=False, timeout=300)


def changes_of(container: str) -> set[str]:
    return {line for line in docker("diff", container).stdout.splitlines() if not IGNORED.match(line)}


def run_playbook(path: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return ansible_playbook(path, inventory, *args, project=PROJECT_DIR)


# --- what the TLS index presents ------------------------------------------------------------------------------------

CA_ON_CLIENT = "/usr/local/share/ca-certificates/airgap-pypi-ca.crt"
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
    """The certificates gunicorn and nginx present to the TLS client, each verified against the CA."""
    answer = on(CLIENT, "python3", "-c", SERVED, CA_ON_CLIENT, SERVER, str(PORT), str(FRONT_PORT))
    assert answer.returncode == 0, answer.stdout + answer.stderr
    pems = [block + "-----END CERTIFICATE-----\n" for block in answer.stdout.split("-----END CERTIFICATE-----")[:2]]
    return [x509.load_pem_x509_certificate(pem.strip().encode() + b"\n") for pem in pems]


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names of a certificate's subjectAltName."""
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
