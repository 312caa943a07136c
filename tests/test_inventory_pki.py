"""The internal CA lives in the inventory's directory by default (pypi_common_tls_ca_dir: {{ inventory_dir }}/pki).
Ansible reads every file under an inventory directory as an inventory source, so without a rule it tried each
certificate and private key with every inventory plugin and warned about each one on every run. ansible.cfg's
[inventory] ignore_patterns skips the directory, and the scenarios that make a CA carry the same rule."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from molecule.interpolation import Interpolator, TemplateWithDefaults

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"
PEM = "-----BEGIN {0}-----\nMIIBszCCAVmgAwIBAgIUfake0notreal0base64AAAAAAAAAAAA=\n-----END {0}-----\n"


def inventory_with_a_ca(root: Path) -> Path:
    inventory = root / "inventory"
    (inventory / "pki" / "hosts").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"pypi_servers": {"hosts": {"index1": {}}}}))
    (inventory / "pki" / "ca.crt").write_text(PEM.format("CERTIFICATE"))
    (inventory / "pki" / "ca.key").write_text(PEM.format("EC PRIVATE KEY"))
    (inventory / "pki" / "hosts" / "index1.crt").write_text(PEM.format("CERTIFICATE"))
    (inventory / "pki" / "hosts" / "index1.key").write_text(PEM.format("EC PRIVATE KEY"))
    return inventory


def test_the_ca_beside_the_inventory_is_not_read_as_inventory(tmp_path: Path) -> None:
    inventory = inventory_with_a_ca(tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env |= {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    listed = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["pypi_servers"]["hosts"] == ["index1"]
    assert "pki" not in listed.stderr, listed.stderr


def ansible_cfg_inventory() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "ansible.cfg")
    return dict(config["inventory"])


@pytest.mark.parametrize("scenario", ["default", "cluster"])
def test_the_scenarios_that_make_a_ca_ignore_it_as_ansible_cfg_does(scenario: str) -> None:
    # As molecule reads it: its interpolation first ("$$" is a "$"; a lone "$" before a non-name stops molecule).
    text = (ROOT / "molecule" / scenario / "molecule.yml").read_text()
    molecule = yaml.safe_load(Interpolator(TemplateWithDefaults, dict(os.environ)).interpolate(text))
    provisioner = molecule["provisioner"]
    assert "pki" in provisioner["env"]["AIRGAP_PYPI_MOLECULE_DESTROY_PATHS"].split()
    assert provisioner["config_options"]["inventory"] == ansible_cfg_inventory()
