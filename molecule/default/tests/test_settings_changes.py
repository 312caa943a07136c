"""Settings an operator changes and then changes back, on three converged hosts at once.

One site.yml run applies all three changes (each host its own, from an inventory overlay layered after the
scenario's), the tests check each host, and the last test runs the scenario's inventory again and checks that all
three are as before. Three hosts in one run cost about what one host costs alone: the changes used to be three
runs there and three back.

- airgap-pypi-deb12: downloads behind a password, with the front server off (nginx cannot check passwords).
- airgap-pypi-deb11: the static read path off (pypiserver alone, the benchmark's baseline), and one more port
  opened in its iptables firewall (pypi_firewall_extra_ports); the front server's port on airgap-pypi-deb12 is
  closed in firewalld while the front server is off. Both follow the inventory back. And the SSH port the role
  would have opened on airgap-pypi-deb12 for replicas (put in by hand) is closed: it serves none.
- airgap-pypi-tls-deb12: one more TLS name, so the internal CA issues a new certificate that both HTTPS ports
  take. The renewal window (a certificate with too few days left) is tested on the controller (tests/test_tls_ca.py).

Runs after test_playbook_runs.py (file order) and leaves every host as the scenario's inventory describes it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import CLIENT, PASSWORD, PORT, PROJECT_DIR, USER, docker, wait_for
from cryptography import x509
from tls_support import PKI, SERVER, names_of, served

from scripts.containers import ansible_playbook, recap

INVENTORY_DIR = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
AUTH_HOST = "airgap-pypi-deb12"
PLAIN_HOST = "airgap-pypi-deb11"
EXTRA_NAME = "pypi.airgap.test"
REPLICA_SSH = 18320
CHANGES = {
    AUTH_HOST: {"pypi_server_auth_downloads": True, "pypi_front_enabled": False},
    PLAIN_HOST: {"pypi_server_static_index": False, "pypi_firewall_extra_ports": [18301]},
    SERVER: {"pypi_server_tls_names": [EXTRA_NAME]},
}


def site(*inventories: Path) -> subprocess.CompletedProcess[str]:
    """site.yml over the three hosts, with the scenario's inventory and any overlays after it."""
    extra = [arg for overlay in inventories for arg in ("-i", str(overlay))]
    return ansible_playbook(
        PROJECT_DIR / "site.yml", INVENTORY_DIR, *extra, "--limit", ",".join(CHANGES), project=PROJECT_DIR
    )


def http_status(url: str, auth: bool) -> str:
    """HTTP status of a GET from the client container, with or without the test account ("" when no answer)."""
    code = (
        "import base64, urllib.request, urllib.error\n"
        f"req = urllib.request.Request('{url}')\n"
        f"if {auth}:\n"
        f"    req.add_header('Authorization', 'Basic ' + base64.b64encode(b'{USER}:{PASSWORD}').decode())\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=10).status)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n"
    )
    return docker("exec", CLIENT, "/usr/bin/python3", "-c", code, check=False).stdout.strip()


def http_body(url: str) -> str:
    """Body of a GET from the client container."""
    code = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=10).read().decode())"
    return docker("exec", CLIENT, "/usr/bin/python3", "-c", code).stdout


AUTH_URL, FRONT_URL = f"http://{AUTH_HOST}:{PORT}/simple/", f"http://{AUTH_HOST}:80/simple/"
PLAIN_PAGE = f"http://{PLAIN_HOST}:{PORT}/simple/airgap-demo/"


