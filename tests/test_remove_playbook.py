"""playbooks/remove.yml and the pypi_server role's `remove` entry point, run for real on localhost against an index
laid out as the role lays it out (test_yank_playbook.make_host): the confirmation, the move and the page, the
second run, and a fleet where one host refuses. The command's own checks are tests/test_remove.py's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_yank_playbook import changed, make_host
from test_yank_playbook import yank as run

PLAYBOOK = "playbooks/remove.yml"
NEW = "demo-2.0-py3-none-any.whl"


def test_a_removal_needs_confirm_moves_the_files_aside_and_a_second_run_is_ok(tmp_path: Path) -> None:
    host = make_host(tmp_path, "1.0", "2.0")
    removed = host["packages"].parent / "removed"
    release = ("-e", "project=Demo", "-e", "version=2.0")

    done = run(host, *release, playbook=PLAYBOOK)
    assert done.returncode != 0 and "-e confirm=true" in done.stdout, done.stdout[-3000:]
    assert "airgap_pypi_index.py" not in done.stdout, "the command never ran"
    assert (host["packages"] / NEW).exists() and not removed.exists() and NEW in host["page"].read_text()

    done = run(host, *release, "-e", "confirm=true", playbook=PLAYBOOK)
    assert changed(done) == 1 and "demo 2.0: 1 file(s) moved off the index to" in done.stdout
    assert not (host["packages"] / NEW).exists() and NEW not in host["page"].read_text(), "off the page on return"
    (entry,) = removed.iterdir()
    assert (entry / NEW).exists() and json.loads((entry / "record.json").read_text())["files"][0]["name"] == NEW
    assert "demo-1.0-py3-none-any.whl" in host["page"].read_text()

    done = run(host, *release, "-e", "confirm=true", playbook=PLAYBOOK)
    assert changed(done) == 0 and "demo 2.0 was already removed" in done.stdout
    assert list(removed.iterdir()) == [entry]


def test_a_refusal_on_one_host_of_a_fleet_changes_no_host(tmp_path: Path) -> None:
    """Every host checks first: one that lacks the file stops the run before the other is changed."""
    hosts = {"has-it": make_host(tmp_path / "a", "1.0", "2.0"), "lacks-it": make_host(tmp_path / "b", "1.0")}
    fleet: dict = {"all": {"children": {"pypi_servers": {"hosts": {}}}}}
    for name, layout in hosts.items():
        one = json.loads(layout["inventory"].read_text())["all"]["children"]["pypi_servers"]["hosts"]["localhost"]
        fleet["all"]["children"]["pypi_servers"]["hosts"][name] = one
    inventory = tmp_path / "fleet.json"
    inventory.write_text(json.dumps(fleet))
    done = run(
        {"inventory": inventory}, "-e", "project=demo", "-e", f"file={NEW}", "-e", "confirm=true", playbook=PLAYBOOK
    )
    assert done.returncode != 0
    assert f"lacks-it: refused: --file '{NEW}': demo has no file of this name" in done.stdout, done.stdout[-3000:]
    has_it = hosts["has-it"]
    assert (has_it["packages"] / NEW).exists() and NEW in has_it["page"].read_text(), "the other host kept it"
    assert not (has_it["packages"].parent / "removed").exists()
    assert re.search(r"has-it\s*: ok=\d+\s+changed=0", done.stdout), done.stdout[-2000:]
