"""The CA the TLS hosts hold, and verify.yml on them and on the plain-HTTP front server host (one run for all of
them): passing, and naming the failed checks. Check mode of every converged host and the bad TLS input cases are in
test_playbook_runs.py (one run each for the whole scenario)."""

from __future__ import annotations

import subprocess

from tls_support import (
    CLIENT,
    INVENTORY_DIR,
    PKI,
    PROJECT_DIR,
    SERVER,
    on,
    recap,
    run_playbook,
    wait_for,
)

VERIFY = PROJECT_DIR / "playbooks" / "verify.yml"
FRONT_HOST, FRONT_PORT = "airgap-pypi-deb12", 80  # nginx in front of gunicorn, plain HTTP (test_front.py)
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
        result = run_playbook(VERIFY, INVENTORY_DIR, "--limit", f"{SERVER},{CLIENT},{FRONT_HOST}", *extra)
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
            f"PASS | front server serves /simple/ (PEP 691 JSON) on port {FRONT_PORT}",
            f"PASS | port {FRONT_PORT}/tcp open in firewalld",
        ):
            assert needle in text, f"{needle!r} not in:\n{text[-4000:]}"


def test_verify_playbook_fails_and_names_the_failed_checks() -> None:
    """The index stopped on the TLS host, nginx stopped on the front server host: each host names its own."""
    on(SERVER, *SUPERVISORCTL, "stop", "pypiserver")
    on(FRONT_HOST, "systemctl", "stop", "nginx")
    try:
        result = run_playbook(VERIFY, INVENTORY_DIR, "--limit", f"{SERVER},{FRONT_HOST}")
        text = folded(result)
        assert result.returncode != 0, text[-3000:]
        assert "FAIL | every supervisord program is RUNNING" in text
        assert "check(s) failed on airgap-pypi-tls-deb12" in text and "index answers /health on port 8080" in text
        assert f"FAIL | front server serves /simple/ (PEP 691 JSON) on port {FRONT_PORT}" in text, text[-3000:]
        assert f"check(s) failed on {FRONT_HOST}" in text, text[-3000:]
    finally:
        on(SERVER, *SUPERVISORCTL, "start", "pypiserver")
        on(FRONT_HOST, "systemctl", "start", "nginx")
    assert wait_for(lambda: "RUNNING" in on(SERVER, *SUPERVISORCTL, "status", "pypiserver").stdout, 30)
    assert on(FRONT_HOST, "systemctl", "is-active", "nginx").stdout.strip() == "active"
