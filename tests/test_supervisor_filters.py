"""The program sections pypi_supervisor renders: what supervisord reads, one pypi_common_files entry each."""

from __future__ import annotations

import configparser

from conftest import ROOT, load_module

filters = load_module(
    "pypi_supervisor_filters", ROOT / "roles" / "pypi_supervisor" / "filter_plugins" / "pypi_supervisor.py"
)


def test_sections_parse_and_name_every_setting_and_both_logs() -> None:
    programs = [
        {
            "name": "pypiserver",
            "command": "/opt/venv/bin/gunicorn --config /etc/g.conf.py",
            "directory": "/srv/pypi",
            "user": "pypi",
            "environment": {"PATH": "/opt/venv/bin:/bin", "NOTE": 'say "100%"'},
            "stopwaitsecs": 40,
        },
        {"name": "pypiserver-http", "command": "x", "state": "absent"},
    ]
    entries = filters.program_files(programs, "/etc/supervisor/conf.d", "/var/log/supervisor", "20MB", 10)
    assert [(e["path"], e["state"]) for e in entries] == [
        ("/etc/supervisor/conf.d/pypiserver.conf", "file"),
        ("/etc/supervisor/conf.d/pypiserver-http.conf", "absent"),
    ]
    parser = configparser.RawConfigParser()
    parser.read_string(entries[0]["content"])
    section = parser["program:pypiserver"]
    assert section["command"] == "/opt/venv/bin/gunicorn --config /etc/g.conf.py"
    assert section["user"] == "pypi" and section["directory"] == "/srv/pypi"
    # supervisord expands %(...)s in values: a literal % is doubled, and double quotes would end the value.
    assert section["environment"] == 'NOTE="say 100%%",PATH="/opt/venv/bin:/bin"'
    assert section["stopwaitsecs"] == "40" and section["startsecs"] == "3" and section["stopsignal"] == "TERM"
    assert section["stdout_logfile"] == "/var/log/supervisor/pypiserver.out.log"
    assert section["stderr_logfile"] == "/var/log/supervisor/pypiserver.err.log"
    assert section["stderr_logfile_maxbytes"] == "20MB" and section["stdout_logfile_backups"] == "10"


def test_removed_programs_are_the_named_ones_or_every_available_one() -> None:
    avail = ["airgap-pypi-publish              in use    auto      999:999", "pypiserver   in use  auto  999:999", ""]
    assert [p["name"] for p in filters.removed_programs(["all"], avail)] == ["airgap-pypi-publish", "pypiserver"]
    assert filters.removed_programs(["pypiserver"], avail) == [
        {"name": "pypiserver", "command": "removed", "state": "absent"}
    ]
