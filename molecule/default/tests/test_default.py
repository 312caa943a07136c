"""The index as its users meet it: served, protected, reachable through the firewall, and self-healing."""

from __future__ import annotations

import json
import os
import re

import pytest
import testinfra.utils.ansible_runner
from conftest import (
    CLIENT,
    CLIENT_BIN,
    NETWORK,
    PASSWORD,
    PORT,
    USER,
    docker,
    health_from_client,
    on_client,
    wait_for,
)

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "pypi_servers"
)

SUPERVISOR_BIN = "/opt/airgap-pypi/supervisor/bin"


def is_redhat(host) -> bool:
    return host.file("/etc/redhat-release").exists


def supervisor_config(host) -> str:
    """Where pypi_supervisor writes supervisord.conf (its vars/Debian.yml and vars/RedHat.yml)."""
    return "/etc/supervisord.conf" if is_redhat(host) else "/etc/supervisor/supervisord.conf"


def supervisor_include_dir(host) -> str:
    return "/etc/supervisord.d" if is_redhat(host) else "/etc/supervisor/conf.d"


def supervisorctl(host) -> str:
    return f"{SUPERVISOR_BIN}/supervisorctl -c {supervisor_config(host)}"


def name_of(host) -> str:
    return host.backend.get_hostname()


def gunicorn_processes(host) -> list[tuple[str, str, str]]:
    """(pid, ppid, user) of every gunicorn process."""
    out = host.check_output("ps -eo pid=,ppid=,user:32=,args= | grep '[b]in/gunicorn' || true")
    return [tuple(line.split()[:3]) for line in out.splitlines() if line.strip()]


def master_pid(host) -> str:
    return host.check_output(f"{supervisorctl(host)} pid pypiserver").strip()


def test_test_network_has_no_egress() -> None:
    inspect = docker("network", "inspect", "--format", "{{.Internal}}", NETWORK).stdout.strip()
    assert inspect == "true", "the test hosts must sit on an internal docker network"


def test_supervisord_runs_gunicorn_unprivileged(host) -> None:
    status = host.run(f"{supervisorctl(host)} status pypiserver")
    assert "RUNNING" in status.stdout, status.stdout + status.stderr
    procs = gunicorn_processes(host)
    assert len(procs) >= 3, f"expected a master and 2 workers, got {procs}"
    assert {user for _, _, user in procs} == {"pypiserver"}, procs
    assert host.user("pypiserver").shell.endswith("nologin")


def test_control_socket_is_private_unix_socket(host) -> None:
    sock = host.file("/run/supervisord.sock")
    assert sock.is_socket
    assert sock.mode == 0o700
    assert sock.user == "root"
    conf = host.file(supervisor_config(host)).content_string
    assert re.search(r"(?m)^\[inet_http_server\]", conf) is None
    assert "[unix_http_server]" in conf


def test_supervisord_starts_at_boot(host) -> None:
    if host.file("/run/systemd/system").is_directory:
        assert host.service("supervisord").is_enabled
        assert host.service("supervisord").is_running
    else:
        script = host.file("/etc/init.d/supervisord")
        assert script.mode == 0o755
        assert "### BEGIN INIT INFO" in script.content_string
        assert "# chkconfig: 345" in script.content_string
        rc_dir = "/etc/rc.d/rc3.d" if is_redhat(host) else "/etc/rc2.d"
        assert host.run(f"ls {rc_dir}/ | grep -q '^S.*supervisord$'").rc == 0


def test_program_logs_rotate(host) -> None:
    conf = host.file(f"{supervisor_include_dir(host)}/pypiserver.conf").content_string
    for key in ("autostart=true", "autorestart=true", "stopsignal=TERM", "stdout_logfile_maxbytes=", "user=pypiserver"):
        assert key in conf


