"""Bad input stops site.yml before any change: each case is a pristine container of its own (scripts/pristine.py),
all of them in one site.yml run, and `docker diff` of each is the same before and after.

The cases need no converged host, so they are a step of their own (`inputs`, in make test's second lane) rather
than part of a Molecule scenario: they start their containers from the default scenario's sysv image.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.containers import docker
from scripts.pki import pem_pair
from scripts.pristine import PREFIX, Case, Outcome, bad_input_runs, refused

PROJECT_DIR = Path(__file__).resolve().parents[1]
ARTIFACTS = PROJECT_DIR / "offline_artifacts"
IGNORED = re.compile(r"^[ACD] /(root/\.ansible|tmp|run|var/log)(/|$)")
PORT = 8080  # pypi_server_port's default
USER = "tester"
PASSWORD = "inputs-test-only"  # a throwaway account: every run stops before it is made


BAD_VALUES = {
    "port-range": ({"pypi_server_port": 70000}, ["pypi_server_port=70000", "1-65535"]),
    "port-type": ({"pypi_server_port": "http"}, ["pypi_server_port", "int"]),
    "workers": ({"pypi_server_workers": 0}, ["pypi_server_workers=0", "1-64"]),
    "relative-path": (
        {"pypi_server_packages_dir": "srv/packages"},
        ["pypi_server_packages_dir=srv/packages", "absolute"],
    ),
    "user-name": ({"pypi_server_user": "Bad User"}, ["'Bad User'", "must match"]),
    "init-system": ({"pypi_supervisor_init_system": "upstart"}, ["pypi_supervisor_init_system", "upstart"]),
    "empty-password": ({"pypi_server_users": [{"name": "alice", "password": ""}]}, ["without a password", "alice"]),
    "missing-password": ({"pypi_server_users": [{"name": "bob"}]}, ["password", "pypi_server_users"]),
    "front-port": ({"pypi_front_enabled": True, "pypi_front_port": 8080}, ["pypi_front_port=8080", "other than"]),
    "front-upload-size": (
        {"pypi_front_enabled": True, "pypi_front_max_upload_size": "lots"},
        ["pypi_front_max_upload_size='lots'"],
    ),
    "front-auth-downloads": (
        {"pypi_front_enabled": True, "pypi_server_auth_downloads": True},
        ["without the index's password check"],
    ),
    # A pristine host's apt knows no repository: nginx cannot come from its OS mirror.
    "front-no-os-mirror": (
        {"pypi_front_enabled": True},
        ["needs the OS package 'nginx'", "OS repositories of your private network"],
    ),
    # Values that would hand the host's own directories to the index, or hide a mistake (issue 12).
    "packages-etc": ({"pypi_server_packages_dir": "/etc"}, ["pypi_server_packages_dir=/etc:", "system directory"]),
    "data-root": ({"pypi_server_data_dir": "/"}, ["pypi_server_data_dir=/:", "system directory"]),
    "static-is-packages": (
        {"pypi_server_static_dir": "/srv/pypi/packages"},
        ["pypi_server_static_dir=/srv/pypi/packages:", "the same directory as pypi_server_packages_dir"],
    ),
    "config-in-packages": (
        {"pypi_server_config_dir": "/srv/pypi/packages/conf"},
        ["pypi_server_config_dir=/srv/pypi/packages/conf:", "inside pypi_server_packages_dir"],
    ),
    "duplicate-account": (
        {
            "pypi_server_users": [
                {"name": "alice", "password": "test-only-1"},
                {"name": "alice", "password": "test-only-2"},
            ]
        },
        ["account 'alice' is listed 2 times"],
    ),
    "health-timeout": ({"pypi_server_health_timeout": 0}, ["pypi_server_health_timeout=0:", "1 or more"]),
    "upload-limit": ({"pypi_server_max_upload_mb": 0}, ["pypi_server_max_upload_mb=0:", "1-1048576"]),
    # A string where the list goes: read digit by digit it opened ports 8, 4 and 3.
    "firewall-extra-ports": (
        {"pypi_firewall_extra_ports": "8443"},
        ["pypi_firewall_extra_ports must be a list of ports, such as [8443], not '8443'"],
    ),
}
# Each of these alone is bad: its message names it and no other number.
NUMBERS = [
    "pypi_server_port",
    "pypi_server_workers",
    "pypi_server_timeout",
    "pypi_server_health_timeout",
    "pypi_server_max_upload_mb",
]

# Host state the role would take over (issue 12): (shell command run in the pristine container before the run,
# host vars, what the message must contain). docker diff is compared from after the command.
HOST_STATES = {
    "data-symlink-to-etc": (
        "mkdir -p /srv && ln -s /etc /srv/pypi",
        {},
        ["pypi_server_data_dir=/srv/pypi:", "leads to /etc through a symlink", "system directory"],
    ),
    "foreign-packages-dir": (
        "mkdir -p /srv/reports && echo 1 > /srv/reports/q3.csv",
        {"pypi_server_packages_dir": "/srv/reports"},
        ["pypi_server_packages_dir=/srv/reports:", "is not empty and belongs to root:root"],
    ),
}


# Bad TLS input from the inventory (pypi_server_tls_source: inventory): what each case's message must contain.
BAD_TLS = {
    "cert-without-key": ["pypi_server_tls_key is empty", "Nothing was changed"],
    "key-of-another-cert": ["does not match"],
    "names-not-covered": ["does not cover {host}"],
}
# What every bad TLS case's host has besides its case's values.
TLS_FROM_INVENTORY = {"pypi_server_tls": True, "pypi_server_tls_source": "inventory"}


def bad_tls_input(case: str, host: str) -> dict[str, str]:
    """The TLS inventory values of a case, for its host."""
    good_cert, _ = pem_pair([host])
    other_cert, other_key = pem_pair(["pypi.elsewhere.internal"])
    return {
        "cert-without-key": {"pypi_server_tls_cert": good_cert},
        "key-of-another-cert": {"pypi_server_tls_cert": good_cert, "pypi_server_tls_key": other_key},
        "names-not-covered": {"pypi_server_tls_cert": other_cert, "pypi_server_tls_key": other_key},
    }[case]


def python36_prefix() -> str | None:
    """Where pyenv keeps a CPython 3.6 on this machine, if it has one."""
    pyenv = shutil.which("pyenv")
    if not pyenv:
        return None
    root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False).stdout.strip()
    found = sorted(Path(root, "versions").glob("3.6.*")) if root else []
    return str(found[-1]) if found else None


def only_python36(prefix: str, workdir: Path, name: str) -> None:
    """Make the container a host whose only Python is a real CPython 3.6 at /usr/libexec/platform-python, as on
    EL 8 minimal: its python3 removed and pyenv's 3.6 put in. It emulates EL 8's interpreter situation, not EL 8."""
    purge = "dpkg --purge --force-depends $(dpkg-query -W -f '${Package}\\n' 'python3*' 'libpython3*')"
    docker("exec", name, "sh", "-c", purge)
    archive = workdir / "python36.tar"
    subprocess.run(
        ["tar", "-C", "/", "--exclude=test", "--exclude=site-packages", "-cf", str(archive), prefix.lstrip("/")],
        check=True,
    )
    docker("cp", "-", f"{name}:/", input_file=archive)
    docker("exec", name, "ln", "-s", f"{prefix}/bin/python3.6", "/usr/libexec/platform-python")
    version = docker("exec", name, "/usr/libexec/platform-python", "-c", "import sys; print(sys.version[:4])")
    assert version.stdout.strip() == "3.6."
    assert docker("exec", name, "sh", "-c", "command -v python3", check=False).returncode != 0


def listen_on_port(name: str) -> None:
    """Another program holds the index's port on the container: python3 -m http.server, listening once this returns."""
    docker("exec", "-d", name, "python3", "-m", "http.server", str(PORT))
    wait = (
        "import socket, sys, time\n"
        "for _ in range(50):\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {PORT}), 1)\n"
        "        sys.exit(0)\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "sys.exit(1)\n"
    )
    assert docker("exec", name, "python3", "-c", wait, check=False).returncode == 0, "http.server never listened"


