"""Playbook runs of their own: verify.yml on the converged TLS hosts, bad TLS input on untouched hosts (check mode of
every converged host: test_playbook_runs.py).

Every bad input must fail before anything changes: each case is an untouched container of its own (molecule/shared/
pristine.py), all of them in one site.yml run, and `docker diff` of each is the same before and after.
"""

from __future__ import annotations

import datetime
import re
import subprocess
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tls_support import (
    CLIENT,
    IGNORED,
    INVENTORY_DIR,
    PASSWORD,
    PKI,
    PROJECT_DIR,
    SERVER,
    USER,
    on,
    recap,
    run_playbook,
    wait_for,
)

from scripts.pristine import PREFIX, Case, Outcome, bad_input_runs, refused

SITE = PROJECT_DIR / "site.yml"
VERIFY = PROJECT_DIR / "playbooks" / "verify.yml"
SUPERVISORCTL = ["/opt/airgap-pypi/supervisor/bin/supervisorctl", "-c", "/etc/supervisor/supervisord.conf"]


def folded(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_ca_on_the_hosts_is_the_controllers() -> None:
    """Created once and kept: the copies converge and the idempotence run installed are the controller's CA."""
    ca = (PKI / "ca.crt").read_text().strip()
    assert on(SERVER, "cat", "/etc/airgap-pypi/tls/ca.crt").stdout.strip() == ca
    anchor = on(CLIENT, "cat", "/usr/local/share/ca-certificates/airgap-pypi-ca.crt")
    assert anchor.stdout.strip() == ca


def test_verify_playbook_passes_reports_and_changes_nothing() -> None:
    for extra in ([], ["--check"]):
        result = run_playbook(VERIFY, INVENTORY_DIR, "--limit", f"{SERVER},{CLIENT}", *extra)
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
        result = run_playbook(VERIFY, INVENTORY_DIR, "--limit", SERVER)
        text = folded(result)
        assert result.returncode != 0, text[-3000:]
        assert "FAIL | every supervisord program is RUNNING" in text
        assert "check(s) failed on airgap-pypi-tls-deb12" in text and "index answers /health on port 8080" in text
    finally:
        on(SERVER, *SUPERVISORCTL, "start", "pypiserver")
    assert wait_for(lambda: "RUNNING" in on(SERVER, *SUPERVISORCTL, "status", "pypiserver").stdout, 30)


# --- bad TLS input: one untouched container per case, one site.yml run; each stops in the first play, unchanged --


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


BAD_TLS = {
    "cert-without-key": ["pypi_server_tls_key is empty", "Nothing was changed"],
    "key-of-another-cert": ["does not match"],
    "names-not-covered": ["does not cover {host}"],
}


def bad_tls_input(case: str, host: str) -> dict[str, str]:
    """The TLS inventory values of a case, for its host."""
    good_cert, _ = pem_pair([host])
    other_cert, other_key = pem_pair(["pypi.elsewhere.internal"])
    return {
        "cert-without-key": {"pypi_server_tls_cert": good_cert},
        "key-of-another-cert": {"pypi_server_tls_cert": good_cert, "pypi_server_tls_key": other_key},
        "names-not-covered": {"pypi_server_tls_cert": other_cert, "pypi_server_tls_key": other_key},
    }[case]


@pytest.fixture(scope="module")
def bad_tls_inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Outcome, dict[str, str]]]]:
    """Every bad TLS case on an untouched container of its own (the stranger's image), in one site.yml run."""
    cases = [Case(f"tls-{case}", bad_tls_input(case, f"{PREFIX}tls-{case}")) for case in BAD_TLS]
    group_vars = {
        "ansible_connection": "community.docker.docker",
        "pypi_server_users": [{"name": USER, "password": PASSWORD}],
        "pypi_server_tls": True,
        "pypi_server_tls_source": "inventory",
    }
    with bad_input_runs(
        cases,
        playbook=SITE,
        project=PROJECT_DIR,
        workdir=tmp_path_factory.mktemp("bad-tls-inputs"),
        group="pypi_servers",
        group_vars=group_vars,
        image="airgap-pypi/debian12-client:latest",  # the stranger's image and init
        init="none",
        ignored=IGNORED,
    ) as outcomes:
        yield {case.id.removeprefix("tls-"): (outcomes[case.id], dict(case.host_vars)) for case in cases}


@pytest.mark.parametrize("case", list(BAD_TLS))
def test_bad_tls_input_stops_before_any_change(
    bad_tls_inputs: dict[str, tuple[Outcome, dict[str, str]]], case: str
) -> None:
    outcome, inputs = bad_tls_inputs[case]
    refused(outcome, *(needle.format(host=outcome.host) for needle in BAD_TLS[case]))
    # The key never shows up in the output of the run, whatever failed.
    key_body = re.sub(r"-----[A-Z ]+-----", "", inputs.get("pypi_server_tls_key", "")).split()
    assert not any(line in outcome.output for line in key_body if len(line) > 20)
