"""pypi_firewall_detect, run as Ansible runs it, against stand-in firewall-cmd and systemctl programs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import load_module, module_argv

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "roles" / "pypi_firewall" / "library" / "pypi_firewall_detect.py"
detect = load_module("pypi_firewall_detect", MODULE)


def fake(bin_dir: Path, name: str, output: str, rc: int) -> None:
    """A program on PATH that prints output and exits rc."""
    program = bin_dir / name
    program.write_text(f"#!/bin/sh\necho '{output}'\nexit {rc}\n")
    program.chmod(0o755)


def run(tmp_path: Path, bin_dir: Path, **extra: Any) -> dict[str, Any]:
    args = tmp_path / "args.json"
    params = {"iptables_rules": str(tmp_path / "rules.v4"), "nftables_config": str(tmp_path / "nftables.conf"), **extra}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, env=env, check=False)
    result = json.loads(done.stdout)
    assert not result.get("failed") and not result["changed"], result
    return result


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    fake(path, "firewall-cmd", "not running", 252)
    fake(path, "systemctl", "disabled", 1)
    return path


def test_firewalld_wins_when_it_runs(tmp_path: Path, bin_dir: Path) -> None:
    fake(bin_dir, "firewall-cmd", "running", 0)
    (tmp_path / "rules.v4").write_text("*filter\nCOMMIT\n")
    result = run(tmp_path, bin_dir)
    assert result["firewall"] == "firewalld" and result["firewalld_running"] and result["iptables_rules"]


def test_an_iptables_rules_file_when_firewalld_does_not_run(tmp_path: Path, bin_dir: Path) -> None:
    (tmp_path / "rules.v4").write_text("*filter\nCOMMIT\n")
    (tmp_path / "nftables.conf").write_text("")
    fake(bin_dir, "systemctl", "enabled", 0)
    assert run(tmp_path, bin_dir)["firewall"] == "iptables"


def test_nftables_only_when_enabled_at_boot(tmp_path: Path, bin_dir: Path) -> None:
    (tmp_path / "nftables.conf").write_text("")
    result = run(tmp_path, bin_dir)
    assert result["firewall"] == "none" and result["nftables_config"] and not result["nftables_enabled"]
    fake(bin_dir, "systemctl", "enabled", 0)
    assert run(tmp_path, bin_dir)["firewall"] == "nftables"


def test_choose_without_any_firewall() -> None:
    assert detect.choose(False, False, False, True) == "none"
    assert detect.choose(False, False, True, False) == "none"


def test_tcp_ports_reads_single_tcp_ports_only() -> None:
    assert detect.tcp_ports("8080/tcp 53/udp 6000-6005/tcp 443/tcp\n") == {8080, 443}


def test_ports_open_now_and_permanently_are_reported(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Open now: 8080 and 9000; open permanently: 8080 and 443. Only 8080 is both.
    (bin_dir / "firewall-cmd").write_text(
        '#!/bin/sh\ncase "$*" in\n'
        "  --state) echo running ;;\n"
        '  "--permanent --zone=internal --list-ports") echo "8080/tcp 443/tcp" ;;\n'
        '  "--zone=internal --list-ports") echo "8080/tcp 9000/tcp 53/udp" ;;\n'
        "  *) exit 2 ;;\nesac\n"
    )
    (bin_dir / "firewall-cmd").chmod(0o755)
    fake(bin_dir, "systemctl", "disabled", 1)
    args = tmp_path / "args.json"
    params = {
        "iptables_rules": str(tmp_path / "rules.v4"),
        "nftables_config": str(tmp_path / "nftables.conf"),
        "ports": [8080, 443, 9000],
        "zone": "internal",
    }
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, env=env, check=False)
    result = json.loads(done.stdout)
    assert result["firewall"] == "firewalld" and result["firewalld_open"] == [8080], result
    # Open in either: never recorded as the role's. The zone asked is named.
    assert result["firewalld_seen"] == [8080, 443, 9000] and result["firewalld_zone"] == "internal", result
    assert result["firewalld_listed"] is True


def firewalld_bindings(tmp_path: Path, body: str) -> Path:
    """A stand-in for firewalld's Python client (the module's first choice): a firewall.client module."""
    package = tmp_path / "bindings" / "firewall"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "client.py").write_text(body)
    return package.parent


CLIENT = """
class _Settings:
    def getPorts(self):
        return [("8080", "tcp"), ("443", "tcp"), ("6000-6005", "tcp")]