def test_port_open_in_firewall(host) -> None:
    rules = "/etc/sysconfig/iptables" if is_redhat(host) else "/etc/iptables/rules.v4"
    if host.exists("firewall-cmd") and host.run("firewall-cmd --state").rc == 0:
        assert f"{PORT}/tcp" in host.check_output("firewall-cmd --list-ports").split()
        assert f"{PORT}/tcp" in host.check_output("firewall-cmd --permanent --list-ports").split()
        assert host.run("systemctl is-active firewalld").stdout.strip() == "active"
    elif host.file(rules).exists:
        assert f"--dport {PORT}" in host.file(rules).content_string
        live = host.check_output("iptables -S INPUT").splitlines()
        opened = [i for i, rule in enumerate(live) if f"--dport {PORT}" in rule and rule.endswith("-j ACCEPT")]
        assert opened, live
        # On: a default-drop policy (Debian's test host) or a final REJECT (EL's stock rules), after the opening.
        rejects = [i for i, rule in enumerate(live) if rule.startswith("-A INPUT") and "-j REJECT" in rule]
        assert "-P INPUT DROP" in live or (rejects and opened[0] < rejects[-1]), "the firewall must stay on"
    else:
        pytest.skip(f"{name_of(host)} runs no firewall (the role says so and leaves it alone)")


def test_upload_needs_credentials_then_pip_installs(host, demo_wheel) -> None:
    server = name_of(host)
    wheel, version = demo_wheel
    url = f"http://{server}:{PORT}/"
    anonymous = on_client(
        "/usr/bin/python3",
        "-c",
        "import urllib.request,urllib.error,sys\n"
        f"req = urllib.request.Request('{url}', data=b'', method='POST')\n"
        "try:\n urllib.request.urlopen(req, timeout=10)\nexcept urllib.error.HTTPError as e:\n print(e.code)\n",
    )
    assert anonymous.stdout.strip() == "401", anonymous.stdout + anonymous.stderr
    wrong = on_client(
        f"{CLIENT_BIN}/twine",
        "upload",
        "--non-interactive",
        "--repository-url",
        url,
        "-u",
        USER,
        "-p",
        "not-the-password",
        wheel,
    )
    assert wrong.returncode != 0
    assert "403" in wrong.stdout + wrong.stderr
    ok = on_client(
        f"{CLIENT_BIN}/twine", "upload", "--non-interactive", "--repository-url", url, "-u", USER, "-p", PASSWORD, wheel
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    target = f"/tmp/site-{server}"
    install = on_client(
        f"{CLIENT_BIN}/pip",
        "install",
        "--no-cache-dir",
        "--trusted-host",
        server,
        "--index-url",
        f"{url}simple/",
        "--target",
        target,
        "--upgrade",
        f"airgap-demo=={version}",
    )
    assert install.returncode == 0, install.stdout + install.stderr
    imported = on_client(
        "env", f"PYTHONPATH={target}", "/usr/bin/python3", "-c", "import airgap_demo; print(airgap_demo.VERSION)"
    )
    assert imported.stdout.strip() == version
    assert host.file(f"/srv/pypi/packages/{wheel.rsplit('/', 1)[1]}").user == "pypiserver"


def test_no_fallback_to_a_public_index(host) -> None:
    """A missing project is a 404 here, never a redirect to a public index."""
    server = name_of(host)
    probe = on_client(
        "/usr/bin/python3",
        "-c",
        "import urllib.request, urllib.error\n"
        "class NoRedirect(urllib.request.HTTPRedirectHandler):\n"
        "    def redirect_request(self, *args):\n"
        "        return None\n"
        "try:\n"
        f"    urllib.request.build_opener(NoRedirect).open('http://{server}:{PORT}/simple/six/', timeout=10)\n"
        "    print(200)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n",
    )
    assert probe.stdout.strip() == "404", probe.stdout + probe.stderr


def test_supervisord_restarts_a_killed_gunicorn(host) -> None:
    before = master_pid(host)
    assert before.isdigit() and before != "0"
    host.run(f"kill -9 {before}")
    assert wait_for(lambda: master_pid(host) not in (before, "0", ""), 15), "gunicorn did not come back"
    assert wait_for(lambda: health_from_client(name_of(host)), 15)
    assert wait_for(lambda: "RUNNING" in host.run(f"{supervisorctl(host)} status pypiserver").stdout, 15)


def test_index_comes_back_after_a_restart(host) -> None:
    server = name_of(host)
    docker("restart", "--time", "20", server, timeout=180)
    assert wait_for(lambda: health_from_client(server), 90, step=1), f"{server} did not serve again after a restart"
    assert wait_for(lambda: "RUNNING" in host.run(f"{supervisorctl(host)} status pypiserver").stdout, 15)


def test_client_is_on_the_same_network() -> None:
    networks = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", CLIENT).stdout)
    assert NETWORK in networks, sorted(networks)
