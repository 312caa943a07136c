"""playbooks/prune.yml and the pypi_server role's `prune` entry point, run for real on localhost against an index
laid out as the role lays it out (test_yank_playbook.make_host): the N newest mirrored releases kept, an upload left
alone, one project or all, check mode, the second run, and a refusal without confirm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_mirror_state_playbook import make_mirror
from test_yank_playbook import MODULE, audit_records, changed, make_host
from test_yank_playbook import yank as run

from scripts.demo_wheel import build_wheel

PLAYBOOK = "playbooks/prune.yml"
UPLOADED = "demo-0.5-py3-none-any.whl"  # the oldest release, uploaded: never pruned


def wheel(project: str, version: str) -> str:
    return f"{project}-{version}-py3-none-any.whl"


def make_index(base: Path) -> dict[str, Path]:
    """demo 1.0, 2.0, 3.0 and other 1.0, 1.1 from the mirror (mirrored.json lists them, as mirror-state writes
    it), demo 0.5 uploaded (uploads.json has its record)."""
    host = make_host(base, "0.5", "1.0", "2.0", "3.0")
    for version in ("1.0", "1.1"):
        build_wheel(host["packages"], "other", version)
    mirrored = [wheel("demo", v) for v in ("1.0", "2.0", "3.0")] + [wheel("other", v) for v in ("1.0", "1.1")]
    mirrored.append(UPLOADED)  # a mirror carried the name too: the upload record still wins
    data = host["packages"].parent
    (data / "mirrored.json").write_text(json.dumps({"format": 1, "files": sorted(mirrored)}))
    inventory = json.loads(host["inventory"].read_text())  # no carried mirror unless a test gives one
    inventory["all"]["children"]["pypi_servers"]["hosts"]["localhost"]["pypi_server_mirror_dir"] = str(base / "none")
    host["inventory"].write_text(json.dumps(inventory))
    upload = {"time": "2026-01-02T03:04:05Z", "account": "alice"}
    (host["audit"] / "uploads.json").write_text(json.dumps({"format": 1, "files": {UPLOADED: upload}}))
    subprocess.run(
        [sys.executable, str(MODULE), "--packages", str(host["packages"]), "--tree", str(host["static"])],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return dict(host, removed=data / "removed", other=host["static"] / "simple" / "other" / "index.html")


def said(done: subprocess.CompletedProcess[str]) -> str:
    """The run's output with its lines joined (Ansible folds a long message)."""
    return " ".join(done.stdout.split())


def names(host: dict[str, Path]) -> list[str]:
    return sorted(path.name for path in host["packages"].iterdir())


EVERY = sorted(
    [UPLOADED, *(wheel("demo", v) for v in ("1.0", "2.0", "3.0")), wheel("other", "1.0"), wheel("other", "1.1")]
)


def test_prune_keeps_the_n_newest_mirrored_releases_and_never_an_upload(tmp_path: Path) -> None:
    host = make_index(tmp_path)
    one = ("-e", "keep=1", "-e", "project=Demo", "-e", "confirm=yes")

    done = run(host, *one, "--check", playbook=PLAYBOOK)
    assert changed(done) == 1, done.stdout[-3000:]
    assert "demo: 2 mirrored release(s) would be moved off the index: 1.0 (1 file(s)), 2.0 (1 file(s))" in said(done)
    assert names(host) == EVERY and not host["removed"].exists(), "check mode changes nothing"

    done = run(host, *one, playbook=PLAYBOOK)
    assert changed(done) == 1 and "demo: 2 mirrored release(s) moved off the index: 1.0" in said(done)
    assert names(host) == sorted([UPLOADED, wheel("demo", "3.0"), wheel("other", "1.0"), wheel("other", "1.1")])
    page = host["page"].read_text()
    assert wheel("demo", "1.0") not in page and UPLOADED in page and wheel("demo", "3.0") in page
    records = {json.loads((e / "record.json").read_text())["version"]: e for e in host["removed"].iterdir()}
    assert sorted(records) == ["1.0", "2.0"] and (records["1.0"] / wheel("demo", "1.0")).exists(), "kept aside"
    removals = [(r[0], r[3], r[4]) for r in audit_records(host)]
    assert removals == [("remove", "demo", "1.0"), ("remove", "demo", "2.0")]

    done = run(host, *one, playbook=PLAYBOOK)
    assert changed(done) == 0 and "nothing to do" in said(done), "a second run changes nothing"

    done = run(host, "-e", "keep=1", "-e", "confirm=yes", playbook=PLAYBOOK)  # every project
    assert changed(done) == 1 and "other: 1 mirrored release(s) moved off the index: 1.0" in said(done)
    assert names(host) == sorted([UPLOADED, wheel("demo", "3.0"), wheel("other", "1.1")])
    assert changed(run(host, "-e", "keep=1", "-e", "confirm=yes", playbook=PLAYBOOK)) == 0


def test_prune_keeps_two_by_version_order_not_by_name(tmp_path: Path) -> None:
    host = make_index(tmp_path)
    build_wheel(host["packages"], "demo", "10.0")  # after 3.0 by version, before it by name
    mirrored = json.loads((host["packages"].parent / "mirrored.json").read_text())
    mirrored["files"].append(wheel("demo", "10.0"))
    (host["packages"].parent / "mirrored.json").write_text(json.dumps(mirrored))
    done = run(host, "-e", "keep=2", "-e", "project=demo", "-e", "confirm=yes", playbook=PLAYBOOK)
    assert changed(done) == 1 and "demo: 2 mirrored release(s) moved off the index: 1.0 (1 file(s)), 2.0" in said(done)
    assert wheel("demo", "10.0") in names(host) and wheel("demo", "3.0") in names(host)


def test_a_file_the_carried_mirror_still_lists_is_kept(tmp_path: Path) -> None:
    """The controller's mirror still carries demo 1.0 (a lock needs it; site.yml would copy it back): kept."""
    host = make_index(tmp_path)
    mirror = make_mirror(tmp_path, {wheel("demo", "1.0"): host["packages"] / wheel("demo", "1.0")}, {})
    done = run(host, "-e", "keep=1", "-e", "confirm=yes", "-e", f"pypi_server_mirror_dir={mirror}", playbook=PLAYBOOK)
    assert changed(done) == 1 and "demo: 1 mirrored release(s) moved off the index: 2.0 (1 file(s))" in said(done)
    assert wheel("demo", "1.0") in names(host) and wheel("demo", "2.0") not in names(host)


def test_a_prune_without_confirm_or_keep_changes_nothing(tmp_path: Path) -> None:
    host = make_index(tmp_path)
    done = run(host, "-e", "keep=1", playbook=PLAYBOOK)
    assert done.returncode != 0 and "-e confirm=yes" in said(done) and "pypi_server_prune_confirm" in said(done)
    assert "airgap_pypi_index.py" not in said(done), "the command never ran"
    done = run(host, "-e", "keep=0", "-e", "confirm=yes", playbook=PLAYBOOK)
    assert done.returncode != 0 and "pypi_server_prune_keep is '0'" in said(done), done.stdout[-2000:]
    done = run(host, "-e", "keep=1", "-e", "project=nothere", "-e", "confirm=yes", playbook=PLAYBOOK)
    assert done.returncode != 0 and "--project 'nothere'" in said(done), done.stdout[-2000:]
    assert names(host) == EVERY and not host["removed"].exists()