@dataclass
class Changed:
    """What the run that changed the settings left: its output and the certificate served before it."""

    output: str
    first_certificate: x509.Certificate
    restored: list[bool] = field(default_factory=list)


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Changed]:
    # As the scenario left them: served in the open, the static read path on, the inventory's TLS names only.
    assert http_status(AUTH_URL, auth=False) == "200" and http_status(FRONT_URL, auth=False) == "200"
    assert "data-requires-python" in http_body(PLAIN_PAGE)
    first = served()
    assert first[0].serial_number == first[1].serial_number, "both HTTPS ports present one certificate"
    assert EXTRA_NAME not in names_of(first[0])
    # Host variables of a later inventory source win over the scenario's host_vars (same precedence, later source).
    overlay = tmp_path_factory.mktemp("overlay")
    (overlay / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": dict.fromkeys(CHANGES)}}))
    (overlay / "host_vars").mkdir()
    for host, settings in CHANGES.items():
        (overlay / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(settings))
    # As if the index host had served replicas before: the SSH port the role opened for them (here 18320), in
    # firewalld and in the record. It has none now, so the run closes it.
    opened = f"firewall-cmd --permanent --add-port={REPLICA_SSH}/tcp && firewall-cmd --add-port={REPLICA_SSH}/tcp"
    assert docker("exec", AUTH_HOST, "sh", "-c", opened, check=False).returncode == 0
    add = (
        "import json; p = '/var/lib/airgap-pypi-firewall.json'; r = json.load(open(p)); "
        f"r['replica-ssh'] = {{'firewall': 'firewalld', 'zone': 'public', 'ports': [{REPLICA_SSH}]}}; "
        "json.dump(r, open(p, 'w'))"
    )
    assert docker("exec", AUTH_HOST, "/usr/bin/python3", "-c", add, check=False).returncode == 0
    assert firewalld_has(REPLICA_SSH) == (True, True)
    result = site(overlay)
    state = Changed(result.stdout, first[0])
    try:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        assert set(recap(result.stdout)) == set(CHANGES), "the run reached the three hosts"
        yield state
    finally:
        if not state.restored:
            site()


def test_downloads_can_require_a_password(changed: Changed) -> None:
    """On the host with the front server: turned off with it (nginx cannot check passwords)."""
    assert recap(changed.output)[AUTH_HOST]["changed"] > 0
    assert wait_for(lambda: http_status(AUTH_URL, auth=False) == "401", 30)
    assert http_status(FRONT_URL, auth=False) != "200", "nginx no longer serves the index once it is off"
    assert http_status(AUTH_URL, auth=True) == "200"
    # The static read path guards every read as pypiserver does: pages, browse page, metadata, files.
    base = f"http://{AUTH_HOST}:{PORT}"
    listing = "ls /srv/pypi/packages | grep '^airgap_demo-' | head -1"
    wheel = docker("exec", AUTH_HOST, "sh", "-c", listing).stdout.strip()
    assert wheel, "the default tests uploaded airgap-demo"
    for path in ("/", "/simple/airgap-demo/", f"/packages/{wheel}.metadata", f"/packages/{wheel}"):
        assert http_status(base + path, auth=False) == "401", path
        assert http_status(base + path, auth=True) == "200", path


def test_static_index_can_be_turned_off(changed: Changed) -> None:
    """pypi_server_static_index=false is pypiserver alone, as before (the benchmark's baseline)."""
    assert wait_for(lambda: "data-requires-python" not in http_body(PLAIN_PAGE), 30)
    assert "airgap_demo-" in http_body(PLAIN_PAGE), "pypiserver lists the same files itself"
    assert "pypiserver" in http_body(f"http://{PLAIN_HOST}:{PORT}/"), "its own welcome page"


def test_the_ca_reissues_when_the_names_change_and_both_ports_take_it(changed: Changed) -> None:
    renamed = served()
    assert EXTRA_NAME in names_of(renamed[0]), "the new name is in the certificate gunicorn presents"
    assert renamed[0].serial_number != changed.first_certificate.serial_number, "a new certificate, not the old one"
    assert renamed[1].serial_number == renamed[0].serial_number, "nginx took the new certificate too"
    kept = x509.load_pem_x509_certificate((PKI / "hosts" / f"{SERVER}.crt").read_bytes())
    assert kept.serial_number == renamed[0].serial_number, "the controller keeps the certificate it issued"


def firewalld_has(port: int) -> tuple[bool, bool]:
    """Whether firewalld on AUTH_HOST has port/tcp open now, and permanently."""
    listing = ("firewall-cmd", "--list-ports")
    now = docker("exec", AUTH_HOST, *listing, check=False).stdout.split()
    saved = docker("exec", AUTH_HOST, listing[0], "--permanent", listing[1], check=False).stdout.split()
    return f"{port}/tcp" in now, f"{port}/tcp" in saved


def iptables_has(port: int) -> tuple[bool, bool]:
    """Whether iptables on PLAIN_HOST accepts port now, and whether its rules file (loaded at boot) does."""
    rule = f"--dport {port} -m comment --comment"
    live = docker("exec", PLAIN_HOST, "iptables", "-S", "INPUT", check=False).stdout
    saved = docker("exec", PLAIN_HOST, "cat", "/etc/iptables/rules.v4", check=False).stdout
    return rule in live, rule in saved


def test_the_firewall_opens_exactly_the_ports_served(changed: Changed) -> None:
    """The front server off: its port 80 closed in firewalld. One more port asked for: opened in iptables."""
    assert firewalld_has(80) == (False, False), "the front server's port stays open after it was turned off"
    assert firewalld_has(REPLICA_SSH) == (False, False), "the SSH port for replicas the host no longer has is open"
    record = docker("exec", AUTH_HOST, "cat", "/var/lib/airgap-pypi-firewall.json").stdout
    assert "replica-ssh" not in json.loads(record), record
    assert firewalld_has(PORT) == (True, True)
    assert iptables_has(18301) == (True, True)
    assert iptables_has(PORT) == (True, True)


def test_the_inventory_brings_every_setting_back(changed: Changed) -> None:
    changed.restored.append(True)
    result = site()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert all(counts["changed"] > 0 for counts in recap(result.stdout).values()), result.stdout[-3000:]
    assert wait_for(lambda: http_status(AUTH_URL, auth=False) == "200", 30)
    assert http_status(FRONT_URL, auth=False) == "200", "the front server is back"
    assert wait_for(lambda: "data-requires-python" in http_body(PLAIN_PAGE), 30)
    assert 'id="search"' in http_body(f"http://{PLAIN_HOST}:{PORT}/")
    back = served()
    assert EXTRA_NAME not in names_of(back[0]) and back[1].serial_number == back[0].serial_number
    assert firewalld_has(80) == (True, True), "the front server's port is open again"
    assert iptables_has(18301) == (False, False), "the port no longer asked for is closed now and at boot"
    assert iptables_has(PORT) == (True, True)
