"""The index as its users meet it: served, protected, reachable through the firewall, and self-healing."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import time

import pytest
import testinfra
import testinfra.utils.ansible_runner
from conftest import (
    CLIENT,
    CLIENT_BIN,
    NETWORK,
    PORT,
    docker,
    health_from_client,
    on_client,
    twine_upload,
    wait_for,
)

from scripts.demo_wheel import build_wheel

testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"]).get_hosts(
    "http_servers"
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


# How many .py files a virtualenv holds, then each one without its bytecode: the unprivileged index user cannot
# write bytecode there, so every gunicorn worker would compile those modules again at each start.
UNCOMPILED = (
    "import importlib.util, pathlib, sys\n"
    "files = list(pathlib.Path(sys.prefix, 'lib').rglob('*.py'))\n"
    "print(len(files))\n"
    "for p in files:\n"
    "    if not pathlib.Path(importlib.util.cache_from_source(str(p))).exists():\n"
    "        print(p)\n"
)


@pytest.mark.parametrize("venv", ["/opt/airgap-pypi/pypiserver", SUPERVISOR_BIN.removesuffix("/bin")])
def test_virtualenvs_are_compiled_for_the_users_that_cannot_write_them(host, venv: str) -> None:
    count, *missing = host.check_output(f"{venv}/bin/python -c {shlex.quote(UNCOMPILED)}").split()
    assert int(count) > 50, f"{venv} holds only {count} .py files"
    assert missing == [], f"{len(missing)} of {count} files of {venv} have no bytecode, e.g. {missing[:5]}"


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


def supervisor_bytes(value: str) -> int:
    """A supervisord byte size ("20MB", "1KB", "1048576"), as supervisor's datatypes.byte_size reads it."""
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3}
    value = value.strip().upper()
    return int(value[:-2]) * units[value[-2:]] if value[-2:] in units else int(value)


# Run on the index host: requests to gunicorn whose access log lines (request line, User-Agent and Referer: about
# 20 KB each, within gunicorn's request limits) fill its supervisord log until supervisord rotates it. Bounded in
# requests (what the configured size needs, and half again) and in time.
GROW_LOG = """
import http.client, json, os, sys, time
log, maxbytes, port, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
first = os.stat(log)
path = "/health?" + "r" * 4000
headers = {"User-Agent": "u" * 8000, "Referer": "f" * 8000}
needed = max(0, maxbytes - first.st_size) // (len(path) + 16000) + 1
budget, sent, statuses = needed + needed // 2 + 50, 0, set()
start = time.monotonic()


def rotated():
    try:
        return os.stat(log + ".1").st_ino == first.st_ino
    except OSError:
        return False


connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
while sent < budget and time.monotonic() - start < seconds and not rotated():
    for _ in range(20):
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        statuses.add(response.status)
        sent += 1
connection.close()
# supervisord writes what it reads from gunicorn's stdout a moment later.
stopped = time.monotonic()
while not rotated() and time.monotonic() - stopped < 5:
    time.sleep(0.2)
print(json.dumps({"rotated": rotated(), "sent": sent, "needed": needed, "statuses": sorted(statuses),
                  "seconds": round(time.monotonic() - start, 1), "first_size": first.st_size}))
"""