def run_in(command: str, name: str) -> None:
    """Prepare a case's pristine container with a shell command."""
    docker("exec", name, "sh", "-c", command)


def corrupted_wheel() -> str:
    """The bundle file the corrupted-wheel case breaks in its copy of the bundle, relative to the bundle."""
    return str(min((ARTIFACTS / "wheels").glob("gunicorn-*.whl")).relative_to(ARTIFACTS))


@pytest.fixture(scope="module")
def bad_tls_cases() -> dict[str, Case]:
    """The bad TLS cases (tls_support.py), each with its own certificate and key, by name."""
    return {
        case: Case(f"tls-{case}", {**TLS_FROM_INVENTORY, **bad_tls_input(case, f"{PREFIX}tls-{case}")})
        for case in BAD_TLS
    }


@pytest.fixture(scope="module")
def bad_inputs(
    tmp_path_factory: pytest.TempPathFactory, bad_tls_cases: dict[str, Case]
) -> Iterator[dict[str, Outcome]]:
    """Every bad-input case on a pristine container of its own, in one site.yml run; {case: Outcome}.

    The bundle cases get runs of their own, beside it: the bundle checks are run_once on the controller and read
    the first host's pypi_bootstrap_artifacts_dir for every host of a run, so in a shared run a bad one fails
    all hosts, or is never checked when its host is not the first.
    """
    workdir = tmp_path_factory.mktemp("bad-inputs")
    copy = workdir / "offline_artifacts"
    shutil.copytree(ARTIFACTS, copy)
    victim = copy / corrupted_wheel()
    victim.write_bytes(victim.read_bytes()[:-10] + b"corrupted!")
    cases = [Case(case, host_vars) for case, (host_vars, _) in BAD_VALUES.items()]
    cases += [
        Case("missing-bundle", {"pypi_bootstrap_artifacts_dir": f"{workdir}/none"}, run="missing-bundle"),
        Case("corrupted-wheel", {"pypi_bootstrap_artifacts_dir": str(copy)}, run="corrupted-wheel"),
        Case("port-in-use", prepare=listen_on_port),
    ]
    cases += [
        Case(case, host_vars, prepare=functools.partial(run_in, command))
        for case, (command, host_vars, _) in HOST_STATES.items()
    ]
    cases += list(bad_tls_cases.values())
    prefix = python36_prefix()
    if prefix is not None:
        cases.append(Case("python36-only", prepare=functools.partial(only_python36, prefix, workdir)))
    group_vars = {
        "ansible_connection": "community.docker.docker",
        "pypi_server_users": [{"name": USER, "password": PASSWORD}],
    }
    with bad_input_runs(
        cases,
        playbook=PROJECT_DIR / "site.yml",
        project=PROJECT_DIR,
        workdir=workdir,
        group="pypi_servers",
        group_vars=group_vars,
        image="airgap-pypi/debian12-sysv:latest",  # the default scenario's sysv host's image and init
        init="sysv",
        ignored=IGNORED,
    ) as outcomes:
        yield outcomes


