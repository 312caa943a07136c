"""pypi_server's TLS preflight against real certificates made here: each bad input is named, good ones pass.

The checks run on the controller (community.crypto), so a play on this machine covers them: every case is a host
of its own in one ansible-playbook run (the bad-input pattern of the scenarios). The default scenario runs the same
checks inside site.yml and proves the host is left unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.pki import issue

ROOT = Path(__file__).resolve().parent.parent


CA_CERT, _, CA_NAME, CA_KEY = issue(["test CA"], ca=True)
GOOD_CERT, GOOD_KEY, _, _ = issue(["pypi01.example.internal"], issuer=(CA_NAME, CA_KEY))
WILDCARD_CERT, WILDCARD_KEY, _, _ = issue(["*.example.internal"])
EXPIRED_CERT, EXPIRED_KEY, _, _ = issue(["pypi01.example.internal"], days=-1)
OTHER_CA, _, _, _ = issue(["another CA"], ca=True)
NO_CA = "/nonexistent/airgap-pypi-test-ca"  # the internal CA's directory for its cases: only looked for
CA_WITHOUT_KEY = "<the fixture's CA directory with ca.crt alone>"


GOOD = {
    "issued-by-the-given-ca": {
        "pypi_server_tls_cert": GOOD_CERT,
        "pypi_server_tls_key": GOOD_KEY,
        "pypi_server_tls_ca_cert": CA_CERT,
    },
    "wildcard-covers-one-label": {"pypi_server_tls_cert": WILDCARD_CERT, "pypi_server_tls_key": WILDCARD_KEY},
    # The internal CA's file of this host is hosts/index_1.example.internal.crt: fine.
    "index_1.example.internal": {"pypi_server_tls_source": "internal_ca", "pypi_server_tls_ca_dir": NO_CA},
}
BAD = {
    "expired": ({"pypi_server_tls_cert": EXPIRED_CERT, "pypi_server_tls_key": EXPIRED_KEY}, "expired on"),
    "not-pem": (
        {"pypi_server_tls_cert": "not a certificate", "pypi_server_tls_key": GOOD_KEY},
        "is not a PEM certificate",
    ),
    "bad-key": (
        {"pypi_server_tls_cert": GOOD_CERT, "pypi_server_tls_key": "garbage"},
        "is not an unencrypted PEM private key",
    ),
    "wildcard-two-labels": (
        {
            "pypi_server_tls_cert": WILDCARD_CERT,
            "pypi_server_tls_key": WILDCARD_KEY,
            "pypi_server_tls_names": ["a.b.example.internal"],
        },
        "does not cover a.b.example.internal",
    ),
    "wrong-ca": (
        {"pypi_server_tls_cert": GOOD_CERT, "pypi_server_tls_key": GOOD_KEY, "pypi_server_tls_ca_cert": OTHER_CA},
        "is not the issuer of pypi_server_tls_cert",
    ),
    "key-without-cert": ({"pypi_server_tls_key": GOOD_KEY}, "pypi_server_tls_cert is empty"),
    "same-http-port": ({"pypi_server_tls_http_port": 8080}, "pypi_server_tls_http_port=8080"),
    # An internal CA whose key was lost: it cannot issue (the fixture makes the directory, with ca.crt alone).
    "ca-cert-without-key": (
        {"pypi_server_tls_source": "internal_ca", "pypi_server_tls_ca_dir": CA_WITHOUT_KEY},
        "ca.crt exists but",
    ),
    # The internal CA would write hosts/../escape.crt: outside its directory.
    "../escape": (
        {"pypi_server_tls_source": "internal_ca", "pypi_server_tls_ca_dir": NO_CA},
        '"../escape" cannot name this host\'s files on the controller',
    ),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case as a host of its own (all on this machine), in one ansible-playbook run with the JSON callback:
    {case: its result of the TLS checks' failing task, or None when none failed}, each host's stats, the TLS
    check tasks that ran on it (not skipped), and the whole output."""
    work = tmp_path_factory.mktemp("tls-preflight")
    cases = {**GOOD, **{case: values for case, (values, _) in BAD.items()}}
    lost_key = work / "ca-without-key"
    lost_key.mkdir()
    (lost_key / "ca.crt").write_text(CA_CERT)
    cases = {
        case: {name: str(lost_key) if value == CA_WITHOUT_KEY else value for name, value in values.items()}
        for case, values in cases.items()
    }
    inventory = {
        "all": {
            "hosts": {case: {"ansible_connection": "local", **values} for case, values in cases.items()},
            "vars": {
                "ansible_python_interpreter": sys.executable,
                "pypi_server_tls": True,
                "pypi_server_tls_source": "inventory",
                "pypi_server_tls_names": ["pypi01.example.internal"],
            },
        }
    }
    play = [
        {
            "name": "TLS preflight",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Run the TLS checks",
                    "ansible.builtin.include_role": {"name": "pypi_server", "tasks_from": "tls_preflight"},
                }
            ],
        }
    ]
    (work / "inventory.json").write_text(json.dumps(inventory))
    (work / "play.json").write_text(json.dumps(play))
    env = dict(
        os.environ,
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORKS=str(len(cases)),
    )
    command = str(Path(sys.executable).with_name("ansible-playbook"))
    done = subprocess.run(
        [command, "-i", str(work / "inventory.json"), str(work / "play.json")],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    report = json.loads(done.stdout)
    failed: dict[str, Any] = dict.fromkeys(cases)
    checks: dict[str, list[str]] = {case: [] for case in cases}
    for play_report in report["plays"]:
        for task in play_report["tasks"]:
            for host, result in task["hosts"].items():
                if result.get("failed") and failed.get(host) is None:
                    failed[host] = result
                name = task["task"]["name"]
                if name.startswith("pypi_server : ") and not result.get("skipped") and host in checks:
                    checks[host].append(name)
    assert set(report["stats"]) == set(cases), report["stats"]
    return {"failed": failed, "stats": report["stats"], "checks": checks, "output": done.stdout + done.stderr}


def assert_ran(outcomes: dict[str, Any], case: str) -> None:
    """The case's host was reached and ran TLS checks: a host that ran nothing fails no task, and must not pass."""
    stats = outcomes["stats"].get(case, {})
    assert stats.get("ok", 0) > 0 and not stats.get("unreachable", 0), f"{case} did not run: {stats}"
    assert outcomes["checks"][case], f"no TLS check ran on {case}: {stats}"


@pytest.mark.parametrize("case", list(GOOD))
def test_good_input_passes(outcomes: dict[str, Any], case: str) -> None:
    assert_ran(outcomes, case)
    assert outcomes["failed"][case] is None, str(outcomes["failed"][case])[:3000]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_named(outcomes: dict[str, Any], case: str) -> None:
    assert_ran(outcomes, case)
    result = outcomes["failed"][case]
    assert result is not None, f"{case} passed the TLS checks"
    text = " ".join(str(result.get("msg", "")).split())
    assert BAD[case][1] in text, text[-3000:]


def test_no_key_is_ever_printed(outcomes: dict[str, Any]) -> None:
    assert "BEGIN PRIVATE KEY" not in outcomes["output"]