def test_program_logs_rotate(host) -> None:
    """gunicorn's log (its access log on stdout, through supervisord) grows past the configured size with real
    requests, and supervisord rotates it: the full file becomes .1, a fresh main log takes the next lines, and
    no more backups are kept than configured."""
    conf = host.file(f"{supervisor_include_dir(host)}/pypiserver.conf").content_string
    settings = dict(line.split("=", 1) for line in conf.splitlines() if "=" in line and not line.startswith(";"))
    for key, value in {"autostart": "true", "autorestart": "true", "stopsignal": "TERM", "user": "pypiserver"}.items():
        assert settings.get(key) == value, (key, settings.get(key))
    log = settings["stdout_logfile"]
    maxbytes, backups = supervisor_bytes(settings["stdout_logfile_maxbytes"]), int(settings["stdout_logfile_backups"])
    assert 0 < maxbytes <= 64 * 1024**2 and backups > 0, (maxbytes, backups)
    grown = host.run("python3 -c %s %s %s %s %s", GROW_LOG, log, str(maxbytes), str(PORT), "60")
    assert grown.rc == 0, grown.stdout + grown.stderr
    result = json.loads(grown.stdout)
    assert result["statuses"] == [200], result
    assert result["rotated"], f"{log} did not rotate at {maxbytes} bytes: {result}"
    # The fresh main log takes the next lines: one more request, seen in the new file.
    host.run("python3 -c %s", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{PORT}/health?after')")
    assert wait_for(lambda: "GET /health?after " in host.file(log).content_string, 10), "the new log takes lines"
    main, full = host.file(log).size, host.file(f"{log}.1").size
    assert main < maxbytes <= full, f"main log {main} bytes, {log}.1 {full} bytes, maxbytes {maxbytes}"
    kept = host.check_output(f"ls {log}.* | wc -l").strip()
    assert 1 <= int(kept) <= backups, kept


# Which firewall each host of the default scenario runs, as scripts/build_images.sh builds its image: the role
# must open the port in that one. A host that should run firewalld but does not fails here instead of skipping.
EXPECTED_FIREWALL = {
    "airgap-pypi-deb12": "firewalld",
    "airgap-pypi-deb11": "iptables",
    "airgap-pypi-deb12-sysv": "none",
    "airgap-pypi-deb13": "nftables",
}


def iptables_rules_file(host) -> str:
    return "/etc/sysconfig/iptables" if is_redhat(host) else "/etc/iptables/rules.v4"


def expected_firewall(host) -> str:
    """The firewall the host is known to run; for hosts this file does not name (molecule/el runs these tests on
    the operator's own images), what the host runs now."""
    if name_of(host) in EXPECTED_FIREWALL:
        return EXPECTED_FIREWALL[name_of(host)]
    if host.exists("firewall-cmd") and host.run("firewall-cmd --state").rc == 0:
        return "firewalld"
    return "iptables" if host.file(iptables_rules_file(host)).exists else "none"


def test_port_open_in_firewall(host) -> None:
    expected = expected_firewall(host)
    if expected == "firewalld":
        state = host.run("firewall-cmd --state")
        assert state.rc == 0 and state.stdout.strip() == "running", f"firewalld must run: {state.stdout}{state.stderr}"
        assert host.run("systemctl is-active firewalld").stdout.strip() == "active"
        assert host.run("systemctl is-enabled firewalld").stdout.strip() == "enabled"
        assert f"{PORT}/tcp" in host.check_output("firewall-cmd --list-ports").split()
        assert f"{PORT}/tcp" in host.check_output("firewall-cmd --permanent --list-ports").split()
    elif expected == "iptables":
        rules = iptables_rules_file(host)
        assert host.file(rules).exists, f"{rules} is gone"
        assert f"--dport {PORT}" in host.file(rules).content_string
        live = host.check_output("iptables -S INPUT").splitlines()
        opened = [i for i, rule in enumerate(live) if f"--dport {PORT}" in rule and rule.endswith("-j ACCEPT")]
        assert opened, live
        # On: a default-drop policy (Debian's test host) or a final REJECT (EL's stock rules), after the opening.
        rejects = [i for i, rule in enumerate(live) if rule.startswith("-A INPUT") and "-j REJECT" in rule]
        assert "-P INPUT DROP" in live or (rejects and opened[0] < rejects[-1]), "the firewall must stay on"
        if not is_redhat(host):
            assert host.run("systemctl is-enabled netfilter-persistent").stdout.strip() == "enabled", "loaded at boot"
    elif expected == "nftables":
        rule = f"tcp dport {PORT} accept"
        assert rule in host.file("/etc/nftables.conf").content_string, "kept in the configuration loaded at boot"
        live = host.check_output("nft list chain inet filter input")
        assert rule in live, live
        assert "policy drop" in live, "the firewall must stay on"
        assert host.run("systemctl is-enabled nftables").stdout.strip() == "enabled", "loaded at boot"
    else:
        assert expected == "none", expected
        if name_of(host) not in EXPECTED_FIREWALL:
            pytest.skip(f"{name_of(host)} runs no firewall the role knows (the role says so and leaves it alone)")
        # Known to run no firewall: the role says so and installs or starts none.
        for absent in ("firewall-cmd", "iptables", "nft"):
            assert not host.exists(absent), f"{absent} appeared on a host without a firewall"
        assert not host.file(iptables_rules_file(host)).exists
        assert health_from_client(name_of(host)), "reachable without a firewall"


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
    wrong = twine_upload(url, wheel, password="not-the-password")
    assert wrong.returncode != 0
    assert "403" in wrong.stdout + wrong.stderr
    ok = twine_upload(url, wheel)
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


RENDERED_MARKDOWN = "# Heading of {name}\n\nSome *emphasis* and `code`.\n"


def test_a_markdown_description_is_rendered_by_the_hosts_own_python(host, tmp_path) -> None:
    """Each host renders with the renderer of its own Python's lock (Debian 11's 3.9: cmarkgfm; 3.10 and later:
    comrak), in the index's rendering child after the upload; the page shows it within a bounded wait."""
    server = name_of(host)
    name = f"render-{server}-{int(time.time())}"
    wheel = build_wheel(
        tmp_path, name, "1.0", description=RENDERED_MARKDOWN.format(name=name), content_type="text/markdown"
    )
    docker("cp", str(wheel), f"{CLIENT}:/var/tmp/{wheel.name}")
    done = twine_upload(f"http://{server}:{PORT}/", f"/var/tmp/{wheel.name}")
    assert done.returncode == 0, done.stdout + done.stderr
    page = f"http://{server}:{PORT}/project/{name}/"
    fetch = f"import urllib.request; print(urllib.request.urlopen({page!r}, timeout=10).read().decode())"
    shown = ""

    def rendered() -> bool:
        nonlocal shown
        shown = on_client("/usr/bin/python3", "-c", fetch).stdout
        return re.search(rf"<h1[^>]*>Heading of {re.escape(name)}", shown) is not None

    assert wait_for(rendered, 60), f"not rendered within 60 s on {server}: {shown[-1500:]}"
    assert "<em>emphasis</em>" in shown and "<code>code</code>" in shown


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


def index_hosts() -> list:
    """testinfra's hosts of this module's index hosts, outside of its per-host parametrization."""
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    return [testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory) for name in testinfra_hosts]


