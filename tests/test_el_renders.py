"""The EL (RedHat family) variants of what the roles write, checked by the tools that read them.

Ansible itself renders them, in one ansible-playbook run on localhost: each role's defaults/main.yml,
vars/main.yml and vars/RedHat.yml are loaded in that order (the precedence the role gives them), the
supervisor templates go through ansible.builtin.template, and the firewall rule goes into EL's stock
/etc/sysconfig/iptables (tests/fixtures/el_sysconfig_iptables) through the role's own lineinfile task,
read from roles/pypi_firewall/tasks/iptables.yml.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import load_module, run_playbook

ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR = ROOT / "roles" / "pypi_supervisor"
FIREWALL = ROOT / "roles" / "pypi_firewall"
FILTERS = load_module("pypi_firewall_filters_el", FIREWALL / "filter_plugins" / "pypi_firewall.py")
COMMENT = yaml.safe_load((FIREWALL / "vars" / "main.yml").read_text())["__pypi_firewall_comment"]
STOCK_IPTABLES = Path(__file__).resolve().parent / "fixtures" / "el_sysconfig_iptables"
FINAL_REJECT = "-A INPUT -j REJECT --reject-with icmp-host-prohibited"
IPTABLES_IMAGE = "airgap-pypi/debian11-systemd:latest"  # built by scripts/build_images.sh; has iptables
SOCKET = "/run/supervisord.sock"


@dataclass(frozen=True)
class Rendered:
    init: Path
    conf: Path
    iptables: Path
    insert_changed: list[bool]


def redhat_vars(role: Path) -> list[str]:
    """The role's variable files as it loads them on a RedHat-family host, lowest precedence first."""
    return [str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml"), str(role / "vars" / "RedHat.yml")]


def iptables_task() -> dict[str, Any]:
    """The arguments of the firewall role's task that opens the port in an iptables rules file."""
    for task in yaml.safe_load((FIREWALL / "tasks" / "iptables.yml").read_text()):
        args = task.get("ansible.builtin.lineinfile")
        # The task that opens (the one before it closes the ports no longer served).
        if args and args.get("path") == "{{ __pypi_firewall_iptables_rules }}" and args.get("state") != "absent":
            return dict(args)
    raise AssertionError("roles/pypi_firewall/tasks/iptables.yml has no lineinfile task for the iptables rules file")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    out = tmp_path_factory.mktemp("el")
    rules = out / "sysconfig-iptables"
    shutil.copyfile(STOCK_IPTABLES, rules)
    # The role validates with iptables-restore on the host; here the result is checked by its own test below.
    insert = {key: value for key, value in iptables_task().items() if key != "validate"}
    localhost = {"hosts": "localhost", "connection": "local", "gather_facts": False}
    interpreter = {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    playbook = [
        {
            "name": "Render the supervisor files for a RedHat-family host",
            **localhost,
            "vars": interpreter,
            "vars_files": redhat_vars(SUPERVISOR),
            "tasks": [
                {
                    "name": f"Render {name}",
                    "ansible.builtin.template": {
                        "src": str(SUPERVISOR / "templates" / f"{name}.j2"),
                        "dest": str(out / name),
                        "mode": "0644",
                    },
                }
                for name in ("supervisord.init", "supervisord.conf")
            ],
        },
        {
            "name": "Open the index port in EL's stock iptables rules file, twice",
            **localhost,
            "vars": interpreter,
            "vars_files": redhat_vars(FIREWALL),
            "tasks": [
                *(
                    {
                        "name": f"Insert the rule (run {run})",
                        "ansible.builtin.lineinfile": insert,
                        # The role loops over its rule lines (vars/main.yml) with this loop variable.
                        "vars": {
                            "__pypi_firewall_iptables_rules": str(rules),
                            # The role's line for the port, from its own filter (this play has no role).
                            "__pypi_firewall_line": FILTERS.port_lines([8080], "iptables", COMMENT)[0],
                            "__pypi_firewall_ports": [8080],
                        },
                        "register": f"__insert_{run}",
                    }
                    for run in (1, 2)
                ),
                {
                    "name": "Record what each run changed",
                    "ansible.builtin.copy": {
                        "content": "{{ [__insert_1.changed, __insert_2.changed] | to_json }}",
                        "dest": str(out / "changed.json"),
                        "mode": "0644",
                    },
                },
            ],
        },
    ]
    done = run_playbook(playbook, out / "render.yml")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return Rendered(
        init=out / "supervisord.init",
        conf=out / "supervisord.conf",
        iptables=rules,
        insert_changed=json.loads((out / "changed.json").read_text()),
    )


# --- supervisord.init.j2: the LSB/chkconfig init script -------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_init_script_passes_the_shells_syntax_check(rendered: Rendered, shell: str) -> None:
    done = subprocess.run([shell, "-n", str(rendered.init)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_init_script_runs_under_sh(rendered: Rendered) -> None:
    """An unknown action only prints the usage (nothing is started): the script parses and runs to its case."""
    done = subprocess.run(["sh", str(rendered.init), "no-such-action"], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "Usage:" in done.stderr and "start|stop|restart" in done.stderr


def test_init_script_passes_shellcheck(rendered: Rendered) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("not run: shellcheck is not installed on this machine")
    done = subprocess.run(["shellcheck", "-s", "sh", str(rendered.init)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


def test_init_script_has_chkconfig_and_lsb_headers(rendered: Rendered) -> None:
    text = rendered.init.read_text()
    assert text.startswith("#!/bin/sh\n")
    chkconfig = re.search(r"(?m)^# chkconfig: (\d+) (\d+) (\d+)$", text)
    assert chkconfig and chkconfig.groups() == ("345", "95", "05"), "chkconfig --add needs '# chkconfig: 345 95 05'"
    assert re.search(r"(?m)^# description: \S", text), "chkconfig needs a '# description:' line"
    assert text.count("### BEGIN INIT INFO") == 1 and text.count("### END INIT INFO") == 1
    block = text.split("### BEGIN INIT INFO\n", 1)[1].split("### END INIT INFO", 1)[0]
    lsb = dict(re.findall(r"(?m)^# ([A-Za-z-]+):\s+(.*)$", block))
    for key in ("Provides", "Required-Start", "Required-Stop", "Default-Start", "Default-Stop", "Short-Description"):
        assert lsb.get(key), f"LSB header without {key}"
    assert lsb["Provides"] == "supervisord"
    start, stop = set(lsb["Default-Start"].split()), set(lsb["Default-Stop"].split())
    assert set(chkconfig.group(1)) <= start, "the chkconfig runlevels must be LSB start levels too"
    assert not start & stop


def test_init_script_uses_the_redhat_paths(rendered: Rendered) -> None:
    text = rendered.init.read_text()
    assert "{{" not in text and "{%" not in text
    assert re.search(r"(?m)^CONFIG=/etc/supervisord\.conf$", text)
    assert re.search(r"(?m)^# config: /etc/supervisord\.conf$", text)
    assert re.search(r"(?m)^PIDFILE=/run/supervisord\.pid$", text)
    assert re.search(r"(?m)^SUPERVISORD=/opt/airgap-pypi/supervisor/bin/supervisord$", text)
    assert "/etc/supervisor/" not in text, "a Debian path in the RedHat render"


# --- supervisord.conf.j2 ------------------------------------------------------------------------------------------


def test_supervisord_conf_parses_with_configparser(rendered: Rendered) -> None:
    parser = configparser.RawConfigParser(strict=True)
    parser.read_string(rendered.conf.read_text(), source=str(rendered.conf))
    expected = ["unix_http_server", "supervisord", "rpcinterface:supervisor", "supervisorctl", "include"]
    assert parser.sections() == expected
    assert not parser.has_section("inet_http_server"), "supervisord must never listen on TCP (CVE-2017-11610)"
    assert parser.get("include", "files") == "/etc/supervisord.d/*.conf"
    assert parser.get("unix_http_server", "file") == SOCKET
    assert int(parser.get("unix_http_server", "chmod"), 8) == 0o700
    assert parser.get("unix_http_server", "chown") == "root:root"
    assert parser.get("supervisorctl", "serverurl") == f"unix://{SOCKET}"


def test_supervisord_conf_as_supervisor_reads_it(rendered: Rendered, tmp_path: Path) -> None:
    """supervisor's own parser (from the bundle's wheel) finds one control server: a root-only unix socket."""
    wheels = sorted((ROOT / "offline_artifacts" / "wheels").glob("supervisor-*.whl"))
    if not wheels:
        pytest.skip("not run: no supervisor wheel in offline_artifacts/wheels (make bundle)")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(tmp_path)
    code = (
        "import json, sys\n"
        "from supervisor.options import ServerOptions, UnhosedConfigParser\n"
        "parser = UnhosedConfigParser()\n"
        "parser.read(sys.argv[1])\n"
        "servers = ServerOptions().server_configs_from_parser(parser)\n"
        "print(json.dumps([dict(s, family=s['family'].name) for s in servers]))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code, str(rendered.conf)], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    servers = json.loads(done.stdout)
    assert len(servers) == 1, servers
    assert servers[0]["family"] == "AF_UNIX"
    assert servers[0]["file"] == SOCKET
    assert servers[0]["chmod"] == 0o700
    assert servers[0]["chown"] == [0, 0]


# --- the firewall rule in EL's /etc/sysconfig/iptables ----------------------------------------------------------


def test_iptables_rule_lands_before_the_final_reject(rendered: Rendered) -> None:
    stock = STOCK_IPTABLES.read_text().splitlines()
    lines = rendered.iptables.read_text().splitlines()
    added = [line for line in lines if line not in stock]
    assert len(added) == 1, added
    rule = added[0]
    assert re.fullmatch(r'-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment "airgap-pypi index" -j ACCEPT', rule)
    assert [line for line in lines if line != rule] == stock, "nothing else in the file may change"
    position = lines.index(rule)
    assert lines.index("*filter") < position < lines.index(FINAL_REJECT) < lines.index("COMMIT")
    assert all(not line.startswith(":") for line in lines[position:]), "the rule must follow the chain declarations"


def test_iptables_rule_insert_is_idempotent(rendered: Rendered) -> None:
    assert rendered.insert_changed == [True, False]


def iptables_restore_test(rules: Path) -> subprocess.CompletedProcess[str] | None:
    """`iptables-restore --test RULES` here when root, else in a throwaway container; None when neither can run."""
    local = shutil.which("iptables-restore")
    if local and os.geteuid() == 0:
        return subprocess.run([local, "--test", str(rules)], capture_output=True, text=True, check=False)
    if shutil.which("docker") is None:
        return None
    if subprocess.run(["docker", "image", "inspect", IPTABLES_IMAGE], capture_output=True, check=False).returncode:
        return None
    argv = ["docker", "run", "--rm", "--network", "none", "--cap-add", "NET_ADMIN", "-v", f"{rules}:/rules:ro"]
    argv += [IPTABLES_IMAGE, "iptables-restore", "--test", "/rules"]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def test_iptables_restore_accepts_the_result(rendered: Rendered) -> None:
    """The command the role validates the file with, run on the result."""
    assert iptables_task().get("validate") == "iptables-restore --test %s"
    done = iptables_restore_test(rendered.iptables)
    if done is None:
        pytest.skip(f"not run: no iptables-restore as root here, and no docker image {IPTABLES_IMAGE} to run it in")
    assert done.returncode == 0, done.stderr