def test_missing_bundle(bad_inputs: dict[str, Outcome]) -> None:
    refused(bad_inputs["missing-bundle"], "SHA256SUMS is missing", "make bundle")


def test_corrupted_wheel(bad_inputs: dict[str, Outcome]) -> None:
    refused(bad_inputs["corrupted-wheel"], "failed its checksum check", f"{corrupted_wheel()}: FAILED")


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_inventory_value(bad_inputs: dict[str, Outcome], case: str) -> None:
    text = refused(bad_inputs[case], *BAD_VALUES[case][1])
    assert "Nothing was changed" in text or "Validation of arguments failed" in text


@pytest.mark.parametrize("case", ["workers", "health-timeout", "upload-limit"])
def test_a_bad_number_is_reported_alone(bad_inputs: dict[str, Outcome], case: str) -> None:
    bad = set(BAD_VALUES[case][0])
    text = bad_inputs[case].text
    assert all(name in text for name in bad), text
    assert not [name for name in NUMBERS if name not in bad and name in text], text


@pytest.mark.parametrize("case", list(HOST_STATES))
def test_host_state_the_role_would_take_over(bad_inputs: dict[str, Outcome], case: str) -> None:
    text = refused(bad_inputs[case], *HOST_STATES[case][2])
    assert text.endswith("Nothing was changed on this host."), text


def test_python36_only_host_is_refused_with_a_way_out(bad_inputs: dict[str, Outcome]) -> None:
    if "python36-only" not in bad_inputs:
        pytest.skip("not run: no CPython 3.6 from pyenv on this machine to carry into the container")
    name = bad_inputs["python36-only"].host
    refused(
        bad_inputs["python36-only"],
        f"{name} has no Python that this bundle supports",
        "3.6 /usr/libexec/platform-python",
        "supported: 3.9, 3.10, 3.11, 3.12, 3.13",
        "AppStream",
    )


def test_port_in_use(bad_inputs: dict[str, Outcome]) -> None:
    name = bad_inputs["port-in-use"].host
    refused(bad_inputs["port-in-use"], f"Port {PORT} on {name} is already in use by python3 -m http.server")


@pytest.mark.parametrize("case", list(BAD_TLS))
def test_bad_tls_input_stops_before_any_change(
    bad_inputs: dict[str, Outcome], bad_tls_cases: dict[str, Case], case: str
) -> None:
    outcome, inputs = bad_inputs[f"tls-{case}"], bad_tls_cases[case].host_vars
    refused(outcome, *(needle.format(host=outcome.host) for needle in BAD_TLS[case]))
    # The key never shows up in the output of the run, whatever failed.
    key_body = re.sub(r"-----[A-Z ]+-----", "", inputs.get("pypi_server_tls_key", "")).split()
    assert not any(line in outcome.output for line in key_body if len(line) > 20)
