"""pypi_server's internal CA on the controller: a certificate inside the renewal window is issued again.

The CA and every certificate it issues live on the controller (tasks/tls_internal_ca.yml runs there), so one
ansible-playbook run on this machine walks a host through its certificate's life and keeps a copy after each step.
The default scenario shows that new names issue a new certificate that gunicorn and nginx take on a real host
(molecule/default/tests/test_settings_changes.py), and that a certificate outside the window is kept (the
idempotence step: a re-run changes nothing on the TLS host).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from conftest import run_playbook
from cryptography import x509

from scripts.containers import role_play

HOST = "pypi01.example.internal"
STEPS: dict[str, dict[str, Any]] = {
    # name of the step: the role's settings for it
    "first": {},
    # More renewal days than the certificate has left (pypi_server_tls_cert_days, 825 by default): issued again.
    "renewal-window": {"pypi_server_tls_renew_days": 900},
}


def issue_in_steps(tmp_path: Path) -> dict[str, x509.Certificate]:
    """Each step's certificate, from one run that includes the role's CA tasks once a step."""
    ca_dir, kept = tmp_path / "pki", tmp_path / "kept.json"
    tasks: list[dict[str, Any]] = []
    for step, settings in STEPS.items():
        tasks += [
            {
                "name": f"Issue ({step})",
                "ansible.builtin.include_role": {"name": "pypi_server", "tasks_from": "tls_internal_ca"},
                "vars": {"pypi_server_tls": True, "pypi_server_tls_ca_dir": str(ca_dir), **settings},
            },
            {
                "name": f"Keep the certificate of step {step}",
                "ansible.builtin.set_fact": {
                    "kept": f"{{{{ kept | default({{}}) | combine({{'{step}': lookup('file', "
                    f"'{ca_dir}/hosts/{HOST}.crt')}}) }}}}"
                },
            },
        ]
    tasks.append(
        {
            "name": "Write them all",
            "ansible.builtin.copy": {"content": "{{ kept | to_json }}", "dest": str(kept), "mode": "0600"},
        }
    )
    play = {"hosts": HOST, "connection": "local", "gather_facts": False, "tasks": tasks}
    play["vars"] = {"ansible_python_interpreter": sys.executable}
    done = run_playbook([play], tmp_path / "play.json", inventory=f"{HOST},")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    pems = json.loads(kept.read_text())
    return {step: x509.load_pem_x509_certificate(pems[step].encode()) for step in STEPS}


def names_of(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_the_ca_reissues_when_too_few_days_remain(tmp_path: Path) -> None:
    certs = issue_in_steps(tmp_path)
    serial = {step: cert.serial_number for step, cert in certs.items()}
    assert names_of(certs["first"])[0] == HOST
    assert serial["renewal-window"] != serial["first"], "a certificate inside the renewal window is issued again"
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    for cert in certs.values():
        cert.verify_directly_issued_by(ca)
    assert oct((tmp_path / "pki" / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_an_inventory_name_that_is_no_file_name_issues_nothing_and_writes_nothing(tmp_path: Path) -> None:
    # The host's key and certificate would be ca_dir/hosts/../../escape.{key,crt}: outside the CA's directory.
    ca_dir, host = tmp_path / "ca" / "pki", "../../escape"
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {host: {"ansible_connection": "local"}}}}))
    play = role_play(
        "pypi_server",
        "tls_internal_ca",
        {"pypi_server_tls": True, "pypi_server_tls_ca_dir": str(ca_dir)},
        "all",
        python=sys.executable,
    )
    done = run_playbook([play], tmp_path / "play.json", inventory=str(inventory))
    assert done.returncode != 0, done.stdout[-3000:]
    assert '"../../escape" cannot name this host\'s files on the controller' in " ".join(done.stdout.split())
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["inventory.json", "play.json"]