class _Zone:
    def getSettings(self):
        return _Settings()
class _Config:
    def getZoneByName(self, zone):
        assert zone == "public", zone
        return _Zone()
class FirewallClient:
    def __init__(self, wait=0):
        self.connected = CONNECTED
    def getDefaultZone(self):
        return "public"
    def getPorts(self, zone):
        assert zone == "public", zone
        return [["8080", "tcp"], ["9000", "tcp"], ["53", "udp"]]
    def config(self):
        return _Config()
"""


def run_with_bindings(tmp_path: Path, bin_dir: Path, body: str) -> dict[str, Any]:
    args = tmp_path / "args.json"
    params = {
        "iptables_rules": str(tmp_path / "rules.v4"),
        "nftables_config": str(tmp_path / "nftables.conf"),
        "ports": [8080, 443, 9000],
    }
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": params}))
    bindings = firewalld_bindings(tmp_path, body)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(bindings))
    done = subprocess.run(module_argv(MODULE, args), capture_output=True, text=True, env=env, check=False)
    return json.loads(done.stdout)


def test_firewalld_is_asked_through_its_python_client_when_the_host_has_it(tmp_path: Path, bin_dir: Path) -> None:
    # firewall-cmd (the fixture's) says "not running": only the client can have found firewalld.
    result = run_with_bindings(tmp_path, bin_dir, "CONNECTED = True\n" + CLIENT)
    assert result["firewall"] == "firewalld" and result["firewalld_running"], result
    assert result["firewalld_open"] == [8080], result
    # The default zone by its name: the record keeps it, so a later change of the default zone closes nothing.
    assert result["firewalld_zone"] == "public" and result["firewalld_seen"] == [8080, 443, 9000], result


def test_firewalld_not_running_per_its_client_is_not_chosen(tmp_path: Path, bin_dir: Path) -> None:
    fake(bin_dir, "firewall-cmd", "running", 0)  # not asked: the client answered
    result = run_with_bindings(tmp_path, bin_dir, "CONNECTED = False\n" + CLIENT)
    assert result["firewall"] == "none" and not result["firewalld_running"], result


def test_a_failing_client_falls_back_to_firewall_cmd(tmp_path: Path, bin_dir: Path) -> None:
    fake(bin_dir, "firewall-cmd", "running", 0)
    result = run_with_bindings(tmp_path, bin_dir, "raise ImportError('no dbus here')\n")
    assert result["firewall"] == "firewalld" and result["firewalld_running"], result
    # This firewall-cmd answers "running" to everything: a zone named "running" with no ports.
    assert result["firewalld_zone"] == "running" and result["firewalld_seen"] == []


def test_rule_lines_the_files_have_already_are_reported(tmp_path: Path, bin_dir: Path) -> None:
    """The role skips these: a re-run where every line is there costs no lineinfile call."""
    fake(bin_dir, "firewall-cmd", "not running", 252)
    fake(bin_dir, "systemctl", "enabled", 0)
    have = '-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "airgap-pypi index" -j ACCEPT'
    missing = have.replace("8080", "443")
    (tmp_path / "rules.v4").write_text(f"*filter\n:INPUT ACCEPT [0:0]\n{have}  \n# {missing}\nCOMMIT\n")
    nft = 'tcp dport 8080 accept comment "airgap-pypi index"'
    (tmp_path / "nftables.conf").write_text(f"table inet filter {{\n\tchain input {{\n\t\t{nft}\n\t}}\n}}\n")
    rules = {"iptables": [have, missing], "nftables": [nft, nft.replace("8080", "443")]}
    result = run(tmp_path, bin_dir, rules=rules)
    assert result["rules_present"] == {"iptables": [have], "nftables": [nft]}, "a commented-out line is not there"
    (tmp_path / "rules.v4").unlink()
    assert run(tmp_path, bin_dir, rules=rules)["rules_present"]["iptables"] == [], "no file, no line"