def serves_again(host, seconds: float, killed_pid: str = "") -> str:
    """Wait until gunicorn on host runs again (under another master PID than killed_pid, if given), answers the
    client's /health and supervisord says RUNNING: "" when it does, else what it does not do."""
    name = name_of(host)
    if killed_pid and not wait_for(lambda: master_pid(host) not in (killed_pid, "0", ""), seconds):
        return f"gunicorn did not come back on {name}"
    if not wait_for(lambda: health_from_client(name), seconds, step=1):
        return f"{name} did not serve again"
    if not wait_for(lambda: "RUNNING" in host.run(f"{supervisorctl(host)} status pypiserver").stdout, 15):
        return f"supervisord on {name} does not say RUNNING"
    return ""


# The two tests below act on every index host at once (most of a restart is waiting): they are not parametrized by
# host, so that pytest runs them after every host's own tests.
def test_supervisord_restarts_a_killed_gunicorn() -> None:
    killed = []
    for host in index_hosts():
        before = master_pid(host)
        assert before.isdigit() and before != "0", (name_of(host), before)
        host.run(f"kill -9 {before}")
        killed.append((host, before))
    for host, before in killed:
        assert not (missing := serves_again(host, 15, killed_pid=before)), missing


def test_index_comes_back_after_a_restart() -> None:
    hosts = {name_of(host): host for host in index_hosts()}

    def restart(name: str) -> subprocess.CompletedProcess[str]:
        return docker("restart", "--time", "20", name, check=False, timeout=180)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        restarted = dict(zip(hosts, pool.map(restart, hosts), strict=True))
    for name, host in hosts.items():
        assert restarted[name].returncode == 0, (name, restarted[name].stderr)
        assert not (missing := serves_again(host, 90)), missing + " after a restart"


def test_client_is_on_the_same_network() -> None:
    networks = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", CLIENT).stdout)
    assert NETWORK in networks, sorted(networks)
